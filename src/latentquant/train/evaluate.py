"""Evaluation as the paper does it: a fixed sample of images from the training distribution (10,000 by
default), InfoM / InfoE / InfoC of the model's representation against the true factors, and the PSNR of
its reconstructions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from latentquant._progress import progress
from latentquant.metrics import infomec
from latentquant.zoo import Autoencoder

EVAL_BATCH = 500


@dataclass
class Evaluation:
    """The result of :func:`evaluate_model`.

    Attributes:
        metrics: ``infom``, ``infoe``, ``infoc``, ``psnr`` (dB), ``binary_cross_entropy`` and ``eval_samples``.
        nmi: ``(F, L)`` normalized mutual information between factors and latents.
        active_latents: ``(L,)`` bool, the latents InfoMEC counts as active.
        latents: ``(N, L)`` the representation of the evaluation sample (CPU; float32, or int64 code indices
            for VQ-VAE).
        factors: ``(N, F)`` the sample's factor indices.
    """

    metrics: dict[str, float]
    nmi: np.ndarray
    active_latents: np.ndarray
    latents: torch.Tensor
    factors: torch.Tensor

    def summary(self) -> dict[str, Any]:
        """Metrics plus the NMI matrix and active-latent mask as nested lists (JSON-ready)."""
        return {
            **self.metrics,
            "nmi": np.round(self.nmi, 6).tolist(),
            "active_latents": [bool(a) for a in self.active_latents],
        }


def psnr(reconstructions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-image peak signal-to-noise ratio in dB for images in [0, 1].

    Shapes:
        reconstructions, images: ``(B, C, H, W)`` -> ``(B,)``.
    """
    mse = (reconstructions.float() - images.float()).square().flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def evaluation_factors(dataset: Any, num_samples: int, seed: int) -> torch.Tensor:
    """The evaluation set's factors: ``num_samples`` distinct images of ``dataset``, fixed by ``seed``.

    As the authors evaluate: a fixed subset drawn WITHOUT replacement, the first ``num_samples`` images of
    a seeded shuffle of the whole dataset (``torch.randperm`` with ``seed``; the default ``eval_seed``
    20230228 is the authors' data seed). The authors take the first 10,000 images of their
    tensorflow-datasets copy, whose order tfds fixes when it writes the files: the same protocol (a fixed
    set of distinct images), not the same 10,000 images. A dataset smaller than ``num_samples`` is
    evaluated on all its images, once each. Procedural and real datasets are treated alike.

    Returns:
        ``(min(num_samples, len(dataset)), F)`` int64 factor indices, in shuffled order.
    """
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(int(seed)))
    return dataset.index_to_factors(order[: min(int(num_samples), len(dataset))])


@torch.no_grad()
def encode_dataset(
    model: Autoencoder,
    dataset: Any,
    factors: torch.Tensor,
    device: torch.device,
    channels_last: bool = False,
) -> tuple[torch.Tensor, float, float]:
    """Representation, mean PSNR and mean BCE of the images of ``factors (N, F)``, in batches, in eval mode.

    Returns:
        ``(latents (N, L) CPU, psnr dB, bce)``; latents are float32, or int64 where ``model.representation``
        gives integers (VQ-VAE's code indices keep their type: InfoE one-hot encodes them).
    """
    was_training = model.training
    model.eval()
    latents, psnrs, bce_sum = [], [], 0.0
    try:
        batches = range(0, factors.shape[0], EVAL_BATCH)
        for start in progress(batches, "evaluation: encoding", total=len(batches)):
            images = dataset.images_for(factors[start : start + EVAL_BATCH]).to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            outputs = model(images)
            logits = outputs["x_hat_logits"].float()
            representation = model.representation(outputs)
            if representation.is_floating_point():
                representation = representation.float()
            latents.append(representation.cpu())
            psnrs.append(psnr(torch.sigmoid(logits), images).cpu())
            bce_sum += (
                float(torch.nn.functional.binary_cross_entropy_with_logits(logits, images, reduction="sum"))
                / images[0].numel()
            )
    finally:
        model.train(was_training)
    return torch.cat(latents), float(torch.cat(psnrs).mean()), bce_sum / factors.shape[0]


def evaluate_model(
    model: Autoencoder,
    dataset: Any,
    factors: torch.Tensor,
    device: torch.device,
    convention: str = "paper",
    channels_last: bool = False,
) -> Evaluation:
    """InfoMEC and PSNR of ``model`` on the images of ``factors (N, F)``.

    The representation is what ``model.representation`` gives (QLAE: the quantized values; VAEs: the
    posterior mean; VQ-VAE: int64 code indices, which InfoE one-hot encodes), scored as discrete when
    ``model.discrete_latents``.
    """
    latents, mean_psnr, bce = encode_dataset(model, dataset, factors, device, channels_last)
    result = infomec(
        factors.numpy(),
        latents.double().numpy() if latents.is_floating_point() else latents.numpy(),
        discrete_latents=model.discrete_latents,
        convention=convention,
    )
    metrics = {
        "infom": float(result.infom),
        "infoe": float(result.infoe),
        "infoc": float(result.infoc),
        "psnr": mean_psnr,
        "binary_cross_entropy": bce,
        "eval_samples": int(factors.shape[0]),
    }
    return Evaluation(
        metrics=metrics,
        nmi=np.asarray(result.nmi, dtype=np.float64),
        active_latents=np.asarray(result.active_latents, dtype=bool),
        latents=latents,
        factors=factors,
    )
