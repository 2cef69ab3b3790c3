"""Registration of ``latentquant::scalar_quantize``: fake impl, autograd, public wrapper."""

from __future__ import annotations

import torch

from latentquant.ops import _checks, _registry
from latentquant.reference.scalar_quantize import scalar_quantize_ref

_OP = "scalar_quantize"

# Fake impls and autograd; the backward's own gradient (double backward) is a gather of indices.
_registry.register_nearest_codebook_op(
    _OP, lambda z: tuple(z.shape), lambda ggv, indices: ggv.gather(1, indices.t()).t()
)

_registry.PUBLIC_OPS.append(_OP)
_registry.register_triton_module(_OP, (_OP, f"{_OP}_backward"))


def scalar_quantize(
    z: torch.Tensor, values: torch.Tensor, *, check_finite: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest per-dimension scalar codebook value.

    Args:
        z: (..., D) float16/bfloat16/float32/float64, any layout.
        values: (D, K) per-dimension codebooks (ragged codebooks: pad a row by repeating its last value,
            which never wins a tie).
        check_finite: raise ``ValueError`` if ``z`` or the codebook holds NaN or Inf (checked inside the
            kernel's pass; on a GPU one synchronization per call, skipped while the current CUDA stream is
            capturing a graph, where nothing can raise). ``False`` skips both checks on every backend.

    Returns:
        z_q: (..., D) in z's dtype, ``z_q[..., d] = values[d, indices[..., d]]``.
        indices: (..., D) int64, ``argmin_k |z[..., d] - values[d, k]|``, ties to the lowest k.

    Gradient flows to ``values`` (a scatter-add of ``grad_z_q``), none to ``z``.
    """
    _checks.check_codebook(_OP, z, values, "values", rows_match=True)
    if not _registry.HAVE_C:
        _checks.check_finite_ref(_OP, z, values, check_finite)
        return scalar_quantize_ref(z, values)
    z_q, indices = torch.ops.latentquant.scalar_quantize(_checks.flatten_latents(z), values, check_finite)
    return z_q.view(z.shape), indices.view(z.shape)
