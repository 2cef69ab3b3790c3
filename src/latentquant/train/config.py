"""Training configuration: every hyperparameter of a run, its paper default, and how a run's YAML file and
``key=value`` overrides combine into one validated :class:`TrainConfig`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from latentquant.zoo import (
    DECODERS,
    ENCODERS,
    MODELS,
    default_hyperparameters,
    default_training_settings,
    default_weight_decay,
)


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run. ``None`` means "the paper's default for this model and dataset",
    filled in by :func:`resolve_config`.

    Attributes:
        model: zoo model name (``latentquant.zoo.MODELS``).
        dataset: dataset name (``latentquant.data.get_dataset``); ``data_path`` optionally points at real files.
        seed: seeds model initialization, batch sampling and any sampling in the model.
        steps: optimizer steps in total.
        batch_size, lr: Adam(W) batch size and learning rate (paper: 128, 1e-3).
        weight_decay: decoupled weight decay of the weights (paper: per model; QLAE 0.1).
        grad_clip: element-wise gradient clipping of the weights (paper: 1; 0 disables).
        num_latents: number of latents (paper: twice the number of factors).
        encoder, decoder: architecture names (``paper``, ``small``, ``cpu``, ``tiny``).
        model_args: the model's own hyperparameters (e.g. QLAE ``num_values``, β-VAE ``beta``).
        eval_every: evaluate every this many steps (0: only at the end).
        eval_samples: images drawn for evaluation (paper: 10,000), the same ones for every run of a dataset.
        eval_seed: seed of the evaluation sample.
        infomec_convention: ``"paper"`` or ``"standalone"`` (``latentquant.metrics.infomec``).
        log_every: write a JSONL log record every this many steps.
        checkpoint_every: write a checkpoint every this many steps (and always at the end).
        traversal_steps: values per latent in the traversal figure for continuous latents.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:i]"``.
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        compile: run the model under ``torch.compile``.
        channels_last: keep images and convolutions in channels-last memory format (faster on CPU).
        deterministic: ``torch.use_deterministic_algorithms(True)`` (bitwise-reproducible resumes).
        num_threads: CPU threads for torch (``None``: torch's default).
        overwrite: a new run may replace the run files already in its directory (else that is an error).
    """

    model: str = "qlae"
    dataset: str = "shapes3d"
    data_path: str | None = None
    seed: int = 0
    steps: int = 200_000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float | None = None
    grad_clip: float = 1.0
    num_latents: int | None = None
    encoder: str = "paper"
    decoder: str = "paper"
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    eval_every: int = 5000
    eval_samples: int = 10_000
    eval_seed: int = 20230228
    infomec_convention: str = "paper"
    log_every: int = 100
    checkpoint_every: int = 5000
    traversal_steps: int = 10
    device: str = "auto"
    amp: bool = True
    compile: bool = False
    channels_last: bool = False
    deterministic: bool = False
    num_threads: int | None = None
    overwrite: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (for YAML / JSON)."""
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_INT_FIELDS = {"seed", "steps", "batch_size", "num_latents", "eval_every", "eval_samples", "eval_seed"}
_INT_FIELDS |= {"log_every", "checkpoint_every", "traversal_steps", "num_threads"}
_FLOAT_FIELDS = {"lr", "weight_decay", "grad_clip"}
_BOOL_FIELDS = {"amp", "compile", "channels_last", "deterministic", "overwrite"}
_STR_FIELDS = {"model", "dataset", "data_path", "encoder", "decoder", "infomec_convention", "device"}
_NULLABLE = {"data_path", "weight_decay", "num_latents", "num_threads"}
_POSITIVE = {
    "steps",
    "batch_size",
    "eval_samples",
    "log_every",
    "checkpoint_every",
    "traversal_steps",
    "num_latents",
}
_POSITIVE |= {"num_threads"}


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a run configuration file (a YAML mapping of :class:`TrainConfig` keys).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not valid YAML or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` overrides; values are YAML scalars; ``model_args.<name>=value`` sets a model argument.

    Raises:
        ValueError: an item without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value")
        try:
            value = _number(yaml.safe_load(raw)) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: cannot parse the value: {err}") from err
        if "." in key:
            head, _, sub = key.partition(".")
            if head != "model_args" or not sub:
                raise ValueError(f"override {item!r}: only model_args.<name> keys may contain a dot")
            out.setdefault("model_args", {})[sub] = value
        else:
            out[key] = value
    return out


def merge_settings(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Combine settings, later layers winning; ``model_args`` mappings are merged key by key."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "model_args" and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; accept such numbers written as strings."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _coerce(key: str, value: Any) -> Any:
    if key in _INT_FIELDS or key in _FLOAT_FIELDS:
        value = _number(value)
    if value is None:
        if key in _NULLABLE:
            return None
        raise ValueError(f"setting {key!r} must not be null")
    if key in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise ValueError(f"setting {key!r} must be true or false, got {value!r}")
        return value
    if key in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise ValueError(f"setting {key!r} must be an integer, got {value!r}")
        value = int(value)
        if key in _POSITIVE and value < 1:
            raise ValueError(f"setting {key!r} must be >= 1, got {value}")
        if value < 0:
            raise ValueError(f"setting {key!r} must be >= 0, got {value}")
        return value
    if key in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"setting {key!r} must be a finite number, got {value!r}")
        if value < 0 or (key == "lr" and value == 0):
            raise ValueError(f"setting {key!r} must be {'> 0' if key == 'lr' else '>= 0'}, got {value}")
        return float(value)
    if key in _STR_FIELDS:
        if not isinstance(value, str):
            raise ValueError(f"setting {key!r} must be a string, got {value!r}")
        return value
    if key == "model_args":
        if not isinstance(value, Mapping):
            raise ValueError(f"setting 'model_args' must be a mapping, got {value!r}")
        return dict(value)
    raise ValueError(f"unknown setting {key!r}")


def resolve_config(settings: Mapping[str, Any], num_factors: int | None = None) -> TrainConfig:
    """Validate ``settings`` and fill every ``None`` with the paper's default for the model and dataset.

    Args:
        settings: a mapping of :class:`TrainConfig` keys (from a file, flags and overrides merged).
        num_factors: the dataset's number of factors, for the default ``num_latents`` (2 x factors).

    Raises:
        ValueError: an unknown key (the message lists the valid ones), a value of the wrong type or range,
            an unknown model / encoder / decoder / convention, or a model argument the model does not have.
    """
    unknown = sorted(set(settings) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; valid settings are {sorted(FIELDS)}")
    values = {key: _coerce(key, value) for key, value in settings.items()}
    config = TrainConfig(**values)
    if config.model not in MODELS:
        raise ValueError(f"model: unknown model {config.model!r}; choose one of {sorted(MODELS)}")
    if config.encoder not in ENCODERS:
        raise ValueError(f"encoder: unknown encoder {config.encoder!r}; choose one of {sorted(ENCODERS)}")
    if config.decoder not in DECODERS:
        raise ValueError(f"decoder: unknown decoder {config.decoder!r}; choose one of {sorted(DECODERS)}")
    if config.infomec_convention not in ("paper", "standalone"):
        raise ValueError(
            f"infomec_convention must be 'paper' or 'standalone', got {config.infomec_convention!r}"
        )
    if config.device != "auto" and not (config.device == "cpu" or config.device.startswith("cuda")):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:index]', got {config.device!r}")
    defaults = default_hyperparameters(config.model, config.dataset)
    bad_args = sorted(set(config.model_args) - set(defaults))
    if bad_args:
        raise ValueError(
            f"model_args: model {config.model!r} has no argument(s) {bad_args}; its arguments are {sorted(defaults)}"
        )
    config.model_args = {**defaults, **config.model_args}
    # Models whose recipe trains differently (the GANs: lr 2e-4, batch 64, 1e5 steps) unless the run says otherwise.
    for key, value in default_training_settings(config.model).items():
        if key not in settings:
            setattr(config, key, value)
    if config.weight_decay is None:
        config.weight_decay = default_weight_decay(config.model, config.dataset)
    if config.num_latents is None and num_factors is not None:
        config.num_latents = 2 * int(num_factors)
    return config
