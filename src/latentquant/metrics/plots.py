"""Pictures of metric results: the NMI heatmap with inactive latents marked.

Drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas), so importing this never changes pyplot's backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def plot_nmi(
    nmi: np.ndarray,
    active: np.ndarray,
    path: str | Path,
    source_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Save the (S, L) NMI matrix as a heatmap PNG; inactive latents are hatched, greyed and labelled.

    Args:
        nmi: normalized mutual information, values in [0, 1].
        active: which latents are active.
        path: output file (parent directories are created).
        source_names: S row labels; default ``s0, s1, ...``.
        title: figure title; default "NMI (sources x latents)".

    Returns:
        The path written.

    Shapes:
        nmi (S, L), active (L,).
    """
    nmi = np.asarray(nmi, dtype=np.float64)
    active = np.asarray(active, dtype=bool)
    if nmi.ndim != 2 or active.shape != (nmi.shape[1],):
        raise ValueError(f"nmi must be (S, L) and active (L,), got shapes {nmi.shape} and {active.shape}")
    num_sources, num_latents = nmi.shape
    names = list(source_names) if source_names is not None else [f"s{i}" for i in range(num_sources)]
    if len(names) != num_sources:
        raise ValueError(f"source_names must have {num_sources} entries, got {len(names)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(1.0 + 0.55 * num_latents, 1.2 + 0.45 * num_sources), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(nmi, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for j in np.flatnonzero(~active):
        ax.add_patch(
            Rectangle(
                (j - 0.5, -0.5), 1.0, num_sources, facecolor="0.85", alpha=0.85, hatch="//", edgecolor="0.4"
            )
        )
    for i in range(num_sources):
        for j in range(num_latents):
            ax.text(
                j,
                i,
                f"{nmi[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if (nmi[i, j] > 0.6 or not active[j]) else "white",
            )
    ax.set_xticks(
        range(num_latents),
        [f"z{j}" if active[j] else f"z{j}\n(inactive)" for j in range(num_latents)],
        fontsize=7,
    )
    ax.set_yticks(range(num_sources), names, fontsize=8)
    ax.set_xlabel("latent")
    ax.set_ylabel("source")
    ax.set_title(title or "NMI (sources x latents)", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=120, format="png")
    return path
