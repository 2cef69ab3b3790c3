"""latentquant._openmp: the command line's OpenMP wait policy (a short GOMP_SPINCOUNT so that training holds
its speed beside other processes) and glibc allocator thresholds (no page faults per step), set before torch
loads, never over the user's own setting, never changing the numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentquant import _openmp

ROOT = Path(__file__).resolve().parents[1]


def test_default_only_when_the_user_set_nothing():
    env = {"PATH": "/bin"}
    assert _openmp.wants_default(env)
    assert _openmp.apply_default(env) and env["GOMP_SPINCOUNT"] == _openmp.SPINCOUNT
    if sys.platform.startswith("linux"):
        assert {k: env[k] for k in _openmp.MALLOC_SETTINGS} == _openmp.MALLOC_SETTINGS
    assert not _openmp.wants_default(env) and not _openmp.wants_malloc_default(env)
    assert not _openmp.apply_default(env)  # applied once: a re-executed process does not loop
    keep_malloc = {_openmp.MALLOC_OPT_OUT: "1"}
    for name, value in (("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "300000"), (_openmp.OPT_OUT, "1")):
        user = {name: value, **keep_malloc}
        assert not _openmp.apply_default(user) and user == {name: value, **keep_malloc}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
@pytest.mark.parametrize(
    "user",
    [
        {"MALLOC_TRIM_THRESHOLD_": "0"},
        {"MALLOC_MMAP_THRESHOLD_": "65536"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
        {_openmp.MALLOC_OPT_OUT: "1"},
    ],
)
def test_malloc_default_never_over_the_users_setting(user):
    env = {_openmp.OPT_OUT: "1", **user}
    assert not _openmp.wants_malloc_default(env)
    assert not _openmp.apply_default(env) and env == {_openmp.OPT_OUT: "1", **user}
    other_tunable = {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}
    assert _openmp.wants_malloc_default(other_tunable)


def _train(tmp_path: Path, name: str, env_extra: dict[str, str]) -> dict:
    ours = (*_openmp.USER_VARIABLES, _openmp.OPT_OUT, *_openmp.MALLOC_USER_VARIABLES, _openmp.MALLOC_OPT_OUT)
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(env_extra)
    out = tmp_path / name
    command = [
        sys.executable,
        "-m",
        "latentquant.cli",
        "train",
        "--config",
        str(ROOT / "configs" / "demo.yaml"),
    ]
    command += [
        "--out",
        str(out),
        "--no-progress",
        "encoder=tiny",
        "decoder=tiny",
        "steps=2",
        "eval_samples=100",
        "compile=off",
    ]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("openmp")
    envs = {
        "default": {},
        "user": {"OMP_WAIT_POLICY": "ACTIVE"},
        "opt-out": {_openmp.OPT_OUT: "1", _openmp.MALLOC_OPT_OUT: "1"},
        "malloc opt-out": {_openmp.MALLOC_OPT_OUT: "1"},
    }
    return {name: _train(tmp, name, env) for name, env in envs.items()}


def test_train_runs_with_the_policy_and_records_it(runs):
    assert runs["default"]["provenance"]["openmp_wait"] == {
        "OMP_WAIT_POLICY": None,
        "GOMP_SPINCOUNT": _openmp.SPINCOUNT,
    }
    assert runs["user"]["provenance"]["openmp_wait"] == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": None}
    assert runs["opt-out"]["provenance"]["openmp_wait"] == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}
    unset = dict.fromkeys(_openmp.MALLOC_SETTINGS)
    if sys.platform.startswith("linux"):
        # the user's own OpenMP setting does not stop the allocator's (one re-execution sets what is missing)
        assert runs["default"]["provenance"]["malloc"] == _openmp.MALLOC_SETTINGS
        assert runs["user"]["provenance"]["malloc"] == _openmp.MALLOC_SETTINGS
    assert runs["opt-out"]["provenance"]["malloc"] == unset
    assert runs["malloc opt-out"]["provenance"]["malloc"] == unset
    assert runs["malloc opt-out"]["provenance"]["openmp_wait"]["GOMP_SPINCOUNT"] == _openmp.SPINCOUNT


def test_the_policy_does_not_change_the_numbers(runs):
    for key in ("infom", "infoe", "infoc", "psnr"):
        assert (
            runs["default"][key] == runs["user"][key] == runs["opt-out"][key] == runs["malloc opt-out"][key]
        )
