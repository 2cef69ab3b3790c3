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

The same re-execution sets glibc's allocator thresholds (:data:`MALLOC_SETTINGS`). With glibc's defaults a
training step's large tensors (activations of 1-8 MiB) are mmap'd and unmapped, or the heap top is trimmed,
at every step, so the kernel maps and zeroes fresh pages each time: `make demo`'s eager step spent a third of
its time in page faults (4.3 million minor faults in 200 steps, 10 s of system time; benchmarks/RESULTS.md,
"The training step"). Allocations up to 32 MiB (glibc's largest mmap threshold) then come from the heap, and
freed memory stays in the process up to 1 GiB, as torch's CUDA caching allocator keeps GPU memory: the step
is 1.3x faster (eager 110 -> 81 ms) with bitwise the same results. The user's own ``MALLOC_*`` variables or
``glibc.malloc`` tunables win; ``LATENTQUANT_KEEP_MALLOC=1`` opts out; nothing changes outside glibc.
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

MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
"""glibc allocator thresholds the command line runs with (read by glibc when the process starts)."""
MALLOC_USER_VARIABLES = (*MALLOC_SETTINGS, "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
MALLOC_OPT_OUT = "LATENTQUANT_KEEP_MALLOC"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _opted_out(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "") in ("1", "true", "yes")


def wants_default(environ: Mapping[str, str]) -> bool:
    """Whether a process with environment ``environ`` should get :data:`SPINCOUNT` (none of
    :data:`USER_VARIABLES` is set and the user did not opt out)."""
    return not _opted_out(environ, OPT_OUT) and not any(v in environ for v in USER_VARIABLES)


def wants_malloc_default(environ: Mapping[str, str]) -> bool:
    """Whether a process with environment ``environ`` should get :data:`MALLOC_SETTINGS` (on Linux, none of
    :data:`MALLOC_USER_VARIABLES` nor a ``glibc.malloc`` tunable set, and no opt-out)."""
    return (
        sys.platform.startswith("linux")
        and not _opted_out(environ, MALLOC_OPT_OUT)
        and not any(v in environ for v in MALLOC_USER_VARIABLES)
        and "glibc.malloc" not in environ.get("GLIBC_TUNABLES", "")
    )


def apply_default(environ: MutableMapping[str, str]) -> bool:
    """Set ``GOMP_SPINCOUNT`` (when :func:`wants_default`) and :data:`MALLOC_SETTINGS` (when
    :func:`wants_malloc_default`) in ``environ``; return whether anything was set."""
    changed = False
    if wants_default(environ):
        environ["GOMP_SPINCOUNT"] = SPINCOUNT
        changed = True
    if wants_malloc_default(environ):
        environ.update(MALLOC_SETTINGS)
        changed = True
    return changed


def reexec_with_default(argv: Sequence[str]) -> None:
    """Re-execute this program as ``python -m latentquant.cli ARGV`` with :data:`SPINCOUNT` and
    :data:`MALLOC_SETTINGS` set, where :func:`apply_default` sets anything (else return). OpenMP and the
    allocator read them when the process starts, so they need a fresh process image; ``exec`` keeps the pid,
    the open files and the ignored signals."""
    if not apply_default(os.environ):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "latentquant.cli", *argv])
