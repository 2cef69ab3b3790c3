"""Triton kernels of ``latentquant::latent_quantize``, the fused QLAE quantization step.

Forward, one pass (``scalar_quantize``'s kernel with its loss partials switched on): index, value and per-program partial sums of (z - z_q)^2, summed by torch in a
fixed order: ``aux_loss = (qw + cw) * sum((z - z_q)^2) / numel`` (0 for empty z).
Backward, one pass: ``grad_z = grad_z_hat + grad_loss * 2 cw (z - z_q) / numel`` and
``grad_values[d, k] += grad_loss * 2 qw (z_q - z) / numel`` by atomic adds (not bit-deterministic on
the GPU). ``grad_loss`` stays on the device: neither pass synchronizes except for the NaN/Inf check.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from latentquant.triton_kernels._common import (
    check_indices,
    check_same_device,
    check_scalar_codebook,
    compute_dtype,
    programs,
    raise_if_not_finite,
)
from latentquant.triton_kernels.scalar_quantize import BLOCK, nearest_values_fwd
from torch.library import wrap_triton

_OP = "latent_quantize"


@triton.jit
def _latent_quantize_bwd_kernel(
    grad_z_hat_ptr,
    z_ptr,
    values_ptr,
    indices_ptr,
    scales_ptr,
    grad_z_ptr,
    bins_ptr,
    numel,
    D,
    K,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    z_scale = tl.load(scales_ptr)  # grad_loss * 2 cw / numel
    v_scale = tl.load(scales_ptr + 1)  # grad_loss * 2 qw / numel
    k = tl.load(indices_ptr + offs, mask=mask, other=0)
    valid = mask & (k >= 0) & (k < K)
    bin = (offs % D) * K + k
    x = tl.load(z_ptr + offs, mask=mask, other=0.0).to(values_ptr.dtype.element_ty)
    diff = x - tl.load(values_ptr + bin, mask=valid, other=0.0)  # z - z_q
    g = tl.load(grad_z_hat_ptr + offs, mask=mask, other=0.0).to(values_ptr.dtype.element_ty)
    tl.store(grad_z_ptr + offs, (g + z_scale * diff).to(grad_z_ptr.dtype.element_ty), mask=mask)
    tl.atomic_add(bins_ptr + bin, -v_scale * diff, mask=valid)


def _latent_quantize_bwd(
    grad_z_hat: torch.Tensor,
    z: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    scales: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused backward.

    Shapes: grad_z_hat (N, D) and z (N, D) contiguous in z's dtype, values (D, K) contiguous in the
    compute dtype, indices (N, D) int64 contiguous, scales (2,) in the compute dtype holding
    (grad_loss * 2 cw / numel, grad_loss * 2 qw / numel) -> grad_z (N, D) in z's dtype,
    grad_values (D, K) in the compute dtype. Out-of-range indices add nothing to grad_values.
    """
    grad_z = torch.empty_like(z)
    bins = torch.zeros_like(values)
    if z.numel():
        wrap_triton(_latent_quantize_bwd_kernel)[programs(z.numel(), BLOCK)](
            grad_z_hat,
            z,
            values,
            indices,
            scales,
            grad_z,
            bins,
            z.numel(),
            z.shape[1],
            values.shape[1],
            BLOCK,
        )
    return grad_z, bins


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
    ct = compute_dtype(z, values)
    vals = values.to(ct).contiguous()
    z_hat, indices, partials, flags = nearest_values_fwd(z.contiguous(), vals, check_finite, with_loss=True)
    if check_finite:
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
    values (D, K), indices (N, D) -> grad_z (N, D) in z's dtype, grad_values (D, K) in values' dtype."""
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
    weights = torch.tensor(
        [2.0 * commitment_weight / n, 2.0 * quantization_weight / n], dtype=ct, device=z.device
    )
    scales = grad_loss.reshape(1).to(ct) * weights
    grad_z, bins = _latent_quantize_bwd(
        grad_z_hat.to(z.dtype).contiguous(),
        z.contiguous(),
        values.to(ct).contiguous(),
        indices.contiguous(),
        scales,
    )
    return grad_z, bins.to(values.dtype)


KERNELS = {
    "latent_quantize": latent_quantize_triton,
    "latent_quantize_backward": latent_quantize_backward_triton,
}
