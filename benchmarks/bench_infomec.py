"""InfoMEC (standalone convention) against the reference procedure built from scikit-learn — per-source
``mutual_info_classif`` (k = 10) + ``LogisticRegression`` — timed in the same process (DESIGN §9).

Target (issue 3): at least 20x faster at N = 50,000 samples, 12 latents x 6 sources on the 2-core CPU, with
the same numbers (NMI to 1e-6, InfoM/InfoC to 1e-4, InfoE within 0.02). Run: `make bench` or
`pytest -s benchmarks/bench_infomec.py`; `LATENTQUANT_BENCH_N=5000` for a quick run.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import pytest
from timing import median_seconds, print_table

from latentquant.metrics import infomec
from latentquant.reference.infomec import infomec_ref

CARDINALITIES = (10, 10, 10, 8, 4, 15)  # the shapes3d factor grid


def make_data(n: int, discrete: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """6 sources; 6 latents each a noisy copy of one source, 6 pure-noise latents (quantized if discrete)."""
    rng = np.random.default_rng(seed)
    sources = np.stack([rng.integers(0, c, n) for c in CARDINALITIES], axis=1)
    informative = sources / np.array(CARDINALITIES) + 0.05 * rng.standard_normal((n, 6))
    latents = np.concatenate([informative, 0.1 * rng.standard_normal((n, 6))], axis=1)
    if discrete:
        latents = np.round(latents * 10) / 10
    return sources, latents


def measure(n: int, discrete: bool) -> dict[str, object]:
    sources, latents = make_data(n, discrete)
    ours_result = infomec(sources, latents, discrete, "standalone")
    ours = median_seconds(lambda: infomec(sources, latents, discrete, "standalone"), warmup=1, repeats=3)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the reference's lbfgs may stop at 100 iterations (ConvergenceWarning)
        start = time.perf_counter()
        ref = infomec_ref(sources, latents, discrete, "standalone")
        reference = time.perf_counter() - start
    return {
        "latents": "discrete" if discrete else "continuous",
        "N": n,
        "ours_s": ours,
        "reference_s": reference,
        "speedup": reference / ours,
        "infoe_ours": ours_result.infoe,
        "infoe_ref": ref["infoe"],
        "infom_diff": abs(ours_result.infom - ref["infom"]),
        "infoc_diff": abs(ours_result.infoc - ref["infoc"]),
        "nmi_max_diff": float(np.abs(ours_result.nmi - ref["nmi"]).max()),
    }


@pytest.mark.parametrize("discrete", [False, True], ids=["continuous", "discrete"])
def test_infomec_standalone_vs_sklearn_reference(discrete: bool) -> None:
    n = int(os.environ.get("LATENTQUANT_BENCH_N", "50000"))
    if discrete:
        # The reference's one-hot LogisticRegression runs for > 6 minutes at N = 50,000 (the target is stated
        # for continuous latents); the discrete case is timed at 5,000 samples unless asked for fewer.
        n = min(n, 5000)
    row = measure(n, discrete)
    print_table(f"infomec(convention='standalone'), 12 latents x 6 sources, N={n}", [row])
    assert abs(row["infoe_ours"] - row["infoe_ref"]) <= 0.02
    # NMI agrees to 1e-6: the k-NN counts see the latents standardized by torch here and by StandardScaler
    # there, and last-bit differences flip a few neighbour ties at N = 50,000. InfoM divides the NMI of the
    # pure-noise latents (~1e-3) by their sums, which turns that into ~1e-5.
    assert row["nmi_max_diff"] <= 1e-6
    assert row["infom_diff"] <= 1e-4 and row["infoc_diff"] <= 1e-4
    if n >= 50_000 and not discrete:
        assert row["speedup"] >= 20, f"target is >= 20x at N = 50,000, measured {row['speedup']:.1f}x"


if __name__ == "__main__":
    for discrete in (False, True):
        n = int(os.environ.get("LATENTQUANT_BENCH_N", "50000"))
        n = min(n, 5000) if discrete else n
        print_table(f"infomec standalone N={n}", [measure(n, discrete)])
