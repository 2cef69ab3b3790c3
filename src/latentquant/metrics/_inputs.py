"""Input checks and preprocessing shared by every metric: shapes, label encoding, standardization, splits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from latentquant import mi

ArrayLike = np.ndarray | torch.Tensor


def as_2d(name: str, x: object) -> ArrayLike:
    """Return ``x`` as a 2-D numpy array or tensor (a tensor stays a tensor), or raise naming ``name``."""
    if not isinstance(x, torch.Tensor):
        x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_samples, num_columns), got shape {tuple(x.shape)}")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name} needs at least 2 samples and 1 column, got shape {tuple(x.shape)}")
    return x


def check_pair(sources: object, latents: object) -> tuple[ArrayLike, torch.Tensor]:
    """Validate a (sources, latents) pair; latents come back as a float64 tensor on their own device.

    Args:
        sources: ground-truth factors, any dtype (numpy or torch).
        latents: the representation, numeric and finite.

    Returns:
        (sources, latents) with sources as given (2-D) and latents a float64 tensor.

    Shapes:
        sources (N, S), latents (N, L).
    """
    sources = as_2d("sources", sources)
    latents = as_2d("latents", latents)
    if sources.shape[0] != latents.shape[0]:
        raise ValueError(
            f"sources and latents must have the same number of samples, got {sources.shape[0]} and {latents.shape[0]}"
        )
    if isinstance(latents, np.ndarray):
        if not np.issubdtype(latents.dtype, np.number) or np.issubdtype(latents.dtype, np.complexfloating):
            raise ValueError(f"latents must be real numbers, got dtype {latents.dtype}")
        latents = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float64))
    elif latents.is_complex():
        raise ValueError(f"latents must be real numbers, got dtype {latents.dtype}")
    latents = latents.to(torch.float64)
    if not bool(torch.isfinite(latents).all()):
        raise ValueError("latents contain NaN or Inf")
    return sources, latents


@dataclass
class EncodedSources:
    """Sources label-encoded column by column, with their plug-in entropies.

    Attributes:
        codes: (N, S) int64 tensor of class indices ``0 .. num_classes[i] - 1``.
        num_classes: (S,) int64 tensor.
        entropy: (S,) float64 tensor, plug-in entropy in nats.
    """

    codes: torch.Tensor
    num_classes: torch.Tensor
    entropy: torch.Tensor


def encode_columns(x: ArrayLike, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Label-encode each column of ``x`` (sorted unique values → 0, 1, ...).

    Args:
        x: values of any sortable dtype, numpy or torch.
        device: where the codes go; default the input's device (CPU for numpy).

    Returns:
        (codes (N, C) int64 tensor, num_classes (C,) int64 tensor).
    """
    columns, counts = [], []
    for j in range(x.shape[1]):
        if isinstance(x, torch.Tensor):
            unique, inverse = torch.unique(x[:, j], return_inverse=True)
        else:
            unique, inverse = np.unique(x[:, j], return_inverse=True)
            inverse = torch.from_numpy(inverse.reshape(-1).astype(np.int64))
        columns.append(inverse.to(torch.int64))
        counts.append(len(unique))
    codes = torch.stack(columns, dim=1)
    if device is not None:
        codes = codes.to(device)
    return codes, torch.tensor(counts, dtype=torch.int64, device=codes.device)


def encode_sources(sources: ArrayLike, device: torch.device | None = None) -> EncodedSources:
    """Label-encode sources and compute their plug-in entropies; a constant source is an error.

    Shapes:
        sources (N, S).
    """
    codes, num_classes = encode_columns(sources, device)
    constant = (num_classes < 2).nonzero().flatten().tolist()
    if constant:
        raise ValueError(f"sources columns {constant} are constant (one value): drop them before evaluating")
    entropy = mi.entropy_discrete(codes).to(torch.float64)
    return EncodedSources(codes=codes, num_classes=num_classes, entropy=entropy)


def standardize(x: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
    """Per column ``(x - mean) / std`` with the population std (as StandardScaler; constant columns → 0).

    Args:
        x: values.
        rows: compute mean and std on these rows only (a training split); default all rows.

    Shapes:
        x (N, L).
    """
    fit_on = x if rows is None else x[torch.as_tensor(rows, device=x.device)]
    mean = fit_on.mean(dim=0)
    std = fit_on.std(dim=0, correction=0)
    return (x - mean) / torch.where(std > 0, std, 1.0)


def train_test_split(num_samples: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(num_samples)`` into (train, test) index arrays, both non-empty."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    num_test = min(max(int(round(num_samples * test_fraction)), 1), num_samples - 1)
    order = np.random.default_rng(seed).permutation(num_samples)
    return np.sort(order[num_test:]), np.sort(order[:num_test])


@contextlib.contextmanager
def cpu_threads(device: torch.device, num_threads: int | None) -> Iterator[None]:
    """Cap torch's intra-op threads while computing on the CPU, restoring the setting afterwards.

    On a CPU shared with other jobs, every multi-threaded op waits for its slowest, descheduled thread:
    measured here under load 8 on 2 cores, label-encoding 50,000 samples took 3.0 s with 2 threads and
    0.05 s with 1, and a logistic fit 16.7 s vs 0.6 s. ``None`` keeps torch's setting; CUDA is untouched.
    """
    if device.type != "cpu" or num_threads is None:
        yield
        return
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
