"""Registration of ``latentquant::vector_quantize``: fake impl, autograd, public wrapper."""

from __future__ import annotations

import torch

from latentquant.ops import _checks, _registry
from latentquant.reference.vector_quantize import vector_quantize_ref

_OP = "vector_quantize"

if _registry.HAVE_C:

    @torch.library.register_fake("latentquant::vector_quantize")
    def _(z, codebook, check_finite=True):
        return torch.empty_like(z), torch.empty(z.shape[:1], dtype=torch.long, device=z.device)

    @torch.library.register_fake("latentquant::vector_quantize_backward")
    def _(grad_z_q, indices, codebook):
        return torch.empty_like(codebook)

    def _setup_context(ctx, inputs, output):
        _, codebook, _ = inputs
        _, indices = output
        ctx.save_for_backward(indices, codebook)
        ctx.mark_non_differentiable(indices)

    def _backward(ctx, grad_z_q, _grad_indices):
        indices, codebook = ctx.saved_tensors
        grad_codebook = None
        if ctx.needs_input_grad[1]:
            grad_codebook = torch.ops.latentquant.vector_quantize_backward(grad_z_q, indices, codebook)
        return None, grad_codebook, None

    torch.library.register_autograd("latentquant::vector_quantize", _backward, setup_context=_setup_context)

    # The backward is linear in grad_z_q: its own gradient is a row gather (double backward).
    def _setup_backward(ctx, inputs, output):
        _, indices, _ = inputs
        ctx.save_for_backward(indices)

    def _backward_backward(ctx, grad_grad_codebook):
        (indices,) = ctx.saved_tensors
        return grad_grad_codebook[indices], None, None

    torch.library.register_autograd(
        "latentquant::vector_quantize_backward", _backward_backward, setup_context=_setup_backward
    )


_registry.PUBLIC_OPS.append(_OP)
_registry.register_triton_module(_OP)


def vector_quantize(
    z: torch.Tensor, codebook: torch.Tensor, *, check_finite: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codebook row by squared L2, without materializing the (N, K) distance matrix.

    Args:
        z: (..., C) float16/bfloat16/float32/float64, any layout.
        codebook: (K, C).
        check_finite: raise ``ValueError`` if ``z`` holds NaN or Inf.

    Returns:
        z_q: (..., C) in z's dtype, ``codebook[indices]``.
        indices: (...) int64, ``argmin_k ||z - codebook[k]||^2``; exact ties (duplicate codes) go to the lowest
            index. Distances are formed as ``||c||^2 - 2 z.c`` in float32 (float64 for float64 inputs), so
            two codes whose distances differ by less than that rounding may resolve either way.

    Gradient flows to ``codebook`` (a scatter-add of ``grad_z_q`` rows), none to ``z``.
    """
    _checks.check_codebook(_OP, z, codebook, "codebook", rows_match=False)
    if not _registry.HAVE_C:
        _checks.check_finite_ref(_OP, z, codebook, check_finite)
        return vector_quantize_ref(z, codebook)
    z_q, indices = torch.ops.latentquant.vector_quantize(z.reshape(-1, z.shape[-1]), codebook, check_finite)
    return z_q.view(z.shape), indices.view(z.shape[:-1])
