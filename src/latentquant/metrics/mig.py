"""Mutual Information Gap (Chen et al. 2018) as disentanglement_lib computes it.

Each latent is discretized into 20 equal-width bins over its range (``np.histogram`` edges), the plug-in
MI between every label-encoded source and every binned latent is computed in one batched call, and
MIG = mean over sources of (largest − second largest MI over latents) / H(source).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from latentquant import mi
from latentquant.metrics._inputs import EncodedSources, check_pair, encode_sources


@dataclass
class MIGResult:
    """MIG scores.

    Attributes:
        mig: mean normalized gap in [0, 1].
        per_source: (S,) normalized gap of each source.
        mutual_information: (S, L) plug-in MI (nats) between sources and binned latents.
    """

    mig: float
    per_source: np.ndarray
    mutual_information: np.ndarray

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (arrays as nested lists)."""
        return {
            "mig": self.mig,
            "per_source": self.per_source.tolist(),
            "mutual_information": self.mutual_information.tolist(),
        }


def histogram_discretize(latents: torch.Tensor, num_bins: int = 20) -> torch.Tensor:
    """Bin each latent into ``num_bins`` equal-width bins over its range, as disentanglement_lib.

    Bin ``b`` (1-based) holds values in ``[edge[b-1], edge[b])``, the maximum falls in the last bin; a
    constant latent uses numpy's range (value - 0.5, value + 0.5), so it lands in one bin. A latent whose range
    overflows float64 (values near +-1.8e308) is binned divided by 4, which scales every edge exactly.

    Args:
        latents: float values.
        num_bins: number of bins, at least 1.

    Returns:
        (N, L) int64 tensor of bin numbers in 1 .. num_bins, on the CPU.

    Shapes:
        latents (N, L).
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    values = latents.detach().cpu().numpy()
    binned = np.empty(values.shape, dtype=np.int64)
    for j in range(values.shape[1]):
        column = values[:, j]
        with np.errstate(over="ignore"):
            overflows = not np.isfinite(column.max() - column.min())
        if overflows:  # finite values whose range exceeds float64: bin a quarter of them (exact, same bins)
            column = column / 4
        edges = np.histogram_bin_edges(column, bins=num_bins)
        binned[:, j] = np.searchsorted(edges[:-1], column, side="right")
    return torch.from_numpy(binned)


def binned_mutual_information(
    encoded: EncodedSources, latents: torch.Tensor, num_bins: int = 20
) -> torch.Tensor:
    """(S, L) float64 plug-in MI between label-encoded sources and histogram-binned latents (CPU).

    Shapes:
        encoded.codes (N, S), latents (N, L).
    """
    binned = histogram_discretize(latents, num_bins)
    return mi.mutual_info_discrete_discrete(encoded.codes.cpu(), binned).to(torch.float64)


def mig_from_mutual_information(mutual_information: torch.Tensor, entropy: torch.Tensor) -> MIGResult:
    """MIG from an (S, L) MI matrix and the (S,) source entropies; needs L >= 2."""
    if mutual_information.shape[1] < 2:
        raise ValueError(f"MIG needs at least 2 latents, got {mutual_information.shape[1]}")
    top = torch.topk(mutual_information, 2, dim=1).values
    per_source = (top[:, 0] - top[:, 1]) / entropy.to(mutual_information)
    return MIGResult(
        mig=float(per_source.mean()),
        per_source=per_source.numpy(),
        mutual_information=mutual_information.numpy(),
    )


def mig(
    sources: np.ndarray | torch.Tensor, latents: np.ndarray | torch.Tensor, num_bins: int = 20
) -> MIGResult:
    """Mutual Information Gap of a representation (disentanglement_lib's procedure).

    Args:
        sources: ground-truth factors, any values; each column label-encoded, none constant.
        latents: the representation, at least 2 latents.
        num_bins: equal-width bins per latent (disentanglement_lib: 20).

    Returns:
        :class:`MIGResult`.

    Shapes:
        sources (N, S), latents (N, L).
    """
    sources, latents = check_pair(sources, latents)
    encoded = encode_sources(sources, device=torch.device("cpu"))
    return mig_from_mutual_information(binned_mutual_information(encoded, latents, num_bins), encoded.entropy)
