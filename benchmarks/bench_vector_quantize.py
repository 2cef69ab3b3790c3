"""vector_quantize (16,384 x 64 against 512 codes) against torch.cdist + argmin: time and peak memory.

Targets (reported as met / missed, benchmarks/conftest.py): faster than cdist + argmin, under half its peak
memory. `LATENTQUANT_BENCH_QUICK=1`: 1,024 rows.
"""

from __future__ import annotations

import torch
from timing import benchmark_median, median_seconds, peak_rss_mib, print_table, sized

from latentquant.ops import vector_quantize

N = sized(16_384, 1_024)
C, K = 64, 512
SETUP = f"""
import latentquant
from latentquant.ops import vector_quantize
g = torch.Generator().manual_seed(0)
z = torch.randn({N}, {C}, generator=g)
codebook = torch.randn({K}, {C}, generator=g)
vector_quantize(z[:8], codebook); torch.cdist(z[:8], codebook).argmin(1)  # warm up allocators and kernels
"""
OURS = "z_q, idx = vector_quantize(z, codebook)"
CDIST = "idx = torch.cdist(z, codebook).argmin(1); z_q = codebook[idx]"


def test_vector_quantize_cpu(benchmark, target):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(N, C, generator=g)
    codebook = torch.randn(K, C, generator=g)
    ours = benchmark_median(benchmark, lambda: vector_quantize(z, codebook))
    cdist = median_seconds(lambda: codebook[torch.cdist(z, codebook).argmin(1)])
    assert torch.equal(vector_quantize(z, codebook)[1], torch.cdist(z, codebook).argmin(1))
    mem_ours, mem_cdist = peak_rss_mib(SETUP, OURS), peak_rss_mib(SETUP, CDIST)
    rows = [
        {
            "impl": "latentquant (C++, tiled GEMM)",
            "ms": ours * 1e3,
            "speedup": cdist / ours,
            "peak MiB": mem_ours,
        },
        {"impl": "torch.cdist + argmin", "ms": cdist * 1e3, "speedup": 1.0, "peak MiB": mem_cdist},
    ]
    print_table(f"vector_quantize forward, {N} x {C} against {K} codes, float32", rows)
    benchmark.extra_info.update(
        {
            "cdist_ms": cdist * 1e3,
            "x_vs_cdist": cdist / ours,
            "peak_mib": mem_ours,
            "cdist_peak_mib": mem_cdist,
        }
    )
    target("faster than cdist + argmin", cdist / ours > 1.0, f"{cdist / ours:.2f}x")
    target(
        "under half the peak memory of cdist + argmin",
        mem_ours < mem_cdist / 2,
        f"{mem_ours:.1f} / {mem_cdist:.1f} MiB",
    )
