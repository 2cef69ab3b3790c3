"""Triton kernels of ``latentquant::vector_quantize``: nearest codebook row by squared L2.

Each program takes BLOCK_N rows of z and walks the codebook in tiles of BLOCK_K codes, forming
``||c||^2 - 2 z.c`` with ``tl.dot`` (IEEE precision, no TF32) over chunks of BLOCK_C columns, so the
(N, K) distance matrix never exists. ``||c||^2`` is accumulated in the same pass, chunk by chunk in column
order (never by torch's ``sum``, whose grouping on the GPU depends on each row's address alignment), so
exact duplicate codes get bit-identical distances and resolve to the lowest index; codes whose true
distances differ by less than the rounding of the expansion may resolve to a different, equally near code
than the direct formula. The backward scatter uses relaxed atomic adds (not bit-deterministic on the GPU;
deterministic ``index_put_`` under ``torch.use_deterministic_algorithms(True)``).
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
    checks_enabled,
    compute_dtype,
    count_not_finite,
    deterministic,
    device_guard,
    raise_if_bad_index,
    raise_if_not_finite,
    scatter_launch,
)

_OP = "vector_quantize"
BLOCK_N = 32
BLOCK_K = 64
BLOCK_C = 32
BLOCK_BWD = 1024


# Sizes are not specialized on: a new batch size must not trigger a new compile.
@triton.jit(do_not_specialize=["N", "K", "C"])
def _vector_quantize_fwd_kernel(
    z_ptr,
    codebook_ptr,
    z_q_ptr,
    indices_ptr,
    flags_ptr,
    N,
    K,
    C,
    CHECK_FINITE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    ct = codebook_ptr.dtype.element_ty
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    best_d = tl.full((BLOCK_N,), float("inf"), dtype=ct)
    best_i = tl.zeros((BLOCK_N,), dtype=tl.int64)  # kept when every distance is NaN or +Inf
    bad = 0
    for k0 in range(0, K, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        code_mask = codes < K
        dot = tl.zeros((BLOCK_N, BLOCK_K), dtype=ct)
        norms = tl.zeros((BLOCK_K,), dtype=ct)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            col_mask = cols < C
            zt = tl.load(
                z_ptr + rows[:, None] * C + cols[None, :],
                mask=row_mask[:, None] & col_mask[None, :],
                other=0.0,
            ).to(ct)
            if CHECK_FINITE:
                bad += count_not_finite(zt, row_mask[:, None] & col_mask[None, :])
            cbt = tl.load(
                codebook_ptr + codes[None, :] * C + cols[:, None],
                mask=col_mask[:, None] & code_mask[None, :],
                other=0.0,
            )
            dot += tl.dot(zt, cbt, input_precision="ieee")
            norms += tl.sum(cbt * cbt, axis=0)
        dist = tl.where(code_mask[None, :], norms[None, :] - 2.0 * dot, float("inf"))
        tile_min = tl.min(dist, axis=1)
        tile_arg = tl.argmin(dist, axis=1, tie_break_left=True)
        # Later tiles hold higher indices, so only a strictly smaller distance replaces the best.
        closer = tile_min < best_d
        best_d = tl.where(closer, tile_min, best_d)
        best_i = tl.where(closer, k0 + tile_arg.to(tl.int64), best_i)
    tl.store(indices_ptr + rows, best_i, mask=row_mask)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        m = row_mask[:, None] & (cols < C)[None, :]
        q = tl.load(codebook_ptr + best_i[:, None] * C + cols[None, :], mask=m, other=0.0)
        tl.store(z_q_ptr + rows[:, None] * C + cols[None, :], q.to(z_q_ptr.dtype.element_ty), mask=m)
    if CHECK_FINITE:
        tl.store(flags_ptr + pid, bad)


# Sizes are not specialized on: a new batch size must not trigger a new compile.
@triton.jit(do_not_specialize=["numel", "K", "C"])
def _vector_quantize_bwd_kernel(
    grad_ptr,
    indices_ptr,
    bins_ptr,
    contrib_ptr,
    bin_ptr,
    flags_ptr,
    numel,
    K,
    C,
    DETERMINISTIC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """bins[k * C + c] += grad[n, c] with k = indices[n]; with ``DETERMINISTIC`` the (contribution, bin)
    pairs are written out instead (invalid rows: 0 into bin 0). Each program stores its count of elements
    whose row index lies outside [0, K) in flags."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    n = offs // C
    k = tl.load(indices_ptr + n, mask=mask, other=0)
    valid = mask & (k >= 0) & (k < K)
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(bins_ptr.dtype.element_ty)
    bin = k * C + (offs - n * C)
    if DETERMINISTIC:
        tl.store(contrib_ptr + offs, tl.where(valid, g, 0.0), mask=mask)
        tl.store(bin_ptr + offs, tl.where(valid, bin, 0), mask=mask)
    else:
        tl.atomic_add(bins_ptr + bin, g, mask=valid, sem="relaxed")
    tl.store(flags_ptr + pid, tl.sum(tl.where(mask & ~valid, 1, 0)))


