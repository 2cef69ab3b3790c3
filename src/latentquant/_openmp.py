"""How long torch's OpenMP threads spin before they sleep: the setting that decides whether CPU training
holds its speed when another process competes for the cores.

torch's CPU wheels run their parallel regions on GNU OpenMP (libgomp). At the end of every region a thread
that has finished spins, waiting for its peers, for ``GOMP_SPINCOUNT`` iterations (300,000 by default, about
a millisecond or more) before it sleeps. On an idle machine that makes the next region start at once. When
another CPU-bound process shares the cores, the peer being waited for is often descheduled, and the spinning
thread burns the very time slice that peer needs: `make demo`'s 2-thread training ran 2.5-2.7x slower beside
one busy process, in bursts far worse (benchmarks/bench_contention.py, RESULTS.md "Training under
contention"). A short spin keeps nearly all of the idle speed and lets a waiting thread yield its core.

libgomp reads the variable once, when it is loaded (with torch), so it cannot be changed from within a
running process. The command line therefore sets :data:`SPINCOUNT` before torch loads: ``latentquant
train`` and ``evaluate`` re-execute themselves once with it set (the process keeps its pid; ~1 s), and the
sweep sets it in the environment of the runs it starts. Nothing is changed when the user has set
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` (their choice wins), nor for a program that imports the library
(its process is its own), nor with ``LATENTQUANT_KEEP_OPENMP=1``. The wait policy changes only how threads
wait, never what they compute: results are bitwise the same.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping, Sequence

SPINCOUNT = "1000"
"""GOMP_SPINCOUNT the command line runs with. Measured (RESULTS.md, "Training under contention", 3 rounds on
the 2-core machine): beside one busy process the demo trains 1.4-2.1x slower than idle (torch's default
300,000: 2.5-3.1x; 10,000 and 30,000 did not help), and idle at 0.90-1.01x torch's default speed.
``OMP_WAIT_POLICY=PASSIVE`` (no spin) holds better under load (1.3-1.4x) but costs 12-19% idle."""

USER_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
OPT_OUT = "LATENTQUANT_KEEP_OPENMP"


def wants_default(environ: Mapping[str, str]) -> bool:
    """Whether a process with environment ``environ`` should get :data:`SPINCOUNT` (none of
    :data:`USER_VARIABLES` is set and the user did not opt out)."""
    return environ.get(OPT_OUT, "") not in ("1", "true", "yes") and not any(
        v in environ for v in USER_VARIABLES
    )


def apply_default(environ: MutableMapping[str, str]) -> bool:
    """Set ``GOMP_SPINCOUNT`` in ``environ`` when :func:`wants_default`; return whether it was set."""
    if not wants_default(environ):
        return False
    environ["GOMP_SPINCOUNT"] = SPINCOUNT
    return True


def reexec_with_default(argv: Sequence[str]) -> None:
    """Re-execute this program as ``python -m latentquant.cli ARGV`` with :data:`SPINCOUNT` set, when
    :func:`wants_default` (else return). OpenMP is already loaded with torch, so the setting needs a fresh
    process image; ``exec`` keeps the pid, the open files and the ignored signals."""
    if not apply_default(os.environ):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "latentquant.cli", *argv])
