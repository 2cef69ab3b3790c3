"""Checkpoints: one safetensors file per run holding the model weights, the optimizer state, the random
number generator states and the step, with JSON metadata. Written atomically (temporary file in the same
directory, fsync, rename), so a crash mid-write leaves the previous checkpoint intact."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_save

FORMAT = "latentquant-checkpoint"
VERSION = 2
CHECKPOINT_NAME = "checkpoint.safetensors"


@dataclass
class Checkpoint:
    """The contents of a checkpoint file.

    Attributes:
        step: optimizer steps completed.
        model_state: the model's ``state_dict``.
        optimizer_states: each optimizer's ``state_dict`` under the name the model gave it in
            ``configure_optimizers`` (empty for weights-only files).
        rng: named generator states (uint8 tensors), e.g. ``"torch"``, ``"data"``.
        extra: JSON-serializable run information (model name, training time, ...).
    """

    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same directory, fsync, ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_directory(path.parent)


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` (a ``.safetensors`` file) atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for name, value in checkpoint.model_state.items():
        tensors[f"model.{name}"] = value.detach().cpu().contiguous().clone()
    groups: dict[str, Any] = {}
    for optimizer_name, optimizer_state in checkpoint.optimizer_states.items():
        _check_optimizer_name(optimizer_name)
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
    }
    atomic_write_bytes(path, safetensors_save(tensors, metadata=metadata))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is corrupt, truncated, not a latentquant checkpoint, or of another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path} is corrupt or not a safetensors file: {err}") from err
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint {path} is not a latentquant training checkpoint (no '{FORMAT}' metadata)"
        )
    if metadata.get("version") != str(VERSION):
        raise ValueError(
            f"checkpoint {path} has format version {metadata.get('version')!r}; this latentquant reads version {VERSION}"
        )
    try:
        step = int(metadata["step"])
        groups = json.loads(metadata["optimizer_param_groups"])
        extra = json.loads(metadata["extra"])
    except (KeyError, ValueError) as err:
        raise ValueError(f"checkpoint {path} has damaged metadata: {err}") from err
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
            optimizer_name, index, name = _split_optimizer_key(rest)
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
    optimizer_states = {
        name: {"state": optimizer_tensors[name], "param_groups": groups[name]} for name in groups
    }
    return Checkpoint(
        step=step, model_state=model_state, optimizer_states=optimizer_states, rng=rng, extra=extra
    )


def _check_optimizer_name(name: str) -> None:
    if not name or "." in name:
        raise ValueError(f"optimizer names must be non-empty and without '.', got {name!r}")


def _split_optimizer_key(rest: str) -> tuple[str, str, str]:
    """``"<name>.<param index>.<state key>"`` -> its three parts (empty strings where absent)."""
    optimizer_name, _, rest = rest.partition(".")
    index, _, name = rest.partition(".")
    return optimizer_name, index, name


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

    Raises:
        ValueError: no optimizer state at all, an optimizer without a stored state or a stored state of no
            optimizer, or a state that does not fit its optimizer (all naming the checkpoint).
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
        restore_optimizer(optimizer, states[name], f"{source} (optimizer {name!r})")


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any], source: str | Path) -> None:
    """Load one optimizer state saved by :func:`save_checkpoint`, with a clear error when it does not fit."""
    saved_sizes = [len(g["params"]) for g in state["param_groups"]]
    own_sizes = [len(g["params"]) for g in optimizer.param_groups]
    if saved_sizes != own_sizes:
        raise ValueError(
            f"checkpoint {source} has optimizer groups of sizes {saved_sizes}, this model needs {own_sizes}"
        )
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as err:
        raise ValueError(f"checkpoint {source}: the optimizer state does not fit: {err}") from err
