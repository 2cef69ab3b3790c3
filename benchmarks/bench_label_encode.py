"""Label encoding: ``latentquant.ops.label_encode`` (one row-major pass, a hash of each column's distinct values)
against its oracle, ``torch.unique(return_inverse=True)`` column by column, timed in the same process (DESIGN
§9), on what the metrics encode at N = 50,000: InfoMEC's 12 discrete latents (floats rounded to 0.1, 9-14
values each), 6 factor-index sources, and 12 float columns of ~80 values. Both on one thread (the metrics' cap).
No target: the figures feed the InfoMEC budget (benchmarks/RESULTS.md). Run: `make bench`, `pytest -s
benchmarks/bench_label_encode.py`; `LATENTQUANT_BENCH_QUICK=1`: N = 4,000.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_infomec import make_data
from timing import benchmark_median, median_seconds, print_table, sized

from latentquant.ops.label_encode import label_encode
from latentquant.reference.label_encode import label_encode_ref


def _columns(kind: str, n: int) -> torch.Tensor:
    sources, latents = make_data(n, discrete=True)
    if kind == "sources":
        return torch.from_numpy(sources)
    if kind == "latents":
        return torch.from_numpy(latents)
    rng = np.random.default_rng(2)
    return torch.from_numpy(np.round(rng.standard_normal((n, 12)) * 10) / 10)


@pytest.mark.parametrize("kind", ["latents", "sources", "wide"])
def test_label_encode_vs_torch_unique(benchmark, kind: str) -> None:
    n = sized(50_000, 4_000)
    x = _columns(kind, n)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours = benchmark_median(benchmark, lambda: label_encode(x), warmup=3, rounds=15)
        oracle = median_seconds(lambda: label_encode_ref(x), warmup=1, repeats=5)
        got, want = label_encode(x), label_encode_ref(x)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    row = {
        "columns": kind,
        "N x C": f"{x.shape[0]} x {x.shape[1]}",
        "distinct": f"{int(want[1].min())}-{int(want[1].max())}",
        "ours_ms": ours * 1e3,
        "torch_unique_ms": oracle * 1e3,
        "speedup": oracle / ours,
    }
    benchmark.extra_info.update(row)
    print_table("label_encode vs torch.unique per column (1 thread)", [row])
