"""Triton kernels of ``latentquant::latent_quantize``, the fused QLAE quantization step.

Forward, one pass (``scalar_quantize``'s kernel with its loss partials switched on): index, value and
per-program partial sums of (z - z_q)^2, summed by torch in a fixed order:
``aux_loss = (qw + cw) * sum((z - z_q)^2) / numel`` (0 for empty z).
Backward, one pass: ``grad_z = grad_z_hat + grad_loss * 2 cw (z - z_q) / numel`` and
``grad_values[d, k] += grad_loss * 2 qw (z_q - z) / numel`` by relaxed atomic adds (privatized per program
for few bins, see ``scalar_quantize.scatter_plan``; not bit-deterministic on the GPU; deterministic
``index_put_`` under ``torch.use_deterministic_algorithms(True)``). ``grad_loss`` is
read on the device and the factors 2 cw / numel, 2 qw / numel are float64 kernel arguments: no host tensor
is copied and nothing synchronizes except the checks (see ``_common``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from latentquant.triton_kernels._common import (
    check_indices,
    check_same_device,
    check_scalar_codebook,
    checks_enabled,
    compute_dtype,
    deterministic,
    programs,
    raise_if_bad_index,
    raise_if_not_finite,
    scatter_launch,
)
from latentquant.triton_kernels.scalar_quantize import nearest_values_fwd, scatter_plan

_OP = "latent_quantize"


@triton.jit
def _latent_quantize_bwd_elems(
    grad_z_hat_ptr, z_ptr, values_ptr, indices_ptr, grad_z_ptr, offs, numel, D, K, z_scale, v_scale
):
    """Elements ``offs``: writes grad_z, returns (contribution to grad_values, bin, valid, mask)."""
    ct = values_ptr.dtype.element_ty
    mask = offs < numel
    k = tl.load(indices_ptr + offs, mask=mask, other=0)
    valid = mask & (k >= 0) & (k < K)
    bin = (offs % D) * K + k
    x = tl.load(z_ptr + offs, mask=mask, other=0.0).to(ct)
    diff = tl.where(valid, x - tl.load(values_ptr + bin, mask=valid, other=0.0), 0.0)  # z - z_q
    g = tl.load(grad_z_hat_ptr + offs, mask=mask, other=0.0).to(ct)
    tl.store(grad_z_ptr + offs, (g + z_scale * diff).to(grad_z_ptr.dtype.element_ty), mask=mask)
    return -v_scale * diff, bin, valid, mask


# Sizes are not specialized on: a new batch size must not trigger a new compile.
@triton.jit(do_not_specialize=["numel", "D", "K"])
def _latent_quantize_bwd_kernel(
    grad_z_hat_ptr,
    z_ptr,
    values_ptr,
    indices_ptr,
    grad_loss_ptr,
    grad_z_ptr,
    bins_ptr,
    contrib_ptr,
    bin_ptr,
    flags_ptr,
    z_factor: tl.float64,
    v_factor: tl.float64,
    numel,
    D,
    K,
    DETERMINISTIC: tl.constexpr,
    NB: tl.constexpr,
    SUB: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """z_factor = 2 cw / numel and v_factor = 2 qw / numel, each times grad_loss (read from the device)
    in the compute dtype. Invalid indices (flagged per program) add nothing and give grad_z = grad_z_hat.
    ``DETERMINISTIC``, ``NB`` and ``SUB``: as in ``_scalar_quantize_bwd_kernel`` (see ``scatter_plan``)."""
    pid = tl.program_id(0)
    ct = values_ptr.dtype.element_ty
    gl = tl.load(grad_loss_ptr)
    # tl.full keeps the float64 argument exact under the interpreter too (it hands Python floats over as-is,
    # and arithmetic on them would round to float32).
    z_scale = gl * tl.full((), z_factor, tl.float64).to(ct)
    v_scale = gl * tl.full((), v_factor, tl.float64).to(ct)
    if NB > 0:
        cols = tl.arange(0, NB)
        acc = tl.zeros((NB,), dtype=ct)
        bad = 0
        for s in range(0, BLOCK, SUB):
            offs = pid.to(tl.int64) * BLOCK + s + tl.arange(0, SUB)
            contrib, bin, valid, mask = _latent_quantize_bwd_elems(
                grad_z_hat_ptr,
                z_ptr,
                values_ptr,
                indices_ptr,
                grad_z_ptr,
                offs,
                numel,
                D,
                K,
                z_scale,
                v_scale,
            )
            hit = (bin[:, None] == cols[None, :]) & valid[:, None]
            acc += tl.sum(tl.where(hit, contrib[:, None], 0.0), axis=0)
            bad += tl.sum(tl.where(mask & ~valid, 1, 0))
        tl.atomic_add(bins_ptr + cols, acc, mask=cols < D * K, sem="relaxed")
        tl.store(flags_ptr + pid, bad)
    else:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        contrib, bin, valid, mask = _latent_quantize_bwd_elems(
            grad_z_hat_ptr, z_ptr, values_ptr, indices_ptr, grad_z_ptr, offs, numel, D, K, z_scale, v_scale
        )
        if DETERMINISTIC:
            tl.store(contrib_ptr + offs, contrib, mask=mask)
            tl.store(bin_ptr + offs, tl.where(valid, bin, 0), mask=mask)
        else:
            tl.atomic_add(bins_ptr + bin, contrib, mask=valid, sem="relaxed")
        tl.store(flags_ptr + pid, tl.sum(tl.where(mask & ~valid, 1, 0)))


def _latent_quantize_bwd(
    grad_z_hat: torch.Tensor,
    z: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    grad_loss: torch.Tensor,
    z_factor: float,
    v_factor: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused backward.

    Shapes: grad_z_hat (N, D) and z (N, D) contiguous in z's dtype, values (D, K) contiguous in the
    compute dtype, indices (N, D) int64 contiguous, grad_loss (1,) in the compute dtype; z_factor =
    2 cw / numel, v_factor = 2 qw / numel -> grad_z (N, D) in z's dtype, grad_values (D, K) in the compute
    dtype, flags (programs,) int32 (indices outside [0, K) per program; they add nothing to grad_values).
    """
    numel = z.numel()
    grad_z = torch.empty_like(z)
    bins = torch.zeros_like(values)
    det = deterministic()
    nb, sub, block = scatter_plan(values.numel(), det)
    grid = programs(numel, block)
    flags = torch.zeros(grid[0], dtype=torch.int32, device=z.device)
    if numel:
        with scatter_launch(bins, numel, det) as (contrib, bin_index):
            _latent_quantize_bwd_kernel[grid](
                grad_z_hat,
                z,
                values,
                indices,
                grad_loss,
                grad_z,
                bins,
                contrib,
                bin_index,
                flags,
                z_factor,
                v_factor,
                numel,
                z.shape[1],
                values.shape[1],
                det,
                nb,
                sub,
                block,
            )
    return grad_z, bins, flags


