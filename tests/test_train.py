"""Training: optimizer groups and clipping, configuration, checkpoints (atomic, corrupt, incompatible),
resume equivalence, Ctrl-C, the report files and the CLI's errors."""

from __future__ import annotations

import json
import os
import signal
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import yaml
from train_utils import tiny_run

from latentquant.cli import main
from latentquant.train import build_optimizer, clip_gradients, param_groups
from latentquant.train.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    load_checkpoint,
    restore_optimizers,
    save_checkpoint,
)
from latentquant.train.config import parse_overrides, resolve_config
from latentquant.train.loop import train
from latentquant.zoo import AE, build_model

TINY = tiny_run(steps=6, eval_samples=300)


# ------------------------------------------------------------------------------------------ optimizer
def test_param_groups_split_biases_and_codebooks_from_everything_else():
    # As the authors: only biases (normalization shifts included) and codebooks escape decay and clipping.
    model = build_model("qlae", 4, (3, 64, 64), encoder="tiny", decoder="tiny")
    groups = {g["name"]: g for g in param_groups(model, 0.1)}
    decay = {id(p) for p in groups["decay"]["params"]}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert groups["decay"]["clip"] is True and groups["no_decay"]["clip"] is False
    assert decay.isdisjoint(no_decay) and decay | no_decay == set(names)
    assert id(model.quantizer.values) in no_decay
    norm_scales = {
        id(m.weight) for m in model.modules() if isinstance(m, torch.nn.InstanceNorm2d) and m.affine
    }
    assert norm_scales and norm_scales <= decay
    assert all(names[i].endswith(".bias") or names[i].startswith("quantizer.") for i in no_decay)
    assert all(names[i].endswith(".weight") or names[i].endswith("input_map") for i in decay)
    assert id(model.decoder.input_map) in decay


def test_clipping_touches_only_the_decayed_group():
    model = build_model("qlae", 4, (3, 64, 64), encoder="tiny", decoder="tiny")
    optimizer = build_optimizer(model, 1e-3, 0.1)
    for p in model.parameters():
        p.grad = torch.full_like(p, 5.0)
    clip_gradients(optimizer, 1.0)
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert torch.all(p.grad == (1.0 if group["clip"] else 5.0))


def test_adamw_decays_weights_but_not_codebooks():
    model = build_model("qlae", 4, (3, 64, 64), encoder="tiny", decoder="tiny")
    optimizer = build_optimizer(model, 0.1, 0.5)
    weight = model.decoder.output.weight
    before_w, before_v = weight.detach().clone(), model.quantizer.values.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), before_w * (1 - 0.1 * 0.5))
    torch.testing.assert_close(model.quantizer.values.detach(), before_v)


