"""Registration of ``latentquant::scalar_quantize``: fake impl, autograd, public wrapper."""

from __future__ import annotations

import torch

from latentquant.ops import _checks, _registry
from latentquant.reference.scalar_quantize import scalar_quantize_ref

_OP = "scalar_quantize"

if _registry.HAVE_C:

    @torch.library.register_fake("latentquant::scalar_quantize")
    def _(z, values, check_finite=True):
        return torch.empty_like(z), torch.empty(z.shape, dtype=torch.long, device=z.device)

    @torch.library.register_fake("latentquant::scalar_quantize_backward")
    def _(grad_z_q, indices, values):
        return torch.empty_like(values)

    def _setup_context(ctx, inputs, output):
        _, values, _ = inputs
        _, indices = output
        ctx.save_for_backward(indices, values)
        ctx.mark_non_differentiable(indices)

    def _backward(ctx, grad_z_q, _grad_indices):
        indices, values = ctx.saved_tensors
        grad_values = None
        if ctx.needs_input_grad[1]:
            grad_values = torch.ops.latentquant.scalar_quantize_backward(grad_z_q, indices, values)
        return None, grad_values, None

    torch.library.register_autograd("latentquant::scalar_quantize", _backward, setup_context=_setup_context)

    # The backward is linear in grad_z_q: its own gradient is a gather (double backward).
    def _setup_backward(ctx, inputs, output):
        _, indices, _ = inputs
        ctx.save_for_backward(indices)

    def _backward_backward(ctx, grad_grad_values):
        (indices,) = ctx.saved_tensors
        return grad_grad_values.gather(1, indices.t()).t(), None, None

    torch.library.register_autograd(
        "latentquant::scalar_quantize_backward", _backward_backward, setup_context=_setup_backward
    )


_registry.PUBLIC_OPS.append(_OP)
_registry.register_triton_module(_OP)


def scalar_quantize(
    z: torch.Tensor, values: torch.Tensor, *, check_finite: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest per-dimension scalar codebook value.

    Args:
        z: (..., D) float16/bfloat16/float32/float64, any layout.
        values: (D, K) per-dimension codebooks (ragged codebooks: pad a row by repeating its last value,
            which never wins a tie).
        check_finite: raise ``ValueError`` if ``z`` holds NaN or Inf (checked inside the kernel's pass).

    Returns:
        z_q: (..., D) in z's dtype, ``z_q[..., d] = values[d, indices[..., d]]``.
        indices: (..., D) int64, ``argmin_k |z[..., d] - values[d, k]|``, ties to the lowest k.

    Gradient flows to ``values`` (a scatter-add of ``grad_z_q``), none to ``z``.
    """
    _checks.check_codebook(_OP, z, values, "values", rows_match=True)
    if not _registry.HAVE_C:
        _checks.check_finite_ref(_OP, z, values, check_finite)
        return scalar_quantize_ref(z, values)
    z_q, indices = torch.ops.latentquant.scalar_quantize(z.reshape(-1, z.shape[-1]), values, check_finite)
    return z_q.view(z.shape), indices.view(z.shape)
