"""Helpers shared by the Triton launchers: argument checks (messages name the op and the argument),
the compute dtype, the nearest-value search, the device guard and the device-side checks.

- Launches: every launcher runs its kernels under :func:`device_guard` (the tensor's device is made current,
  so a tensor on cuda:1 launches on cuda:1 and on that device's current stream) and calls ``kernel[grid]``
  directly. The launchers serve opaque custom ops (``torch.library`` CUDA kernels), which
  ``torch.compile`` never traces into, so ``wrap_triton``'s higher-order-op dispatch would only add cost.
- Checks (NaN/Inf in z and the codebook, indices outside [0, K) in the backward ops) are counted by the
  kernels into per-program flags and read back once per call (one synchronization) by
  :func:`raise_if_not_finite` / :func:`raise_if_bad_index`. While the current stream is capturing a CUDA
  graph (``torch.compile(mode="reduce-overhead")``, ``torch.cuda.graph``) no check is read back: a replay
  could not raise, and a synchronization is illegal during capture (:func:`checks_enabled`). Out-of-range
  indices are then skipped (never written out of bounds).
- Scatters (the backward kernels) add with relaxed atomics, so gradients are not bit-deterministic on the
  GPU; scatters into at most 32 bins (D * K of the scalar codebooks) are privatized per program first
  (``scalar_quantize.scatter_plan``: one atomic per bin and program, not per element). With
  ``torch.use_deterministic_algorithms(True)`` the kernels write each element's contribution and
  bin instead, and ``index_put_(accumulate=True)`` (deterministic in that mode) sums them
  (:func:`deterministic_scatter`). Loss partial sums are written per program and summed by torch in a
  fixed order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import triton
import triton.language as tl

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any tensor is float64, else float32 (DESIGN §3: compute in float32 or better)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def check_float(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_rank(op: str, name: str, t: torch.Tensor, rank: int) -> None:
    if t.dim() != rank:
        raise ValueError(f"{op}: {name} must have {rank} dimensions, got shape {tuple(t.shape)}")


def check_indices(op: str, indices: torch.Tensor, shape: tuple[int, ...]) -> None:
    if indices.dtype != torch.int64:
        raise ValueError(f"{op}: indices must be int64, got {indices.dtype}")
    if tuple(indices.shape) != shape:
        raise ValueError(f"{op}: indices must have shape {shape}, got {tuple(indices.shape)}")


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        where = ", ".join(f"{name} on {t.device}" for name, t in tensors.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {where}")


def check_scalar_codebook(op: str, z: torch.Tensor, values: torch.Tensor) -> None:
    """z (N, D) and values (D, K), K >= 1."""
    check_float(op, "z", z)
    check_float(op, "values", values)
    check_rank(op, "z", z, 2)
    check_rank(op, "values", values, 2)
    if values.shape[0] != z.shape[1]:
        raise ValueError(
            f"{op}: values must have shape (D, K) with D = z.shape[-1] = {z.shape[1]}, "
            f"got values of shape {tuple(values.shape)}"
        )
    if values.shape[1] < 1:
        raise ValueError(
            f"{op}: values needs at least one value per dimension, got shape {tuple(values.shape)}"
        )
    check_same_device(op, z=z, values=values)


def device_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``t``'s CUDA device current for the launches inside (a no-op for CPU tensors, which only the
    interpreter runs)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def capturing(t: torch.Tensor) -> bool:
    """Whether the current stream of ``t``'s CUDA device is capturing a CUDA graph (False off CUDA)."""
    if t.device.type != "cuda":
        return False
    with torch.cuda.device(t.device):
        return torch.cuda.is_current_stream_capturing()


def checks_enabled(check: bool, t: torch.Tensor) -> bool:
    """Whether to read the device-side check flags back for an op on ``t``: when asked to, and not while
    the current stream is capturing a CUDA graph (a synchronization is illegal there, and a replay could
    not raise)."""
    return check and not capturing(t)