# ------------------------------------------------------------------------------------------ config
def test_resolve_config_fills_paper_defaults():
    qlae = resolve_config({"model": "qlae"}, num_factors=6)
    assert qlae.weight_decay == 0.1 and qlae.num_latents == 12 and qlae.lr == 1e-3 and qlae.batch_size == 128
    assert qlae.model_args == {
        "num_values": 10,
        "quantization_weight": 0.01,
        "commitment_weight": 0.01,
        "global_codebook": False,
    }
    assert resolve_config({"model": "qlae", "dataset": "mpi3d"}).weight_decay == 0.001
    assert resolve_config({"model": "bioae"}).weight_decay == 1e-4
    assert resolve_config({"model": "beta_vae", "dataset": "mpi3d"}).model_args == {"beta": 0.1}
    assert resolve_config({"model": "beta_tcvae", "dataset": "mpi3d"}).model_args["beta"] == 0.3
    assert resolve_config({"model": "qlae_global"}).model_args["global_codebook"] is True
    assert resolve_config({"model": "vqvae"}).model_args["codebook_size"] == 512


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"stepz": 3}, "unknown setting"),
        ({"steps": "many"}, "'steps' must be an integer"),
        ({"steps": 0}, "'steps' must be >= 1"),
        ({"lr": -1.0}, "'lr' must be > 0"),
        ({"amp": "yes"}, "'amp' must be true or false"),
        ({"model": "gan"}, "unknown model 'gan'"),
        ({"encoder": "huge"}, "unknown encoder"),
        ({"model": "ae", "model_args": {"beta": 2}}, "has no argument"),
        ({"infomec_convention": "x"}, "infomec_convention"),
    ],
)
def test_resolve_config_errors_name_the_setting(settings, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(settings)


def test_parse_overrides():
    assert parse_overrides(["steps=10", "lr=3e-4", "model_args.beta=4", "data_path=null"]) == {
        "steps": 10,
        "lr": 3e-4,
        "model_args": {"beta": 4},
        "data_path": None,
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["steps"])
    with pytest.raises(ValueError, match="unknown setting .encoder.width."):
        parse_overrides(["encoder.width=3"])


# ------------------------------------------------------------------------------------------ checkpoints
def _small_checkpoint(step: int) -> Checkpoint:
    return Checkpoint(step, {"w": torch.full((2, 2), float(step))}, {}, {"torch": torch.get_rng_state()}, {})


def test_checkpoint_round_trip(tmp_path):
    model = build_model("qlae", 4, (3, 64, 64), encoder="tiny", decoder="tiny")
    optimizer = build_optimizer(model, 1e-3, 0.1)
    x = torch.rand(2, 3, 64, 64)
    model.losses(x, model(x))["loss"].backward()
    optimizer.step()
    save_checkpoint(
        tmp_path / "c.safetensors",
        Checkpoint(7, model.state_dict(), {"model": optimizer.state_dict()}, {}, {"a": 1}),
    )
    loaded = load_checkpoint(tmp_path / "c.safetensors")
    assert loaded.step == 7 and loaded.extra == {"a": 1} and list(loaded.optimizer_states) == ["model"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.model_state[key], value, rtol=0, atol=0)
    fresh = build_optimizer(model, 1e-3, 0.1)
    restore_optimizers({"model": fresh}, loaded.optimizer_states, tmp_path / "c.safetensors")
    state = optimizer.state_dict()["state"]
    for index, entries in fresh.state_dict()["state"].items():
        for name, value in entries.items():
            torch.testing.assert_close(value, state[index][name], rtol=0, atol=0)


def test_crash_during_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, _small_checkpoint(1))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _small_checkpoint(2))
    monkeypatch.undo()
    assert load_checkpoint(path).step == 1
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]  # no temporary file left behind


def test_corrupt_and_foreign_checkpoints_give_clear_errors(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, _small_checkpoint(3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(path)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="not a latentquant training checkpoint"):
        load_checkpoint(path)
    header = json.dumps({"__metadata__": {"format": "latentquant-checkpoint", "version": "99"}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ValueError, match="format version '99'"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------------ training runs
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    result = train(TINY, out, progress=False)
    return out, result


def _weights(out: Path) -> dict[str, torch.Tensor]:
    checkpoint = load_checkpoint(out / CHECKPOINT_NAME)
    return {**checkpoint.model_state, **{f"opt.{k}": v for k, v in _flat_optimizer(checkpoint).items()}}


def _flat_optimizer(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{i}.{n}": v
        for name, state in checkpoint.optimizer_states.items()
        for i, s in state["state"].items()
        for n, v in s.items()
    }


def test_run_directory_contents(finished_run):
    out, result = finished_run
    assert not result.interrupted and result.step == 6
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("infom", "infoe", "infoc", "psnr", "steps", "model", "dataset"):
        assert key in metrics
    assert metrics["steps"] == 6 and metrics["model"] == "qlae" and metrics["dataset"] == "shapes3d"
    assert 0.0 <= metrics["infom"] <= 1.0 and metrics["psnr"] > 0
    assert len(metrics["nmi"]) == 6 and len(metrics["nmi"][0]) == 12 and len(metrics["active_latents"]) == 12
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["weight_decay"] == 0.1 and config["num_latents"] == 12
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6]
    assert records[-1]["kind"] == "eval" and records[-1]["metrics"]["eval_samples"] == 300


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))


