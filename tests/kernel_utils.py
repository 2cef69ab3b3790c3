"""Helpers shared by the kernel tests: tolerances per dtype, input builders, NaN-poisoned allocations."""

from __future__ import annotations

import contextlib

import torch

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

# Shapes of z as (leading..., D): empty, one element, odd sizes, many leading dims.
SHAPES = [(0, 3), (1, 1), (7, 5), (2, 3, 4, 6), (33, 12), (5, 0, 2)]


def tol(dtype: torch.dtype) -> dict[str, float]:
    """Tolerances for results computed in float32 (float64 for float64) and rounded to ``dtype``."""
    return {
        torch.float16: dict(atol=1e-3, rtol=1e-3),
        torch.bfloat16: dict(atol=1e-2, rtol=1e-2),
        torch.float32: dict(atol=1e-6, rtol=1e-5),
        torch.float64: dict(atol=1e-12, rtol=1e-12),
    }[dtype]


@contextlib.contextmanager
def poisoned_allocations():
    """Every ``empty`` allocation, including the kernels' own outputs, is filled with NaN (floats) or the
    largest integer, so an element a kernel forgets to write shows up in the comparison."""
    was = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a strided layout (every other element of a wider buffer)."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    out = wide[..., ::2]
    assert not out.is_contiguous() or t.numel() <= 1
    return out


def random_codebook(d: int, k: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """(d, k) per-dimension values, unsorted, distinct within each row."""
    base = torch.linspace(-1.0, 1.0, k, dtype=torch.float64).expand(d, k)
    jitter = torch.rand(d, k, generator=generator, dtype=torch.float64) * (1.5 / max(k, 1))
    perm = (
        torch.stack([torch.randperm(k, generator=generator) for _ in range(d)])
        if d
        else torch.zeros(0, k).long()
    )
    return (base + jitter).gather(1, perm).to(dtype)
