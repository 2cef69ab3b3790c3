"""Overrides that make a training run take seconds (tiny networks, small batches and evaluation, CPU), for
tests that train through the command line or the sweep."""

TINY_RUN = [
    "encoder=tiny",
    "decoder=tiny",
    "batch_size=8",
    "eval_samples=200",
    "eval_every=0",
    "log_every=2",
    "checkpoint_every=2",
    "device=cpu",
]
