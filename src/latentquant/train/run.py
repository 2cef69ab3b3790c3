"""What training and re-evaluation share: the run directory's files, device selection, building the
dataset and model from a configuration, and writing metrics, figures and the HTML report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from latentquant.data import get_dataset
from latentquant.metrics import plot_nmi
from latentquant.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, restore_model
from latentquant.train.config import TrainConfig, load_yaml_config, resolve_config
from latentquant.train.evaluate import Evaluation, evaluate_model, evaluation_factors
from latentquant.train.report import FIGURES, plot_losses, plot_reconstructions, plot_traversals, write_html
from latentquant.zoo import Autoencoder, build_model

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.json"
LOG_NAME = "log.jsonl"
REPORT_IMAGES = 8


def select_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda..."`` requires a CUDA device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but no CUDA device is available")
    return device


def load_dataset(config: TrainConfig) -> Any:
    """The dataset a configuration names (``latentquant.data.get_dataset``)."""
    return get_dataset(config.dataset, data_path=config.data_path)


def make_model(config: TrainConfig, dataset: Any) -> Autoencoder:
    """The zoo model a resolved configuration describes, for ``dataset``'s image shape."""
    args = dict(config.model_args)
    if "dataset_size" in args and args["dataset_size"] is None:
        args["dataset_size"] = len(dataset)
    return build_model(
        config.model,
        int(config.num_latents),
        tuple(dataset.image_shape),
        encoder=config.encoder,
        decoder=config.decoder,
        **args,
    )


def read_run_config(out_dir: Path) -> dict[str, Any]:
    """The settings stored in a run directory's ``config.yaml``.

    Raises:
        FileNotFoundError: ``out_dir`` is not a run directory (no config.yaml or no checkpoint).
    """
    if not out_dir.is_dir():
        raise FileNotFoundError(f"run directory {out_dir} does not exist")
    if not (out_dir / CONFIG_NAME).is_file() or not (out_dir / CHECKPOINT_NAME).is_file():
        raise FileNotFoundError(
            f"{out_dir} is not a training run directory (expected {CONFIG_NAME} and {CHECKPOINT_NAME} in it)"
        )
    return load_yaml_config(out_dir / CONFIG_NAME)


def remove_run_files(out_dir: Path) -> None:
    """Delete the files a run writes in ``out_dir`` (and nothing else), for ``overwrite=true``."""
    names = [CONFIG_NAME, LOG_NAME, METRICS_NAME, CHECKPOINT_NAME, "report.html"]
    names += [f"{figure}.png" for figure in FIGURES]
    for name in names:
        (out_dir / name).unlink(missing_ok=True)


def write_config(out_dir: Path, config: TrainConfig) -> None:
    (out_dir / CONFIG_NAME).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def read_log(out_dir: Path, up_to_step: int | None = None) -> list[dict[str, Any]]:
    """Records of ``log.jsonl`` (only those with ``step <= up_to_step`` when given); damaged lines are skipped."""
    path = out_dir / LOG_NAME
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and (up_to_step is None or record.get("step", 0) <= up_to_step):
            records.append(record)
    return records


def rewrite_log(out_dir: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``log.jsonl`` with ``records`` (used on resume to drop records past the checkpoint)."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    tmp = out_dir / f".{LOG_NAME}.tmp-{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, out_dir / LOG_NAME)


def resolved_from_dir(out_dir: Path) -> tuple[TrainConfig, Any]:
    """The configuration and dataset of an existing run directory."""
    settings = read_run_config(out_dir)
    dataset = load_dataset(resolve_config(settings))
    return resolve_config(settings, num_factors=dataset.num_factors), dataset


@torch.no_grad()
def write_outputs(
    out_dir: Path,
    model: Autoencoder,
    dataset: Any,
    evaluation: Evaluation,
    config: TrainConfig,
    extra: dict[str, Any],
    device: torch.device,
) -> Path:
    """Write ``metrics.json``, the four figures and ``report.html`` for a run; returns the report's path."""
    metrics = {
        "model": config.model,
        "dataset": config.dataset,
        **extra,
        **evaluation.summary(),
        "factor_names": list(dataset.factor_names),
    }
    (out_dir / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n")

    factors = evaluation.factors[:REPORT_IMAGES]
    images = dataset.images_for(factors).to(device)
    was_training = model.training
    model.eval()
    reconstructions = torch.sigmoid(model(images)["x_hat_logits"].float())
    model.train(was_training)
    plot_reconstructions(images, reconstructions, out_dir / "reconstructions.png")
    values = model.traversal_values(evaluation.latents.to(device), config.traversal_steps)
    plot_traversals(
        model, evaluation.latents[0], values, evaluation.active_latents, out_dir / "traversals.png", device
    )
    plot_nmi(
        evaluation.nmi,
        evaluation.active_latents,
        out_dir / "nmi.png",
        source_names=dataset.factor_names,
        title=f"NMI between factors and latents ({config.model}, {extra.get('steps', '?')} steps)",
    )
    plot_losses(read_log(out_dir), out_dir / "losses.png")
    model_figures = model.report_figures(out_dir, read_log(out_dir), config)
    title = f"latentquant: {config.model} on {config.dataset}, {extra.get('steps', '?')} steps"
    return write_html(out_dir, metrics, config.to_dict(), title, model_figures)


def evaluate_run(
    out_dir: str | Path, eval_samples: int | None = None, device: str | None = None
) -> tuple[dict, Path]:
    """Re-evaluate the checkpoint of a run directory and rewrite its ``metrics.json``, figures and report.

    Args:
        out_dir: a directory written by ``latentquant train``.
        eval_samples: evaluation sample size (default: the run's ``eval_samples``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"`` (default: the run's ``device``).

    Returns:
        ``(metrics, report_path)``.

    Raises:
        FileNotFoundError: ``out_dir`` is not a run directory.
        ValueError: a corrupt or incompatible checkpoint, or an invalid ``eval_samples``.
    """
    out_dir = Path(out_dir)
    config, dataset = resolved_from_dir(out_dir)
    if eval_samples is not None:
        if eval_samples < 1:
            raise ValueError(f"eval_samples must be >= 1, got {eval_samples}")
        config.eval_samples = int(eval_samples)
    torch_device = select_device(device or config.device)
    checkpoint = load_checkpoint(out_dir / CHECKPOINT_NAME)
    torch.manual_seed(config.seed)
    model = make_model(config, dataset).to(torch_device)
    restore_model(model, checkpoint.model_state, out_dir / CHECKPOINT_NAME)
    factors = evaluation_factors(dataset, config.eval_samples, config.eval_seed)
    evaluation = evaluate_model(model, dataset, factors, torch_device, config.infomec_convention)
    previous: dict[str, Any] = {}
    if (out_dir / METRICS_NAME).is_file():
        try:
            previous = json.loads((out_dir / METRICS_NAME).read_text())
        except json.JSONDecodeError:
            previous = {}
    extra = {
        key: previous[key] for key in ("train_seconds", "steps_per_second", "final_losses") if key in previous
    }
    extra = {"steps": checkpoint.step, "num_latents": config.num_latents, **extra}
    with open(out_dir / LOG_NAME, "a") as handle:
        handle.write(
            json.dumps({"kind": "eval", "step": checkpoint.step, "metrics": evaluation.metrics}) + "\n"
        )
    report = write_outputs(out_dir, model, dataset, evaluation, config, extra, torch_device)
    return json.loads((out_dir / METRICS_NAME).read_text()), report
