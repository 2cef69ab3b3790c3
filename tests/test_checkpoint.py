"""Checkpoint integrity and identity: digests of the tensor bytes, the configuration and the metadata;
validated step, random-generator and optimizer states (refused at load, not at the first step); named
optimizers; reading format version 1."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save as safetensors_save

from latentquant.train import build_optimizer
from latentquant.train.checkpoint import (
    Checkpoint,
    load_checkpoint,
    restore_optimizers,
    restore_rng,
    save_checkpoint,
)
from latentquant.zoo import build_model

CONFIG = {"model": "qlae", "seed": 0, "steps": 10, "batch_size": 8}


def _trained_state():
    model = build_model("qlae", 4, (3, 64, 64), encoder="tiny", decoder="tiny")
    optimizer = build_optimizer(model, 1e-3, 0.1)
    x = torch.rand(2, 3, 64, 64)
    model.losses(x, model(x))["loss"].backward()
    optimizer.step()
    return model, optimizer


def _checkpoint(model, optimizer, step=3, **changes):
    fields = {
        "step": step,
        "model_state": model.state_dict(),
        "optimizer_states": {"model": optimizer.state_dict()},
        "rng": {"torch": torch.get_rng_state(), "data": torch.Generator().manual_seed(1).get_state()},
        "extra": {"model": "qlae"},
        "config": dict(CONFIG),
    }
    fields.update(changes)
    return Checkpoint(**fields)


@pytest.fixture
def saved(tmp_path):
    model, optimizer = _trained_state()
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, _checkpoint(model, optimizer))
    return path, model, optimizer


def _header(path):
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def _rewrite_metadata(path, **changes):
    """Edit metadata fields in place, keeping the tensor bytes (as a hand edit of the header would)."""
    header, body = _header(path)
    header["__metadata__"].update(changes)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def test_round_trip_keeps_config_and_verifies(saved):
    path, model, _ = saved
    loaded = load_checkpoint(path)
    assert loaded.step == 3 and loaded.config == CONFIG and loaded.extra == {"model": "qlae"}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.model_state[key], value, rtol=0, atol=0)
    header, _ = _header(path)
    metadata = header["__metadata__"]
    assert len(metadata["tensors_sha256"]) == 64 and len(metadata["config_sha256"]) == 64
    assert json.loads(metadata["config"]) == CONFIG


def test_zeroed_bytes_in_tensor_data_are_detected(saved):
    path = saved[0]
    header, body = _header(path)
    data = bytearray(path.read_bytes())
    # the first 16 non-zero bytes from the middle of the tensor data on (zero-initialized tensors, such as
    # instance-norm shifts, can sit at the middle)
    middle = len(data) - len(body) + len(body) // 2
    start = next(s for s in range(middle, len(data) - 16, 16) if any(data[s : s + 16]))
    data[start : start + 16] = bytes(16)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint.safetensors.*tensors_sha256"):
        load_checkpoint(path)


def test_flipped_bytes_are_detected(saved):
    path = saved[0]
    _, body = _header(path)
    data = bytearray(path.read_bytes())
    start = len(data) - len(body) + 100
    for i in range(start, start + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="tensors_sha256"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"step": "-50"}, r"field 'step' must be >= 0, got -50"),
        ({"step": "ten"}, r"field 'step' must be an integer"),
        ({"step": "150"}, "metadata_sha256"),
        ({"config": json.dumps({**CONFIG, "seed": 1})}, "metadata_sha256"),
        ({"extra": "{not json"}, r"field 'extra' is not valid JSON"),
        ({"tensors_sha256": "0" * 64}, "metadata_sha256"),
    ],
)
def test_tampered_metadata_is_refused_naming_the_field(saved, changes, message):
    path = saved[0]
    _rewrite_metadata(path, **changes)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


def test_save_refuses_a_negative_step(saved, tmp_path):
    _, model, optimizer = saved
    with pytest.raises(ValueError, match="step must be >= 0"):
        save_checkpoint(tmp_path / "x.safetensors", _checkpoint(model, optimizer, step=-1))


def test_stored_model_name_must_match_the_config(saved, tmp_path):
    _, model, optimizer = saved
    path = tmp_path / "other.safetensors"
    save_checkpoint(path, _checkpoint(model, optimizer, extra={"model": "ae"}))
    with pytest.raises(ValueError, match=r"field 'model' 'ae' differs from its configuration's 'qlae'"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("rng", "message"),
    [
        ({"torch": torch.get_rng_state()}, r"field 'rng.data' .* is missing"),
        (
            {"torch": torch.get_rng_state(), "data": torch.zeros(7, dtype=torch.uint8)},
            r"field 'rng.data' is not a valid generator state",
        ),
        (
            {"torch": torch.get_rng_state().float(), "data": torch.get_rng_state()},
            r"field 'rng.torch' is not a valid generator state",
        ),
    ],
)
def test_damaged_rng_state_is_a_value_error_at_restore(rng, message):
    before = torch.get_rng_state()
    with pytest.raises(ValueError, match=message):
        restore_rng(rng, torch.Generator(), torch.device("cpu"), "ckpt")
    assert torch.equal(torch.get_rng_state(), before)  # nothing was half-restored


def _optimizer_state_with(optimizer, edit):
    state = optimizer.state_dict()
    state = {"state": {i: dict(s) for i, s in state["state"].items()}, "param_groups": state["param_groups"]}
    edit(state["state"])
    return state


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s[0].update(exp_avg=torch.zeros(3)), r"parameter 0 entry 'exp_avg' has shape \(3,\)"),
        (lambda s: s[1].pop("exp_avg_sq"), r"parameter 1 has state entries \['exp_avg', 'step'\], expected"),
        (lambda s: s[0].update(step=torch.zeros(2)), r"entry 'step' must be a scalar"),
        (lambda s: s[0].update(exp_avg=s[0]["exp_avg"] * float("nan")), "NaN or Inf"),
        (lambda s: s.update({999: dict(s[0])}), "no parameter group lists"),
    ],
)
def test_damaged_optimizer_state_is_refused_before_any_step(edit, message):
    model, optimizer = _trained_state()
    state = _optimizer_state_with(optimizer, edit)
    fresh = build_optimizer(model, 1e-3, 0.1)
    with pytest.raises(ValueError, match=message):
        restore_optimizers({"model": fresh}, {"model": state}, "ckpt")


def test_damaged_optimizer_state_in_a_file_is_refused_at_load(saved, tmp_path):
    _, model, optimizer = saved
    path = tmp_path / "bad.safetensors"
    state = _optimizer_state_with(optimizer, lambda s: s[0].update(exp_avg=torch.zeros(5, 5)))
    save_checkpoint(path, _checkpoint(model, optimizer, optimizer_states={"model": state}))
    loaded = load_checkpoint(path)
    with pytest.raises(ValueError, match=r"bad.safetensors: optimizer 'model': parameter 0 entry 'exp_avg'"):
        restore_optimizers({"model": build_optimizer(model, 1e-3, 0.1)}, loaded.optimizer_states, path)


def test_version_1_checkpoints_are_still_read(tmp_path):
    model, optimizer = _trained_state()
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    for index, entries in state["state"].items():
        for key, value in entries.items():
            tensors[f"optimizer.{index}.{key}"] = value.contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {
        "format": "latentquant-checkpoint",
        "version": "1",
        "step": "4",
        "optimizer_param_groups": json.dumps(state["param_groups"]),
        "extra": json.dumps({"model": "qlae"}),
    }
    path = tmp_path / "v1.safetensors"
    path.write_bytes(safetensors_save(tensors, metadata=metadata))
    loaded = load_checkpoint(path)
    assert loaded.step == 4 and loaded.config is None and list(loaded.optimizer_states) == ["model"]
    fresh = build_optimizer(model, 1e-3, 0.1)
    restore_optimizers({"model": fresh}, loaded.optimizer_states, path)
    torch.testing.assert_close(
        fresh.state_dict()["state"][0]["exp_avg"], state["state"][0]["exp_avg"], rtol=0, atol=0
    )
