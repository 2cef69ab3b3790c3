"""Plug-in (contingency-count) mutual information and entropy of discrete variables."""

from __future__ import annotations

import numpy as np
import torch

from latentquant.mi import _inputs
from latentquant.mi._inputs import ArrayLike
from latentquant.ops.label_encode import label_encode


def _encode(labels: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """Codes 0..K-1 of each label column in sorted order of its values, and K (``torch.unique``'s inverse and
    length; :func:`latentquant.ops.label_encode`, a hash of the distinct values on CPU)."""
    codes, counts = label_encode(labels)
    rows = codes.T.contiguous()
    return [(rows[j], k) for j, k in enumerate(counts.tolist())]


def _xlogx_sum(counts: torch.Tensor, n: int) -> torch.Tensor:
    """sum_c (n_c / N) log(n_c / N) over the non-zero counts of the last dimension."""
    p = counts.to(torch.float64) / n
    return torch.where(
        p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p)
    ).sum(-1)


def mutual_info_discrete_discrete(x: ArrayLike, y: ArrayLike) -> np.ndarray | torch.Tensor:
    """Plug-in mutual information (nats) of every (column of x, column of y) pair, from contingency counts.

    ``I = sum_ab (n_ab / N) log(N n_ab / (n_a n_b))``, clipped at 0 -- scikit-learn's ``mutual_info_score``.

    Args:
        x: (N,) or (N, L) integer (or bool, or string) labels.
        y: (N,) or (N, S) likewise.

    Returns:
        (L, S) float64 (a dimension is absent when its argument is (N,)); numpy when no argument is a tensor,
        else a tensor on their device.

    Raises:
        ValueError: float labels, mismatched N, no samples.
    """
    fn = "mutual_info_discrete_discrete"
    res = _inputs.result_for(fn, x=x, y=y)
    xt, x_dims = _inputs.discrete(x, fn, "x", res.device)
    yt, y_dims = _inputs.discrete(y, fn, "y", res.device)
    _inputs.check_lengths(fn, xt, yt)
    n = xt.shape[0]
    if n == 0:
        raise ValueError(f"{fn}: x and y must hold at least one sample, got N = 0")
    xs = _encode(xt)
    ys = _encode(yt)
    out = torch.zeros((len(xs), len(ys)), dtype=torch.float64, device=xt.device)
    h_x = [-_xlogx_sum(torch.bincount(cx, minlength=kx), n) for cx, kx in xs]
    for j, (cy, ky) in enumerate(ys):
        h_y = -_xlogx_sum(torch.bincount(cy, minlength=ky), n)
        for i, (cx, kx) in enumerate(xs):
            h_xy = -_xlogx_sum(torch.bincount(cx * ky + cy, minlength=kx * ky), n)
            out[i, j] = (h_x[i] + h_y - h_xy).clamp_min(0.0)  # I = H(x) + H(y) - H(x, y)
    return res.wrap(out.reshape(x_dims + y_dims))


def entropy_discrete(y: ArrayLike) -> np.ndarray | torch.Tensor:
    """Plug-in entropy (nats) of each discrete column: ``H = -sum_c (n_c / N) log(n_c / N)``.

    Args:
        y: (N,) or (N, S) integer (or bool, or string) labels.

    Returns:
        (S,) float64, or a 0-d array/tensor for (N,) input; numpy for numpy input, else a tensor on y's
        device.

    Raises:
        ValueError: float labels, no samples.
    """
    fn = "entropy_discrete"
    res = _inputs.result_for(fn, y=y)
    yt, y_dims = _inputs.discrete(y, fn, "y", res.device)
    if yt.shape[0] == 0:
        raise ValueError(f"{fn}: y must hold at least one sample, got N = 0")
    out = torch.zeros(yt.shape[1], dtype=torch.float64, device=yt.device)
    for j, (codes, k) in enumerate(_encode(yt)):
        out[j] = -_xlogx_sum(torch.bincount(codes, minlength=k), yt.shape[0])
    return res.wrap(out.reshape(y_dims))