def deterministic() -> bool:
    """Whether the scatters must be deterministic (``torch.use_deterministic_algorithms(True)``)."""
    return torch.are_deterministic_algorithms_enabled()


def deterministic_scatter(bins: torch.Tensor, bin_index: torch.Tensor, contrib: torch.Tensor) -> torch.Tensor:
    """bins[bin_index[i]] += contrib[i] for every i, in an order that does not vary between runs.

    Shapes: bins (B,) in the accumulation dtype, bin_index (M,) int64 in [0, B), contrib (M,) in bins' dtype.
    """
    return bins.index_put_((bin_index,), contrib, accumulate=True)


@contextlib.contextmanager
def scatter_launch(bins: torch.Tensor, numel: int, det: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Set up and finish a backward scatter kernel's launch into ``bins`` (launch it in the body).

    Shapes: bins (any shape, contiguous) in the accumulation dtype; yields ``(contrib, bin_index)``, (numel,)
    in bins' dtype and (numel,) int64 with ``det`` (the kernel writes its (contribution, bin) pairs there), else
    empty (the kernel adds with atomics). The body runs with bins' CUDA device current; after it, with ``det``,
    the pairs are summed into ``bins`` by :func:`deterministic_scatter`.
    """
    contrib = torch.empty(numel if det else 0, dtype=bins.dtype, device=bins.device)
    bin_index = torch.empty(numel if det else 0, dtype=torch.int64, device=bins.device)
    with device_guard(bins):
        yield contrib, bin_index
        if det:
            deterministic_scatter(bins.view(-1), bin_index, contrib)


def raise_if_not_finite(
    op: str, program_flags: torch.Tensor, codebook: torch.Tensor, codebook_name: str
) -> None:
    """One sync: raise ValueError if a program flagged NaN/Inf in z or the codebook holds NaN/Inf."""
    codebook_bad = ~torch.isfinite(codebook).all()
    if bool(program_flags.any() | codebook_bad):
        if bool(codebook_bad):
            raise ValueError(f"{op}: {codebook_name} contains NaN or Inf")
        raise ValueError(
            f"{op}: z contains NaN or Inf; fix the input (or pass check_finite=False to skip this check)"
        )


def raise_if_bad_index(op: str, program_flags: torch.Tensor, num_codes: int) -> None:
    """One sync: the ValueError the CPU and CUDA kernels raise when a program flagged an index outside
    [0, num_codes). Not read back while capturing a CUDA graph (see :func:`checks_enabled`)."""
    if checks_enabled(True, program_flags) and bool(program_flags.any()):
        raise ValueError(
            f"{op}: indices must lie in [0, {num_codes}), the codebook size; got an index outside it"
        )


@triton.jit
def count_not_finite(x, mask):
    """Number of NaN/Inf among the masked elements of x (x - x is NaN exactly for NaN and +-Inf)."""
    return tl.sum(tl.where(mask & ((x - x) != 0), 1, 0))


@triton.jit
def nearest_scalar(x, values_ptr, d, mask, K):
    """Per element: (index, value) of the value nearest x among values[d, 0..K) by |x - v| (ties:
    lowest index). x, d, mask: blocks of one shape; values_ptr: (D, K) contiguous in the compute dtype."""
    row = values_ptr + d * K
    best_v = tl.load(row, mask=mask, other=0.0)
    best_d = tl.abs(x - best_v)
    best_k = tl.zeros(x.shape, dtype=tl.int64)
    for k in range(1, K):
        v = tl.load(row + k, mask=mask, other=0.0)
        dist = tl.abs(x - v)
        closer = dist < best_d
        best_d = tl.where(closer, dist, best_d)
        best_v = tl.where(closer, v, best_v)
        best_k = tl.where(closer, k, best_k)
    return best_k, best_v


def programs(numel: int, block: int) -> tuple[int]:
    return (triton.cdiv(numel, block),)
