"""Checkpoints: one safetensors file per run holding the model weights, every optimizer's state (under the
name the model gave it), the random number generator states and the step, with JSON metadata: the resolved
configuration and SHA-256 digests of the tensor bytes, of the configuration and of the other metadata.

Written atomically (``latentquant.train.rundir.atomic_write_bytes``), so a crash mid-write leaves the
previous checkpoint intact. Reading verifies every digest and field, so a damaged or tampered file is a
``ValueError`` naming the checkpoint and the field, never silently different weights.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_save

from latentquant.train.rundir import CHECKPOINT_NAME, atomic_write_bytes, config_digest

FORMAT = "latentquant-checkpoint"
VERSION = 2
READABLE_VERSIONS = ("1", "2")  # version 1: no digests, no configuration, one unnamed optimizer

__all__ = [
    "CHECKPOINT_NAME",
    "Checkpoint",
    "atomic_write_bytes",
    "load_checkpoint",
    "restore_model",
    "restore_optimizers",
    "restore_rng",
    "save_checkpoint",
    "tensors_digest",
]


@dataclass
class Checkpoint:
    """The contents of a checkpoint file.

    Attributes:
        step: optimizer steps completed (>= 0).
        model_state: the model's ``state_dict``.
        optimizer_states: each optimizer's ``state_dict`` under the name the model gave it in
            ``configure_optimizers`` (empty for weights-only files).
        rng: named generator states (uint8 tensors), e.g. ``"torch"``, ``"data"``.
        extra: JSON-serializable run information (model name, training time, image shape, ...).
        config: the run's resolved configuration (``TrainConfig.to_dict()``); ``None`` when unknown.
    """

    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over the tensors in name order: each name, dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous().reshape(-1)
        digest.update(json.dumps([name, str(tensor.dtype), list(tensors[name].shape)]).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _metadata_digest(metadata: Mapping[str, str]) -> str:
    return hashlib.sha256(
        json.dumps({k: v for k, v in metadata.items() if k != "metadata_sha256"}, sort_keys=True).encode()
    ).hexdigest()


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` (a ``.safetensors`` file) atomically, with its digests.

    Raises:
        ValueError: a negative step or an optimizer name that is empty or contains ``.``.
        latentquant.train.rundir.OutputWriteError: the file could not be written (the old one is kept).
    """
    if int(checkpoint.step) < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {checkpoint.step}")
    tensors: dict[str, torch.Tensor] = {}
    for name, value in checkpoint.model_state.items():
        tensors[f"model.{name}"] = value.detach().cpu().contiguous().clone()
    groups: dict[str, Any] = {}
    for optimizer_name, optimizer_state in checkpoint.optimizer_states.items():
        if not optimizer_name or "." in optimizer_name:
            raise ValueError(f"optimizer names must be non-empty and without '.', got {optimizer_name!r}")
        for index, state in optimizer_state["state"].items():
            for key, value in state.items():
                if not torch.is_tensor(value):
                    value = torch.tensor(value)
                tensors[f"optimizer.{optimizer_name}.{index}.{key}"] = (
                    value.detach().cpu().contiguous().clone()
                )
        groups[optimizer_name] = optimizer_state["param_groups"]
    for name, state in checkpoint.rng.items():
        tensors[f"rng.{name}"] = state.detach().cpu().contiguous().clone()
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "step": str(int(checkpoint.step)),
        "optimizer_param_groups": json.dumps(groups),
        "extra": json.dumps(checkpoint.extra),
        "config": json.dumps(checkpoint.config),
        "config_sha256": config_digest(checkpoint.config) if checkpoint.config is not None else "",
        "tensors_sha256": tensors_digest(tensors),
    }
    metadata["metadata_sha256"] = _metadata_digest(metadata)
    atomic_write_bytes(path, safetensors_save(tensors, metadata=metadata))


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file.

    Raises:
        ValueError: the file is truncated, corrupt or not a safetensors file.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path} is corrupt or not a safetensors file: {err}") from err
    return tensors, metadata


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its digests and fields.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is corrupt, truncated, damaged (a digest differs), not a latentquant checkpoint,
            of another format version, or has an invalid field; the message names the checkpoint and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint {path} is not a latentquant training checkpoint (no '{FORMAT}' metadata)"
        )
    version = metadata.get("version")
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"checkpoint {path} has format version {version!r}; this latentquant reads versions "
            f"{', '.join(READABLE_VERSIONS)}"
        )
    step = _parse_step(path, metadata)
    fields = {}
    for name in ("optimizer_param_groups", "extra") + (("config",) if version != "1" else ()):
        if name not in metadata:
            raise ValueError(f"checkpoint {path}: metadata field {name!r} is missing")
        try:
            fields[name] = json.loads(metadata[name])
        except ValueError as err:
            raise ValueError(f"checkpoint {path}: metadata field {name!r} is not valid JSON: {err}") from err
    groups, extra, config = fields["optimizer_param_groups"], fields["extra"], fields.get("config")
    if version == "1":
        groups = {} if groups is None else {"model": groups}
        tensors = {_v1_key(key): value for key, value in tensors.items()}
    else:
        _verify_digests(path, metadata, tensors, config)
    if not isinstance(extra, dict):
        raise ValueError(f"checkpoint {path}: metadata field 'extra' must be a JSON object, got {extra!r}")
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"checkpoint {path}: metadata field 'config' must be a JSON object, got {config!r}")
    if not isinstance(groups, dict) or not all(isinstance(g, list) for g in groups.values()):
        raise ValueError(
            f"checkpoint {path}: metadata field 'optimizer_param_groups' must map optimizer names to lists "
            f"of parameter groups, got {metadata['optimizer_param_groups'][:200]!r}"
        )
    model_state: dict[str, torch.Tensor] = {}
    optimizer_tensors: dict[str, dict[int, dict[str, torch.Tensor]]] = {name: {} for name in groups}
    rng: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == "model":
            model_state[rest] = value
        elif kind == "optimizer":
            optimizer_name, _, rest = rest.partition(".")
            index, _, name = rest.partition(".")
            if optimizer_name not in optimizer_tensors or not index.isdigit() or not name:
                raise ValueError(
                    f"checkpoint {path} holds optimizer tensor {key!r} of no stored optimizer "
                    f"(optimizers: {sorted(groups)})"
                )
            optimizer_tensors[optimizer_name].setdefault(int(index), {})[name] = value
        elif kind == "rng":
            rng[rest] = value
        else:
            raise ValueError(f"checkpoint {path} holds an unexpected tensor {key!r}")
    for name, group_list in groups.items():
        listed = {i for g in group_list if isinstance(g, dict) for i in g.get("params", [])}
        stray = sorted(set(optimizer_tensors[name]) - listed)
        if stray:
            raise ValueError(
                f"checkpoint {path}: optimizer {name!r} has state for parameter indices {stray[:5]} that none "
                "of its parameter groups lists"
            )
    if config is not None and "model" in extra and config.get("model") != extra["model"]:
        raise ValueError(
            f"checkpoint {path}: field 'model' {extra['model']!r} differs from its configuration's "
            f"{config.get('model')!r}"
        )
    optimizer_states = {
        name: {"state": optimizer_tensors[name], "param_groups": groups[name]} for name in groups
    }
    return Checkpoint(
        step=step,
        model_state=model_state,
        optimizer_states=optimizer_states,
        rng=rng,
        extra=extra,
        config=config,
    )


