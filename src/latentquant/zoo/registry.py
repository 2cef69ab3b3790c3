"""The zoo's model names, their classes and the paper's per-model, per-dataset defaults.

The autoencoders' values are the authors' (kylehkhsu/latent_quantization): ``configs/params/<model>/`` for the
four datasets of the paper's tables (shapes3d, mpi3d, falcor3d, isaac3d), ``configs/model_partial/<model>.yaml``
where no params file sets a value. dSprites is in none of the paper's tables and has no params file: it takes
the model-config defaults (β-VAE β 1, β-TCVAE β 1, BioAE λact 0.1), except that ``vqvae``, "VQ-VAE with weight
decay", keeps its 0.01 (the model-config default 0 is the ``vqvae_no_wd`` ablation). MPI3D is the paper's grid
(the "complex" shapes); other MPI3D grids take the same settings (:func:`paper_dataset`).
Weight decay of the autoencoders (the authors' ``lambdas.l2``):

=====================  ========  =====  ========  =======  ========
model                  shapes3d  mpi3d  falcor3d  isaac3d  dsprites
=====================  ========  =====  ========  =======  ========
qlae, qlae_global      0.1       0.001  0.1       0.1      0.1
ae                     0         0.001  0         0        0
bioae                  1e-4      1e-4   1e-4      1e-4     1e-4
vqvae                  0.01      0.01   0.01      0.01     0.01
beta_vae, beta_tcvae   0         0      0         0        0
=====================  ========  =====  ========  =======  ========

``qlae_no_wd`` and ``vqvae_no_wd`` (the paper's ablations) use 0 everywhere. The models' own per-dataset
hyperparameters (β, λact) are the classes' ``dataset_hyperparameters``; ``qlae_global`` on MPI3D has no params
file of its own and takes QLAE's 0.001 (the authors' sweep swapped only the model config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from latentquant.zoo.ae import AE, BioAE
from latentquant.zoo.base import Autoencoder
from latentquant.zoo.decoders import DecoderSpec
from latentquant.zoo.encoders import EncoderSpec
from latentquant.zoo.gan import InfoWGANGP, QLInfoWGANGP
from latentquant.zoo.qlae import QLAE
from latentquant.zoo.vae import BetaTCVAE, BetaVAE
from latentquant.zoo.vqvae import VQVAE


@dataclass(frozen=True)
class ModelEntry:
    """A named model: its class, hyperparameter defaults on top of the class's, its weight decay, and training
    settings that differ from the autoencoders' defaults (``TrainConfig`` keys, e.g. the GANs' lr and batch)."""

    cls: type[Autoencoder]
    description: str
    weight_decay: float
    dataset_weight_decay: dict[str, float] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)


# The authors' GAN recipe (configs/train_gan.yaml): Adam(W) lr 2e-4 (betas 0, 0.9 are model arguments),
# batch 64, 1e5 iterations by default (their paper sweeps ran 2e5: set steps=200000).
_GAN_TRAINING = {"lr": 2e-4, "batch_size": 64, "steps": 100_000}


MODELS: dict[str, ModelEntry] = {
    "qlae": ModelEntry(
        QLAE, "quantized-latent autoencoder (per-latent scalar codebooks)", 0.1, {"mpi3d": 0.001}
    ),
    "qlae_global": ModelEntry(
        QLAE,
        "QLAE ablation: one codebook shared by all latents",
        0.1,
        {"mpi3d": 0.001},
        {"global_codebook": True},
    ),
    "qlae_no_wd": ModelEntry(QLAE, "QLAE ablation: without weight decay", 0.0),
    "ae": ModelEntry(AE, "autoencoder, continuous latents, reconstruction loss only", 0.0, {"mpi3d": 0.001}),
    "beta_vae": ModelEntry(BetaVAE, "beta-VAE", 0.0),
    "beta_tcvae": ModelEntry(BetaTCVAE, "beta-TCVAE (minibatch-weighted sampling)", 0.0),
    "bioae": ModelEntry(BioAE, "BioAE: non-negativity and activity penalties", 1e-4),
    "vqvae": ModelEntry(VQVAE, "VQ-VAE, 512 x 64 codebook, one code per latent slot", 0.01),
    "vqvae_no_wd": ModelEntry(VQVAE, "VQ-VAE ablation: without weight decay", 0.0),
    # The authors' l2: QLInfoWGAN-GP 1e-3 on shapes3d / MPI3D / Isaac3D, 1e-4 on Falcor3D and by default
    # (configs/params/quantized_info_gan/); InfoWGAN-GP 1e-4 (model_partial/info_gan.yaml); WGAN-GP 0
    # (model_partial/base_gan.yaml, latent weight 0).
    "qlinfowgan": ModelEntry(
        QLInfoWGANGP,
        "QLInfoWGAN-GP: WGAN-GP whose critic regresses a quantized latent; prior over the learned values",
        1e-4,
        {"shapes3d": 1e-3, "mpi3d": 1e-3, "isaac3d": 1e-3},
        training=_GAN_TRAINING,
    ),
    "qlinfowgan_no_wd": ModelEntry(
        QLInfoWGANGP, "QLInfoWGAN-GP ablation: without weight decay", 0.0, training=_GAN_TRAINING
    ),
    "infowgan": ModelEntry(
        InfoWGANGP,
        "InfoWGAN-GP: WGAN-GP whose critic regresses the continuous latent; prior U(0, 1)",
        1e-4,
        training=_GAN_TRAINING,
    ),
    "wgan": ModelEntry(
        InfoWGANGP,
        "WGAN-GP: InfoWGAN-GP with latent weight 0 (no latent regression)",
        0.0,
        overrides={"latent_weight": 0.0},
        training=_GAN_TRAINING,
    ),
}


PAPER_DATASETS = ("shapes3d", "mpi3d", "falcor3d", "isaac3d", "dsprites")
"""Datasets with the authors' settings: the paper's four, and dSprites (model-config defaults, see above)."""


def paper_dataset(dataset: str) -> str:
    """The name under which the authors' settings for ``dataset`` are filed.

    Every MPI3D grid (``mpi3d`` and any ``mpi3d_<variant>``: toy, realistic, real, complex) takes the paper's
    MPI3D settings: the authors ran only the complex grid. Other names map to themselves (a dataset without
    settings gets the models' defaults).
    """
    return "mpi3d" if dataset == "mpi3d" or dataset.startswith("mpi3d_") else dataset


def _entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


def default_hyperparameters(name: str, dataset: str) -> dict[str, Any]:
    """The paper's hyperparameters of model ``name`` on ``dataset`` (keys the model's constructor accepts)."""
    entry = _entry(name)
    return {**entry.cls.default_hyperparameters(paper_dataset(dataset)), **entry.overrides}


def default_weight_decay(name: str, dataset: str) -> float:
    """The paper's AdamW weight decay for model ``name`` on ``dataset``."""
    entry = _entry(name)
    return entry.dataset_weight_decay.get(paper_dataset(dataset), entry.weight_decay)


