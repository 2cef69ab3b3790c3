"""latentquant: disentangled representation learning with quantized latents.

Subpackages: ``ops`` (compiled quantization kernels), ``nn`` (drop-in layers), ``mi`` (mutual-information
estimators), ``metrics`` (InfoMEC, MIG, DCI, SAP, ...), ``data`` (procedural ground-truth datasets),
``zoo`` (models), ``train`` (training loop and reports).
"""

__version__ = "0.1.0"

from latentquant import ops  # noqa: E402,F401  (registers the torch.library ops)
