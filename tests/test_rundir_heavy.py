"""Multi-process checks of the run directory (``make test-heavy``): SIGKILL at random points of a training
always leaves a directory that resumes to the uninterrupted run's final checkpoint, and of two trainings
started on one directory exactly one runs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from train_utils import tiny_run

from latentquant.train import rundir
from latentquant.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from latentquant.train.loop import train

pytestmark = pytest.mark.heavy

SETTINGS = tiny_run(steps=8, num_threads=1)

# The child announces "ready" once imported, so that kill times fall in the training itself.
_CHILD = """
import json, sys, time
from pathlib import Path
from latentquant.train.loop import train
settings, out, release = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
def wait_for_release(step, losses):
    while release and not Path(release).exists():
        time.sleep(0.05)
print("ready", flush=True)
start = time.perf_counter()
train(settings, out, on_step=wait_for_release, progress=False)
print(f"done {time.perf_counter() - start:.3f}", flush=True)
"""


def _child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _start(out: Path, settings: dict, release: Path | None = None) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(settings), str(out), str(release or "")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_child_env(),
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def _final_tensors(out: Path) -> dict[str, torch.Tensor]:
    checkpoint = load_checkpoint(out / CHECKPOINT_NAME)
    tensors = {f"model.{k}": v for k, v in checkpoint.model_state.items()}
    for name, state in checkpoint.optimizer_states.items():
        for index, entries in state["state"].items():
            tensors.update({f"optimizer.{name}.{index}.{k}": v for k, v in entries.items()})
    tensors.update({f"rng.{k}": v for k, v in checkpoint.rng.items()})
    assert checkpoint.step == SETTINGS["steps"]
    return tensors


def test_sigkill_at_random_points_always_resumes_to_the_uninterrupted_result(tmp_path):
    reference = tmp_path / "reference"
    process = _start(reference, SETTINGS)
    duration = float(process.stdout.readline().split()[1])
    assert process.wait() == 0
    expected = _final_tensors(reference)
    rng = random.Random(20231130)
    for trial in range(20):
        out = tmp_path / f"trial{trial}"
        process = _start(out, SETTINGS)
        time.sleep(rng.uniform(0.0, 1.1 * duration))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if rundir.holds_run(out):
            train({}, out, resume=True, progress=False)
        else:  # killed before it wrote anything of the run: nothing to resume, start it again
            train(SETTINGS, out, progress=False)
        actual = _final_tensors(out)
        assert actual.keys() == expected.keys(), trial
        for key in expected:
            torch.testing.assert_close(
                actual[key], expected[key], rtol=0, atol=0, msg=f"trial {trial}: {key}"
            )
        names = sorted(p.name for p in out.iterdir())
        assert not [n for n in names if ".tmp-" in n or n == rundir.LOCK_NAME], (trial, names)
        assert json.loads((out / "metrics.json").read_text())["steps"] == SETTINGS["steps"]
        records = rundir.read_log(out)
        assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6, 8], trial
        assert [r["step"] for r in records if r["kind"] == "eval"] == [8], trial


def test_two_trainings_on_one_directory_exactly_one_runs(tmp_path):
    out, release = tmp_path / "run", tmp_path / "release"
    first = _start(out, SETTINGS, release)  # holds the lock, waiting after its first step
    deadline = time.monotonic() + 120
    while not (out / CHECKPOINT_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    holder = json.loads((out / rundir.LOCK_NAME).read_text())
    assert holder["pid"] == first.pid and holder["purpose"] == "train"
    cli = [sys.executable, "-m", "latentquant.cli"]
    overrides = [f"{k}={v}" for k, v in SETTINGS.items() if k not in ("model", "dataset")]
    others = [
        subprocess.Popen(cli + ["train", "--out", str(out), "--seed", "1", *overrides], **_pipes()),
        subprocess.Popen(cli + ["train", "--out", str(out), *overrides, "overwrite=true"], **_pipes()),
        subprocess.Popen(cli + ["train", "--resume", str(out)], **_pipes()),
        subprocess.Popen(cli + ["evaluate", str(out)], **_pipes()),
    ]
    for process in others:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 2, err
        assert f"{out} is in use by pid {first.pid}" in err
    release.touch()
    assert first.stdout.readline().startswith("done") and first.wait() == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 0
    records = rundir.read_log(out)
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6, 8]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 8
    assert not (out / rundir.LOCK_NAME).exists()


def _pipes() -> dict:
    return {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": _child_env()}
