"""The model zoo: QLAE and its ablations, AE, β-VAE, β-TCVAE, BioAE, VQ-VAE, and the GANs (QLInfoWGAN-GP and its
ablation, InfoWGAN-GP, WGAN-GP), with the paper's encoder and style-modulated decoder (and smaller variants),
selected by name.

``build_model(name, num_latents, image_shape, encoder=..., decoder=..., **hyperparameters)`` builds one;
``MODELS`` lists them; ``default_hyperparameters`` and ``default_weight_decay`` give the paper's settings.
"""

from latentquant.zoo.ae import AE, BioAE
from latentquant.zoo.base import Autoencoder, binary_cross_entropy
from latentquant.zoo.decoders import DECODERS, StyleDecoder, build_decoder
from latentquant.zoo.encoders import ENCODERS, ConvEncoder, build_encoder
from latentquant.zoo.gan import (
    InfoWGANGP,
    QLInfoWGANGP,
    critic_value_loss,
    gradient_penalty,
    latent_regression_loss,
)
from latentquant.zoo.qlae import QLAE
from latentquant.zoo.registry import (
    MODELS,
    build_model,
    default_hyperparameters,
    default_training_settings,
    default_weight_decay,
)
from latentquant.zoo.vae import BetaTCVAE, BetaVAE
from latentquant.zoo.vqvae import VQVAE

__all__ = [
    "AE",
    "DECODERS",
    "ENCODERS",
    "MODELS",
    "QLAE",
    "VQVAE",
    "Autoencoder",
    "BetaTCVAE",
    "BetaVAE",
    "BioAE",
    "ConvEncoder",
    "InfoWGANGP",
    "QLInfoWGANGP",
    "StyleDecoder",
    "binary_cross_entropy",
    "build_decoder",
    "build_encoder",
    "build_model",
    "critic_value_loss",
    "default_hyperparameters",
    "default_training_settings",
    "default_weight_decay",
    "gradient_penalty",
    "latent_regression_loss",
]
