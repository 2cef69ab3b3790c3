"""The ``compile`` setting (issue 14, item 2): off / model / decoder, booleans as the older spelling, and the
decoder mode's promise — the decoder under torch.compile computes the step's gradients to float32 precision —
plus a short run with it: the checkpoint keeps the model's own state-dict keys, evaluation runs eagerly and
the run resumes."""

from __future__ import annotations

import copy

import pytest
import torch
from run_settings import TINY_RUN

from latentquant.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from latentquant.train.config import COMPILE_MODES, compile_mode, resolve_config
from latentquant.train.loop import compile_for_training, eager, train
from latentquant.zoo import QLAE


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        (True, "model"),
        (False, "off"),
        ("true", "model"),
        ("False", "off"),
        ("decoder", "decoder"),
        ("off", "off"),
    ],
)
def test_compile_mode_accepts_modes_and_booleans(value, mode):
    assert compile_mode(value) == mode
    assert resolve_config({"compile": value}).compile == mode


@pytest.mark.parametrize("value", ["maybe", "", 1, None, ["decoder"]])
def test_compile_mode_rejects_other_values(value):
    with pytest.raises(ValueError, match="compile"):
        resolve_config({"compile": value})


def test_default_is_off():
    assert resolve_config({}).compile == "off" and "off" in COMPILE_MODES


def _gradients(model: QLAE, forward, images: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = model.losses(images, forward(images))["loss"]
    loss.backward()
    return [p.grad.to(torch.float64) for p in model.parameters()]


def test_decoder_mode_gradients_match_eager_to_float32_precision():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 64, 64)
    eager_model = QLAE(num_latents=6, image_shape=(3, 64, 64), encoder="tiny", decoder="tiny")
    compiled_model = copy.deepcopy(eager_model)
    forward = compile_for_training(compiled_model, compiled_model, "decoder")
    assert forward is compiled_model  # the model's forward is untouched, its decoder compiled in place
    want = _gradients(eager_model, eager_model, images)
    got = _gradients(compiled_model, forward, images)
    float64 = copy.deepcopy(eager_model).double()
    exact = _gradients(float64, float64, images.double())
    for (name, _), g, w, e in zip(eager_model.named_parameters(), got, want, exact):
        scale = e.norm()
        if scale == 0:
            continue
        # eager float32 is within ~1e-5 of float64 here; the compiled decoder must be as close
        assert (w - e).norm() / scale < 1e-4, name
        assert (g - e).norm() / scale < 1e-4, name
    assert compiled_model.state_dict().keys() == eager_model.state_dict().keys()


def test_eager_context_runs_a_compiled_decoder_without_compiling():
    torch.manual_seed(0)
    model = QLAE(num_latents=6, image_shape=(3, 64, 64), encoder="tiny", decoder="tiny")
    compile_for_training(model, model, "decoder")
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    with eager(), torch.no_grad():
        model.decoder(torch.rand(3, 6))
    assert not counters["stats"]["unique_graphs"]


def test_a_run_with_the_compiled_decoder_checkpoints_evaluates_and_resumes(tmp_path):
    settings = {
        key: value for key, value in (item.split("=", 1) for item in TINY_RUN) if key != "checkpoint_every"
    }
    settings.update(
        {"model": "qlae", "steps": 3, "compile": "decoder", "batch_size": 4, "checkpoint_every": 1}
    )
    out = tmp_path / "run"
    first = train(settings, out, progress=False)
    assert first.step == 3 and first.metrics is not None
    assert first.metrics["provenance"]["compile"] == "decoder"  # it decides the numbers, as the threads do
    checkpoint = load_checkpoint(out / CHECKPOINT_NAME)
    assert not any("_orig_mod" in key for key in checkpoint.model_state)
    assert checkpoint.config["compile"] == "decoder"
    second = train({"steps": 5}, out, resume=True, progress=False)
    assert second.step == 5 and second.metrics is not None
