"""Factor sweeps: one row per factor, that factor stepping through its values, the others held fixed."""

from __future__ import annotations

import os

import numpy as np
import torch

from latentquant.data.base import GeneratorLike, GroundTruthDataset


def factor_sweep(
    dataset: GroundTruthDataset, base: torch.Tensor, max_columns: int = 15
) -> tuple[torch.Tensor, list[list[int]]]:
    """Images of every factor's sweep around one factor tuple.

    Args:
        dataset: any ground-truth dataset with F factors.
        base: ``(F,)`` int factor indices held fixed while one factor sweeps.
        max_columns: most values shown per factor; larger factors are subsampled evenly (ends included).
    Returns:
        ``images (F, max_columns', C, H, W)`` float32, max_columns' = min(max_columns, largest factor size),
        padded with zeros where a factor has fewer values; ``columns[f]`` lists the values shown for factor f.
    """
    if max_columns < 2:
        raise ValueError(f"max_columns: expected >= 2, got {max_columns}")
    base = dataset.check_factors(torch.as_tensor(base).reshape(1, -1))[0]
    width = min(max_columns, max(dataset.factor_sizes))
    images = torch.zeros((dataset.num_factors, width, *dataset.image_shape), dtype=torch.float32)
    columns = []
    for f, size in enumerate(dataset.factor_sizes):
        values = np.unique(np.linspace(0, size - 1, min(size, max_columns)).round().astype(np.int64))
        batch = base.repeat(len(values), 1)
        batch[:, f] = torch.from_numpy(values)
        images[f, : len(values)] = dataset.images_for(batch)
        columns.append(values.tolist())
    return images, columns


def save_factor_grid(
    dataset: GroundTruthDataset,
    path: str | os.PathLike[str],
    generator: GeneratorLike = 0,
    max_columns: int = 15,
) -> torch.Tensor:
    """Write a PNG of ``factor_sweep`` around a random factor tuple, rows labelled with factor names.

    Args:
        dataset: the dataset to show.
        path: the PNG file to write (its folder must exist).
        generator: seed or generator for the fixed factor tuple.
        max_columns: most values shown per factor.
    Returns:
        the ``(F,)`` base factor tuple used.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = dataset.sample_factors(1, generator)[0]
    images, columns = factor_sweep(dataset, base, max_columns)
    rows, cols, channels, height, width = images.shape
    gap = 2
    canvas = np.ones((rows * (height + gap) + gap, cols * (width + gap) + gap, 3), dtype=np.float32)
    for r in range(rows):
        for c in range(len(columns[r])):
            tile = images[r, c].permute(1, 2, 0).numpy()
            y, x = gap + r * (height + gap), gap + c * (width + gap)
            canvas[y : y + height, x : x + width] = tile if channels == 3 else tile[..., :1]
    inches = 2.0 / 100  # two screen pixels per image pixel at 100 dpi
    left, top, bottom, right = 2.0, 0.4, 0.1, 0.1
    grid_w, grid_h = canvas.shape[1] * inches, canvas.shape[0] * inches
    fig_w, fig_h = grid_w + left + right, grid_h + top + bottom
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=100)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, grid_w / fig_w, grid_h / fig_h))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([gap + r * (height + gap) + height / 2 for r in range(rows)])
    ax.set_yticklabels(
        [f"{name} ({size})" for name, size in zip(dataset.factor_names, dataset.factor_sizes)], fontsize=11
    )
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fixed = ", ".join(f"{n}={int(v)}" for n, v in zip(dataset.factor_names, base))
    ax.set_title(f"{dataset.name}: one row per factor sweep, others fixed at {fixed}", fontsize=9)
    fig.savefig(os.fspath(path), format="png")
    plt.close(fig)
    return base
