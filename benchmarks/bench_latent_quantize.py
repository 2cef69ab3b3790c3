"""latent_quantize forward+backward on the CPU against the naive composition, the memory floor, and
vector-quantize-pytorch's LatentQuantize (DESIGN §9). Run: `make bench` or `pytest -s benchmarks/bench_latent_quantize.py`.
"""

from __future__ import annotations

import pytest
import torch
from timing import median_seconds, print_table

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


def measure(n: int = 262_144, d: int = 12, k: int = 10) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, d, generator=g).requires_grad_()
    values = torch.linspace(-0.5, 0.5, k).repeat(d, 1).requires_grad_()
    upstream = torch.randn(n, d, generator=g)
    ours = median_seconds(_fwd_bwd(latent_quantize, z, values, upstream))
    naive = median_seconds(_fwd_bwd(latent_quantize_ref, z, values, upstream), repeats=7)
    floor = median_seconds(_copy_floor(n * d))
    return {"ours_ms": ours * 1e3, "naive_ms": naive * 1e3, "copy_floor_ms": floor * 1e3}


def measure_vqpytorch(n: int = 65_536, d: int = 6, k: int = 10) -> dict[str, float]:
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

    ours = median_seconds(_fwd_bwd(latent_quantize, z, values, upstream))
    return {"ours_ms": ours * 1e3, "vqpytorch_ms": median_seconds(theirs, repeats=7) * 1e3}


def test_latent_quantize_cpu():
    r = measure()
    rows = [
        {
            "impl": "latentquant (C++)",
            "ms": r["ours_ms"],
            "x vs naive": r["naive_ms"] / r["ours_ms"],
            "x of copy floor": r["ours_ms"] / r["copy_floor_ms"],
        },
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
    print_table("latent_quantize fwd+bwd, 262144 x 12 latents x 10 values, float32", rows)
    assert r["naive_ms"] / r["ours_ms"] >= 10, "target: >= 10x faster than the naive composition"
    assert r["ours_ms"] / r["copy_floor_ms"] <= 4, "target: within 4x of the memory floor"


def test_latent_quantize_vs_vector_quantize_pytorch():
    pytest.importorskip("vector_quantize_pytorch")
    r = measure_vqpytorch()
    rows = [
        {"impl": "latentquant (C++)", "ms": r["ours_ms"], "speedup": r["vqpytorch_ms"] / r["ours_ms"]},
        {"impl": "vector-quantize-pytorch LatentQuantize", "ms": r["vqpytorch_ms"], "speedup": 1.0},
    ]
    print_table("latent quantization fwd+bwd, 65536 x 6 latents x 10 values, float32", rows)
    assert r["vqpytorch_ms"] / r["ours_ms"] >= 20, "target: >= 20x faster than vector-quantize-pytorch"
