"""Argument checks, numpy/tensor conversion and scikit-learn-style preprocessing for ``latentquant.mi``."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # numpy array, torch tensor, or anything np.asarray accepts


@dataclass
class Result:
    """Where the answer goes: numpy when no argument was a tensor, else a tensor on their device."""

    as_tensor: bool
    device: torch.device

    def wrap(self, out: torch.Tensor) -> np.ndarray | torch.Tensor:
        return out.to(self.device) if self.as_tensor else out.cpu().numpy()


def result_for(fn: str, **args: ArrayLike) -> Result:
    devices = {name: a.device for name, a in args.items() if isinstance(a, torch.Tensor)}
    if len(set(devices.values())) > 1:
        raise ValueError(f"{fn}: tensor arguments must be on one device, got {devices}")
    if devices:
        return Result(True, next(iter(devices.values())))
    return Result(False, torch.device("cpu"))


def _to_tensor(a: ArrayLike, fn: str, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().to(device)
    arr = np.asarray(a)
    if arr.dtype.kind in "USO":  # strings or objects: class labels, encoded in sorted order
        if arr.ndim not in (1, 2):
            raise ValueError(
                f"{fn}: {name} must have 1 or 2 dimensions (N,) or (N, S), got shape {arr.shape}"
            )
        cols = arr.reshape(arr.shape[0], -1)
        codes = np.stack(
            [np.unique(cols[:, j], return_inverse=True)[1].reshape(-1) for j in range(cols.shape[1])], 1
        )
        arr = codes.reshape(arr.shape)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{fn}: {name} must be numeric, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device)


def continuous(
    a: ArrayLike, fn: str, name: str, device: torch.device
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``a`` as an (N, C, D) float64 tensor, and the output dimensions it contributes (``()`` or ``(C,)``).

    (N,) is one scalar variable, (N, C) C scalar variables, (N, C, D) C variables with D components.
    """
    t = _to_tensor(a, fn, name, device)
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{fn}: {name} must be real-valued (float or integer), got dtype {t.dtype}")
    if t.dim() not in (1, 2, 3):
        raise ValueError(
            f"{fn}: {name} must have shape (N,), (N, C) or (N, C, D), got shape {tuple(t.shape)}"
        )
    t = t.to(torch.float64)
    # A finite sum proves every entry finite (a NaN or Inf entry makes it NaN or Inf): one fast pass; the
    # exact check runs only when the sum is not finite (bad input, or finite entries whose sum overflows).
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{fn}: {name} contains NaN or Inf")
    out_dims = () if t.dim() == 1 else (t.shape[1],)
    if t.dim() == 1:
        t = t[:, None, None]
    elif t.dim() == 2:
        t = t[:, :, None]
    return t.contiguous(), out_dims


