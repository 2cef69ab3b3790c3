"""Triton kernels of ``latentquant::scalar_quantize``: per-dimension nearest scalar codebook value.

``_scalar_quantize_fwd_kernel`` -> ``nearest_values_fwd`` (launcher, shared with ``latent_quantize``) ->
``scalar_quantize_triton`` (the op's CUDA kernel when ``LATENTQUANT_GPU_BACKEND=triton``) -> ``scalar_quantize_ref``.
The backward scatter uses relaxed atomic adds (not bit-deterministic on the GPU), privatized per program for
at most PRIVATE_BINS bins (``scatter_plan``), or a deterministic ``index_put_`` under
``torch.use_deterministic_algorithms(True)`` (see ``_common``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from latentquant.triton_kernels._common import (
    check_float,
    check_indices,
    check_rank,
    check_same_device,
    check_scalar_codebook,
    checks_enabled,
    compute_dtype,
    count_not_finite,
    deterministic,
    device_guard,
    nearest_scalar,
    programs,
    raise_if_bad_index,
    raise_if_not_finite,
    scatter_launch,
)

_OP = "scalar_quantize"
BLOCK = 1024


# Sizes are not specialized on: a new batch size must not trigger a new compile.
@triton.jit(do_not_specialize=["numel", "D", "K"])
def _scalar_quantize_fwd_kernel(
    z_ptr,
    values_ptr,
    z_q_ptr,
    indices_ptr,
    partials_ptr,
    flags_ptr,
    numel,
    D,
    K,
    WITH_LOSS: tl.constexpr,
    CHECK_FINITE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Nearest value per element; with ``WITH_LOSS`` also this program's sum of (z - z_q)^2 (the fused
    QLAE loss of ``latent_quantize``, which launches this kernel too)."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(z_ptr + offs, mask=mask, other=0.0).to(values_ptr.dtype.element_ty)
    k, v = nearest_scalar(x, values_ptr, offs % D, mask, K)
    tl.store(z_q_ptr + offs, v.to(z_q_ptr.dtype.element_ty), mask=mask)
    tl.store(indices_ptr + offs, k, mask=mask)
    if WITH_LOSS:
        diff = tl.where(mask, x - v, 0.0)
        tl.store(partials_ptr + pid, tl.sum(diff * diff))
    if CHECK_FINITE:
        tl.store(flags_ptr + pid, count_not_finite(x, mask))


# Sizes are not specialized on: a new batch size must not trigger a new compile.
@triton.jit(do_not_specialize=["numel", "D", "K"])
def _scalar_quantize_bwd_kernel(
    grad_ptr,
    indices_ptr,
    bins_ptr,
    contrib_ptr,
    bin_ptr,
    flags_ptr,
    numel,
    D,
    K,
    DETERMINISTIC: tl.constexpr,
    NB: tl.constexpr,
    SUB: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """bins[d * K + k] += grad[i] for element i = (n, d) with k = indices[i]. With ``DETERMINISTIC`` the
    (contribution, bin) pairs are written out instead (invalid elements: 0 into bin 0); with ``NB`` > 0
    (D * K <= NB, a power of two) the program sums its BLOCK elements into NB private bins, SUB at a time,
    and adds each bin once. Each program stores its count of indices outside [0, K) in flags."""
    pid = tl.program_id(0)
    if NB > 0:
        cols = tl.arange(0, NB)
        acc = tl.zeros((NB,), dtype=bins_ptr.dtype.element_ty)
        bad = 0
        for s in range(0, BLOCK, SUB):
            offs = pid.to(tl.int64) * BLOCK + s + tl.arange(0, SUB)
            mask = offs < numel
            k = tl.load(indices_ptr + offs, mask=mask, other=0)
            valid = mask & (k >= 0) & (k < K)
            g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(bins_ptr.dtype.element_ty)
            hit = ((offs % D) * K + k)[:, None] == cols[None, :]
            acc += tl.sum(tl.where(hit & valid[:, None], g[:, None], 0.0), axis=0)
            bad += tl.sum(tl.where(mask & ~valid, 1, 0))
        tl.atomic_add(bins_ptr + cols, acc, mask=cols < D * K, sem="relaxed")
        tl.store(flags_ptr + pid, bad)
    else:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        k = tl.load(indices_ptr + offs, mask=mask, other=0)
        valid = mask & (k >= 0) & (k < K)
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(bins_ptr.dtype.element_ty)
        bin = (offs % D) * K + k
        if DETERMINISTIC:
            tl.store(contrib_ptr + offs, tl.where(valid, g, 0.0), mask=mask)
            tl.store(bin_ptr + offs, tl.where(valid, bin, 0), mask=mask)
        else:
            tl.atomic_add(bins_ptr + bin, g, mask=valid, sem="relaxed")
        tl.store(flags_ptr + pid, tl.sum(tl.where(mask & ~valid, 1, 0)))


# Scatters into at most PRIVATE_BINS bins are privatized per program (one atomic per bin and program
# instead of one per element: with few bins every element would contend for the same addresses).
PRIVATE_BINS = 32
PRIVATE_BLOCK = 8192


def scatter_plan(num_bins: int, deterministic: bool) -> tuple[int, int, int]:
    """(NB, SUB, BLOCK) for a backward scatter into ``num_bins`` bins: privatized (NB = the next power of
    two >= num_bins, sub-blocks of SUB = 4096 / NB elements, PRIVATE_BLOCK elements per program) when
    num_bins <= PRIVATE_BINS and the atomic path is allowed, else (0, 1, BLOCK): one atomic per element."""
    if deterministic or num_bins > PRIVATE_BINS:
        return 0, 1, BLOCK
    nb = triton.next_power_of_2(max(num_bins, 1))
    return nb, 4096 // nb, PRIVATE_BLOCK


def nearest_values_fwd(
    z: torch.Tensor, values: torch.Tensor, check_finite: bool = True, with_loss: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest value per element (the forward of ``scalar_quantize`` and ``latent_quantize``).

    Shapes: z (N, D) contiguous, values (D, K) contiguous in the compute dtype ->
    z_q (N, D) in z's dtype, indices (N, D) int64, partials (programs,) in the compute dtype (per-program
    sums of (z - z_q)^2 with ``with_loss``, else empty), flags (programs,) int32 (NaN/Inf counts; zeros
    unless ``check_finite``).
    """
    z_q = torch.empty_like(z)
    indices = torch.empty(z.shape, dtype=torch.int64, device=z.device)
    grid = programs(z.numel(), BLOCK)
    partials = torch.zeros(grid[0] if with_loss else 0, dtype=values.dtype, device=z.device)
    flags = torch.zeros(grid[0], dtype=torch.int32, device=z.device)
    if z.numel():
        with device_guard(z):
            _scalar_quantize_fwd_kernel[grid](
                z,
                values,
                z_q,
                indices,
                partials if with_loss else flags,  # not read or written without the loss
                flags,
                z.numel(),
                z.shape[1],
                values.shape[1],
                with_loss,
                check_finite,
                BLOCK,
            )
    return z_q, indices, partials, flags


