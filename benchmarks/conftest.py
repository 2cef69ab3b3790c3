"""Shared set-up of the benchmark suites (pytest-benchmark; run by `make bench`).

- Each suite times its own implementation through pytest-benchmark's ``benchmark`` fixture (pedantic mode:
  warm-up rounds, then timed rounds), so ``--benchmark-save`` / ``--benchmark-compare`` track it across
  commits; the baselines it is compared with (naive PyTorch, scikit-learn, the memory floor, ...) are timed
  in the same process and kept, with the ratios, in the benchmark's ``extra_info`` (DESIGN §9).
- Targets (e.g. ">= 10x the naive composition") are recorded with the ``target`` fixture, never asserted:
  the run prints each as MET or MISSED in its summary and exits 0. ``LATENTQUANT_BENCH_FAIL=1``
  (`make bench BENCH_FAIL=1`) makes a missed target fail the run. Correctness checks (the same numbers as
  the baseline) stay hard assertions.
- ``LATENTQUANT_BENCH_QUICK=1`` shrinks every problem (seconds, not minutes) to check that the suites run;
  its figures mean nothing (`make bench BENCH_QUICK=1`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from timing import quick_mode  # noqa: E402

FAIL_ON_MISSED = os.environ.get("LATENTQUANT_BENCH_FAIL", "0") not in ("", "0")


@dataclass
class Target:
    test: str
    name: str
    met: bool
    measured: str


_TARGETS: list[Target] = []


@pytest.fixture
def target(request, benchmark):
    """``target(name, met, measured)``: record whether a performance target was met (``measured`` says the
    figure, e.g. "13.3x"); it goes to the run's summary and to the benchmark's ``extra_info["targets"]``."""

    def record(name: str, met: bool, measured: str) -> None:
        _TARGETS.append(Target(request.node.nodeid, name, bool(met), measured))
        benchmark.extra_info.setdefault("targets", {})[name] = {"met": bool(met), "measured": measured}

    return record


def pytest_sessionfinish(session, exitstatus):
    if FAIL_ON_MISSED and exitstatus == 0 and any(not t.met for t in _TARGETS):
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _TARGETS:
        return
    mode = " (QUICK mode: sizes shrunk, figures not meaningful)" if quick_mode() else ""
    terminalreporter.section(f"performance targets{mode}")
    for t in _TARGETS:
        terminalreporter.write_line(f"{'MET   ' if t.met else 'MISSED'}  {t.name}: {t.measured}  [{t.test}]")
    missed = sum(not t.met for t in _TARGETS)
    tail = "; LATENTQUANT_BENCH_FAIL=1: the run fails" if FAIL_ON_MISSED and missed else ""
    terminalreporter.write_line(f"{len(_TARGETS) - missed} met, {missed} missed{tail}")