def discrete(a: ArrayLike, fn: str, name: str, device: torch.device) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``a`` as an (N, C) int64 tensor of labels, and the output dimensions it contributes."""
    t = _to_tensor(a, fn, name, device)
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise ValueError(
            f"{fn}: {name} must hold integer class labels (a discrete variable), got dtype {t.dtype}; "
            "cast whole-valued floats to int, or use the continuous estimator"
        )
    if t.dim() not in (1, 2):
        raise ValueError(f"{fn}: {name} must have shape (N,) or (N, C), got shape {tuple(t.shape)}")
    out_dims = () if t.dim() == 1 else (t.shape[1],)
    t = t.to(torch.int64)
    return (t[:, None] if t.dim() == 1 else t).contiguous(), out_dims


def check_lengths(fn: str, x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{fn}: x and y must have the same number of samples (first dimension), got {x.shape[0]} and {y.shape[0]}"
        )


def check_knn(fn: str, n: int, n_neighbors: int, jitter: float) -> None:
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)):
        raise ValueError(f"{fn}: n_neighbors must be an int, got {type(n_neighbors).__name__}")
    if not 1 <= n_neighbors < n:
        raise ValueError(
            f"{fn}: n_neighbors must be in [1, N - 1] = [1, {n - 1}] for N = {n} samples, got {n_neighbors}"
        )
    if not (isinstance(jitter, (int, float)) and math.isfinite(jitter) and jitter >= 0):
        raise ValueError(f"{fn}: jitter must be a finite number >= 0, got {jitter!r}")


def _column_std(x: torch.Tensor, target: bool) -> torch.Tensor:
    """Population std (ddof = 0) of each column of (N, C) float64.

    On the CPU it is computed exactly as scikit-learn does, so the scaled data agree bit for bit: features
    with ``np.nanstd`` (same bits as ``np.std`` on finite data) over the column-gathered copy ``X[:, mask]``
    (which numpy lays out in Fortran order, so each column is summed contiguously), a target
    (``mutual_info_regression``'s y) with ``np.nanstd`` of each contiguous column. Both are therefore
    ``np.std`` of each column copied contiguous (the same pairwise sums; tested against scikit-learn), which
    is what runs here for both (``target`` is kept for the callers): 3x faster than ``np.std`` of the
    (N, C) Fortran copy, whose fresh temporaries cost more than the sums. Elsewhere ``torch.std``, which may
    differ in the last bit.
    """
    if x.device.type != "cpu":
        return x.std(dim=0, correction=0)
    a = x.numpy()
    # np.std, not np.nanstd: the data were checked finite, and on NaN-free input nanvar runs the same
    # sums in the same order (bit-identical, tested), without its NaN mask and copy passes (3x faster).
    return torch.from_numpy(np.array([np.std(np.ascontiguousarray(a[:, j])) for j in range(a.shape[1])]))


def rescale_overflowing(x: torch.Tensor) -> torch.Tensor:
    """Divide each column of (N, C) float64 ``x`` whose variance overflows float64 (finite |values| ~1e154 or more)
    by its largest |value|; other columns (and ``x`` itself when none overflows) are returned untouched.

    For callers whose result does not depend on a column's scale (std scaling, standardization): without it the
    std is Inf and the column becomes all 0.
    """
    if x.shape[0] < 2:
        return x
    overflow = ~torch.isfinite(x.std(dim=0, correction=0))
    if not bool(overflow.any()):
        return x
    largest = x.abs().amax(dim=0)
    return torch.where(overflow, x / torch.where(overflow, largest, 1.0), x)


# A column whose tie-breaking noise reaches this share of its scaled spread has its MI estimates pulled to 0.
DROWNED_SHARE = 0.01


def _warn_drowned(
    raw: torch.Tensor,
    raw_std: torch.Tensor,
    spread: torch.Tensor,
    mean_abs: torch.Tensor,
    jitter: float,
    name: str,
) -> None:
    """Warn, naming the columns, when a non-constant column's spread is so small against its magnitude
    (``std / mean|x|`` below about ``jitter / DROWNED_SHARE``; near-constant columns are not scaled at all) that
    the jitter noise drowns it.

    Shapes: raw (N, C) float64 (before the scaling); raw_std (its std), spread (the std after the scaling) and
    mean_abs (mean |x| after the scaling) (C,).
    """
    if raw.shape[0] < 2:
        return
    # A column whose std is > 0 varies; one whose std is 0 may still vary (its squares underflowing): only
    # those (rare) columns are looked at.
    varies = raw_std > 0
    zero = (~varies).nonzero().flatten()
    if len(zero):
        varies[zero] = raw[:, zero].amax(dim=0) > raw[:, zero].amin(dim=0)
    noise = jitter * mean_abs.clamp_min(1.0)
    drowned = varies & (noise >= DROWNED_SHARE * spread)
    columns = drowned.nonzero().flatten().tolist()
    if columns:
        warnings.warn(
            f"k-NN mutual information: columns {columns} of {name} are so flat (spread tiny against their "
            f"magnitude) that the tie-breaking jitter ({jitter:g} x mean |x| after the std scaling) drowns them: "
            "their MI estimates are ~0. Center them first, e.g. x - mean (or standardize: (x - mean) / std)",
            stacklevel=4,
        )


def preprocess(
    xs: list[torch.Tensor], jitter: float, seed: int, targets: tuple[bool, ...] = ()
) -> list[torch.Tensor]:
    """Scale every scalar column by its std (no centering) and add seeded jitter, as scikit-learn does.

    Near-constant columns (std < 10 eps) are left unscaled. The noise is
    ``jitter * max(1, mean |column|) * N(0, 1)``, drawn on the CPU in float32 (torch's vectorized normal
    sampler, 6x faster than float64 at this size; the noise is ~1e-10 of the data, so its own precision is
    irrelevant) from ``torch.Generator().manual_seed(seed)`` for all columns of all tensors together (in
    order), then moved to the data's device, so the same data and seed give the same noise on every device.

    ``targets[i]`` marks a tensor scaled like scikit-learn scales a regression target (see ``_column_std``).

    Shapes: each (N, C_i, D_i) float64 -> same.
    """
    flat = [x.reshape(x.shape[0], -1) for x in xs]
    targets = targets or (False,) * len(xs)
    out, mean_abs = [], []
    for i, (f, target) in enumerate(zip(flat, targets)):
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowing variance is handled below
            raw_std = _column_std(f, target).to(f.device)
        if not bool(
            torch.isfinite(raw_std).all()
        ):  # a variance overflowed: scale-free, so shrink those columns
            f = rescale_overflowing(f)
            raw_std = _column_std(f, target).to(f.device)
        std = torch.where(raw_std < 10 * torch.finfo(torch.float64).eps, torch.ones_like(raw_std), raw_std)
        out.append(f / std)
        # mean |x| after the scaling: the noise scale (only needed with a jitter)
        mean_abs.append(
            torch.linalg.vector_norm(out[-1], ord=1, dim=0) / max(f.shape[0], 1)
            if jitter > 0
            else torch.zeros_like(std)
        )
        # the std after the scaling is raw_std / std (to rounding: this only sets a warning threshold)
        _warn_drowned(
            f, raw_std, raw_std / std, mean_abs[-1], jitter, "xy"[i] if len(xs) <= 2 else f"argument {i}"
        )
    if jitter > 0:
        widths = [f.shape[1] for f in out]
        gen = torch.Generator().manual_seed(int(seed))
        noise = torch.randn((out[0].shape[0], sum(widths)), generator=gen, dtype=torch.float32)
        for i, chunk in enumerate(noise.split(widths, dim=1)):
            scale = mean_abs[i].clamp_min(1.0)
            out[i].add_(chunk.to(device=out[i].device, dtype=torch.float64).mul_(jitter * scale))
    return [o.reshape(x.shape).contiguous() for o, x in zip(out, xs)]
