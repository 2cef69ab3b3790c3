"""InfoE's loss/gradient evaluation on one-hot features (discrete latents): ``logistic_onehot_loss_grad``
(codes: gathered weight columns, scatter-add) against the dense ``logistic_loss_grad`` on the expanded
one-hot matrix and against the torch oracle, timed in the same process (DESIGN §9); and one whole InfoE
fit (``fit_logistic``) on codes against the same fit on the dense matrix.

Problem: the InfoE step of bench_infomec's discrete case at N = 50,000 (12 latents rounded to 0.1, ~127
one-hot columns; 6 shapes3d sources) and a VQ-VAE-like one (12 latents of 64 codes each, 768 columns).
Target (issue 14): the one-hot evaluation faster than the dense one (reported as met / missed). Run: `make
bench`, `pytest -s benchmarks/bench_logistic.py`; `LATENTQUANT_BENCH_QUICK=1`: N = 4,000.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_infomec import make_data
from timing import benchmark_median, median_seconds, print_table, sized

from latentquant.metrics._inputs import encode_columns, encode_sources
from latentquant.metrics.logistic import OneHotCodes, fit_logistic
from latentquant.ops.logistic import logistic_loss_grad, logistic_onehot_loss_grad
from latentquant.reference.logistic import logistic_onehot_loss_grad_ref


def _problem(n: int, kind: str) -> tuple[OneHotCodes, torch.Tensor]:
    """One-hot features as codes and the (N, S) source labels."""
    sources, latents = make_data(n, discrete=True)
    if kind == "vq":
        rng = np.random.default_rng(1)
        latents = np.floor(rng.uniform(0, 64, latents.shape)).astype(np.int64)
        latents[:, :6] = (sources * 64 // np.array([10, 10, 10, 8, 4, 15])) % 64
    codes, num_values = encode_columns(latents)
    return OneHotCodes(codes, num_values), encode_sources(sources).codes


@pytest.mark.parametrize("kind", ["rounded", "vq"])
def test_onehot_loss_grad(benchmark, target, kind: str) -> None:
    n = sized(50_000, 4_000)
    features, labels = _problem(n, kind)
    codes = features.offset_codes()
    x1t = torch.cat([features.dense().T, torch.ones(1, n)])
    g = torch.Generator().manual_seed(0)
    t, c = 4, 10  # the 4-source group of 10 classes
    weights = 0.1 * torch.randn(t, c, x1t.shape[0], generator=g)
    lab = labels[:, :t].T.clamp(max=c - 1).contiguous()
    sw = torch.full((t, n), 1.0 / n)
    ours = benchmark_median(benchmark, lambda: logistic_onehot_loss_grad(codes, weights, lab, sw), rounds=15)
    dense = median_seconds(lambda: logistic_loss_grad(x1t, weights, lab, sw), repeats=15)
    oracle = median_seconds(lambda: logistic_onehot_loss_grad_ref(codes, weights, lab, sw), repeats=5)
    got, want = logistic_onehot_loss_grad(codes, weights, lab, sw), logistic_loss_grad(x1t, weights, lab, sw)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-6)
    row = {
        "features": f"{kind}: {codes.shape[0]} latents, F = {x1t.shape[0] - 1}",
        "N": n,
        "onehot_ms": ours * 1e3,
        "dense_ms": dense * 1e3,
        "oracle_ms": oracle * 1e3,
        "x_vs_dense": dense / ours,
        "x_vs_oracle": oracle / ours,
    }
    benchmark.extra_info.update(row)
    print_table(f"logistic loss+grad, {t} targets x {c} classes, float32", [row])
    target(f"one-hot loss/grad faster than dense ({kind})", dense > ours, f"{dense / ours:.2f}x")


def test_infoe_fit_onehot_vs_dense(benchmark) -> None:
    n = sized(50_000, 4_000)
    features, labels = _problem(n, "rounded")
    features = features.to(torch.float64)
    dense_features = features.dense()
    fit = fit_logistic(features, labels)
    ours = benchmark_median(benchmark, lambda: fit_logistic(features, labels), warmup=0, rounds=3)
    dense = median_seconds(lambda: fit_logistic(dense_features, labels), warmup=0, repeats=3)
    dense_fit = fit_logistic(dense_features, labels)
    row = {
        "N": n,
        "onehot_s": ours,
        "dense_s": dense,
        "x_vs_dense": dense / ours,
        "max_cross_entropy_diff": float((fit.cross_entropy - dense_fit.cross_entropy).abs().max()),
    }
    benchmark.extra_info.update(row)
    print_table("fit_logistic (InfoE, 6 sources, float64), one-hot codes vs dense one-hot", [row])
    assert row["max_cross_entropy_diff"] <= 1e-6
