"""Argument checks shared by the public op wrappers: the messages users see for bad input."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float(op: str, name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
            + (
                " (integer tensors are not quantized; convert with .float())"
                if not t.is_floating_point()
                else ""
            )
        )


def check_codebook(op: str, z: torch.Tensor, book: torch.Tensor, name: str, rows_match: bool) -> None:
    """z (..., D) and a 2-D codebook: (D, K) when ``rows_match`` (per-dimension) else (K, D)."""
    check_float(op, "z", z)
    check_float(op, name, book)
    if z.dim() < 1:
        raise ValueError(f"{op}: z must have at least one dimension (..., D), got a 0-d tensor")
    if book.dim() != 2:
        raise ValueError(f"{op}: {name} must be 2-D, got shape {tuple(book.shape)}")
    d = z.shape[-1]
    if rows_match and book.shape[0] != d:
        raise ValueError(
            f"{op}: {name} must have shape (D, K) with D = z.shape[-1] = {d}; got z {tuple(z.shape)}, "
            f"{name} {tuple(book.shape)}"
        )
    if not rows_match and book.shape[1] != d:
        raise ValueError(
            f"{op}: {name} must have shape (K, C) with C = z.shape[-1] = {d}; got z {tuple(z.shape)}, "
            f"{name} {tuple(book.shape)}"
        )
    if book.shape[1 if rows_match else 0] == 0:
        raise ValueError(f"{op}: {name} is empty (shape {tuple(book.shape)}); it needs at least one code")
    if z.device != book.device:
        raise ValueError(f"{op}: z is on {z.device} but {name} is on {book.device}")


def check_finite(op: str, name: str, t: torch.Tensor) -> None:
    """Used on the reference path; the compiled kernels check inside their single pass."""
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(
            f"{op}: {name} contains NaN or Inf; fix the input (or pass check_finite=False to skip this check)"
        )


def check_weight(op: str, name: str, w: float) -> float:
    w = float(w)
    if not (w >= 0.0 and w != float("inf")):
        raise ValueError(f"{op}: {name} must be a finite number >= 0, got {w}")
    return w


def check_finite_ref(op: str, z: torch.Tensor, book: torch.Tensor, check: bool) -> None:
    """The reference path's equivalent of the kernels' in-pass checks: with ``check`` (the ops'
    ``check_finite``), NaN/Inf in z or in the codebook raises; without it nothing is checked, on every backend."""
    if check:
        check_finite(op, "z", z)
        if not bool(torch.isfinite(book).all()):
            raise ValueError(f"{op}: the codebook contains NaN or Inf")


def flatten_latents(z: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (N, D), a view where the layout allows; D = 0 is allowed (empty in, empty out)."""
    return z.reshape(math.prod(z.shape[:-1]), z.shape[-1])
