"""Continuous-latent autoencoders: the plain AE (reconstruction only) and BioAE (Whittington et al. 2023:
non-negativity and activity penalties on the latents)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from latentquant.zoo.base import Autoencoder, binary_cross_entropy


class AE(Autoencoder):
    """Autoencoder with continuous latents; objective: binary cross-entropy.

    Shapes:
        ``forward(x)``: x ``(B, C, H, W)`` -> ``{"z": (B, L), "x_hat_logits": (B, C, H, W)}``.
    """

    name: ClassVar[str] = "ae"

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encoder(x)
        return {"z": z, "x_hat_logits": self.decoder(z)}

    def losses(self, x: torch.Tensor, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        bce = binary_cross_entropy(outputs["x_hat_logits"], x)
        return {"loss": bce, "binary_cross_entropy": bce}

    def representation(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs["z"]


class BioAE(AE):
    """BioAE: BCE + nonnegative_weight * mean(max(-z, 0)) + activity_weight * mean(z^2).

    Args:
        nonnegative_weight: weight of the non-negativity penalty (paper: 1).
        activity_weight: weight of the activity penalty (paper: shapes3d, mpi3d, falcor3d 0.01; isaac3d 0.1;
            the authors' default 0.1).
        **kwargs: see :class:`latentquant.zoo.base.Autoencoder`.
    """

    name: ClassVar[str] = "bioae"
    hyperparameters: ClassVar[dict[str, Any]] = {"nonnegative_weight": 1.0, "activity_weight": 0.1}
    # The authors' configs/params/bio_ae/<dataset>.yaml ("activity"; their isaac3d file says data.name falcor3d,
    # a slip in the file named for isaac3d); dsprites has none: their bio_ae.yaml default 0.1.
    dataset_hyperparameters: ClassVar[dict[str, dict[str, Any]]] = {
        "shapes3d": {"activity_weight": 0.01},
        "mpi3d": {"activity_weight": 0.01},
        "falcor3d": {"activity_weight": 0.01},
        "isaac3d": {"activity_weight": 0.1},
        "dsprites": {"activity_weight": 0.1},
    }

    def __init__(
        self, *args: Any, nonnegative_weight: float = 1.0, activity_weight: float = 0.1, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.nonnegative_weight = float(nonnegative_weight)
        self.activity_weight = float(activity_weight)

    def losses(self, x: torch.Tensor, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = outputs["z"].float()
        bce = binary_cross_entropy(outputs["x_hat_logits"], x)
        nonnegative = torch.relu(-z).mean()
        activity = z.square().mean()
        loss = bce + self.nonnegative_weight * nonnegative + self.activity_weight * activity
        return {"loss": loss, "binary_cross_entropy": bce, "nonnegative": nonnegative, "activity": activity}
