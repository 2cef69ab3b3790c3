"""The autoencoder interface every zoo model implements, and the reconstruction loss they share.

A model maps images ``x (B, C, H, W)`` in [0, 1] to an output dict (``forward``), turns that dict into
named loss terms (``losses``; the key ``"loss"`` is the total that is minimized), and exposes the
representation that evaluation scores (``representation``) together with a decoder from that
representation back to images (``decode_representation``) and the values a latent traversal visits
(``traversal_values``).

Training goes through two methods the loop calls without knowing the model family:
``configure_optimizers(config)`` names the model's optimizers and ``train_step(images, step, optimizers,
config)`` takes one optimization step with them and returns the losses to log. Autoencoders have one
optimizer, ``"model"``; models with several (the GANs: critic and generator) override both.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from latentquant.zoo.decoders import DecoderSpec, build_decoder
from latentquant.zoo.encoders import EncoderSpec, build_encoder


def binary_cross_entropy(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sigmoid binary cross-entropy on logits, the mean over pixels, channels and the batch (the paper's loss).

    Shapes:
        logits, x: ``(B, C, H, W)``; returns a scalar.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), x.float())


class Autoencoder(nn.Module, abc.ABC):
    """Base class of the zoo's autoencoders: an encoder, a latent layer and a style decoder.

    Subclasses set ``name``, ``discrete_latents``, ``hyperparameters`` (name -> paper default),
    ``dataset_hyperparameters`` (dataset -> overrides of the defaults) and implement ``forward``,
    ``losses`` and ``representation``.

    Args:
        num_latents: number of latent dimensions L.
        image_shape: ``(C, H, W)`` of the images.
        encoder: name of the encoder (see ``latentquant.zoo.encoders.ENCODERS``) or its layout (an
            ``EncoderSpec``, e.g. ``latentquant.zoo.encoders.encoder_spec(name, widths=...)``).
        decoder: name of the decoder (see ``latentquant.zoo.decoders.DECODERS``) or its layout (a
            ``DecoderSpec``, e.g. ``latentquant.zoo.decoders.decoder_spec(name, widths=...)``).
        encoder_features: size of the encoder's output (default L).
        decoder_features: size of the decoder's input (default L).
    """

    name: ClassVar[str] = ""
    discrete_latents: ClassVar[bool] = False
    hyperparameters: ClassVar[dict[str, Any]] = {}
    dataset_hyperparameters: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(
        self,
        num_latents: int,
        image_shape: tuple[int, int, int],
        encoder: str | EncoderSpec = "cpu",
        decoder: str | DecoderSpec = "cpu",
        encoder_features: int | None = None,
        decoder_features: int | None = None,
    ) -> None:
        super().__init__()
        if num_latents < 1:
            raise ValueError(f"num_latents must be >= 1, got {num_latents}")
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape}")
        self.num_latents = int(num_latents)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.pixels = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        self.encoder = build_encoder(encoder, self.image_shape, encoder_features or num_latents)
        self.decoder = build_decoder(decoder, decoder_features or num_latents, self.image_shape)

    @classmethod
    def default_hyperparameters(cls, dataset: str) -> dict[str, Any]:
        """The paper's hyperparameters of this model for ``dataset`` (the defaults where the paper has none)."""
        return {**cls.hyperparameters, **cls.dataset_hyperparameters.get(dataset, {})}

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode and decode ``x (B, C, H, W)``; the dict holds at least ``"x_hat_logits" (B, C, H, W)``."""

    @abc.abstractmethod
    def losses(self, x: torch.Tensor, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named scalar loss terms of a batch (unweighted, as the paper logs them) and ``"loss"``, the total."""

    @abc.abstractmethod
    def representation(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The latents evaluation scores, ``(B, L)``: float (for QLAE: the quantized values), or int64 code indices
        (VQ-VAE), which InfoE one-hot encodes as the authors do."""

    def decode_representation(self, latents: torch.Tensor) -> torch.Tensor:
        """Image logits ``(B, C, H, W)`` from representation latents ``(B, L)`` (as ``representation`` gives)."""
        return self.decoder(latents)

    def traversal_values(self, latents: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """Per latent, the 1-D values a traversal visits, from the representation of a sample ``(N, L)``.

        Continuous latents: ``steps`` values evenly spaced between the 2nd and 98th percentile.
        """
        lo = torch.quantile(latents.float(), 0.02, dim=0)
        hi = torch.quantile(latents.float(), 0.98, dim=0)
        grid = torch.linspace(0.0, 1.0, steps, device=latents.device)
        return [lo[j] + (hi[j] - lo[j]) * grid for j in range(latents.shape[1])]

    def codebook_parameters(self) -> list[nn.Parameter]:
        """Parameters of codebooks (excluded from weight decay and gradient clipping); none by default."""
        return []

    def report_figures(self, out_dir: Path, records: list[dict[str, Any]], config: Any) -> dict[str, str]:
        """Write this model's own report figures as ``out_dir/<name>.png``; returns ``{name: caption}``.

        The run report adds them after the standard ones (reconstructions, traversals, NMI, losses). Args:
        ``records``, the run's log records (``log.jsonl``); ``config``, the run's ``TrainConfig``. None by
        default; the GANs draw prior samples, prior traversals and their loss / Wasserstein curves.
        """
        return {}

    def configure_optimizers(self, config: Any) -> dict[str, torch.optim.Optimizer]:
        """The optimizers of this model by name; checkpoints store and restore their states under these names.

        Args:
            config: the run's ``latentquant.train.TrainConfig`` (``lr``, ``weight_decay`` are read).

        Returns:
            ``{"model": AdamW}`` over the paper's parameter groups (``latentquant.train.build_optimizer``).
        """
        from latentquant.train.optim import build_optimizer

        return {"model": build_optimizer(self, config.lr, float(config.weight_decay))}

    def train_step(
        self,
        images: torch.Tensor,
        step: int,
        optimizers: dict[str, torch.optim.Optimizer],
        config: Any,
        forward: Any = None,
    ) -> dict[str, torch.Tensor]:
        """One optimization step on a batch: forward, losses, backward, gradient clipping, optimizer step.

        Args:
            images: the batch ``(B, C, H, W)`` in [0, 1], already on the model's device.
            step: steps completed before this one (0 for the first step of a run).
            optimizers: what :meth:`configure_optimizers` returned (restored from a checkpoint on resume).
            config: the run's ``TrainConfig``; ``amp`` (bfloat16 autocast, CUDA only) and ``grad_clip`` are read.
            forward: the module to run the forward pass through (e.g. ``torch.compile(self)``); default ``self``.

        Returns:
            Detached scalar loss tensors by name, ``"loss"`` (the minimized total) always among them.
        """
        from latentquant.train.optim import clip_gradients

        optimizer = optimizers["model"]
        use_amp = bool(config.amp) and images.device.type == "cuda"
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=use_amp):
            outputs = (forward if forward is not None else self)(images)
            losses = self.losses(images, outputs)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        clip_gradients(optimizer, config.grad_clip)
        optimizer.step()
        return {name: value.detach() for name, value in losses.items()}
