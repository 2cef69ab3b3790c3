"""The GANs (QLInfoWGAN-GP, InfoWGAN-GP, WGAN-GP): loss terms against hand-computed values, the gradient
penalty's closed form and its graph, the 1-in-5 schedule, which parameters each player's optimizer owns,
short trainings, exact resume, evaluation and bad arguments."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import types

import pytest
import torch

from latentquant.cli import main
from latentquant.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from latentquant.train.config import resolve_config
from latentquant.train.loop import train
from latentquant.zoo import (
    MODELS,
    InfoWGANGP,
    QLInfoWGANGP,
    build_model,
    critic_value_loss,
    default_weight_decay,
    gradient_penalty,
    latent_regression_loss,
)

IMAGE = (3, 64, 64)
GANS = ("qlinfowgan", "qlinfowgan_no_wd", "infowgan", "wgan")
# The codebook at initialization: linspace(-0.5, 0.5, 10).
VALUES = torch.linspace(-0.5, 0.5, 10)


def _tiny(name: str, num_latents: int = 4, **kwargs):
    torch.manual_seed(0)
    return build_model(name, num_latents, IMAGE, encoder="tiny", decoder="tiny", **kwargs)


def _config(**overrides):
    settings = {"lr": 2e-4, "weight_decay": 1e-3, "grad_clip": 1.0, "amp": False, "seed": 0}
    settings["traversal_steps"] = 5
    return types.SimpleNamespace(**{**settings, **overrides})


def _f(value: torch.Tensor) -> float:
    return float(value.detach())


def _constant_critic(model, value: float, latent: float) -> None:
    """Make D(x) = value and the latent head = latent for every image (zero weights, constant biases)."""
    with torch.no_grad():
        model.value_head.weight.zero_()
        model.value_head.bias.fill_(value)
        model.encoder.dense[-1].weight.zero_()
        model.encoder.dense[-1].bias.fill_(latent)


# ------------------------------------------------------------------------------------------ loss functions
def test_critic_value_loss_and_latent_regression_by_hand():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.5, -0.5, 1.5])
    assert float(critic_value_loss(real, fake)) == pytest.approx(0.5 - 2.0)
    z_hat, z = torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert float(latent_regression_loss(z_hat, z)) == pytest.approx((1 + 0 + 4 + 0) / 4)


def test_gradient_penalty_of_a_linear_critic_is_closed_form():
    # D(x) = <w, x>: the input gradient is w at every x, so the penalty is (||w|| - 1)^2 whatever eps is, and its
    # gradient in w is 2 (||w|| - 1) w / ||w||.
    torch.manual_seed(0)
    w = torch.randn(*IMAGE, dtype=torch.float64).mul_(0.01).requires_grad_(True)
    real, fake = torch.rand(3, *IMAGE, dtype=torch.float64), torch.rand(3, *IMAGE, dtype=torch.float64)
    penalty = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake, torch.tensor([0.0, 0.3, 1.0]))
    norm = w.detach().norm()
    torch.testing.assert_close(penalty.double(), (norm - 1) ** 2)
    (grad,) = torch.autograd.grad(penalty, w)
    torch.testing.assert_close(grad, 2 * (norm - 1) * w.detach() / norm)


def test_gradient_penalty_of_a_quadratic_critic_depends_on_the_interpolate():
    # D(x) = ||x||^2 / 2 has input gradient x: the norm is ||eps real + (1 - eps) fake|| per sample.
    real = torch.zeros(2, *IMAGE, dtype=torch.float64)
    fake = torch.zeros(2, *IMAGE, dtype=torch.float64)
    fake[0, 0, 0, 0], fake[1, 0, 0, 0], fake[1, 1, 0, 0] = 2.0, 3.0, 4.0  # ||fake_b|| = 2 and 5
    eps = torch.tensor([0.25, 0.5])
    penalty = gradient_penalty(lambda x: 0.5 * x.square().flatten(1).sum(1), real, fake, eps)
    expected = ((0.75 * 2 - 1) ** 2 + (0.5 * 5 - 1) ** 2) / 2
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-6)


def test_critic_and_generator_losses_by_hand_info():
    model = _tiny("infowgan")
    _constant_critic(model, value=0.7, latent=0.3)
    z = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    real = torch.rand(2, *IMAGE)
    terms = model.critic_losses(real, z=z, epsilon=torch.tensor([0.2, 0.9]))
    latent = float((0.3 - z).square().mean())
    # D is constant: value term 0, input gradient 0 so the penalty is (0 - 1)^2 = 1.
    assert _f(terms["wasserstein"]) == pytest.approx(0.0, abs=1e-7)
    assert _f(terms["gradient_penalty"]) == pytest.approx(1.0)
    assert _f(terms["latent_mse"]) == pytest.approx(latent, rel=1e-6)
    assert _f(terms["loss"]) == pytest.approx(10 * 1.0 + 200 * latent, rel=1e-6)
    generator = model.generator_losses(2, z=z)
    assert _f(generator["value"]) == pytest.approx(0.7)
    assert _f(generator["loss"]) == pytest.approx(-0.7 + 200 * latent, rel=1e-6)
    assert set(generator) == {"loss", "value", "latent_mse"}


def test_critic_and_generator_losses_by_hand_quantized():
    model = _tiny("qlinfowgan")
    _constant_critic(model, value=-0.4, latent=0.3)
    nearest = float(VALUES[7])  # 0.2778: the code 0.3 is quantized to
    assert abs(nearest - 0.3) < abs(float(VALUES[8]) - 0.3)
    z = VALUES[torch.tensor([[0, 3, 5, 9], [1, 2, 7, 8]])]
    terms = model.critic_losses(torch.rand(2, *IMAGE), z=z, epsilon=torch.tensor([0.5, 0.5]))
    latent = float((nearest - z).square().mean())
    distance = (0.3 - nearest) ** 2
    assert _f(terms["latent_mse"]) == pytest.approx(latent, rel=1e-6)
    assert _f(terms["quantization"]) == pytest.approx(distance, rel=1e-5)
    assert _f(terms["commitment"]) == pytest.approx(distance, rel=1e-5)
    expected = 10 * 1.0 + 200 * latent + 0.01 * distance + 0.01 * distance
    assert _f(terms["loss"]) == pytest.approx(expected, rel=1e-6)
    generator = model.generator_losses(2, z=z)
    assert _f(generator["loss"]) == pytest.approx(0.4 + 200 * latent + 0.02 * distance, rel=1e-6)


def test_forward_serves_evaluation():
    for name, discrete in (("qlinfowgan", True), ("infowgan", False)):
        model = _tiny(name)
        x = torch.rand(3, *IMAGE)
        outputs = model(x)
        assert outputs["x_hat_logits"].shape == (3, *IMAGE)
        representation = model.representation(outputs)
        assert representation.shape == (3, 4) and model.discrete_latents is discrete
        torch.testing.assert_close(model.decode_representation(representation), outputs["x_hat_logits"])
        if discrete:  # quantized values of the latent head, each one of its latent's codebook values
            assert bool(torch.isclose(representation[..., None], VALUES).any(-1).all())
        else:  # the raw latent head
            torch.testing.assert_close(representation, model.encoder(x))


# ---------------------------------------------------------------------------------- graphs and parameters
def test_no_quantizer_in_the_gradient_penalty_graph(monkeypatch):
    model = _tiny("qlinfowgan")
    calls = []
    original = model.quantizer.forward
    monkeypatch.setattr(model.quantizer, "forward", lambda z: calls.append(1) or original(z))
    real, fake = torch.rand(2, *IMAGE), torch.rand(2, *IMAGE)
    penalty = gradient_penalty(model.value, real, fake, torch.tensor([0.3, 0.6]))
    penalty.backward()
    assert calls == []
    assert model.quantizer.values.grad is None and model.encoder.dense[-1].weight.grad is None
    assert model.value_head.weight.grad is not None and model.encoder.conv[0].weight.grad.abs().sum() > 0
    # The whole critic loss differentiates (the quantizer is used on the fakes' latent head, single backward).
    calls.clear()
    model.critic_losses(real).get("loss").backward()
    assert calls == [1]


def test_quantizer_in_a_penalty_graph_would_be_refused():
    # The check above matters: the fused quantizer refuses double backward, so a penalty through it fails.
    model = _tiny("qlinfowgan")
    penalty = gradient_penalty(
        lambda x: model.encode(x)["z_hat"].sum(1), torch.rand(2, *IMAGE), torch.rand(2, *IMAGE), torch.rand(2)
    )
    with pytest.raises(RuntimeError):
        penalty.backward()


def test_each_optimizer_owns_its_players_parameters():
    model = _tiny("qlinfowgan")
    optimizers = model.configure_optimizers(_config())
    assert sorted(optimizers) == ["critic", "generator"]
    owned = {name: {id(p) for g in opt.param_groups for p in g["params"]} for name, opt in optimizers.items()}
    generator = {id(p) for p in [*model.decoder.parameters(), model.quantizer.values]}
    critic = {id(p) for p in [*model.encoder.parameters(), *model.value_head.parameters()]}
    assert owned["generator"] == generator and owned["critic"] == critic
    assert owned["generator"] | owned["critic"] == {id(p) for p in model.parameters()}
    for opt in optimizers.values():
        assert (
            opt.defaults["betas"] == (0.0, 0.9) and opt.defaults["eps"] == 1e-8 and opt.defaults["lr"] == 2e-4
        )
    groups = {(n, g["name"]): g for n, opt in optimizers.items() for g in opt.param_groups}
    no_decay = {id(p) for p in groups["generator", "no_decay"]["params"]}
    assert id(model.quantizer.values) in no_decay and groups["generator", "no_decay"]["weight_decay"] == 0.0
    assert not groups["generator", "no_decay"]["clip"]
    assert groups["critic", "decay"]["weight_decay"] == 1e-3 and groups["critic", "decay"]["clip"]
    assert id(model.value_head.weight) in {id(p) for p in groups["critic", "decay"]["params"]}
    assert id(model.value_head.bias) in {id(p) for p in groups["critic", "no_decay"]["params"]}


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _changed(before, params):
    return any(not torch.equal(b, p.detach()) for b, p in zip(before, params))


def test_critic_every_step_generator_every_fifth_on_its_own_parameters():
    model = _tiny("qlinfowgan")
    config = _config()
    optimizers = model.configure_optimizers(config)
    generator = [*model.decoder.parameters(), model.quantizer.values]
    critic = [*model.encoder.parameters(), *model.value_head.parameters()]
    images = torch.rand(4, *IMAGE)
    generator_steps = []
    for step in range(10):
        before_generator, before_critic = _snapshot(generator), _snapshot(critic)
        logged = model.train_step(images, step, optimizers, config)
        assert _changed(before_critic, critic)
        if _changed(before_generator, generator):
            generator_steps.append(step)
            assert "generator_loss" in logged
        else:
            assert "generator_loss" not in logged
        assert logged["loss"] is logged["critic_loss"] and all(not v.requires_grad for v in logged.values())
    assert generator_steps == [4, 9]
    two = _tiny("infowgan", generator_period=2)
    optimizers = two.configure_optimizers(config)
    steps = [s for s in range(6) if "generator_loss" in two.train_step(images, s, optimizers, config)]
    assert steps == [1, 3, 5]


def test_a_players_backward_leaves_the_other_players_gradients_alone():
    model = _tiny("qlinfowgan")
    config = _config()
    optimizers = model.configure_optimizers(config)
    images = torch.rand(4, *IMAGE)
    model.train_step(images, 0, optimizers, config)  # critic only
    assert all(p.grad is None for p in [*model.decoder.parameters(), model.quantizer.values])
    assert model.value_head.weight.grad is not None
    critic_grads = [p.grad.clone() for p in model.critic_parameters()]
    # A generator step alone (as train_step takes it) must not add to the critic's gradients.
    torch.manual_seed(3)
    model.generator_losses(4)["loss"].backward(inputs=list(optimizers["generator"].param_groups[0]["params"]))
    for before, p in zip(critic_grads, model.critic_parameters()):
        assert torch.equal(before, p.grad)
    model.train_step(images, 4, optimizers, config)  # critic, then generator
    assert model.quantizer.values.grad is not None and model.decoder.output.weight.grad is not None


def test_codebook_learns_through_the_prior():
    # Without the quantization / commitment terms the codebook is reached only through the prior draw.
    model = _tiny("qlinfowgan", quantization_weight=0.0, commitment_weight=0.0)
    torch.manual_seed(1)
    model.generator_losses(16)["loss"].backward()
    grad = model.quantizer.values.grad
    assert grad is not None and grad.abs().sum() > 0
    # A detached draw sends it nothing.
    model.zero_grad(set_to_none=True)
    z = model.sample_prior(16, differentiable=False)
    model.generator_losses(16, z=z)["loss"].backward()
    assert model.quantizer.values.grad is None or float(model.quantizer.values.grad.abs().sum()) == 0.0


def test_prior_draws():
    model = _tiny("qlinfowgan")
    z = model.sample_prior(200, generator=torch.Generator().manual_seed(0))
    assert z.shape == (200, 4) and bool(torch.isclose(z[..., None], VALUES).any(-1).all())
    assert len(torch.unique(z[:, 0])) == 10  # uniform over all ten values
    info = _tiny("infowgan").sample_prior(500, generator=torch.Generator().manual_seed(0))
    assert info.shape == (500, 4) and float(info.min()) >= 0.0 and float(info.max()) <= 1.0
    assert abs(float(info.mean()) - 0.5) < 0.05


# ---------------------------------------------------------------------------------------- short trainings
@pytest.fixture(scope="module")
def shapes3d_images():
    from latentquant.data import get_dataset

    dataset = get_dataset("shapes3d")
    return dataset.images_for(dataset.sample_factors(64, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("name", ["qlinfowgan", "infowgan", "wgan"])
def test_short_training_lowers_latent_regression_and_stays_finite(name, shapes3d_images):
    model = _tiny(name)
    config = _config(lr=1e-3)
    optimizers = model.configure_optimizers(config)
    generator = torch.Generator().manual_seed(0)
    history = []
    for step in range(60):
        batch = shapes3d_images[torch.randint(0, 64, (16,), generator=generator)]
        logged = model.train_step(batch, step, optimizers, config)
        assert all(math.isfinite(float(v)) for v in logged.values()), (step, logged)
        history.append(float(logged["latent_mse"]))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if model.latent_weight > 0:
        first, last = sum(history[:10]) / 10, sum(history[-10:]) / 10
        assert last < 0.5 * first, (first, last)


# -------------------------------------------------------------------------------------- registry / config
def test_registry_holds_the_authors_recipe():
    assert set(GANS) <= set(MODELS)
    assert default_weight_decay("qlinfowgan", "shapes3d") == 1e-3
    assert default_weight_decay("qlinfowgan", "mpi3d") == 1e-3
    assert default_weight_decay("qlinfowgan", "isaac3d") == 1e-3
    assert default_weight_decay("qlinfowgan", "falcor3d") == 1e-4
    assert default_weight_decay("qlinfowgan_no_wd", "shapes3d") == 0.0
    assert default_weight_decay("infowgan", "shapes3d") == 1e-4
    assert default_weight_decay("wgan", "shapes3d") == 0.0
    assert isinstance(_tiny("qlinfowgan"), QLInfoWGANGP) and type(_tiny("infowgan")) is InfoWGANGP
    assert _tiny("wgan").latent_weight == 0.0 and _tiny("infowgan").latent_weight == 200.0
    model = _tiny("qlinfowgan")
    assert model.quantizer.num_values == [10] * 4
    assert (model.gradient_penalty_weight, model.generator_period, model.betas) == (10.0, 5, (0.0, 0.9))
    config = resolve_config({"model": "qlinfowgan"}, num_factors=6)
    assert (config.lr, config.batch_size, config.steps, config.weight_decay) == (2e-4, 64, 100_000, 1e-3)
    assert config.num_latents == 12
    config = resolve_config({"model": "infowgan", "lr": 1e-3, "batch_size": 8, "steps": 10})
    assert (config.lr, config.batch_size, config.steps) == (1e-3, 8, 10)
    assert resolve_config({"model": "qlae"}).lr == 1e-3  # the autoencoders keep theirs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latent_weight": -1.0}, "latent_weight must be a number >= 0"),
        ({"gradient_penalty_weight": float("nan")}, "gradient_penalty_weight must be a number >= 0"),
        ({"generator_period": 0}, "generator_period must be an int >= 1"),
        ({"generator_period": 2.5}, "generator_period must be an int >= 1"),
        ({"beta1": 1.0}, r"beta1 must be in \[0, 1\)"),
        ({"num_values": 0}, "every latent needs at least"),
        ({"gamma": 1.0}, "has no hyperparameter"),
    ],
)
def test_bad_arguments_give_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _tiny("qlinfowgan", **kwargs)


def test_bad_calls_give_clear_errors():
    model = _tiny("infowgan")
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        model.sample_prior(-1)
    with pytest.raises(ValueError, match=r"epsilon must have shape \(2,\)"):
        gradient_penalty(model.value, torch.rand(2, *IMAGE), torch.rand(2, *IMAGE), torch.rand(3))
    with pytest.raises(ValueError, match="differ in shape"):
        gradient_penalty(model.value, torch.rand(2, *IMAGE), torch.rand(3, *IMAGE), torch.rand(2))
    with pytest.raises(ValueError, match=r"optimizers \['generator'\] missing"):
        model.train_step(
            torch.rand(2, *IMAGE), 0, {"critic": torch.optim.SGD(model.parameters(), 0.1)}, _config()
        )
    with pytest.raises(ValueError, match="lr must be > 0"):
        model.configure_optimizers(_config(lr=0.0))


# ------------------------------------------------------------------------------------- runs through the CLI
TINY_GAN = {
    "model": "qlinfowgan",
    "dataset": "shapes3d",
    "steps": 10,
    "batch_size": 8,
    "encoder": "tiny",
    "decoder": "tiny",
    "num_latents": 4,
    "eval_samples": 300,
    "eval_every": 0,
    "log_every": 5,
    "checkpoint_every": 5,
    "device": "cpu",
    "amp": False,
    "num_threads": 1,
    "deterministic": True,
}


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gan") / "full"
    seen: dict[int, dict[str, float]] = {}
    result = train(TINY_GAN, out, on_step=lambda step, losses: seen.__setitem__(step, losses), progress=False)
    return out, result, seen


def test_gan_run_writes_metrics_report_and_both_players(gan_run):
    out, result, seen = gan_run
    assert not result.interrupted and result.step == 10
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "qlinfowgan" and 0.0 <= metrics["infom"] <= 1.0 and metrics["psnr"] > 0
    checkpoint = load_checkpoint(out / CHECKPOINT_NAME)
    assert sorted(checkpoint.optimizer_states) == ["critic", "generator"]
    assert "quantizer.values" in checkpoint.model_state and "value_head.weight" in checkpoint.model_state
    train_records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["losses"] for r in train_records if r["kind"] == "train"]
    assert len(losses) == 2 and all("generator_loss" in r and "wasserstein" in r for r in losses)
    # Each term is logged as its mean over the steps that returned it: the critic's over steps 1-5, the
    # generator's over its one step (5) in that window.
    assert [sorted(seen[s]).count("generator_loss") for s in range(1, 11)] == [0, 0, 0, 0, 1] * 2
    assert losses[0]["generator_loss"] == pytest.approx(seen[5]["generator_loss"], rel=1e-9)
    critic = sum(seen[s]["critic_loss"] for s in range(1, 6)) / 5
    assert losses[0]["critic_loss"] == pytest.approx(critic, rel=1e-9)
    text = (out / "report.html").read_text()
    for name in ("samples", "prior_traversals", "gan_curves", "reconstructions", "nmi"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f'alt="{name}"' in text


def test_gan_resume_after_interrupt_is_bit_identical(gan_run, tmp_path):
    full = gan_run[0]

    def interrupt_at_seven(step, losses):
        if step == 7:  # between generator steps 5 and 10
            os.kill(os.getpid(), signal.SIGINT)

    part = tmp_path / "part"
    first = train(TINY_GAN, part, on_step=interrupt_at_seven, progress=False)
    assert first.interrupted and first.step == 7
    second = train({}, part, resume=True, progress=False)
    assert not second.interrupted and second.step == 10
    expected, actual = load_checkpoint(full / CHECKPOINT_NAME), load_checkpoint(part / CHECKPOINT_NAME)
    for key, value in expected.model_state.items():
        torch.testing.assert_close(actual.model_state[key], value, rtol=0, atol=0, msg=key)
    for name in ("critic", "generator"):
        for index, state in expected.optimizer_states[name]["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(
                    actual.optimizer_states[name]["state"][index][key], value, rtol=0, atol=0
                )


def test_evaluate_command_on_a_gan_run(gan_run, capsys):
    out = gan_run[0]
    before = json.loads((out / "metrics.json").read_text())
    assert main(["evaluate", str(out), "--samples", "200"]) == 0
    after = json.loads((out / "metrics.json").read_text())
    assert after["eval_samples"] == 200 and after["model"] == "qlinfowgan"
    assert after["steps"] == before["steps"] and "infom" in after
    assert "qlinfowgan on shapes3d" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model_args.generator_period=0", "generator_period must be an int >= 1"),
        ("model_args.beta2=1.5", r"beta2 must be in \[0, 1\)"),
        ("model_args.latent_weight=-3", "latent_weight must be a number >= 0"),
        ("model_args.beta=3", "has no argument"),
    ],
)
def test_cli_refuses_bad_gan_arguments_with_exit_2(override, message, tmp_path, capsys):
    argv = ["train", "--model", "qlinfowgan", "--out", str(tmp_path / "run"), "--no-progress", override]
    argv += ["encoder=tiny", "decoder=tiny", "steps=2", "eval_samples=200", "device=cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()
