"""The training configuration's schema: typed, nested groups of settings (dataclasses under OmegaConf), each
setting with its default and a one-line description. The CLI (``key=value`` overrides, ``--print-config``,
``--help``), sweeps and a run's ``config.yaml`` are views of this one schema.

Spellings. Every setting has a dotted name, its place in the schema (``optim.lr``, ``encoder.name``,
``model.args.num_values``), and a flat name, the key of :class:`latentquant.train.config.TrainConfig`
(``lr``, ``encoder``, ``model_args``): the names the code reads and that run directories written before
the nested schema hold in their ``config.yaml``. Both are accepted everywhere (files, overrides, Python
mappings) and may be mixed; :func:`flatten` maps any of them to flat names (this is how an old flat
``config.yaml`` is migrated on read), :func:`nest` gives the nested view. A group that has a ``name``
accepts a plain value as its name: ``model=ae``, ``encoder=tiny``.

Adding a setting: a field (type, default, one-line help) in its group below and its flat name in
:data:`FLAT_TO_DOTTED`; ``TrainConfig``, the CLI listing, ``--print-config`` and the validation follow. A
setting with a null default that changes nothing unless set can go in :data:`STORED_WHEN_SET`, so that run
directories written before it existed keep comparing equal to new runs.

Architecture sizes. ``encoder.name`` / ``decoder.name`` pick a named network; ``encoder.widths``,
``encoder.depth``, ``encoder.dense_widths`` (and ``decoder.widths``, ``decoder.depth``, ``decoder.dense_widths``,
``decoder.input_channels``) resize it, null keeping the named network's: ``encoder=cpu encoder.depth=3``,
``encoder.widths=[16,32,64,64]``. ``widths`` sets each conv block's channels and thereby the number of blocks;
``depth`` alone sets the number of blocks and keeps the named widths; both together must agree. A network of d
blocks is the named network's first d blocks (kernel sizes, strides, widths); past its end the kernel/stride
pattern repeats and the last width is kept (:func:`latentquant.zoo.encoders.resize_blocks`). The image size
must be divisible by the total stride (checked when the model is built). They change what the model is: not
resumable.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


def _setting(default: Any, help: str, minimum: int | None = None) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "minimum": minimum})


@dataclasses.dataclass
class ModelSettings:
    name: str = _setting(
        "qlae", "zoo model (latentquant.zoo.MODELS): qlae, ae, beta_vae, beta_tcvae, bioae, ..."
    )
    num_latents: int | None = _setting(
        None, "number of latents; null: twice the dataset's factors (paper)", 1
    )
    args: dict[str, Any] = dataclasses.field(
        default_factory=dict,
        metadata={"help": "the model's own hyperparameters (e.g. num_values, beta); unset: the paper's"},
    )


@dataclasses.dataclass
class DataSettings:
    name: str = _setting("shapes3d", "dataset (latentquant.data.get_dataset): shapes3d, dsprites, mpi3d, ...")
    path: str | None = _setting(None, "file or folder of the real dataset; null: procedural where one exists")
    batch_size: int = _setting(128, "images per optimizer step (paper: 128)", 1)


# The architecture sizes (latentquant.zoo.encoders.encoder_spec / latentquant.zoo.decoders.decoder_spec): null keeps
# the named network's. A network of d blocks is the named network's first d blocks, its kernel/stride pattern
# repeated (and its last width kept) past its end; widths and depth together must agree.
@dataclasses.dataclass
class EncoderSettings:
    name: str = _setting("paper", "encoder architecture: paper (12 conv blocks), small, cpu, tiny")
    widths: list[int] | None = _setting(
        None, "channels of each conv block, e.g. [16, 32, 64] (3 blocks); null: the named encoder's"
    )
    depth: int | None = _setting(
        None,
        "number of conv blocks, with the named encoder's widths and kernel/stride pattern (repeated past its end); "
        "with widths: must equal their number; null: the named encoder's",
        1,
    )
    dense_widths: list[int] | None = _setting(
        None, "widths of the dense blocks after the conv blocks ([]: none); null: the named encoder's"
    )


@dataclasses.dataclass
class DecoderSettings:
    name: str = _setting("paper", "decoder architecture: paper (style-modulated), small, cpu, tiny")
    widths: list[int] | None = _setting(
        None,
        "channels of each transposed-conv block, e.g. [64, 32, 16] (3 blocks); null: the named decoder's",
    )
    depth: int | None = _setting(
        None,
        "number of transposed-conv blocks, with the named decoder's widths and kernel/stride pattern (repeated past "
        "its end); with widths: must equal their number; null: the named decoder's",
        1,
    )
    dense_widths: list[int] | None = _setting(
        None, "widths of the mapping's dense blocks, latent -> style ([]: none); null: the named decoder's"
    )
    input_channels: int | None = _setting(
        None, "channels of the learned constant input the blocks upsample; null: the named decoder's", 1
    )


@dataclasses.dataclass
class OptimSettings:
    lr: float = _setting(1e-3, "Adam(W) learning rate (paper: 1e-3)")
    weight_decay: float | None = _setting(
        None, "decoupled weight decay of the weights; null: the model's paper value"
    )
    grad_clip: float = _setting(1.0, "element-wise gradient clipping of the weights (paper: 1; 0 disables)")


@dataclasses.dataclass
class EvalSettings:
    every: int = _setting(5000, "evaluate every this many steps (0: only at the end)")
    samples: int = _setting(10_000, "images in the evaluation sample (paper: 10,000)", 1)
    seed: int = _setting(
        20230228, "seed of the evaluation sample (the same images for every run of a dataset)"
    )
    convention: str = _setting(
        "paper", "InfoMEC convention: paper or standalone (latentquant.metrics.infomec)"
    )
    traversal_steps: int = _setting(10, "values per latent in the traversal figure (continuous latents)", 1)


@dataclasses.dataclass
class RunSettings:
    log_every: int = _setting(100, "write a log.jsonl record every this many steps", 1)
    checkpoint_every: int = _setting(
        5000, "write a checkpoint every this many steps (and always at the end)", 1
    )
    device: str = _setting("auto", "auto (CUDA when available), cpu or cuda[:index]")
    amp: bool = _setting(False, "bfloat16 autocast on CUDA (ignored on CPU); the paper trains in float32")
    compile: str = _setting(
        "off",
        "torch.compile: off, model (the whole forward pass) or decoder (the decoder alone: most of the gain, "
        "eager precision); true means model, false off",
    )
    channels_last: bool = _setting(False, "channels-last memory format for images and convolutions")
    deterministic: bool = _setting(False, "torch.use_deterministic_algorithms (bitwise-reproducible resumes)")
    num_threads: int | None = _setting(None, "CPU threads for torch; null: torch's default", 1)
    overwrite: bool = _setting(False, "a new run may replace the run files already in its directory")
    logger: str = _setting(
        "jsonl",
        "log sinks next to log.jsonl, comma-separated: csv, tensorboard, wandb (if installed; offline by default)",
    )


@dataclasses.dataclass
class TrainSchema:
    """Every setting of a training run, in groups."""

    seed: int = _setting(0, "seeds model initialization, batch sampling and any sampling in the model")
    steps: int = _setting(200_000, "optimizer steps in total (paper: 2e5)", 1)
    model: ModelSettings = dataclasses.field(default_factory=ModelSettings)
    data: DataSettings = dataclasses.field(default_factory=DataSettings)
    encoder: EncoderSettings = dataclasses.field(default_factory=EncoderSettings)
    decoder: DecoderSettings = dataclasses.field(default_factory=DecoderSettings)
    optim: OptimSettings = dataclasses.field(default_factory=OptimSettings)
    eval: EvalSettings = dataclasses.field(default_factory=EvalSettings)
    run: RunSettings = dataclasses.field(default_factory=RunSettings)


# Flat name -> dotted name, in the order of TrainConfig's fields (and of a flat config.yaml).
FLAT_TO_DOTTED: dict[str, str] = {
    "model": "model.name",
    "dataset": "data.name",
    "data_path": "data.path",
    "seed": "seed",
    "steps": "steps",
    "batch_size": "data.batch_size",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "grad_clip": "optim.grad_clip",
    "num_latents": "model.num_latents",
    "encoder": "encoder.name",
    "decoder": "decoder.name",
    "encoder_widths": "encoder.widths",
    "encoder_depth": "encoder.depth",
    "encoder_dense_widths": "encoder.dense_widths",
    "decoder_widths": "decoder.widths",
    "decoder_depth": "decoder.depth",
    "decoder_dense_widths": "decoder.dense_widths",
    "decoder_input_channels": "decoder.input_channels",
    "model_args": "model.args",
    "eval_every": "eval.every",
    "eval_samples": "eval.samples",
    "eval_seed": "eval.seed",
    "infomec_convention": "eval.convention",
    "log_every": "run.log_every",
    "checkpoint_every": "run.checkpoint_every",
    "traversal_steps": "eval.traversal_steps",
    "device": "run.device",
    "amp": "run.amp",
    "compile": "run.compile",
    "channels_last": "run.channels_last",
    "deterministic": "run.deterministic",
    "num_threads": "run.num_threads",
    "overwrite": "run.overwrite",
    "logger": "run.logger",
}
DOTTED_TO_FLAT = {dotted: flat for flat, dotted in FLAT_TO_DOTTED.items()}

# Settings added after run directories were first written, stored only when set: a run that leaves them null
# writes no such key (TrainConfig.to_dict), so its config.yaml and checkpoint are what earlier versions write,
# and runs from before and after compare (resume checks, study tables) as the same configuration. A stored
# configuration without them reads them as null.
STORED_WHEN_SET: frozenset[str] = frozenset(
    {
        "encoder_widths",
        "encoder_depth",
        "encoder_dense_widths",
        "decoder_widths",
        "decoder_depth",
        "decoder_dense_widths",
        "decoder_input_channels",
    }
)
GROUPS = tuple(
    name for name, kind in typing.get_type_hints(TrainSchema).items() if dataclasses.is_dataclass(kind)
)


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One setting of the schema."""

    dotted: str
    flat: str
    type: Any
    default: Any
    help: str
    minimum: int | None