def _parse_step(path: Path, metadata: Mapping[str, str]) -> int:
    raw = metadata.get("step")
    if raw is None:
        raise ValueError(f"checkpoint {path}: metadata field 'step' is missing")
    try:
        step = int(raw)
    except ValueError:
        raise ValueError(
            f"checkpoint {path}: metadata field 'step' must be an integer, got {raw!r}"
        ) from None
    if step < 0:
        raise ValueError(f"checkpoint {path}: metadata field 'step' must be >= 0, got {step}")
    return step


def _verify_digests(
    path: Path, metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor], config: Any
) -> None:
    for name in ("tensors_sha256", "config_sha256", "metadata_sha256"):
        if name not in metadata:
            raise ValueError(f"checkpoint {path}: metadata field {name!r} is missing")
    if _metadata_digest(metadata) != metadata["metadata_sha256"]:
        raise ValueError(
            f"checkpoint {path}: its metadata (step, optimizer groups, extra, config) does not match field "
            "'metadata_sha256'; the file was damaged or edited"
        )
    expected_config = config_digest(config) if config is not None else ""
    if expected_config != metadata["config_sha256"]:
        raise ValueError(f"checkpoint {path}: field 'config' does not match field 'config_sha256'")
    if tensors_digest(tensors) != metadata["tensors_sha256"]:
        raise ValueError(
            f"checkpoint {path}: the tensor data does not match field 'tensors_sha256'; the file is damaged"
        )


def _v1_key(key: str) -> str:
    """Version 1 named optimizer tensors ``optimizer.<index>.<key>``; they belong to the one optimizer ``model``."""
    kind, _, rest = key.partition(".")
    return f"optimizer.model.{rest}" if kind == "optimizer" else key


