"""latent_quantize forward+backward on the CPU against the naive composition, the memory floor, and
vector-quantize-pytorch's LatentQuantize (DESIGN §9). Run: `make bench` or
`pytest -s benchmarks/bench_latent_quantize.py` (`LATENTQUANT_BENCH_QUICK=1`: small sizes).
Targets (reported as met / missed, benchmarks/conftest.py): >= 10x the naive composition, within 4x of
the copy floor.
"""

from __future__ import annotations

import pytest
import torch
from timing import benchmark_median, median_seconds, print_table, sized

from latentquant.ops import latent_quantize
from latentquant.reference.latent_quantize import latent_quantize_ref

# Bytes latent_quantize must move per element: forward reads z (4) and writes z_hat (4) and indices (8);
# backward reads grad_z_hat (4), z (4) and indices (8) and writes grad_z (4).
BYTES_PER_ELEMENT = 36


def _fwd_bwd(fn, z, values, upstream):
    def run():
        z_hat, _, loss = fn(z, values, 0.01, 0.01)
        # autograd.grad, not backward: no .grad accumulation pass is timed
        torch.autograd.grad([z_hat, loss], [z, values], [upstream, torch.ones_like(loss)])

    return run


def _copy_floor(n_elements: int):
    # A copy reads and writes its buffer, so copying BYTES_PER_ELEMENT / 2 bytes per element moves the same bytes.
    src = torch.randn(n_elements * BYTES_PER_ELEMENT // 8)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def measure(benchmark, n: int, d: int = 12, k: int = 10) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, d, generator=g).requires_grad_()
    values = torch.linspace(-0.5, 0.5, k).repeat(d, 1).requires_grad_()
    upstream = torch.randn(n, d, generator=g)
    ours = benchmark_median(benchmark, _fwd_bwd(latent_quantize, z, values, upstream))
    naive = median_seconds(_fwd_bwd(latent_quantize_ref, z, values, upstream), repeats=7)
    floor = median_seconds(_copy_floor(n * d))
    return {"ours_ms": ours * 1e3, "naive_ms": naive * 1e3, "copy_floor_ms": floor * 1e3}


def measure_vqpytorch(benchmark, n: int, d: int = 6, k: int = 10) -> dict[str, float]:
    from vector_quantize_pytorch import LatentQuantize

    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, d, generator=g).requires_grad_()
    values = torch.linspace(-0.5, 0.5, k).repeat(d, 1).requires_grad_()
    upstream = torch.randn(n, d, generator=g)
    theirs_layer = LatentQuantize(
        levels=[k] * d, dim=d, commitment_loss_weight=0.01, quantization_loss_weight=0.01
    )

    their_values = [p for p in theirs_layer.parameters() if p.requires_grad]

    def theirs():
        # their layer takes (batch, dim, ...) and returns (quantized, indices, loss)
        out, _, loss = theirs_layer(z)
        torch.autograd.grad(
            [out, loss], [z, *their_values], [upstream, torch.ones_like(loss)], allow_unused=True
        )

    ours = benchmark_median(benchmark, _fwd_bwd(latent_quantize, z, values, upstream))
    floor = median_seconds(_copy_floor(n * d))
    return {
        "ours_ms": ours * 1e3,
        "vqpytorch_ms": median_seconds(theirs, repeats=7) * 1e3,
        "copy_floor_ms": floor * 1e3,
    }


def test_latent_quantize_cpu(benchmark, target):
    n = sized(262_144, 16_384)
    r = measure(benchmark, n)
    benchmark.extra_info.update(r)
    speedup, of_floor = r["naive_ms"] / r["ours_ms"], r["ours_ms"] / r["copy_floor_ms"]
    benchmark.extra_info.update({"x_vs_naive": speedup, "x_of_copy_floor": of_floor})
    rows = [
        {"impl": "latentquant (C++)", "ms": r["ours_ms"], "x vs naive": speedup, "x of copy floor": of_floor},
        {
            "impl": "naive PyTorch",
            "ms": r["naive_ms"],
            "x vs naive": 1.0,
            "x of copy floor": r["naive_ms"] / r["copy_floor_ms"],
        },
        {
            "impl": "copy same bytes",
            "ms": r["copy_floor_ms"],
            "x vs naive": r["naive_ms"] / r["copy_floor_ms"],
            "x of copy floor": 1.0,
        },
    ]
    print_table(f"latent_quantize fwd+bwd, {n} x 12 latents x 10 values, float32", rows)
    target(">= 10x the naive composition", speedup >= 10, f"{speedup:.1f}x")
    # The floor measurement itself moves 2x between runs on a shared machine (RESULTS.md): reported, and a
    # missed target is not a failure unless asked.
    target("within 4x of the copy floor", of_floor <= 4, f"{of_floor:.1f}x of the floor")


def test_latent_quantize_vs_vector_quantize_pytorch(benchmark):
    pytest.importorskip("vector_quantize_pytorch")
    n = sized(65_536, 4_096)
    r = measure_vqpytorch(benchmark, n)
    speedup = r["vqpytorch_ms"] / r["ours_ms"]
    benchmark.extra_info.update(r)
    benchmark.extra_info["x_vs_vqpytorch"] = speedup
    rows = [
        {"impl": "latentquant (C++)", "ms": r["ours_ms"], "speedup": speedup},
        {"impl": "vector-quantize-pytorch LatentQuantize", "ms": r["vqpytorch_ms"], "speedup": 1.0},
        {
            "impl": "copy same bytes",
            "ms": r["copy_floor_ms"],
            "speedup": r["vqpytorch_ms"] / r["copy_floor_ms"],
        },
    ]
    # No target: the >= 20x one was withdrawn (at this size 1/20 of their time is below the memory floor,
    # the copy row shows it). The ratio is reported.
    print_table(f"latent quantization fwd+bwd, {n} x 6 latents x 10 values, float32", rows)
