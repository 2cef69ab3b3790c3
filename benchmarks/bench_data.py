"""Read speed of the datasets, images/s at 64x64 (DESIGN §9).

Procedural datasets, on one CPU thread: baselines timed in the same process are rendering the same
images one ``dataset[i]`` at a time (what a DataLoader without ``sample_batch`` does), and copying the
output bytes (the memory floor). The geometry and patch caches are filled before timing; their one-off
fill time per process is reported too.

Real-file loaders, on fixture files in each format (``tests/fixtures/make_fixtures.py``, written to a
temporary folder): random training batches of 128 through ``sample_batch`` from 3dshapes.h5 (contiguous,
and gzip-chunked one image per chunk), the dSprites .npz (in memory), an MPI3D .npz (memory-mapped) and a
Falcor3D PNG folder uncached (decode + resize per batch) and cached (the 64x64 uint8 memmap); plus the
time to build the PNG cache, scaled to 10,000 images.
Run: `make bench`, `pytest -s benchmarks/bench_data.py`, or `python benchmarks/bench_data.py`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from timing import median_seconds, print_table

from latentquant.data import (
    FALCOR3D,
    ImageFolderDataset,
    MPI3DFile,
    Shapes3DFile,
    dsprites,
    get_dataset,
    shapes3d,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures.make_fixtures import write_all  # noqa: E402

BATCH = 256
FILE_BATCH = 128
CACHE_PNGS = (5, 6, 6, 6, 1, 1, 1)  # 1,080 Falcor3D-layout PNGs for the cache build timing


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


def _cache_build_row(label: str, dataset, build) -> dict[str, object]:
    start = time.perf_counter()
    build()
    seconds = time.perf_counter() - start
    return {
        "loader": f"{label} cache build",
        "images": len(dataset),
        "batch": "-",
        "images/s": round(len(dataset) / seconds),
        "s per 10k images": round(seconds * 10_000 / len(dataset), 1),
    }


def measure_files(folder: Path) -> list[dict[str, object]]:
    """images/s of random batches from every real-file loader, and the cache build times per 10k images."""
    paths = write_all(folder, png_sizes=CACHE_PNGS)
    cache = folder / "cache"
    gzip_cached = Shapes3DFile(paths["shapes3d_gzip"], cache_dir=cache, progress=False)
    falcor = ImageFolderDataset(paths["falcor3d"], FALCOR3D, cache_dir=cache, progress=False)
    builds = [
        _cache_build_row("shapes3d .h5 gzip chunks", gzip_cached, gzip_cached.build_cache),
        _cache_build_row("falcor3d PNG (decode+resize)", falcor, falcor.build_cache),
    ]
    datasets = {
        "shapes3d .h5 contiguous (memmap)": get_dataset("shapes3d", paths["shapes3d"]),
        "shapes3d .h5 gzip chunks, uncached (h5py)": Shapes3DFile(paths["shapes3d_gzip"], cache=False),
        "shapes3d .h5 gzip chunks, cached": gzip_cached,
        "dsprites .npz (in memory)": get_dataset("dsprites", paths["dsprites"]),
        "mpi3d .npz (memmap)": MPI3DFile(paths["mpi3d"], factor_sizes=(4, 4, 2, 3, 3, 2, 2)),
        "falcor3d PNG, uncached (decode+resize)": ImageFolderDataset(
            paths["falcor3d"], FALCOR3D, cache=False
        ),
        "falcor3d PNG, cached": falcor,
    }
    rows = []
    for label, dataset in datasets.items():
        generator = torch.Generator().manual_seed(0)
        repeats = 3 if "uncached" in label else 15
        seconds = median_seconds(
            lambda d=dataset, g=generator: d.sample_batch(FILE_BATCH, g), warmup=1, repeats=repeats
        )
        rows.append(
            {
                "loader": label,
                "images": len(dataset),
                "batch": FILE_BATCH,
                "images/s": round(FILE_BATCH / seconds),
            }
        )
    return rows + builds


def test_file_loader_read_speed(benchmark, target):
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as folder:
        benchmark.pedantic(lambda: rows.extend(measure_files(Path(folder))), rounds=1, iterations=1)
    benchmark.extra_info["rows"] = rows
    print_table(
        f"real-file loaders, batches of {FILE_BATCH}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}",
        rows,
    )
    speed = {row["loader"]: row["images/s"] for row in rows}
    for fmt, cached, uncached in (
        ("falcor3d PNG", "falcor3d PNG, cached", "falcor3d PNG, uncached (decode+resize)"),
        ("shapes3d .h5", "shapes3d .h5 gzip chunks, cached", "shapes3d .h5 gzip chunks, uncached (h5py)"),
    ):
        ratio = speed[cached] / speed[uncached]
        target(f"{fmt}: the decoded cache reads faster than the file", ratio > 1.0, f"{ratio:.1f}x")


@pytest.mark.parametrize("name", ["shapes3d", "dsprites"])
def test_render_throughput(name, benchmark, target):
    rows: list[dict] = []
    benchmark.pedantic(lambda: rows.append(measure(name)), rounds=1, iterations=1)
    (row,) = rows
    benchmark.extra_info["rows"] = rows
    print_table(f"{name} rendering, 1 thread", [row])
    target(
        f"{name}: batched rendering > 3x the per-item loop",
        row["speedup vs per-item"] > 3.0,
        f"{row['speedup vs per-item']:.1f}x",
    )


if __name__ == "__main__":
    print_table("procedural rendering, 1 thread", [measure("shapes3d"), measure("dsprites")])
    with tempfile.TemporaryDirectory() as tmp:
        print_table(f"real-file loaders, batches of {FILE_BATCH}", measure_files(Path(tmp)))
