"""latentquant: disentangled representation learning with quantized latents.

Subpackages: ``ops`` (compiled quantization kernels), ``nn`` (drop-in layers), ``mi`` (mutual-information
estimators), ``metrics`` (InfoMEC, MIG, DCI, SAP, ...), ``data`` (procedural ground-truth datasets),
``zoo`` (models), ``train`` (training loop and reports).

``evaluate(encode_fn, dataset)`` scores any encoder on a ground-truth dataset (``latentquant.evaluation``).

``load_run(run_dir)`` and ``load_model(run_dir_or_file)`` read a trained model back (in eval mode).
"""

__version__ = "0.1.0"

from latentquant import ops  # noqa: E402,F401  (registers the torch.library ops)


def __getattr__(name: str):
    # The run-directory module imports the training stack; load it on first use of these two names.
    if name in ("load_run", "load_model"):
        from latentquant.train import rundir

        return getattr(rundir, name)
    if name == "evaluate":  # the metrics stack (scikit-learn) loads on first use
        from latentquant.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'latentquant' has no attribute {name!r}")
