"""Registration of ``latentquant::vector_quantize``: fake impl, autograd, public wrapper."""

from __future__ import annotations

import torch

from latentquant.ops import _checks, _registry
from latentquant.reference.vector_quantize import vector_quantize_ref

_OP = "vector_quantize"

# Fake impls and autograd; the backward's own gradient (double backward) is a gather of indices.
_registry.register_nearest_codebook_op(_OP, lambda z: tuple(z.shape[:1]), lambda ggc, indices: ggc[indices])

_registry.PUBLIC_OPS.append(_OP)
_registry.register_triton_module(_OP, (_OP, f"{_OP}_backward"))


def vector_quantize(
    z: torch.Tensor, codebook: torch.Tensor, *, check_finite: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codebook row by squared L2, without materializing the (N, K) distance matrix.

    Args:
        z: (..., C) float16/bfloat16/float32/float64, any layout.
        codebook: (K, C).
        check_finite: raise ``ValueError`` if ``z`` or the codebook holds NaN or Inf (checked inside the
            kernel's pass; on a GPU one synchronization per call, skipped while the current CUDA stream is
            capturing a graph, where nothing can raise). ``False`` skips both checks on every backend.

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
    z_q, indices = torch.ops.latentquant.vector_quantize(_checks.flatten_latents(z), codebook, check_finite)
    return z_q.view(z.shape), indices.view(z.shape[:-1])