def latent_quantize_triton(
    z: torch.Tensor,
    values: torch.Tensor,
    quantization_weight: float,
    commitment_weight: float,
    check_finite: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``latentquant::latent_quantize`` on Triton: z (N, D), values (D, K) ->
    z_hat (N, D) in z's dtype, indices (N, D) int64, aux_loss () in the compute dtype."""
    check_scalar_codebook(_OP, z, values)
    check = checks_enabled(check_finite, z)
    ct = compute_dtype(z, values)
    vals = values.to(ct).contiguous()
    z_hat, indices, partials, flags = nearest_values_fwd(z.contiguous(), vals, check, with_loss=True)
    if check:
        raise_if_not_finite(_OP, flags, vals, "values")
    if z.numel() == 0:
        return z_hat, indices, torch.zeros((), dtype=ct, device=z.device)
    aux_loss = partials.sum() * ((quantization_weight + commitment_weight) / z.numel())
    return z_hat, indices, aux_loss


def latent_quantize_backward_triton(
    grad_z_hat: torch.Tensor,
    grad_loss: torch.Tensor,
    z: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    quantization_weight: float,
    commitment_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``latentquant::latent_quantize_backward`` on Triton: grad_z_hat (N, D), grad_loss (), z (N, D),
    values (D, K), indices (N, D) -> grad_z (N, D) in z's dtype, grad_values (D, K) in values' dtype.
    Raises ValueError for an index outside [0, K)."""
    op = "latent_quantize_backward"
    check_scalar_codebook(op, z, values)
    check_indices(op, indices, tuple(z.shape))
    if tuple(grad_z_hat.shape) != tuple(z.shape):
        raise ValueError(
            f"{op}: grad_z_hat must have z's shape {tuple(z.shape)}, got {tuple(grad_z_hat.shape)}"
        )
    if grad_loss.numel() != 1:
        raise ValueError(f"{op}: grad_loss must have one element, got shape {tuple(grad_loss.shape)}")
    check_same_device(op, grad_z_hat=grad_z_hat, grad_loss=grad_loss, z=z, values=values, indices=indices)
    ct = compute_dtype(z, values)
    n = max(z.numel(), 1)
    grad_z, bins, flags = _latent_quantize_bwd(
        grad_z_hat.to(z.dtype).contiguous(),
        z.contiguous(),
        values.to(ct).contiguous(),
        indices.contiguous(),
        grad_loss.reshape(1).to(ct),
        2.0 * commitment_weight / n,
        2.0 * quantization_weight / n,
    )
    raise_if_bad_index(op, flags, values.shape[1])
    return grad_z, bins.to(values.dtype)


KERNELS = {
    "latent_quantize": latent_quantize_triton,
    "latent_quantize_backward": latent_quantize_backward_triton,
}
