"""Oracle for ``latentquant::vector_quantize``: nearest codebook row by squared L2."""

from __future__ import annotations

import torch

from latentquant.reference.scalar_quantize import _compute_dtype


def vector_quantize_ref(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``indices = argmin_k ||z - codebook[k]||^2`` (ties: lowest k), ``z_q = codebook[indices]``.

    Shapes: z (..., C), codebook (K, C) -> z_q (..., C) in z's dtype, indices (...) int64.
    Materializes the (N, K, C) difference tensor (exact distances): an oracle, not a kernel.
    Gradient flows to ``codebook`` through the gather, none to ``z``.
    """
    ct = _compute_dtype(z, codebook)
    flat = z.detach().reshape(-1, z.shape[-1]).to(ct)
    cb = codebook.detach().to(ct)
    dist = ((flat.unsqueeze(1) - cb.unsqueeze(0)) ** 2).sum(-1)
    if flat.shape[0] == 0:
        indices = torch.zeros(0, dtype=torch.long, device=z.device)
    else:
        indices = dist.argmin(dim=-1)
    z_q = codebook[indices].to(z.dtype).reshape(z.shape)
    return z_q, indices.reshape(z.shape[:-1])
