"""Shared training settings for the tests that run real (tiny) trainings: one base, each test states only
what it changes."""

from __future__ import annotations

from typing import Any

_TINY_RUN: dict[str, Any] = {
    "model": "qlae",
    "dataset": "shapes3d",
    "steps": 4,
    "batch_size": 8,
    "encoder": "tiny",
    "decoder": "tiny",
    "eval_samples": 100,
    "eval_every": 0,
    "log_every": 2,
    "checkpoint_every": 2,
    "deterministic": True,
    "device": "cpu",
}


def tiny_run(**changes: Any) -> dict[str, Any]:
    """A QLAE run on shapes3d with the tiny networks that trains in seconds on a CPU, as ``train`` settings.

    ``changes`` replace or add settings; a change to ``None`` drops the setting (so its default applies).
    Every call returns a new dict.
    """
    settings = {**_TINY_RUN, **changes}
    return {key: value for key, value in settings.items() if value is not None}
