"""GPU benchmark of the CUDA and Triton kernels (DESIGN §9); skips without a GPU.

- latent_quantize forward + backward (the fused QLAE step) at N x 12 latents x 10 values for
  N = 262,144 and larger, per backend: time, achieved bandwidth, and the fraction of the bandwidth of a
  torch copy of the same bytes (the memory floor) timed in the same run.
- vector_quantize forward per backend against ``torch.cdist(z, codebook).argmin(1)`` + gather.
- The k-NN MI matrix of ``latentquant.mi.mutual_info_continuous_discrete`` (Ross, k = 3) for
  1,000,000 samples x 64 latents x 10 sources (``LATENTQUANT_BENCH_MI_N`` to change N) on the GPU kernels:
  time, and the share of device time spent in sort kernels (from the profiler).

Run: ``pytest -s benchmarks/bench_gpu.py`` or ``python benchmarks/bench_gpu.py``. Backends are called
through the op-signature functions (``torch.ops.latentquant.*`` for CUDA, ``KERNELS`` of
``latentquant.triton_kernels.*`` for Triton), forward then backward, as autograd would call them.
"""

from __future__ import annotations

import os
from functools import partial

import pytest
import torch
from timing import median_seconds, print_table

from latentquant.ops import _registry

D, K = 12, 10
MI_N, MI_LATENTS, MI_SOURCES = int(os.environ.get("LATENTQUANT_BENCH_MI_N", "1000000")), 64, 10
LATENT_ROWS = [262_144, 1_048_576, 4_194_304]
# Bytes per element: forward reads z (4), writes z_hat (4) and indices (8); backward reads grad_z_hat (4),
# z (4) and indices (8) and writes grad_z (4). float32 z.
BYTES_PER_ELEMENT = 36
VQ_SHAPES = [(262_144, 64, 512), (262_144, 64, 1024), (65_536, 256, 512)]


def _backends() -> dict[str, dict[str, object]]:
    ops = ["latent_quantize", "latent_quantize_backward", "vector_quantize"]
    found: dict[str, dict[str, object]] = {}
    if all(_registry.has_kernel(op, "CUDA") for op in ops):
        found["cuda" if _registry.gpu_backend() == "cuda" else "registered"] = {
            op: getattr(torch.ops.latentquant, op) for op in ops
        }
    if _registry.triton_available():
        from latentquant.triton_kernels import latent_quantize, vector_quantize

        found["triton"] = {**latent_quantize.KERNELS, **vector_quantize.KERNELS}
    return found