def _leaves(cls: type, prefix: str = "") -> list[Leaf]:
    hints = typing.get_type_hints(cls)
    out: list[Leaf] = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out += _leaves(kind, f"{prefix}{f.name}.")
            continue
        dotted = f"{prefix}{f.name}"
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out.append(
            Leaf(dotted, DOTTED_TO_FLAT[dotted], kind, default, f.metadata["help"], f.metadata.get("minimum"))
        )
    return out


_SCHEMA_LEAVES = _leaves(TrainSchema)  # in schema order
LEAVES: tuple[Leaf, ...] = tuple(
    sorted(_SCHEMA_LEAVES, key=lambda leaf: list(FLAT_TO_DOTTED).index(leaf.flat))
)
if {leaf.dotted for leaf in LEAVES} != set(DOTTED_TO_FLAT):  # the alias table and the schema must agree
    raise RuntimeError("train.schema: FLAT_TO_DOTTED does not name every setting of TrainSchema exactly once")
_BY_FLAT = {leaf.flat: leaf for leaf in LEAVES}
_MODEL_ARGS_PREFIXES = ("model_args.", "model.args.")


def flat_key(key: str) -> str:
    """The flat name of a setting given by either name; ``model_args.<x>`` / ``model.args.<x>`` stay dotted as
    ``model_args.<x>``.

    Raises:
        ValueError: not a setting (the message lists the valid dotted names).
    """
    if key in FLAT_TO_DOTTED:
        return key
    if key in DOTTED_TO_FLAT:
        return DOTTED_TO_FLAT[key]
    for prefix in _MODEL_ARGS_PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            return "model_args." + key[len(prefix) :]
    raise ValueError(
        f"unknown setting {key!r}; valid settings are {sorted(DOTTED_TO_FLAT)} (or their flat names)"
    )


