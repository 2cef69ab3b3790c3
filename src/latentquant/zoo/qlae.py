"""QLAE: the quantized-latent autoencoder of Hsu et al. (2023), with its global-codebook ablation.

Each latent has its own small scalar codebook (10 learned values); the encoder's output is quantized by
``latentquant.nn.LatentQuantizer`` (the fused ``latent_quantize`` kernel), which returns the
straight-through latents and the weighted quantization + commitment loss.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from latentquant.nn import GlobalLatentQuantizer, LatentQuantizer
from latentquant.zoo.base import Autoencoder, binary_cross_entropy


class QLAE(Autoencoder):
    """Quantized-latent autoencoder.

    Objective: ``BCE + quantization_weight * mean((sg(z) - z_q)^2) + commitment_weight * mean((z - sg(z_q))^2)``.

    Args:
        num_values: values per latent (paper: 10).
        quantization_weight: weight of the quantization loss (paper: 0.01).
        commitment_weight: weight of the commitment loss (paper: 0.01).
        global_codebook: one codebook shared by every latent (the paper's ablation).
        **kwargs: see :class:`latentquant.zoo.base.Autoencoder`.

    Shapes:
        ``forward(x)``: x ``(B, C, H, W)`` -> ``{"z": (B, L) continuous, "z_hat": (B, L) quantized,
        "indices": (B, L) int64, "aux_loss": (), "x_hat_logits": (B, C, H, W)}``.
    """

    name: ClassVar[str] = "qlae"
    discrete_latents: ClassVar[bool] = True
    hyperparameters: ClassVar[dict[str, Any]] = {
        "num_values": 10,
        "quantization_weight": 0.01,
        "commitment_weight": 0.01,
        "global_codebook": False,
    }

    def __init__(
        self,
        *args: Any,
        num_values: int = 10,
        quantization_weight: float = 0.01,
        commitment_weight: float = 0.01,
        global_codebook: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        layer = GlobalLatentQuantizer if global_codebook else LatentQuantizer
        self.quantizer = layer(
            self.num_latents,
            num_values=num_values,
            quantization_weight=quantization_weight,
            commitment_weight=commitment_weight,
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encoder(x)
        # quantize in at least float32 (a half-precision encoder under autocast), a float64 model in float64
        z_hat, indices, aux_loss = self.quantizer(z.to(torch.promote_types(z.dtype, torch.float32)))
        return {
            "z": z,
            "z_hat": z_hat,
            "indices": indices,
            "aux_loss": aux_loss,
            "x_hat_logits": self.decoder(z_hat),
        }

    def losses(self, x: torch.Tensor, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        bce = binary_cross_entropy(outputs["x_hat_logits"], x)
        # Both terms have the value mean((z - z_q)^2); they differ only in where the gradient flows, which the
        # fused kernel handles inside aux_loss. Logged unweighted, as the paper does.
        distance = (outputs["z"].detach().float() - outputs["z_hat"].detach()).square().mean()
        return {
            "loss": bce + outputs["aux_loss"],
            "binary_cross_entropy": bce,
            "quantization": distance,
            "commitment": distance,
        }

    def representation(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs["z_hat"]

    def traversal_values(self, latents: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """Per latent, every one of its codebook values in ascending order (``steps`` does not apply)."""
        values = self.quantizer.sorted_codebook().detach()
        return [values[j, :size].clone() for j, size in enumerate(self.quantizer.num_values)]

    def codebook_parameters(self) -> list[nn.Parameter]:
        return list(self.quantizer.codebook_parameters())