def restore_model(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` into ``model``, naming missing, unexpected and mis-shaped entries on failure."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:5]}")
        raise ValueError(f"checkpoint {source} does not fit this model ({'; '.join(parts)})")
    model.load_state_dict(state)


def restore_optimizers(
    optimizers: dict[str, torch.optim.Optimizer], states: dict[str, dict[str, Any]], source: str | Path
) -> None:
    """Load each optimizer's state from ``states`` by name; the names must match exactly.

    Every state is checked against its optimizer before training starts: the parameter groups' sizes, and
    per parameter the state entries the optimizer keeps (e.g. Adam's ``step``, ``exp_avg``, ``exp_avg_sq``)
    with the parameter's shape (scalars for counters).

    Raises:
        ValueError: no optimizer state at all, an optimizer without a stored state or a stored state of no
            optimizer, or a state that does not fit its optimizer (naming the checkpoint, optimizer and entry).
    """
    if not states:
        raise ValueError(f"checkpoint {source} has no optimizer state, so training cannot resume from it")
    missing = sorted(set(optimizers) - set(states))
    extra = sorted(set(states) - set(optimizers))
    if missing or extra:
        raise ValueError(
            f"checkpoint {source} stores optimizer states {sorted(states)} but this model has optimizers "
            f"{sorted(optimizers)}"
            + (f" (missing: {missing})" if missing else "")
            + (f" (unexpected: {extra})" if extra else "")
        )
    for name, optimizer in optimizers.items():
        _restore_optimizer(optimizer, states[name], f"{source}: optimizer {name!r}")


def _expected_state(optimizer: torch.optim.Optimizer) -> dict[str, bool] | None:
    """The state entries ``optimizer``'s class keeps per parameter -> whether each has the parameter's shape
    (found by one step of a fresh optimizer of the same class on a probe parameter); ``None`` if unknown."""
    probe = torch.zeros(2, 3, requires_grad=True)
    try:
        accepted = inspect.signature(type(optimizer)).parameters
        options = {k: v for k, v in optimizer.defaults.items() if k in accepted}
        twin = type(optimizer)([probe], **options)
        probe.grad = torch.zeros_like(probe)
        twin.step()
    except Exception:  # an optimizer class whose constructor differs from its defaults: skip the check
        return None
    return {
        key: torch.is_tensor(value) and value.shape == probe.shape for key, value in twin.state[probe].items()
    }


def _restore_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any], source: str) -> None:
    saved_sizes = [len(g.get("params", [])) if isinstance(g, dict) else -1 for g in state["param_groups"]]
    own_sizes = [len(g["params"]) for g in optimizer.param_groups]
    if saved_sizes != own_sizes:
        raise ValueError(
            f"checkpoint {source} has parameter groups of sizes {saved_sizes}, this model needs {own_sizes}"
        )
    expected = _expected_state(optimizer)
    saved_index = {
        i: p
        for g_saved, g_own in zip(state["param_groups"], optimizer.param_groups)
        for i, p in zip(g_saved["params"], g_own["params"])
    }
    for index, entries in state["state"].items():
        param = saved_index.get(index)
        if param is None:
            raise ValueError(
                f"checkpoint {source}: state for parameter {index}, which no parameter group lists"
            )
        if expected is not None and set(entries) != set(expected):
            raise ValueError(
                f"checkpoint {source}: parameter {index} has state entries {sorted(entries)}, expected "
                f"{sorted(expected)}"
            )
        for key, value in entries.items():
            if not torch.is_tensor(value) or (not value.is_floating_point() and value.dtype != torch.int64):
                raise ValueError(
                    f"checkpoint {source}: parameter {index} entry {key!r} is not a numeric tensor"
                )
            shaped = expected.get(key) if expected is not None else value.numel() != 1
            if shaped and value.shape != param.shape:
                raise ValueError(
                    f"checkpoint {source}: parameter {index} entry {key!r} has shape {tuple(value.shape)}, "
                    f"the parameter has {tuple(param.shape)}"
                )
            if not shaped and value.numel() != 1:
                raise ValueError(
                    f"checkpoint {source}: parameter {index} entry {key!r} must be a scalar, got shape "
                    f"{tuple(value.shape)}"
                )
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"checkpoint {source}: parameter {index} entry {key!r} holds NaN or Inf")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        raise ValueError(f"checkpoint {source}: the optimizer state does not fit: {err}") from err


def restore_rng(
    states: Mapping[str, torch.Tensor],
    data_generator: torch.Generator,
    device: torch.device,
    source: str | Path,
) -> None:
    """Restore the global torch, data-sampling and (on CUDA, when saved) CUDA generator states.

    Raises:
        ValueError: a required state (``torch``, ``data``) is missing or is not a valid generator state
            (naming the checkpoint and the field ``rng.<name>``).
    """
    for name in ("torch", "data"):
        if name not in states:
            raise ValueError(f"checkpoint {source}: field 'rng.{name}' (a random generator state) is missing")
        scratch = torch.Generator()
        try:
            scratch.set_state(states[name])
        except (RuntimeError, TypeError) as err:
            raise ValueError(
                f"checkpoint {source}: field 'rng.{name}' is not a valid generator state: {err}"
            ) from err
    torch.set_rng_state(states["torch"])
    data_generator.set_state(states["data"])
    if device.type == "cuda" and "cuda" in states:
        try:
            torch.cuda.set_rng_state(states["cuda"], device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(
                f"checkpoint {source}: field 'rng.cuda' is not a valid generator state: {err}"
            ) from err