def test_report_files_are_valid_png_and_html(finished_run):
    import base64

    import matplotlib.image

    out, result = finished_run
    for name in ("reconstructions", "traversals", "nmi", "losses"):
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(out / f"{name}.png")
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
        assert float(image[..., :3].std()) > 0.01  # not blank
    text = (out / "report.html").read_text()
    assert result.report == out / "report.html"
    parser = _Collector()
    parser.feed(text)
    assert parser.tags[0] == "html" and "table" in parser.tags
    assert sorted(img["alt"] for img in parser.images) == ["losses", "nmi", "reconstructions", "traversals"]
    for img in parser.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert base64.b64decode(img["src"][len(prefix) :])[:4] == b"\x89PNG"
    assert "infom" in text and "psnr" in text


def test_resume_after_interrupt_gives_the_uninterrupted_result(finished_run, tmp_path, capsys):
    full, _ = finished_run

    def interrupt_at_three(step, losses):
        if step == 3:  # a real Ctrl-C: the handler asks the loop to stop after this step
            os.kill(os.getpid(), signal.SIGINT)

    part = tmp_path / "part"
    first = train(TINY, part, on_step=interrupt_at_three, progress=False)
    assert first.interrupted and first.step == 3
    assert "Resume with: latentquant train --resume" in capsys.readouterr().err
    assert load_checkpoint(part / CHECKPOINT_NAME).step == 3
    second = train({}, part, resume=True, progress=False)
    assert not second.interrupted and second.step == 6
    expected, actual = _weights(full), _weights(part)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)
    steps = [json.loads(line)["step"] for line in (part / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 6]  # records past the checkpoint were dropped on resume; one final eval


def test_resume_can_extend_steps_but_not_change_the_model(finished_run, tmp_path):
    full, _ = finished_run
    with pytest.raises(ValueError, match=r"cannot change \['lr'\]"):
        train({"lr": 0.5}, full, resume=True, progress=False)
    with pytest.raises(ValueError, match="already holds a training run"):
        train(TINY, full, progress=False)


def test_evaluate_command_rewrites_metrics(finished_run, capsys):
    out, _ = finished_run
    assert main(["evaluate", str(out), "--samples", "200"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_samples"] == 200 and metrics["steps"] == 6
    assert f"Report: {out / 'report.html'}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ CLI errors
def _run_cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--model", "qlae"], "give --out DIR"),
        (["train", "--out", "{tmp}/a", "--model", "gan"], "unknown model 'gan'"),
        (["train", "--out", "{tmp}/a", "stepz=3"], "unknown setting"),
        (["train", "--out", "{tmp}/a", "steps"], "not of the form key=value"),
        (["train", "--out", "{tmp}/a", "--config", "{tmp}/missing.yaml"], "does not exist"),
        (["train", "--out", "{tmp}/a", "--config", "{tmp}/bad.yaml"], "not valid YAML"),
        (["train", "--out", "{tmp}/a", "--config", "{tmp}/list.yaml"], "must hold a mapping"),
        (["train", "--resume", "{tmp}/nothing"], "does not exist"),
        (["train", "--resume", "{tmp}/corrupt"], "corrupt"),
        (["evaluate", "{tmp}/nothing"], "does not exist"),
        (["evaluate", "{tmp}/corrupt"], "corrupt"),
        (["evaluate", "{tmp}/config_only"], "not a training run directory"),
        (["train", "--out", "{tmp}/a", "--steps", "abc"], "invalid int value"),
    ],
)
def test_cli_errors_exit_2_with_a_clear_message(argv, message, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    for name in ("corrupt", "config_only"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump({**TINY}))
    (tmp_path / "corrupt" / CHECKPOINT_NAME).write_bytes(b"\x00" * 100)
    code, err = _run_cli([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 2
    assert message in err


def test_overwrite_replaces_only_the_run_files(tmp_path):
    from latentquant.train.loop import _prepare_settings

    for name in (
        "config.yaml",
        CHECKPOINT_NAME,
        "report.html",
        "nmi.png",
        "samples.png",
        "train.csv",
        "notes.txt",
    ):
        (tmp_path / name).write_text("x")
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out.tfevents.1").write_text("x")
    with pytest.raises(ValueError, match="overwrite=true"):
        _prepare_settings({}, tmp_path, resume=False)
    _prepare_settings({"overwrite": True}, tmp_path, resume=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------------------------------ model interface
class _TwoOptimizerAE(AE):
    """An AE whose encoder and decoder have their own optimizers, the decoder stepped every 2nd step (the
    shape of the GANs' critic/generator schedule), to check the loop knows no model family."""

    def configure_optimizers(self, config):
        return {
            "encoder": torch.optim.AdamW(self.encoder.parameters(), lr=config.lr, weight_decay=0.1),
            "decoder": torch.optim.Adam(self.decoder.parameters(), lr=config.lr / 2),
        }

    def train_step(self, images, step, optimizers, config, forward=None):
        losses = self.losses(images, (forward or self)(images))
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizers["encoder"].step()
        if step % 2 == 0:
            optimizers["decoder"].step()
        return {"loss": losses["loss"].detach(), "decoder_steps": torch.tensor(float(step // 2 + 1))}


@pytest.fixture
def two_optimizer_model(monkeypatch):
    import latentquant.train.loop as loop

    def make(config, dataset):
        return _TwoOptimizerAE(int(config.num_latents), tuple(dataset.image_shape), "tiny", "tiny")

    monkeypatch.setattr(loop, "make_model", make)


def test_loop_checkpoints_every_named_optimizer_and_resumes_exactly(two_optimizer_model, tmp_path):
    settings = {**TINY, "model": "ae", "steps": 5}
    full = train(settings, tmp_path / "full", progress=False)
    assert full.step == 5
    checkpoint = load_checkpoint(tmp_path / "full" / CHECKPOINT_NAME)
    assert sorted(checkpoint.optimizer_states) == ["decoder", "encoder"]
    decoder_steps = {float(s["step"]) for s in checkpoint.optimizer_states["decoder"]["state"].values()}
    encoder_steps = {float(s["step"]) for s in checkpoint.optimizer_states["encoder"]["state"].values()}
    assert decoder_steps == {3.0} and encoder_steps == {5.0}  # decoder stepped at steps 0, 2, 4
    assert checkpoint.optimizer_states["decoder"]["param_groups"][0]["lr"] == settings.get("lr", 1e-3) / 2

    def interrupt_at_three(step, losses):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    part = tmp_path / "part"
    assert train(settings, part, on_step=interrupt_at_three, progress=False).interrupted
    train({}, part, resume=True, progress=False)
    expected, actual = _weights(tmp_path / "full"), _weights(part)
    assert expected.keys() == actual.keys() and any(k.startswith("opt.decoder.") for k in expected)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)


def test_restore_optimizers_names_missing_and_unexpected_optimizers(tmp_path):
    model = build_model("ae", 4, (3, 64, 64), encoder="tiny", decoder="tiny")
    state = {"model": build_optimizer(model, 1e-3, 0.1).state_dict()}
    with pytest.raises(
        ValueError, match=r"c.safetensors stores optimizer states \['model'\].*missing: \['critic'"
    ):
        restore_optimizers(
            {"model": build_optimizer(model, 1e-3, 0.1), "critic": build_optimizer(model, 1e-3, 0.1)},
            state,
            "c.safetensors",
        )
    with pytest.raises(ValueError, match=r"unexpected: \['model'\]"):
        restore_optimizers({"generator": build_optimizer(model, 1e-3, 0.1)}, state, "c.safetensors")
    with pytest.raises(ValueError, match="has no optimizer state"):
        restore_optimizers({"model": build_optimizer(model, 1e-3, 0.1)}, {}, "c.safetensors")


def test_autoencoder_train_step_returns_detached_losses_and_steps_the_optimizer():
    config = resolve_config({**TINY}, num_factors=2)
    model = build_model("qlae", 4, (3, 64, 64), encoder="tiny", decoder="tiny")
    optimizers = model.configure_optimizers(config)
    assert list(optimizers) == ["model"] and isinstance(optimizers["model"], torch.optim.AdamW)
    before = model.decoder.output.weight.detach().clone()
    losses = model.train_step(torch.rand(4, 3, 64, 64), 0, optimizers, config)
    assert {"loss", "binary_cross_entropy", "quantization"} <= set(losses)
    assert all(v.ndim == 0 and not v.requires_grad for v in losses.values())
    assert not torch.equal(model.decoder.output.weight.detach(), before)