def flatten(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Any mix of nested groups, dotted keys and flat names -> flat names (later keys win, model arguments
    merged key by key). Unknown keys are kept as they are written (dotted), for the caller to report.

    Example: ``{"optim": {"lr": 1e-3}, "encoder": "tiny", "model.args.beta": 4}`` ->
    ``{"lr": 1e-3, "encoder": "tiny", "model_args": {"beta": 4}}``.
    """
    out: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        try:
            flat = flat_key(key)
        except ValueError:
            out[key] = value
            return
        if flat.startswith("model_args."):
            args = out.get("model_args")
            out["model_args"] = {**(args if isinstance(args, Mapping) else {}), flat.split(".", 1)[1]: value}
        elif (
            flat == "model_args" and isinstance(value, Mapping) and isinstance(out.get("model_args"), Mapping)
        ):
            out["model_args"] = {**out["model_args"], **value}
        else:
            out[flat] = value

    def walk(prefix: str, mapping: Mapping[str, Any]) -> None:
        for key, value in mapping.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, Mapping) and dotted not in DOTTED_TO_FLAT and dotted != "model_args":
                walk(f"{dotted}.", value)
            elif dotted in GROUPS and f"{dotted}.name" in DOTTED_TO_FLAT:
                put(f"{dotted}.name", value)  # model=ae, encoder=tiny
            else:
                put(dotted, value)

    walk("", settings)
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat names -> the nested view (groups in schema order; settings absent from ``flat`` left out)."""
    out: dict[str, Any] = {}
    for leaf in _SCHEMA_LEAVES:
        if leaf.flat not in flat:
            continue
        node = out
        *groups, name = leaf.dotted.split(".")
        for group in groups:
            node = node.setdefault(group, {})
        node[name] = flat[leaf.flat]
    return out


def validate(flat: Mapping[str, Any]) -> None:
    """Type-check ``flat`` (flat names) against the schema with OmegaConf.

    Raises:
        ValueError: naming the setting (dotted and flat), the expected type and the value received.
    """
    try:
        OmegaConf.merge(OmegaConf.structured(TrainSchema), nest(flat))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        flat_name = DOTTED_TO_FLAT.get(str(key), "")
        message = str(err).splitlines()[0]
        raise ValueError(f"setting {key!r}{f' ({flat_name})' if flat_name else ''}: {message}") from None


def leaf(flat: str) -> Leaf:
    """The schema entry of flat name ``flat``."""
    return _BY_FLAT[flat]


def split_sweep_values(raw: str) -> list[str]:
    """Split an override's value at the commas outside brackets and quotes: ``"1,2"`` -> ``["1", "2"]``,
    ``"[1,2]"`` -> ``["[1,2]"]`` (one list value), ``"[1,2],[3]"`` -> two values (``latentquant sweep``)."""
    values, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(raw):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(raw[start:i])
            start = i + 1
    values.append(raw[start:])
    return values


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}" if value else "{}"
    return str(value)


def describe(values: Mapping[str, Any] | None = None) -> str:
    """Every setting as a table: dotted name (flat name), value, default, description. Without ``values``
    the value column is left out (the ``--help`` listing)."""
    rows = []
    for item in _SCHEMA_LEAVES:
        name = item.dotted if item.flat == item.dotted else f"{item.dotted} ({item.flat})"
        row = [name]
        if values is not None:
            row.append(_show(values.get(item.flat, item.default)))
        row += [_show(item.default), item.help]
        rows.append(row)
    header = ["setting", *(["value"] if values is not None else []), "default", "description"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return "\n".join(lines)