def _scalar_quantize_bwd(
    grad_z_q: torch.Tensor, indices: torch.Tensor, num_values: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_values[d, k] = sum of grad_z_q[n, d] over n with indices[n, d] == k.

    Shapes: grad_z_q (N, D) contiguous, indices (N, D) int64 contiguous -> (D, K) in ``dtype``
    (the accumulation dtype; the caller casts to values' dtype) and flags (programs,) int32, the number
    of indices outside [0, K) per program (those elements are skipped).
    """
    D = grad_z_q.shape[1]
    numel = grad_z_q.numel()
    bins = torch.zeros(D * num_values, dtype=dtype, device=grad_z_q.device)
    det = deterministic()
    nb, sub, block = scatter_plan(D * num_values, det)
    grid = programs(numel, block)
    flags = torch.zeros(grid[0], dtype=torch.int32, device=grad_z_q.device)
    if numel:
        with scatter_launch(bins, numel, det) as (contrib, bin_index):
            _scalar_quantize_bwd_kernel[grid](
                grad_z_q, indices, bins, contrib, bin_index, flags, numel, D, num_values, det, nb, sub, block
            )
    return bins.view(D, num_values), flags


def scalar_quantize_triton(
    z: torch.Tensor, values: torch.Tensor, check_finite: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``latentquant::scalar_quantize`` on Triton: z (N, D), values (D, K) -> z_q (N, D), indices (N, D) int64."""
    check_scalar_codebook(_OP, z, values)
    check = checks_enabled(check_finite, z)
    vals = values.to(compute_dtype(z, values)).contiguous()
    z_q, indices, _, flags = nearest_values_fwd(z.contiguous(), vals, check)
    if check:
        raise_if_not_finite(_OP, flags, vals, "values")
    return z_q, indices


def check_scalar_backward(
    op: str, grad: torch.Tensor, name: str, indices: torch.Tensor, values: torch.Tensor
) -> None:
    """grad (N, D) float, indices (N, D) int64, values (D, K) float, one device."""
    check_float(op, name, grad)
    check_float(op, "values", values)
    check_rank(op, name, grad, 2)
    check_rank(op, "values", values, 2)
    check_indices(op, indices, tuple(grad.shape))
    if values.shape[0] != grad.shape[1]:
        raise ValueError(
            f"{op}: values must have shape (D, K) with D = {name}.shape[1] = {grad.shape[1]}, "
            f"got values of shape {tuple(values.shape)}"
        )
    check_same_device(op, **{name: grad}, indices=indices, values=values)


def scalar_quantize_backward_triton(
    grad_z_q: torch.Tensor, indices: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """``latentquant::scalar_quantize_backward`` on Triton: grad_z_q (N, D), indices (N, D), values (D, K) ->
    grad_values (D, K) in values' dtype. Raises ValueError for an index outside [0, K)."""
    op = "scalar_quantize_backward"
    check_scalar_backward(op, grad_z_q, "grad_z_q", indices, values)
    bins, flags = _scalar_quantize_bwd(
        grad_z_q.contiguous(), indices.contiguous(), values.shape[1], compute_dtype(grad_z_q, values)
    )
    raise_if_bad_index(op, flags, values.shape[1])
    return bins.to(values.dtype)


KERNELS = {
    "scalar_quantize": scalar_quantize_triton,
    "scalar_quantize_backward": scalar_quantize_backward_triton,
}
