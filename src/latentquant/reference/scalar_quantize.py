"""Oracle for ``latentquant::scalar_quantize``: per-dimension nearest scalar codebook value."""

from __future__ import annotations

import torch


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def scalar_quantize_ref(z: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``indices[..., d] = argmin_k |z[..., d] - values[d, k]|`` (ties: lowest k); ``z_q = values[d, indices]``.

    Shapes: z (..., D), values (D, K) -> z_q (..., D) in z's dtype, indices (..., D) int64.
    Materializes the (..., D, K) distance tensor: an oracle, not a kernel. Gradient flows to ``values``
    through the gather, none to ``z``.
    """
    ct = _compute_dtype(z, values)
    dist = (z.detach().to(ct).unsqueeze(-1) - values.detach().to(ct)).abs()
    # torch.argmin returns the first minimal index, which is the tie rule we want.
    indices = dist.argmin(dim=-1)
    d_index = torch.arange(values.shape[0], device=z.device).expand_as(indices)
    z_q = values[d_index, indices].to(z.dtype)
    return z_q, indices
