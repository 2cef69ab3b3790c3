"""Oracle for ``latentquant::latent_quantize``: the QLAE quantization step composed from plain PyTorch."""

from __future__ import annotations

import torch

from latentquant.reference.scalar_quantize import _compute_dtype, scalar_quantize_ref


def latent_quantize_ref(
    z: torch.Tensor,
    values: torch.Tensor,
    quantization_weight: float = 0.01,
    commitment_weight: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The naive composition: quantize, straight-through estimator, the two QLAE losses.

    Shapes: z (..., D), values (D, K) -> z_hat (..., D), indices (..., D) int64, aux_loss () in float32
    (float64 when z or values is float64).
    ``aux_loss = qw * mean((sg(z) - z_q)^2) + cw * mean((z - sg(z_q))^2)``; zero for empty z.
    ``z_hat`` has z_q's value and d z_hat / d z = I; the decoder's gradient never reaches ``values``.
    """
    z_q, indices = scalar_quantize_ref(z, values)
    ct = _compute_dtype(z, values)
    zc, zqc = z.to(ct), z_q.to(ct)
    if z.numel() == 0:
        aux_loss = (zc.sum() + zqc.sum()) * 0.0
    else:
        quantization = ((zc.detach() - zqc) ** 2).mean()
        commitment = ((zc - zqc.detach()) ** 2).mean()
        aux_loss = quantization_weight * quantization + commitment_weight * commitment
    # Straight-through written so the value is exactly z_q in every dtype (the usual z + (z_q - z).detach()
    # rounds in float16/bfloat16); the gradient with respect to z is the identity.
    z_hat = z_q.detach() + (z - z.detach())
    return z_hat, indices, aux_loss
