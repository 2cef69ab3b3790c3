"""latentquant: disentangled representation learning with quantized latents.

Subpackages: ``ops`` (compiled quantization kernels), ``nn`` (drop-in layers), ``mi`` (mutual-information
estimators), ``metrics`` (InfoMEC, MIG, DCI, SAP, ...), ``data`` (procedural ground-truth datasets),
``zoo`` (models), ``train`` (training loop and reports).

``evaluate(encode_fn, dataset)`` scores any encoder on a ground-truth dataset (``latentquant.evaluation``).
"""

__version__ = "0.1.0"

from latentquant import ops  # noqa: E402,F401  (registers the torch.library ops)


def __getattr__(name: str):
    if name == "evaluate":  # the metrics stack (scikit-learn) loads on first use
        from latentquant.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'latentquant' has no attribute {name!r}")
