"""Oracles for ``latentquant::knn_mi_cd`` and ``latentquant::knn_mi_cc``: k-NN mutual information by brute force.

Both work on already preprocessed data (scaled, jittered, float64) and reproduce scikit-learn's
``_compute_mi_cd`` (Ross 2014) and ``_compute_mi_cc`` (KSG estimator 1) distance for distance, so they
are the truth the kernels are tested against and, when the extension is missing, what runs.

Distances follow the k-NN searches scikit-learn makes, rounding included:

- continuous-discrete, Euclidean: the squared distance ``sum_d (a_d - b_d)^2`` (summed in dimension
  order) as KDTree computes it; r is ``sqrt`` of the k-th smallest squared distance, shrunk by one ulp
  (``nextafter(r, 0)``), and "within r" means ``squared distance <= r'*r'``. For a scalar latent, a label
  class whose k is at least half its size is searched by scikit-learn with the brute-force
  ``|a|^2 - 2 a b + |b|^2`` expansion (NearestNeighbors picks "brute" when ``k >= count // 2``); we use the
  same expansion there, with the same rounding, so the radii agree bit for bit.
- continuous-continuous, max-norm (Chebyshev) in the joint space and in each marginal; r' = nextafter(r, 0),
  "within r" means ``distance <= r'``.

Materializes (n, n) distance matrices per pair: an oracle, not a kernel.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import digamma


def _sq_dist(a: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of the rows of ``a`` (n, D), summed in dimension order."""
    out = np.zeros((a.shape[0], a.shape[0]))
    for d in range(a.shape[1]):
        diff = a[:, None, d] - a[None, :, d]
        out += diff * diff
    return out


def _brute_expansion_sq_dist(x: np.ndarray) -> np.ndarray:
    """scikit-learn's brute-force squared distances of scalars: ``(x_i^2 + (-2 x_i x_j)) + x_j^2``, clipped at 0."""
    sq = x * x
    return np.maximum((sq[:, None] + (-2.0 * (x[:, None] * x[None, :]))) + sq[None, :], 0.0)


def _kth_other(dist: np.ndarray, k: int) -> np.ndarray:
    """k-th smallest entry of each row, the diagonal (the point itself) left out."""
    dist = dist.copy()
    np.fill_diagonal(dist, np.inf)
    return np.partition(dist, k - 1, axis=1)[:, k - 1]


def mi_cd_pair_ref(c: np.ndarray, labels: np.ndarray, n_neighbors: int) -> float:
    """Ross (2014) estimate of I(c; labels) in nats, as scikit-learn's ``_compute_mi_cd``.

    Shapes: c (n, D) float64, labels (n,) integer.
    """
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    count = counts[inverse]
    keep = count > 1
    n = int(keep.sum())
    if n == 0:
        return 0.0
    radius2 = np.empty(c.shape[0])
    k_all = np.empty(c.shape[0])
    for cls in np.flatnonzero(counts > 1):
        idx = np.flatnonzero(inverse == cls)
        k = min(n_neighbors, idx.size - 1)
        if c.shape[1] == 1 and k >= idx.size // 2:
            dist2 = _brute_expansion_sq_dist(c[idx, 0])
        else:
            dist2 = _sq_dist(c[idx])
        r = np.nextafter(np.sqrt(_kth_other(dist2, k)), 0.0)
        radius2[idx] = r * r
        k_all[idx] = k
    ck = c[keep]
    m = (_sq_dist(ck) <= radius2[keep][:, None]).sum(axis=1)
    mi = digamma(n) + np.mean(digamma(k_all[keep])) - np.mean(digamma(count[keep])) - np.mean(digamma(m))
    return max(0.0, float(mi))


def _cheb_dist(a: np.ndarray) -> np.ndarray:
    return np.abs(a[:, None, :] - a[None, :, :]).max(axis=2)


def mi_cc_pair_ref(a: np.ndarray, b: np.ndarray, n_neighbors: int) -> float:
    """KSG estimator 1 of I(a; b) in nats with the max-norm, as scikit-learn's ``_compute_mi_cc``.

    Shapes: a (n, Da), b (n, Db) float64.
    """
    n = a.shape[0]
    da, db = _cheb_dist(a), _cheb_dist(b)
    r = np.nextafter(_kth_other(np.maximum(da, db), n_neighbors), 0.0)
    nx = (da <= r[:, None]).sum(axis=1)
    ny = (db <= r[:, None]).sum(axis=1)
    mi = digamma(n) + digamma(n_neighbors) - np.mean(digamma(nx)) - np.mean(digamma(ny))
    return max(0.0, float(mi))


def knn_mi_cd_ref(x: torch.Tensor, y: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    """Continuous-discrete MI of every (latent, source) pair.

    Shapes: x (N, L, D) float64 (preprocessed), y (N, S) int64 labels -> (L, S) float64 on x's device.
    """
    xs, ys = x.detach().cpu().double().numpy(), y.detach().cpu().numpy()
    out = np.array(
        [
            [mi_cd_pair_ref(xs[:, i], ys[:, j], n_neighbors) for j in range(ys.shape[1])]
            for i in range(xs.shape[1])
        ]
    )
    return torch.from_numpy(out.reshape(xs.shape[1], ys.shape[1])).to(x.device)


def knn_mi_cc_ref(x: torch.Tensor, y: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    """Continuous-continuous MI of every (column of x, column of y) pair.

    Shapes: x (N, L, Dx), y (N, S, Dy) float64 (preprocessed) -> (L, S) float64 on x's device.
    """
    xs, ys = x.detach().cpu().double().numpy(), y.detach().cpu().double().numpy()
    out = np.array(
        [
            [mi_cc_pair_ref(xs[:, i], ys[:, j], n_neighbors) for j in range(ys.shape[1])]
            for i in range(xs.shape[1])
        ]
    )
    return torch.from_numpy(out.reshape(xs.shape[1], ys.shape[1])).to(x.device)
