"""Compiled quantization ops (``torch.library`` namespace ``latentquant::``).

Public functions: :func:`scalar_quantize`, :func:`latent_quantize`, :func:`vector_quantize`, and
:func:`backend_info`, which says which kernels are compiled and live. When ``latentquant._C`` is missing
(``LATENTQUANT_NO_EXT=1`` or a failed build) the plain-PyTorch references in ``latentquant.reference``
take over, with one warning at import.
"""

# Importing registers the k-NN MI ops (public API in latentquant.mi) and logistic_loss_grad (latentquant.metrics).
from latentquant.ops import knn_mi, label_encode, logistic  # noqa: F401
from latentquant.ops._registry import backend_info
from latentquant.ops.latent_quantize import latent_quantize
from latentquant.ops.scalar_quantize import scalar_quantize
from latentquant.ops.vector_quantize import vector_quantize

__all__ = ["backend_info", "latent_quantize", "scalar_quantize", "vector_quantize"]
