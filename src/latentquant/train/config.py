"""Training configuration: every hyperparameter of a run, its paper default, and how a run's YAML file and
``key=value`` overrides combine into one validated :class:`TrainConfig`."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from latentquant.train import schema
from latentquant.train.sinks import parse_logger
from latentquant.zoo import (
    DECODERS,
    ENCODERS,
    MODELS,
    default_hyperparameters,
    default_training_settings,
    default_weight_decay,
)


def _to_dict(self: Any) -> dict[str, Any]:
    """Plain-data copy with flat names (as ``config.yaml``, checkpoints and exports store it); the settings of
    :data:`schema.STORED_WHEN_SET` only when they are set (not null)."""
    return {
        key: value
        for key, value in dataclasses.asdict(self).items()
        if not (value is None and key in schema.STORED_WHEN_SET)
    }


def _to_nested(self: Any) -> dict[str, Any]:
    """Plain-data copy in the schema's nested groups (of the settings ``to_dict`` holds)."""
    return schema.nest(_to_dict(self))


def _field(leaf: schema.Leaf) -> Any:
    if isinstance(leaf.default, dict):
        return dataclasses.field(default_factory=dict, metadata={"help": leaf.help})
    return dataclasses.field(default=leaf.default, metadata={"help": leaf.help})


# One declaration, the nested schema (latentquant.train.schema.TrainSchema); this is its flat view.
TrainConfig = dataclasses.make_dataclass(
    "TrainConfig",
    [(leaf.flat, leaf.type, _field(leaf)) for leaf in schema.LEAVES],
    namespace={"to_dict": _to_dict, "to_nested": _to_nested, "__module__": __name__},
)
TrainConfig.__doc__ = (
    "Every setting of a training run under its flat name (``config.lr``, ``config.model_args``): the flat view\n"
    "of :class:`latentquant.train.schema.TrainSchema`, where each setting's group, type, default and description\n"
    "are declared. ``None`` means the paper's default for this model and dataset, filled in by\n"
    ":func:`resolve_config`.\n\nAttributes:\n"
    + "".join(f"    {leaf.flat} (``{leaf.dotted}``): {leaf.help}.\n" for leaf in schema.LEAVES)
)


def _flat_names(*kinds: type) -> set[str]:
    return {leaf.flat for leaf in schema.LEAVES if _base_type(leaf.type) in kinds}


