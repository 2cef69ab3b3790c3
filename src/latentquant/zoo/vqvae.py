"""VQ-VAE (van den Oord et al. 2017) as the paper runs it: a shared 512 x 64 codebook, one code per
latent slot, so the representation is L discrete codes.

As the authors evaluate it (``scripts/train_ae.py`` in kylehkhsu/latent_quantization scores ``z_indices``), the
representation is the integer code index of each slot: plug-in MI on the indices, and one-hot InfoE features
(``latentquant.metrics.infomec`` one-hot encodes integer-typed latents), since code indices are not ordinal."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from latentquant.nn import VectorQuantizer
from latentquant.zoo.base import Autoencoder, binary_cross_entropy


class VQVAE(Autoencoder):
    """VQ-VAE with ``num_latents`` slots of ``code_dim`` features, each snapped to one of ``codebook_size`` codes.

    Objective: ``BCE + quantization_weight * mean((sg(z) - e)^2) + commitment_weight * mean((z - sg(e))^2)``.

    Args:
        codebook_size: number of codes K (paper: 512).
        code_dim: features per code C (paper: 64).
        quantization_weight: codebook loss weight (paper: 1).
        commitment_weight: commitment loss weight (paper: 0.25).
        **kwargs: see :class:`latentquant.zoo.base.Autoencoder`.

    Shapes:
        ``forward(x)``: -> ``{"z": (B, L, C), "z_hat": (B, L, C), "indices": (B, L) int64, "aux_loss": (),
        "x_hat_logits": (B, C_img, H, W)}``; the representation is the code index of each slot, ``(B, L)`` int64.
    """

    name: ClassVar[str] = "vqvae"
    discrete_latents: ClassVar[bool] = True
    hyperparameters: ClassVar[dict[str, Any]] = {
        "codebook_size": 512,
        "code_dim": 64,
        "quantization_weight": 1.0,
        "commitment_weight": 0.25,
    }

    def __init__(
        self,
        num_latents: int,
        *args: Any,
        codebook_size: int = 512,
        code_dim: int = 64,
        quantization_weight: float = 1.0,
        commitment_weight: float = 0.25,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_latents,
            *args,
            encoder_features=num_latents * code_dim,
            decoder_features=num_latents * code_dim,
            **kwargs,
        )
        self.code_dim = int(code_dim)
        self.quantizer = VectorQuantizer(
            codebook_size=codebook_size,
            dim=code_dim,
            quantization_weight=quantization_weight,
            commitment_weight=commitment_weight,
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encoder(x).float().view(x.shape[0], self.num_latents, self.code_dim)
        z_hat, indices, aux_loss = self.quantizer(z)
        return {
            "z": z,
            "z_hat": z_hat,
            "indices": indices,
            "aux_loss": aux_loss,
            "x_hat_logits": self.decoder(z_hat.reshape(x.shape[0], -1)),
        }

    def losses(self, x: torch.Tensor, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        bce = binary_cross_entropy(outputs["x_hat_logits"], x)
        distance = (outputs["z"].detach() - outputs["z_hat"].detach()).square().mean()
        return {
            "loss": bce + outputs["aux_loss"],
            "binary_cross_entropy": bce,
            "quantization": distance,
            "commitment": distance,
        }

    def representation(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The code index of each slot, ``(B, L)`` int64 (integer-typed: InfoE one-hot encodes it)."""
        return outputs["indices"]

    def decode_representation(self, latents: torch.Tensor) -> torch.Tensor:
        """Image logits ``(B, C, H, W)`` from code indices ``(B, L)`` (int64, or floats holding integers)."""
        codes = self.quantizer.indices_to_values(latents.long())
        return self.decoder(codes.reshape(latents.shape[0], -1))

    def traversal_values(self, latents: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """Per slot, its ``steps`` most used codes in ``latents (N, L)``, in index order."""
        out = []
        for j in range(latents.shape[1]):
            codes, counts = latents[:, j].long().unique(return_counts=True)
            top = codes[counts.argsort(descending=True)[:steps]]
            out.append(top.sort().values.float())
        return out

    def codebook_parameters(self) -> list[nn.Parameter]:
        return list(self.quantizer.codebook_parameters())