def _vector_quantize_fwd(
    z: torch.Tensor, codebook: torch.Tensor, check_finite: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest codebook row per row of z.

    Shapes: z (N, C) contiguous, codebook (K, C) contiguous in the compute dtype ->
    z_q (N, C) in z's dtype, indices (N,) int64, flags (programs,) int32 (NaN/Inf counts in z; zeros
    unless ``check_finite``).
    """
    N, C = z.shape
    z_q = torch.empty_like(z)
    indices = torch.empty(N, dtype=torch.int64, device=z.device)
    grid = (triton.cdiv(N, BLOCK_N),)
    flags = torch.zeros(grid[0], dtype=torch.int32, device=z.device)
    if N:
        with device_guard(z):
            _vector_quantize_fwd_kernel[grid](
                z,
                codebook,
                z_q,
                indices,
                flags,
                N,
                codebook.shape[0],
                C,
                check_finite,
                BLOCK_N,
                BLOCK_K,
                BLOCK_C,
            )
    return z_q, indices, flags


def _vector_quantize_bwd(
    grad_z_q: torch.Tensor, indices: torch.Tensor, num_codes: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_codebook[k] = sum of grad_z_q[n] over n with indices[n] == k.

    Shapes: grad_z_q (N, C) contiguous, indices (N,) int64 contiguous -> (K, C) in ``dtype`` (the
    accumulation dtype; the caller casts) and flags (programs,) int32 (elements of rows whose index lies
    outside [0, K), per program; they are skipped).
    """
    C = grad_z_q.shape[1]
    numel = grad_z_q.numel()
    bins = torch.zeros(num_codes * C, dtype=dtype, device=grad_z_q.device)
    grid = (triton.cdiv(numel, BLOCK_BWD),)
    flags = torch.zeros(grid[0], dtype=torch.int32, device=grad_z_q.device)
    if numel:
        det = deterministic()
        with scatter_launch(bins, numel, det) as (contrib, bin_index):
            _vector_quantize_bwd_kernel[grid](
                grad_z_q, indices, bins, contrib, bin_index, flags, numel, num_codes, C, det, BLOCK_BWD
            )
    return bins.view(num_codes, C), flags


def vector_quantize_triton(
    z: torch.Tensor, codebook: torch.Tensor, check_finite: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``latentquant::vector_quantize`` on Triton: z (N, C), codebook (K, C) -> z_q (N, C), indices (N,) int64."""
    check_float(_OP, "z", z)
    check_float(_OP, "codebook", codebook)
    check_rank(_OP, "z", z, 2)
    check_rank(_OP, "codebook", codebook, 2)
    if codebook.shape[1] != z.shape[1]:
        raise ValueError(
            f"{_OP}: codebook must have shape (K, C) with C = z.shape[-1] = {z.shape[1]}, "
            f"got codebook of shape {tuple(codebook.shape)}"
        )
    if codebook.shape[0] < 1:
        raise ValueError(f"{_OP}: codebook needs at least one row, got shape {tuple(codebook.shape)}")
    check_same_device(_OP, z=z, codebook=codebook)
    check = checks_enabled(check_finite, z)
    cb = codebook.to(compute_dtype(z, codebook)).contiguous()
    z_q, indices, flags = _vector_quantize_fwd(z.contiguous(), cb, check)
    if check:
        raise_if_not_finite(_OP, flags, cb, "codebook")
    return z_q, indices


def vector_quantize_backward_triton(
    grad_z_q: torch.Tensor, indices: torch.Tensor, codebook: torch.Tensor
) -> torch.Tensor:
    """``latentquant::vector_quantize_backward`` on Triton: grad_z_q (N, C), indices (N,), codebook (K, C) ->
    grad_codebook (K, C) in codebook's dtype. Raises ValueError for an index outside [0, K)."""
    op = "vector_quantize_backward"
    check_float(op, "grad_z_q", grad_z_q)
    check_float(op, "codebook", codebook)
    check_rank(op, "grad_z_q", grad_z_q, 2)
    check_rank(op, "codebook", codebook, 2)
    check_indices(op, indices, (grad_z_q.shape[0],))
    if codebook.shape[1] != grad_z_q.shape[1]:
        raise ValueError(
            f"{op}: codebook must have shape (K, C) with C = grad_z_q.shape[1] = {grad_z_q.shape[1]}, "
            f"got {tuple(codebook.shape)}"
        )
    check_same_device(op, grad_z_q=grad_z_q, indices=indices, codebook=codebook)
    bins, flags = _vector_quantize_bwd(
        grad_z_q.contiguous(), indices.contiguous(), codebook.shape[0], compute_dtype(grad_z_q, codebook)
    )
    raise_if_bad_index(op, flags, codebook.shape[0])
    return bins.to(codebook.dtype)


KERNELS = {
    "vector_quantize": vector_quantize_triton,
    "vector_quantize_backward": vector_quantize_backward_triton,
}
