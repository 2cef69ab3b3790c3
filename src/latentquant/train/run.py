"""What training and re-evaluation share: device selection, building the dataset and model from a
configuration, and writing metrics, figures and the HTML report (atomically, through the run directory
module ``latentquant.train.rundir``, which owns the directory's files and lock)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from latentquant.data import get_dataset
from latentquant.metrics import plot_nmi
from latentquant.provenance import provenance
from latentquant.train import schema
from latentquant.train.checkpoint import load_checkpoint, restore_model
from latentquant.train.config import TrainConfig, architecture_specs, parse_device, resolve_config
from latentquant.train.evaluate import Evaluation, evaluate_model, evaluation_factors
from latentquant.train.report import plot_losses, plot_reconstructions, plot_traversals, write_html
from latentquant.train.rundir import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    LOG_NAME,
    METRICS_NAME,
    LogWriter,
    atomic_write_text,
    lock_run,
    read_config_file,
    read_log,
    remove_run_files,
    rewrite_log,
    staged_outputs,
    write_config,
)
from latentquant.zoo import Autoencoder, build_model

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "LOG_NAME",
    "METRICS_NAME",
    "build_run_model",
    "evaluate_run",
    "load_dataset",
    "make_model",
    "read_log",
    "read_run_config",
    "remove_run_files",
    "rewrite_log",
    "select_device",
    "write_config",
    "write_outputs",
]
REPORT_IMAGES = 8


def select_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``; ``"cuda[:i]"`` requires that CUDA device.

    Raises:
        ValueError: a string torch does not parse as a device, a device type other than CPU/CUDA, or a CUDA
            device that is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = parse_device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r}: CUDA device index {device.index} does not exist "
                f"({torch.cuda.device_count()} device(s) visible)"
            )
    return device


def load_dataset(config: TrainConfig) -> Any:
    """The dataset a configuration names (``latentquant.data.get_dataset``)."""
    return get_dataset(config.dataset, data_path=config.data_path)


def build_run_model(
    config: TrainConfig, image_shape: tuple[int, int, int], dataset_size: int | None
) -> Autoencoder:
    """The zoo model a resolved configuration describes, for images of ``image_shape (C, H, W)``.

    ``dataset_size`` fills a model argument ``dataset_size: null`` (β-TCVAE's minibatch-weighted sampling).
    The encoder and decoder are the named ones resized by the architecture settings (``encoder.widths``,
    ``encoder.depth``, ...: :func:`latentquant.train.config.architecture_specs`); all of them null: the named
    networks as they are.

    Raises:
        ValueError: architecture settings whose total stride does not divide the image size (naming them), or
            a model argument the model rejects (the message names ``model_args``).
    """
    encoder, decoder = architecture_specs(config)
    _check_total_stride("encoder", config, encoder.total_stride, len(encoder.strides), image_shape)
    _check_total_stride("decoder", config, decoder.total_stride, len(decoder.strides), image_shape)
    args = dict(config.model_args)
    if "dataset_size" in args and args["dataset_size"] is None:
        args["dataset_size"] = dataset_size
    try:
        return build_model(
            config.model,
            int(config.num_latents),
            image_shape,
            encoder=encoder,
            decoder=decoder,
            **args,
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"model_args of model {config.model!r} ({args}): {err}") from err


def _check_total_stride(
    part: str, config: TrainConfig, total_stride: int, blocks: int, image_shape: tuple[int, int, int]
) -> None:
    height, width = image_shape[1], image_shape[2]
    if height % total_stride == 0 and width % total_stride == 0:
        return
    sizes = {
        key: value
        for key in schema.FLAT_TO_DOTTED
        if key.startswith(f"{part}_") and (value := getattr(config, key)) is not None
    }
    given = ", ".join(f"{schema.FLAT_TO_DOTTED[key]}={value}" for key, value in sizes.items())
    raise ValueError(
        f"{part} {getattr(config, part)!r}{f' with {given}' if given else ''}: its {blocks} blocks have total "
        f"stride {total_stride}, which does not divide the image size {height}x{width}; choose a depth or "
        f"widths whose strides multiply to a divisor of {height} and {width}"
    )


def make_model(config: TrainConfig, dataset: Any) -> Autoencoder:
    """The zoo model a resolved configuration describes, for ``dataset``'s image shape."""
    return build_run_model(config, tuple(dataset.image_shape), len(dataset))


def read_run_config(out_dir: Path) -> dict[str, Any]:
    """The settings stored in a run directory's ``config.yaml``.

    Raises:
        FileNotFoundError: ``out_dir`` is not a run directory (no config.yaml or no checkpoint).
        ValueError: config.yaml is not valid YAML or not a mapping.
    """
    if not out_dir.is_dir():
        raise FileNotFoundError(f"run directory {out_dir} does not exist")
    if not (out_dir / CONFIG_NAME).is_file() or not (out_dir / CHECKPOINT_NAME).is_file():
        raise FileNotFoundError(
            f"{out_dir} is not a training run directory (expected {CONFIG_NAME} and {CHECKPOINT_NAME} in it)"
        )
    return read_config_file(out_dir)


@torch.no_grad()
def write_outputs(
    out_dir: Path,
    model: Autoencoder,
    dataset: Any,
    evaluation: Evaluation,
    config: TrainConfig,
    extra: dict[str, Any],
    device: torch.device,
    wall_seconds: float | None = None,
) -> Path:
    """Write ``metrics.json``, the four figures, the model's own figures (``model.report_figures``) and
    ``report.html`` for a run; returns the report's path. ``metrics.json`` and the report record the
    provenance (latentquant, torch and git versions, device, threads, and ``wall_seconds`` when given).

    All of them are first written to a staging folder and then moved into ``out_dir`` one by one, so a
    failure (a full disk) leaves the previous outputs in place.

    Raises:
        latentquant.train.rundir.OutputWriteError: an output could not be written (naming it).
    """
    metrics = {
        "model": config.model,
        "dataset": config.dataset,
        **extra,
        **evaluation.summary(),
        "factor_names": list(dataset.factor_names),
        # torch.compile changes the training's float order, so it decides the numbers as the thread count does
        "provenance": {**provenance(device, wall_seconds), "compile": config.compile},
    }
    factors = evaluation.factors[:REPORT_IMAGES]
    images = dataset.images_for(factors).to(device)
    was_training = model.training
    model.eval()
    reconstructions = torch.sigmoid(model(images)["x_hat_logits"].float())
    model.train(was_training)
    values = model.traversal_values(evaluation.latents.to(device), config.traversal_steps)
    title = f"latentquant: {config.model} on {config.dataset}, {extra.get('steps', '?')} steps"
    with staged_outputs(out_dir) as staging:
        atomic_write_text(staging / METRICS_NAME, json.dumps(metrics, indent=2) + "\n")
        plot_reconstructions(images, reconstructions, staging / "reconstructions.png")
        plot_traversals(
            model,
            evaluation.latents[0],
            values,
            evaluation.active_latents,
            staging / "traversals.png",
            device,
        )
        plot_nmi(
            evaluation.nmi,
            evaluation.active_latents,
            staging / "nmi.png",
            source_names=dataset.factor_names,
            title=f"NMI between factors and latents ({config.model}, {extra.get('steps', '?')} steps)",
        )
        plot_losses(read_log(out_dir), staging / "losses.png")
        model_figures = model.report_figures(staging, read_log(out_dir), config)
        write_html(staging, metrics, config.to_dict(), title, model_figures)
    return out_dir / "report.html"


def evaluate_run(
    out_dir: str | Path,
    eval_samples: int | None = None,
    device: str | None = None,
    metrics: str | Sequence[str] = ("infomec",),
) -> tuple[dict, Path]:
    """Re-evaluate the checkpoint of a run directory and rewrite its ``metrics.json``, figures and report.

    Holds the run directory's lock while it works (refused while a training of the run is active).

    Args:
        out_dir: a directory written by ``latentquant train``.
        eval_samples: evaluation sample size (default: the run's ``eval_samples``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"`` (default: the run's ``device``).
        metrics: ``"all"`` or names from ``infomec, mig, dci, sap, modularity`` (a list or comma-separated);
            InfoMEC and PSNR are always computed (the report needs them), the others are added to
            ``metrics.json`` as scalars (``mig``, ``dci_disentanglement``, ...) and full results (``details``).

    Returns:
        ``(metrics, report_path)``.

    Raises:
        FileNotFoundError: ``out_dir`` is not a run directory.
        ValueError: a corrupt or incompatible checkpoint, an invalid ``eval_samples`` or ``device``, or the
            directory is locked by another process.
        latentquant.train.rundir.OutputWriteError: an output could not be written.
    """
    from latentquant.evaluation import check_metric_names, representation_metrics
    from latentquant.train.config import check_eval_samples

    start = time.perf_counter()
    out_dir = Path(out_dir)
    wanted = [m for m in check_metric_names(metrics) if m != "infomec"]
    if eval_samples is not None:
        check_eval_samples(int(eval_samples))
    if device is not None:
        select_device(device)
    with lock_run(out_dir, "evaluate"):
        if not (out_dir / CHECKPOINT_NAME).is_file():
            raise FileNotFoundError(f"{out_dir} is not a training run directory (no {CHECKPOINT_NAME} in it)")
        checkpoint = load_checkpoint(out_dir / CHECKPOINT_NAME)
        # The checkpoint's configuration is verified by its digest; version-1 checkpoints have none.
        settings = checkpoint.config if checkpoint.config is not None else read_config_file(out_dir)
        dataset = load_dataset(resolve_config(settings))
        config = resolve_config(settings, num_factors=dataset.num_factors)
        if eval_samples is not None:
            config.eval_samples = int(eval_samples)
        torch_device = select_device(device or config.device)
        torch.manual_seed(config.seed)
        model = make_model(config, dataset).to(torch_device)
        restore_model(model, checkpoint.model_state, out_dir / CHECKPOINT_NAME)
        factors = evaluation_factors(dataset, config.eval_samples, config.eval_seed)
        evaluation = evaluate_model(model, dataset, factors, torch_device, config.infomec_convention)
        previous: dict[str, Any] = {}
        if (out_dir / METRICS_NAME).is_file():
            try:
                previous = json.loads((out_dir / METRICS_NAME).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                previous = {}
        keys = ("train_seconds", "steps_per_second", "final_losses")
        extra = {key: previous[key] for key in keys if isinstance(previous, dict) and key in previous}
        extra = {"steps": checkpoint.step, "num_latents": config.num_latents, **extra}
        scores, details = representation_metrics(
            evaluation.factors,
            evaluation.latents,
            model.discrete_latents,
            [config.infomec_convention],
            wanted,
        )
        if wanted:
            extra = {**extra, **scores, "details": details}
        with LogWriter(out_dir) as log:
            log.write({"kind": "eval", "step": checkpoint.step, "metrics": {**evaluation.metrics, **scores}})
        report = write_outputs(
            out_dir, model, dataset, evaluation, config, extra, torch_device, time.perf_counter() - start
        )
        return json.loads((out_dir / METRICS_NAME).read_text()), report
