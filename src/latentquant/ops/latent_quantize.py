"""Registration of ``latentquant::latent_quantize`` (the fused QLAE step): fake impl, autograd, wrapper."""

from __future__ import annotations

import torch

from latentquant.ops import _checks, _registry
from latentquant.reference.latent_quantize import latent_quantize_ref

_OP = "latent_quantize"


def _loss_dtype(z: torch.Tensor, values: torch.Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (z.dtype, values.dtype) else torch.float32


if _registry.HAVE_C:
    # The kernels return fresh contiguous tensors whatever the input layout, so the fakes do too.
    @torch.library.register_fake("latentquant::latent_quantize")
    def _(z, values, quantization_weight, commitment_weight, check_finite=True):
        return (
            z.new_empty(z.shape),
            torch.empty(z.shape, dtype=torch.long, device=z.device),
            z.new_empty((), dtype=_loss_dtype(z, values)),
        )

    @torch.library.register_fake("latentquant::latent_quantize_backward")
    def _(grad_z_hat, grad_loss, z, values, indices, quantization_weight, commitment_weight):
        return z.new_empty(z.shape), values.new_empty(values.shape)

    def _setup_context(ctx, inputs, output):
        z, values, qw, cw, _ = inputs
        _, indices, _ = output
        ctx.save_for_backward(z, values, indices)
        ctx.weights = (qw, cw)
        ctx.mark_non_differentiable(indices)

    def _backward(ctx, grad_z_hat, _grad_indices, grad_loss):
        z, values, indices = ctx.saved_tensors
        grad_z, grad_values = torch.ops.latentquant.latent_quantize_backward(
            grad_z_hat, grad_loss, z, values, indices, *ctx.weights
        )
        return (
            grad_z if ctx.needs_input_grad[0] else None,
            grad_values if ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
        )

    torch.library.register_autograd("latentquant::latent_quantize", _backward, setup_context=_setup_context)

    def _no_double_backward(ctx, grad_grad_z, grad_grad_values):
        raise RuntimeError(
            "latent_quantize: double backward (gradients of gradients) is not supported; "
            "use latentquant.reference.latent_quantize_ref for higher-order derivatives"
        )

    torch.library.register_autograd(
        "latentquant::latent_quantize_backward",
        _no_double_backward,
        setup_context=lambda ctx, inputs, output: None,
    )


_registry.PUBLIC_OPS.append(_OP)
_registry.register_triton_module(_OP, (_OP, f"{_OP}_backward"))


def latent_quantize(
    z: torch.Tensor,
    values: torch.Tensor,
    quantization_weight: float = 0.01,
    commitment_weight: float = 0.01,
    *,
    check_finite: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused QLAE quantization step: nearest value, straight-through output and both losses.

    Args:
        z: (..., D) float16/bfloat16/float32/float64 latents, any layout.
        values: (D, K) per-dimension scalar codebooks.
        quantization_weight: qw >= 0, weight of ``mean((sg(z) - z_q)^2)`` (moves the values).
        commitment_weight: cw >= 0, weight of ``mean((z - sg(z_q))^2)`` (moves the encoder).
        check_finite: raise ``ValueError`` if ``z`` or the codebook holds NaN or Inf (checked inside the
            kernel's pass; on a GPU one synchronization per call, skipped while the current CUDA stream is
            capturing a graph, where nothing can raise). ``False`` skips both checks on every backend.

    Returns:
        z_hat: (..., D) in z's dtype with the value of z_q and the straight-through gradient (d z_hat/d z = I).
        indices: (..., D) int64, nearest value per dimension (ties: lowest k).
        aux_loss: () float32 (float64 if z or values is), ``qw * mean((sg(z)-z_q)^2) + cw * mean((z-sg(z_q))^2)``
            over all elements; 0 for empty z.

    Gradients: ``dL/dz = grad_z_hat + 2 cw (z - z_q) / n``; ``dL/dvalues[d, k]`` = sum over the elements
    that chose k of ``2 qw (z_q - z) / n``. The decoder's gradient never reaches ``values`` (as in the paper).
    """
    _checks.check_codebook(_OP, z, values, "values", rows_match=True)
    qw = _checks.check_weight(_OP, "quantization_weight", quantization_weight)
    cw = _checks.check_weight(_OP, "commitment_weight", commitment_weight)
    if not _registry.HAVE_C:
        _checks.check_finite_ref(_OP, z, values, check_finite)
        return latent_quantize_ref(z, values, qw, cw)
    z_hat, indices, aux_loss = torch.ops.latentquant.latent_quantize(
        _checks.flatten_latents(z), values, qw, cw, check_finite
    )
    return z_hat.view(z.shape), indices.view(z.shape), aux_loss
