"""Timing helpers for the benchmarks (DESIGN §9): medians of repeated runs after warm-up (the suite's own
implementation through pytest-benchmark's fixture, baselines by hand, both in the same process), problem
sizes that shrink in quick mode, peak memory of a snippet measured in a fresh subprocess."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import torch


def median_seconds(
    fn: Callable[[], object], warmup: int = 3, repeats: int = 15, min_time: float = 0.0
) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs (CUDA synchronized)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start_all < min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def benchmark_median(benchmark, fn: Callable[[], object], warmup: int = 3, rounds: int = 15) -> float:
    """Time ``fn()`` through pytest-benchmark's fixture (pedantic: ``warmup`` untimed rounds, then
    ``rounds`` timed ones, CUDA synchronized) and return the median in seconds, the figure the in-run
    ratios use. With ``--benchmark-disable`` the fixture runs ``fn`` once untimed: then the median comes
    from :func:`median_seconds`."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def run() -> None:
        fn()
        sync()

    benchmark.pedantic(run, warmup_rounds=warmup, rounds=rounds, iterations=1)
    if benchmark.disabled or benchmark.stats is None:
        return median_seconds(fn, warmup=0, repeats=max(1, rounds // 3))
    return float(benchmark.stats.stats.median)


def quick_mode() -> bool:
    """``LATENTQUANT_BENCH_QUICK=1``: every suite shrinks its problems to check that it runs."""
    return os.environ.get("LATENTQUANT_BENCH_QUICK", "0") not in ("", "0")


def sized(full: int, quick: int, env: str | None = None) -> int:
    """A problem size: ``env``'s value when set, else ``quick`` in quick mode, else ``full``."""
    if env and os.environ.get(env):
        return int(os.environ[env])
    return quick if quick_mode() else full


def peak_rss_mib(setup: str, stmt: str) -> float:
    """Peak resident memory (MiB) that ``stmt`` adds after ``setup``, measured in a fresh Python process.

    Linux only: the peak (VmHWM) is reset to the current resident size (writing 5 to /proc/self/clear_refs)
    after ``setup``, so the transient peak of importing torch does not hide the statement's own.
    """
    code = "\n".join(
        [
            "import torch",
            textwrap.dedent(setup),
            "def _status(key):",
            "    for line in open('/proc/self/status'):",
            "        if line.startswith(key):",
            "            return int(line.split()[1])",
            "open('/proc/self/clear_refs', 'w').write('5')",
            "before = _status('VmRSS:')",
            textwrap.dedent(stmt),
            "print((_status('VmHWM:') - before) / 1024)",
        ]
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    threads = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()}, {threads} torch threads, torch {torch.__version__}"


def print_table(title: str, rows: list[dict[str, object]]) -> None:
    """Print rows as an aligned text table (and as one JSON line for scripts)."""
    if not rows:
        return
    cols = list(rows[0])
    width = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols}
    print(f"\n{title}  [{machine()}]")
    print("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(width[c]) for c in cols))
    print("JSON " + json.dumps({"title": title, "rows": rows}))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
