"""Drop-in quantization layers with the call convention ``z_hat, indices, aux_loss = layer(z)``."""

from latentquant.nn.latent_quantizer import GlobalLatentQuantizer, LatentQuantizer
from latentquant.nn.vector_quantizer import VectorQuantizer

__all__ = ["GlobalLatentQuantizer", "LatentQuantizer", "VectorQuantizer"]