def default_training_settings(name: str) -> dict[str, Any]:
    """Training settings (``TrainConfig`` keys) model ``name`` uses unless the run sets them, e.g. the GANs'
    ``lr`` 2e-4, ``batch_size`` 64 and ``steps`` 1e5; empty for the autoencoders (the ``TrainConfig`` defaults)."""
    return dict(_entry(name).training)


def build_model(
    name: str,
    num_latents: int,
    image_shape: tuple[int, int, int],
    encoder: str | EncoderSpec = "cpu",
    decoder: str | DecoderSpec = "cpu",
    **hyperparameters: Any,
) -> Autoencoder:
    """Build zoo model ``name``.

    Args:
        name: one of :data:`MODELS`.
        num_latents: number of latents L (the paper uses twice the number of factors).
        image_shape: ``(C, H, W)``.
        encoder: encoder name (``latentquant.zoo.encoders.ENCODERS``) or layout (``encoder_spec(...)``).
        decoder: decoder name (``latentquant.zoo.decoders.DECODERS``) or layout (``decoder_spec(...)``).
        **hyperparameters: model hyperparameters; unspecified ones take the model's defaults.

    Raises:
        ValueError: an unknown model, encoder or decoder, or a hyperparameter the model does not have.
    """
    entry = _entry(name)
    known = {**entry.cls.hyperparameters, **entry.overrides}
    unknown = sorted(set(hyperparameters) - set(known))
    if unknown:
        raise ValueError(
            f"model {name!r} has no hyperparameter(s) {unknown}; its hyperparameters are {sorted(known)}"
        )
    kwargs = {**entry.overrides, **hyperparameters}
    return entry.cls(num_latents, image_shape, encoder=encoder, decoder=decoder, **kwargs)