def _copy_seconds(n_bytes: int) -> float:
    # A copy reads and writes its buffer: copying n_bytes / 2 moves n_bytes.
    src = torch.empty(n_bytes // 8, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    return median_seconds(lambda: dst.copy_(src), warmup=5, repeats=30)


def _latent_step(ops, z, values, grad_z_hat, grad_loss):
    _, indices, _ = ops["latent_quantize"](z, values, 0.01, 0.01, True)
    return ops["latent_quantize_backward"](grad_z_hat, grad_loss, z, values, indices, 0.01, 0.01)


def _cdist_argmin(z, codebook):
    idx = torch.cdist(z, codebook).argmin(1)
    return codebook[idx], idx


def bench_latent_quantize(backends) -> list[dict[str, object]]:
    """N x 12 latents x 10 values for every N of LATENT_ROWS, and N x 4 x 8 (32 bins: the Triton scatter
    privatized per program) at the largest N."""
    rows = []
    shapes = [(n, D, K) for n in LATENT_ROWS] + [(LATENT_ROWS[-1] * D // 4, 4, 8)]
    for n, d, k in shapes:
        rows.extend(_bench_latent_shape(backends, n, d, k))
    return rows


def _bench_latent_shape(backends, n: int, d: int, k: int) -> list[dict[str, object]]:
    rows = []
    values = torch.linspace(-0.5, 0.5, k, device="cuda").repeat(d, 1)
    z = torch.randn(n, d, device="cuda")
    grad_z_hat = torch.randn_like(z)
    grad_loss = torch.ones((), device="cuda")
    n_bytes = n * d * BYTES_PER_ELEMENT
    copy_s = _copy_seconds(n_bytes)
    reference_indices = None
    for name, ops in backends.items():
        step = partial(_latent_step, ops, z, values, grad_z_hat, grad_loss)
        _, indices, _ = ops["latent_quantize"](z, values, 0.01, 0.01, True)
        if reference_indices is None:
            reference_indices = indices
        assert torch.equal(indices, reference_indices), f"{name} disagrees with the first backend"
        fwd_bwd = median_seconds(step, warmup=5, repeats=30)
        fwd_nocheck = median_seconds(partial(ops["latent_quantize"], z, values, 0.01, 0.01, False))
        rows.append(
            {
                "backend": name,
                "shape": f"{n}x{d}x{k}",
                "fwd+bwd ms": fwd_bwd * 1e3,
                "fwd (no check) ms": fwd_nocheck * 1e3,
                "GB/s": n_bytes / fwd_bwd / 1e9,
                "copy GB/s": n_bytes / copy_s / 1e9,
                "fraction of copy": copy_s / fwd_bwd,
            }
        )
    return rows


def bench_vector_quantize(backends) -> list[dict[str, object]]:
    rows = []
    for n, c, k in VQ_SHAPES:
        gen = torch.Generator(device="cuda").manual_seed(0)
        z = torch.randn(n, c, device="cuda", generator=gen)
        codebook = torch.randn(k, c, device="cuda", generator=gen)
        base_s = median_seconds(partial(_cdist_argmin, z, codebook))
        for name, ops in backends.items():
            _, idx = ops["vector_quantize"](z, codebook, True)
            dist = ((z - codebook[idx]) ** 2).sum(1)
            best = torch.cdist(z, codebook).pow(2).min(1).values
            assert bool((dist <= best * (1 + 1e-4) + 1e-4).all()), f"{name} chose a code that is not nearest"
            t = median_seconds(partial(ops["vector_quantize"], z, codebook, True))
            rows.append(
                {
                    "backend": name,
                    "N x C, K": f"{n}x{c}, {k}",
                    "ms": t * 1e3,
                    "cdist+argmin ms": base_s * 1e3,
                    "speed-up": base_s / t,
                    "TFLOP/s": 2 * n * k * c / t / 1e12,
                }
            )
    return rows


def bench_mi_matrix() -> list[dict[str, object]]:
    """The (64, 10) Ross MI matrix of 1,000,000 samples on the GPU; sort share from the CUDA profiler."""
    from torch.profiler import ProfilerActivity, profile

    from latentquant.mi import mutual_info_continuous_discrete

    gen = torch.Generator(device="cuda").manual_seed(0)
    sources = torch.randint(0, 10, (MI_N, MI_SOURCES), device="cuda", generator=gen)
    latents = torch.randn(MI_N, MI_LATENTS, device="cuda", generator=gen)
    latents[:, :MI_SOURCES] += sources.float()  # some informative latents

    def run():
        return mutual_info_continuous_discrete(latents, sources, n_neighbors=3)

    try:
        out = run()  # warm-up: Triton compiles
    except torch.cuda.OutOfMemoryError as err:  # recorded, not fatal: the summary should say so
        return [{"shape": f"{MI_N}x{MI_LATENTS}x{MI_SOURCES}", "error": f"out of memory: {str(err)[:120]}"}]
    assert out.shape == (MI_LATENTS, MI_SOURCES) and bool(torch.isfinite(out).all())
    assert bool((out[:MI_SOURCES].diagonal() > 0.5).all()), "an informative latent scored no information"
    seconds = median_seconds(run, warmup=0, repeats=3)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    events = prof.key_averages()
    total = sum(e.self_device_time_total for e in events)
    sort = sum(
        e.self_device_time_total for e in events if "sort" in e.key.lower() or "radix" in e.key.lower()
    )
    peak = torch.cuda.max_memory_allocated() / 2**30
    return [
        {
            "shape": f"{MI_N}x{MI_LATENTS} latents x {MI_SOURCES} sources",
            "s": seconds,
            "pairs/s": MI_LATENTS * MI_SOURCES / seconds,
            "sort share": sort / max(total, 1),
            "peak GiB": peak,
        }
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_gpu():
    backends = _backends()
    if not backends:
        pytest.skip("neither CUDA kernels (latentquant._C built with CUDA) nor triton are available")
    device = torch.cuda.get_device_name()
    print_table(f"latent_quantize fwd+bwd, float32, on {device}", bench_latent_quantize(backends))
    print_table(f"vector_quantize fwd, float32, on {device}", bench_vector_quantize(backends))
    if _registry.has_kernel("knn_mi_cd", "CUDA"):
        print_table(f"k-NN MI matrix (Ross, k = 3), float64, on {device}", bench_mi_matrix())


if __name__ == "__main__":
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu: needs a CUDA device")
    test_bench_gpu()
