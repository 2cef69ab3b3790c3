"""Drop-in quantization layers with the call convention ``z_hat, indices, aux_loss = layer(z)``
(``FSQ``: ``codes, indices = fsq(z)``, as vector-quantize-pytorch's)."""

from latentquant.nn.fsq import FSQ
from latentquant.nn.latent_quantizer import GlobalLatentQuantizer, LatentQuantizer
from latentquant.nn.vector_quantizer import VectorQuantizer

__all__ = ["FSQ", "GlobalLatentQuantizer", "LatentQuantizer", "VectorQuantizer"]
