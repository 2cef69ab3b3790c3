"""latentquant.mi, continuous-discrete: the CPU kernel's run-time paths against each other and scikit-learn.

The AVX-512 path of ``knn_mi_cd`` (chosen at run time; ``LATENTQUANT_MI_NO_AVX512=1`` turns it off) must
give the baseline path's bits on every case that reaches one of its branches, and both scikit-learn's
numbers (jitter off). Also: the radix argsort's fix-up of values equal in their top bits, the per-latent
scheduling (results independent of the thread count), and the preprocessing shortcuts.
"""

import numpy as np
import pytest
import torch
from sklearn_mi import sklearn_cd

import latentquant.mi as mi
from latentquant.ops import _registry
from latentquant.reference.knn_mi import knn_mi_cd_ref

HAVE_KERNEL = _registry.has_kernel("knn_mi_cd", "CPU")
needs_kernel = pytest.mark.skipif(not HAVE_KERNEL, reason="latentquant._C not built")


def _case(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Data reaching one branch of the kernel (x (N, L), y (N, S) int64, k)."""
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    n, k = 4000, 10
    y = rng.integers(0, 10, (n, 3))
    x = rng.standard_normal((n, 3)) + 0.6 * y[:, :1]
    if name == "k3":  # the window compiled for k = 3
        k = 3
    elif name == "k7":  # the generic window (k not compiled for)
        k = 7
    elif name == "k_beyond_window":  # k > 64: the sequential merge
        k = 70
    elif name == "ties":  # exact ties beyond the window: the general search
        x[:, 1] = rng.integers(0, 8, n)
        x[:, 2] = np.round(x[:, 2] * 2)
    elif name == "rare_class":  # a 1% class: same-label gaps far wider than 64 positions (binary search)
        y[:, 1] = (rng.random(n) < 0.01).astype(np.int64)
        y[:, 2] = np.where(rng.random(n) < 0.005, 1, 0) + 2 * (rng.random(n) < 0.5)
    elif name == "singletons":  # labels seen once: the per-pair copy of the kept values
        y[: n // 4, 1] = np.arange(n // 4) + 100
        y[::7, 2] = -np.arange(len(y[::7, 2])) - 1
    elif name == "wide_labels":  # labels far apart: the sorting label encoder
        y[:, 1] = rng.choice(np.array([-(2**62), -5, 0, 2**40, 2**62]), n)
    elif name == "small_classes":  # classes with k >= count // 2: scikit-learn's brute-force distances
        y[:, 1] = rng.integers(0, 400, n)
    elif name == "tiny":
        n, k = 6, 2
        y, x = y[:n], x[:n]
    elif name == "clusters":  # well separated clusters: long label runs, huge gaps at their edges
        x[:, 0] = 10.0 * y[:, 0] + 0.01 * rng.standard_normal(n)
    return x, y.astype(np.int64), k


CASES = [
    "k3",
    "k7",
    "k_beyond_window",
    "ties",
    "rare_class",
    "singletons",
    "wide_labels",
    "small_classes",
    "tiny",
    "clusters",
]


@needs_kernel
@pytest.mark.parametrize("name", CASES)
def test_avx512_and_baseline_paths_agree_with_sklearn(name, monkeypatch, sklearn_without_noise):
    x, y, k = _case(name)
    want = sklearn_cd(x, y, k)
    got = mi.mutual_info_continuous_discrete(x, y, n_neighbors=k, jitter=0)
    monkeypatch.setenv("LATENTQUANT_MI_NO_AVX512", "1")
    baseline = mi.mutual_info_continuous_discrete(x, y, n_neighbors=k, jitter=0)
    np.testing.assert_array_equal(got, baseline)  # the two paths: the same bits
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    if name != "tiny":
        assert (want > 0).any()


@needs_kernel
@pytest.mark.parametrize("name", ["ties", "singletons", "tiny"])
def test_kernel_paths_equal_reference(name, monkeypatch):
    x, y, k = _case(name)
    xt = torch.from_numpy(x)[:, :, None]
    yt = torch.from_numpy(y)
    want = knn_mi_cd_ref(xt, yt, k)
    torch.testing.assert_close(torch.ops.latentquant.knn_mi_cd(xt, yt, k), want, rtol=0, atol=1e-12)
    monkeypatch.setenv("LATENTQUANT_MI_NO_AVX512", "1")
    torch.testing.assert_close(torch.ops.latentquant.knn_mi_cd(xt, yt, k), want, rtol=0, atol=1e-12)


@needs_kernel
def test_values_equal_in_their_top_bits_are_sorted_exactly(sklearn_without_noise):
    """The radix argsort orders by the top 44 bits of the keys, then fixes up runs equal in those bits:
    values a few ulps apart (and exact ties among them) must still come out in order."""
    rng = np.random.default_rng(5)
    n = 3000
    y = rng.integers(0, 4, (n, 1))
    ulps = rng.integers(0, 3000, n) + 2500 * y[:, 0]  # dependent on y, single ulps apart
    x = np.stack([1.0 + ulps * 2.0**-52, 1e8 + (rng.integers(0, 9000, n) + 6000 * y[:, 0]) * 2.0**-26], 1)
    got = mi.mutual_info_continuous_discrete(x, y, n_neighbors=5, jitter=0)
    want = sklearn_cd(x, y, 5)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert (want > 0.05).any()
    xt = torch.from_numpy(x)[:, :, None]  # the raw op on the unscaled values: single ulps apart
    torch.testing.assert_close(
        torch.ops.latentquant.knn_mi_cd(xt, torch.from_numpy(y), 5),
        knn_mi_cd_ref(xt, torch.from_numpy(y), 5),
        rtol=0,
        atol=1e-12,
    )


@needs_kernel
def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 6, (3000, 4))
    x = rng.standard_normal((3000, 7)) + 0.5 * y[:, :1]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = mi.mutual_info_continuous_discrete(x, y, n_neighbors=10)
        torch.set_num_threads(max(2, before))
        many = mi.mutual_info_continuous_discrete(x, y, n_neighbors=10)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one, many)


def test_finite_values_whose_sum_overflows_are_accepted(sklearn_without_noise):
    """The finiteness check sums first (a finite sum proves every entry finite); a sum that overflows on
    finite input must fall through to the exact check, not reject the data."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, (500, 1))
    x = np.where(y == 1, 1.7e308, -1.7e308) * (0.9 + 0.1 * rng.random((500, 1)))
    x = np.concatenate([x, rng.standard_normal((500, 1))], 1)
    assert not np.isfinite(x.sum())
    got = mi.mutual_info_continuous_discrete(x, y, n_neighbors=3, jitter=0)
    assert got[0, 0] > 0.5
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="contains NaN or Inf"):
        mi.mutual_info_continuous_discrete(bad, y)


def test_varying_column_with_zero_std_is_named_as_drowned():
    """A column whose std underflows to 0 although it varies (values ~1e-170) is drowned by the jitter."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, (300, 1))
    x = np.stack([rng.standard_normal(300), 1e-170 * y[:, 0]], 1)
    with pytest.warns(UserWarning, match=r"columns \[1\] of x are so flat"):
        mi.mutual_info_continuous_discrete(x, y)
