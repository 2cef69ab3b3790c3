"""Render throughput of the procedural datasets, images/s on one CPU thread at 64x64 (DESIGN §9).

Baselines timed in the same process: rendering the same images one ``dataset[i]`` at a time (what a
DataLoader without ``sample_batch`` does), and copying the output bytes (the memory floor). The geometry
and patch caches are filled before timing; their one-off fill time per process is reported too.
Run: `make bench`, `pytest -s benchmarks/bench_data.py`, or `python benchmarks/bench_data.py`.
"""

from __future__ import annotations

import time

import pytest
import torch
from timing import median_seconds, print_table

from latentquant.data import dsprites, get_dataset, shapes3d

BATCH = 256


def _fill_cache(name: str) -> float:
    """Empty and refill the process-wide render cache of ``name``; returns the seconds it took."""
    start = time.perf_counter()
    if name == "shapes3d":
        shapes3d._CACHE = None
        shapes3d._geometry_cache().get(torch.arange(8 * 4 * 15))
    else:
        dsprites._CACHE = None
        dsprites._patch_cache().get(torch.arange(3 * 6 * 40 * 4))
    return time.perf_counter() - start


def measure(name: str, batch: int = BATCH) -> dict[str, object]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset = get_dataset(name)
        fill = _fill_cache(name)
        factors = dataset.sample_factors(batch, generator=0)
        indices = dataset.factors_to_index(factors).tolist()
        ours = median_seconds(lambda: dataset.images_for(factors))
        per_item = median_seconds(lambda: [dataset[i] for i in indices], warmup=1, repeats=5)
        frames = dataset.images_for(factors)
        copy = median_seconds(lambda: frames.clone())
    finally:
        torch.set_num_threads(threads)
    return {
        "dataset": name,
        "batch": batch,
        "images/s": round(batch / ours),
        "per-item images/s": round(batch / per_item),
        "speedup vs per-item": per_item / ours,
        "copy-floor images/s": round(batch / copy),
        "cache fill s": fill,
    }


@pytest.mark.parametrize("name", ["shapes3d", "dsprites"])
def test_render_throughput(name):
    row = measure(name)
    print_table(f"{name} rendering, 1 thread", [row])
    assert row["speedup vs per-item"] > 3.0


if __name__ == "__main__":
    print_table("procedural rendering, 1 thread", [measure("shapes3d"), measure("dsprites")])
