"""Training and evaluation of zoo models: the paper's optimizer groups, the training loop with checkpoints
and exact resumption, evaluation (InfoMEC + PSNR) and HTML reports. The CLI lives in ``train.cli``.

Public: :func:`param_groups`, :func:`build_optimizer`, :func:`clip_gradients`, :class:`TrainConfig`,
:func:`resolve_config`, :func:`train`, :func:`evaluate_model`, :func:`evaluate_run`.
"""

from latentquant.train.optim import build_optimizer, clip_gradients, param_groups

__all__ = [
    "TrainConfig",
    "build_optimizer",
    "clip_gradients",
    "evaluate_model",
    "evaluate_run",
    "param_groups",
    "resolve_config",
    "train",
]


def __getattr__(name: str):
    # The loop, evaluation and reports import the data and metrics packages and matplotlib; load them on
    # first use so `from latentquant.train import param_groups` stays light.
    if name in ("TrainConfig", "resolve_config"):
        from latentquant.train import config

        return getattr(config, name)
    if name == "train":
        from latentquant.train.loop import train

        return train
    if name == "evaluate_model":
        from latentquant.train.evaluate import evaluate_model

        return evaluate_model
    if name == "evaluate_run":
        from latentquant.train.run import evaluate_run

        return evaluate_run
    raise AttributeError(f"module 'latentquant.train' has no attribute {name!r}")