def _base_type(kind: Any) -> Any:
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1 else kind


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_INT_FIELDS = _flat_names(int)
_FLOAT_FIELDS = _flat_names(float)
_BOOL_FIELDS = _flat_names(bool)
_STR_FIELDS = _flat_names(str)
_LIST_FIELDS = {leaf.flat for leaf in schema.LEAVES if typing.get_origin(_base_type(leaf.type)) is list}
_NULLABLE = {leaf.flat for leaf in schema.LEAVES if leaf.default is None}
_POSITIVE = {leaf.flat for leaf in schema.LEAVES if leaf.minimum == 1}


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a run configuration file: a YAML mapping of settings in the schema's nested groups, as dotted
    keys, or under the flat names of :class:`TrainConfig` (the ``config.yaml`` of runs written before the
    nested schema), in any mix. Returns the settings under their flat names (:func:`schema.flatten`).

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
    return schema.flatten(data)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` overrides into settings under their flat names. Keys are dotted names of the
    schema (``optim.lr``, ``encoder.name``, ``model.args.beta``) or flat names (``lr``, ``encoder``,
    ``model_args.beta``); a group with a name takes its name directly (``encoder=tiny``). Values are YAML
    (``null``, ``true``, ``3e-4``, ``[10, 12]``).

    Raises:
        ValueError: an item without ``=`` or with an empty key, an unknown setting (the valid ones are
            listed), or several comma-separated values for one setting (a sweep: ``latentquant sweep``).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value")
        flat = schema.flat_key(key)
        if len(schema.split_sweep_values(raw)) > 1 and flat != "data_path":
            hint = f" (a list is written in brackets: {key}=[{raw.strip()}])" if flat in _LIST_FIELDS else ""
            raise ValueError(
                f"override {item!r} gives several values: that is a sweep; run it with latentquant sweep "
                f"(e.g. latentquant sweep ... {item}), or give one value here{hint}"
            )
        try:
            value = _number(yaml.safe_load(raw)) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: cannot parse the value: {err}") from err
        if flat.startswith("model_args."):
            out.setdefault("model_args", {})[flat.split(".", 1)[1]] = value
        else:
            out[flat] = value
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


# What `compile` may say (latentquant.train.loop): "off"; "model", the whole forward pass under torch.compile;
# "decoder", the decoder alone (nn.Module.compile in place). Why the decoder mode exists: on the CPU, inductor
# sums the encoder's instance-norm statistics in one float32 accumulator per channel, and for images (channel
# mean up to 9x the channel's standard deviation after the first convolution) the first layers' gradients then
# differ from float64 by up to 1% (eager: 3e-6), while the decoder compiled stays at eager precision (2e-6) and
# holds most of the speed-up (benchmarks/RESULTS.md, "The training step"). Booleans are the setting's older
# spelling (config.yaml of earlier runs, `--compile`): true is "model", false "off".
COMPILE_MODES = ("off", "model", "decoder")


def compile_mode(value: Any) -> str:
    """The ``compile`` setting's value as one of :data:`COMPILE_MODES` (booleans: true "model", false "off")."""
    if isinstance(value, bool):
        return "model" if value else "off"
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return "model" if value.lower() == "true" else "off"
    if value not in COMPILE_MODES:
        raise ValueError(
            f"setting 'compile' must be one of {', '.join(COMPILE_MODES)} (or true / false), got {value!r}"
        )
    return value


def _coerce(key: str, value: Any) -> Any:
    if key in _INT_FIELDS or key in _FLOAT_FIELDS:
        value = _number(value)
    if value is None:
        if key in _NULLABLE:
            return None
        raise ValueError(f"setting {key!r} must not be null")
    if key == "compile":
        return compile_mode(value)
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
    if key in _LIST_FIELDS:
        return _int_list(key, value)
    if key == "model_args":
        if not isinstance(value, Mapping):
            raise ValueError(f"setting 'model_args' must be a mapping, got {value!r}")
        return dict(value)
    raise ValueError(f"unknown setting {key!r}")


def _int_list(key: str, value: Any) -> list[int]:
    """An architecture size list (``encoder_widths``, ...): integers >= 1 (the conv widths: at least one)."""
    name = schema.FLAT_TO_DOTTED[key]
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"setting {name!r} ({key}) must be a list of integers, e.g. {name}=[16,32,64], or null; got {value!r}"
        )
    out = []
    for item in value:
        item = _number(item)
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not float(item).is_integer():
            raise ValueError(f"setting {name!r} ({key}) must be a list of integers, got {list(value)!r}")
        if item < 1:
            raise ValueError(f"setting {name!r} ({key}) must hold integers >= 1, got {list(value)!r}")
        out.append(int(item))
    if not out and not key.endswith("dense_widths"):
        raise ValueError(
            f"setting {name!r} ({key}) must not be empty (at least one block); null keeps the named network's"
        )
    return out


def architecture_specs(config: Any) -> tuple[Any, Any]:
    """The encoder and decoder layouts (``EncoderSpec``, ``DecoderSpec``) of a configuration: its named
    networks resized by the architecture settings (:func:`latentquant.zoo.encoders.encoder_spec`,
    :func:`latentquant.zoo.decoders.decoder_spec`).

    Raises:
        ValueError: an unknown name or sizes that do not fit (naming the settings).
    """
    from latentquant.zoo.decoders import decoder_spec
    from latentquant.zoo.encoders import encoder_spec

    encoder = encoder_spec(
        config.encoder, config.encoder_widths, config.encoder_dense_widths, config.encoder_depth
    )
    decoder = decoder_spec(
        config.decoder,
        config.decoder_widths,
        config.decoder_dense_widths,
        config.decoder_depth,
        config.decoder_input_channels,
    )
    return encoder, decoder


# InfoMEC's k-NN mutual-information estimator (k = 3, standalone convention k = 10, per factor value) and
# InfoE's logistic fits are meaningless below this; the paper evaluates on 10,000 samples.
MIN_EVAL_SAMPLES = 100


def check_eval_samples(value: int) -> None:
    """Refuse an evaluation sample smaller than :data:`MIN_EVAL_SAMPLES` (before any training starts)."""
    if value < MIN_EVAL_SAMPLES:
        raise ValueError(
            f"setting 'eval_samples' must be >= {MIN_EVAL_SAMPLES} (InfoMEC's k-NN mutual-information estimates "
            f"with k = 3..10 neighbours and the InfoE logistic fits need that many samples), got {value}"
        )


def parse_device(name: str) -> torch.device:
    """``name`` parsed by torch as a CPU or CUDA device (availability is checked when the run starts).

    Raises:
        ValueError: torch does not parse ``name`` (e.g. ``"cudafoo"``), or it is neither CPU nor CUDA.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"setting 'device': {name!r} is not a device ('auto', 'cpu' or 'cuda[:index]'): {err}"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"setting 'device': type {device.type!r} is not supported; use 'auto', 'cpu' or 'cuda[:index]'"
        )
    return device


def check_model_args(model_args: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Each model argument has its default's type: bool, integer (or a list of integers, e.g. one
    ``num_values`` per latent), number (numbers written as strings, such as ``1e-3``, are converted) or
    string; arguments whose default is ``None`` are not checked. Returns the arguments, converted.

    Raises:
        ValueError: naming the setting ``model_args.<name>``, what it expects and what it got.
    """
    out = dict(model_args)
    for name, value in model_args.items():
        default = defaults.get(name)
        if default is None:
            continue
        if isinstance(default, bool):
            ok, expected = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok = _is_int(value) or (
                isinstance(value, list) and bool(value) and all(_is_int(v) for v in value)
            )
            expected = "an integer (or a list of integers)"
        elif isinstance(default, float):
            value = _number(value)
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            expected = "a finite number"
            if ok:
                out[name] = float(value)
        elif isinstance(default, str):
            ok, expected = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            raise ValueError(
                f"setting 'model_args.{name}' must be {expected} (default {default!r}), got {value!r}"
            )
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_config(settings: Mapping[str, Any], num_factors: int | None = None) -> TrainConfig:
    """Validate ``settings`` and fill every ``None`` with the paper's default for the model and dataset.

    Args:
        settings: the settings (from a file, flags and overrides merged) under flat names, dotted names or in
            nested groups (:func:`schema.flatten`).
        num_factors: the dataset's number of factors, for the default ``num_latents`` (2 x factors).

    Raises:
        ValueError: an unknown key (the message lists the valid ones), a value of the wrong type or range,
            an unknown model / encoder / decoder / convention, or a model argument the model does not have.
    """
    settings = schema.flatten(settings)
    unknown = sorted(set(settings) - set(FIELDS))
    if unknown:
        raise ValueError(
            f"unknown setting(s) {unknown}; valid settings are {sorted(schema.DOTTED_TO_FLAT)} "
            f"(or their flat names {sorted(FIELDS)})"
        )
    values = {key: _coerce(key, value) for key, value in settings.items()}
    schema.validate(values)
    config = TrainConfig(**values)
    if config.model not in MODELS:
        raise ValueError(f"model: unknown model {config.model!r}; choose one of {sorted(MODELS)}")
    if config.encoder not in ENCODERS:
        raise ValueError(f"encoder: unknown encoder {config.encoder!r}; choose one of {sorted(ENCODERS)}")
    if config.decoder not in DECODERS:
        raise ValueError(f"decoder: unknown decoder {config.decoder!r}; choose one of {sorted(DECODERS)}")
    architecture_specs(config)  # widths / depth that disagree (the image size is checked with the model)
    if config.infomec_convention not in ("paper", "standalone"):
        raise ValueError(
            f"infomec_convention must be 'paper' or 'standalone', got {config.infomec_convention!r}"
        )
    if config.device != "auto":
        parse_device(config.device)
    parse_logger(config.logger)
    check_eval_samples(config.eval_samples)
    defaults = default_hyperparameters(config.model, config.dataset)
    bad_args = sorted(set(config.model_args) - set(defaults))
    if bad_args:
        raise ValueError(
            f"model_args: model {config.model!r} has no argument(s) {bad_args}; its arguments are {sorted(defaults)}"
        )
    config.model_args = check_model_args(config.model_args, defaults)
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
