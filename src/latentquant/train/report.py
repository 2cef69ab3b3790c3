"""Run reports: PNG figures (reconstructions, latent traversals, NMI heatmap, loss curves) and one
self-contained HTML page (figures embedded as base64) with the metrics table and the configuration."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from matplotlib.figure import Figure

from latentquant.zoo import Autoencoder

FIGURES = ("reconstructions", "traversals", "nmi", "losses")


def _to_hwc(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W, 3) uint8-range floats (grey images repeated to RGB)."""
    array = images.detach().float().clamp(0, 1).cpu().numpy().transpose(0, 2, 3, 1)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=100, bbox_inches="tight", facecolor="white")


def plot_reconstructions(images: torch.Tensor, reconstructions: torch.Tensor, path: Path) -> None:
    """Originals (top row) above their reconstructions (bottom row). Shapes: ``(B, C, H, W)`` each."""
    originals, recons = _to_hwc(images), _to_hwc(reconstructions)
    count = originals.shape[0]
    fig = Figure(figsize=(1.2 * count, 2.7))
    axes = fig.subplots(2, count, squeeze=False)
    for b in range(count):
        for row, source in enumerate((originals, recons)):
            ax = axes[row, b]
            ax.imshow(source[b], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, 0].set_ylabel("input")
        axes[1, 0].set_ylabel("output")
    fig.suptitle("Reconstructions")
    _save(fig, path)


@torch.no_grad()
def plot_traversals(
    model: Autoencoder,
    base_latent: torch.Tensor,
    values: Sequence[torch.Tensor],
    active: np.ndarray,
    path: Path,
    device: torch.device,
    title: str = "Latent traversals (each row varies one latent)",
) -> None:
    """One row per latent: the decoding of ``base_latent (L,)`` with that latent set to each of its ``values``.

    Inactive latents are labelled as such. For quantized latents ``values`` are the codebook values.
    """
    num_latents = len(values)
    columns = max(len(v) for v in values)
    was_training = model.training
    model.eval()
    rows = []
    for j, row_values in enumerate(values):
        batch = base_latent.to(device).float().repeat(len(row_values), 1)
        batch[:, j] = row_values.to(device).float()
        rows.append(_to_hwc(torch.sigmoid(model.decode_representation(batch).float())))
    model.train(was_training)
    fig = Figure(figsize=(0.9 * columns + 1.2, 0.9 * num_latents + 0.6))
    axes = fig.subplots(num_latents, columns, squeeze=False)
    for j in range(num_latents):
        for k in range(columns):
            ax = axes[j, k]
            ax.set_xticks([])
            ax.set_yticks([])
            if k < rows[j].shape[0]:
                ax.imshow(rows[j][k], interpolation="nearest")
                ax.set_title(f"{float(values[j][k]):.2g}", fontsize=6, pad=1)
            else:
                ax.axis("off")
        label = f"z{j}" if active[j] else f"z{j}\n(inactive)"
        axes[j, 0].set_ylabel(
            label, rotation=0, labelpad=22, fontsize=8, color="black" if active[j] else "grey"
        )
    fig.suptitle(title)
    _save(fig, path)


def plot_image_grid(images: torch.Tensor, path: Path, columns: int = 8, title: str = "") -> None:
    """A grid of images ``(B, C, H, W)`` in [0, 1], ``columns`` per row (e.g. samples from a GAN's prior),
    drawn as one mosaic with 2-pixel white gaps."""
    pictures = _to_hwc(images)
    count, height, width = pictures.shape[:3]
    if count == 0:
        raise ValueError("plot_image_grid: no images given")
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    gap = 2
    mosaic = np.ones((rows * (height + gap) - gap, columns * (width + gap) - gap, 3))
    for index in range(count):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        mosaic[top : top + height, left : left + width] = pictures[index]
    fig = Figure(figsize=(1.0 * columns, 1.0 * rows + 0.4))
    ax = fig.subplots()
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    _save(fig, path)


def plot_gan_curves(records: Sequence[dict[str, Any]], path: Path) -> None:
    """A GAN's training curves: critic and generator losses (left), the Wasserstein estimate (right).

    Reads the ``critic_loss``, ``generator_loss`` and ``wasserstein`` entries of the ``"train"`` log records.
    """
    train = [r for r in records if r.get("kind") == "train"]
    fig = Figure(figsize=(9.0, 3.0))
    left, right = fig.subplots(1, 2)
    for ax, terms in ((left, ("critic_loss", "generator_loss")), (right, ("wasserstein",))):
        for term in terms:
            points = [(r["step"], r["losses"][term]) for r in train if term in r.get("losses", {})]
            if points:
                steps, series = zip(*points)
                ax.plot(
                    steps, series, linewidth=1.2, label=term, marker="o" if len(points) < 20 else None, ms=3
                )
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no training records", ha="center", va="center", transform=ax.transAxes)
    left.set_title("losses", fontsize=9)
    right.set_title("Wasserstein estimate mean D(x) - mean D(G(z))", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_losses(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Training curves: one panel per logged loss term against the step."""
    train = [r for r in records if r.get("kind") == "train"]
    terms = [k for k in train[0]["losses"]] if train else []
    panels = max(1, len(terms))
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(4.0 * cols, 2.8 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    steps = [r["step"] for r in train]
    for ax, term in zip(axes, terms):
        series = [r["losses"][term] for r in train]
        ax.plot(steps, series, linewidth=1.2)
        if all(v > 0 for v in series):
            ax.set_yscale("log")
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(terms) :]:
        ax.axis("off")
    if not terms:
        axes[0].text(0.5, 0.5, "no training records", ha="center", va="center")
    fig.suptitle("Training losses")
    fig.tight_layout()
    _save(fig, path)


def _embed(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def write_html(
    out_dir: Path,
    metrics: dict[str, Any],
    config: dict[str, Any],
    title: str,
    extra_figures: dict[str, str] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` embedding the figures ``out_dir/<name>.png`` that exist: the standard
    :data:`FIGURES`, then ``extra_figures`` (name -> caption; the model's own, e.g. a GAN's samples)."""
    rows = []
    for key in (
        "model",
        "dataset",
        "steps",
        "infom",
        "infoe",
        "infoc",
        "psnr",
        "binary_cross_entropy",
        "eval_samples",
        "train_seconds",
        "steps_per_second",
    ):
        if key in metrics:
            value = metrics[key]
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            rows.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(text)}</td></tr>")
    provenance = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>"
        for key, value in (metrics.get("provenance") or {}).items()
    )
    captions = {
        "reconstructions": "Reconstructions of evaluation images (top: input, bottom: output).",
        "traversals": "Latent traversals: each row decodes one evaluation image's representation with one "
        "latent set to each value (quantized latents: every codebook value).",
        "nmi": "Normalized mutual information between true factors (rows) and latents (columns); "
        "inactive latents are hatched and starred.",
        "losses": "Training loss terms (unweighted) over steps.",
    }
    captions.update(extra_figures or {})
    figures = []
    for name in (*FIGURES, *(extra_figures or {})):
        png = out_dir / f"{name}.png"
        if png.exists():
            figures.append(
                f'<figure><img alt="{name}" src="{_embed(png)}"><figcaption>{html.escape(captions[name])}'
                "</figcaption></figure>"
            )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}}
img{{max-width:100%}}figure{{margin:1.5em 0}}pre{{background:#f5f5f5;padding:1em;overflow:auto}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<h2>Metrics</h2>
<table>{"".join(rows)}</table>
{"".join(figures)}
<h2>Configuration</h2>
<pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>
<h2>Provenance</h2>
<table>{provenance}</table>
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path
