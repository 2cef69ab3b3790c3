"""latentquant.mi: parity with scikit-learn (jitter=0), kernels against the oracle, errors, known answers."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import entropy as scipy_entropy
from sklearn.feature_selection import mutual_info_regression
from sklearn.metrics import mutual_info_score
from sklearn_mi import sklearn_cd

import latentquant.mi as mi
from latentquant.ops import _registry
from latentquant.reference.knn_mi import knn_mi_cc_ref, knn_mi_cd_ref

HAVE_KERNEL = _registry.has_kernel("knn_mi_cd", "CPU")


@st.composite
def cd_cases(draw):
    n = draw(st.integers(4, 90))
    lat = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["normal", "cauchy", "ties", "offset", "tiny_spread"]))
    classes = draw(st.integers(1, 16))
    k = draw(st.integers(1, min(8, n - 1)))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, (n, 2))
    x = {
        "normal": lambda: rng.standard_normal((n, lat)),
        "cauchy": lambda: rng.standard_cauchy((n, lat)),
        "ties": lambda: rng.integers(0, 4, (n, lat)).astype(float),
        "offset": lambda: rng.standard_normal((n, lat)) + rng.choice([1e4, -3e6, 1e8]),
        "tiny_spread": lambda: 1.0 + 1e-9 * rng.standard_normal((n, lat)),
    }[kind]()
    x[:, 0] += 0.5 * y[:, 0]  # some dependence, so the estimates are not all clipped to 0
    if draw(st.booleans()):
        y[: n // 3, 1] = np.arange(n // 3) + 100  # labels seen once
    return x, y, k


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cd_cases())
def test_cd_equals_sklearn(case, sklearn_without_noise):
    x, y, k = case
    got = mi.mutual_info_continuous_discrete(x, y, n_neighbors=k, jitter=0)
    np.testing.assert_allclose(got, sklearn_cd(x, y, k), rtol=0, atol=1e-9)


@st.composite
def cc_cases(draw):
    n = draw(st.integers(3, 80))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["normal", "cauchy", "ties", "offset"]))
    k = draw(st.integers(1, min(8, n - 1)))
    rng = np.random.default_rng(seed)
    x = {
        "normal": lambda: rng.standard_normal((n, 2)),
        "cauchy": lambda: rng.standard_cauchy((n, 2)),
        "ties": lambda: rng.integers(0, 5, (n, 2)).astype(float),
        "offset": lambda: rng.standard_normal((n, 2)) + 1e6,
    }[kind]()
    y = np.stack([x[:, 0] + rng.standard_normal(n), np.round(rng.standard_normal(n))], 1)
    return x, y, k


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cc_cases())
def test_cc_equals_sklearn(case, sklearn_without_noise):
    x, y, k = case
    got = mi.mutual_info_continuous_continuous(x, y, n_neighbors=k, jitter=0)
    want = np.stack([mutual_info_regression(x, y[:, j], n_neighbors=k) for j in range(y.shape[1])], 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_small_classes_need_sklearn_brute_force_distances(sklearn_without_noise):
    """Classes with k >= count // 2 are searched by scikit-learn with |a|^2 - 2ab + |b|^2; with a large
    offset that differs from (a - b)^2 by many ulps, and we must follow it to agree."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 15, (60, 1))
    x = rng.standard_normal((60, 1)) + 1e5 + 0.8 * y
    got = mi.mutual_info_continuous_discrete(x, y, n_neighbors=3, jitter=0)
    np.testing.assert_allclose(got, sklearn_cd(x, y, 3), rtol=0, atol=1e-9)
    assert got[0, 0] > 0


def test_large_n_equals_sklearn(sklearn_without_noise):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 6, (6000, 2))
    x = rng.standard_normal((6000, 3)) + 0.4 * y[:, :1]
    x[:, 1] = np.round(x[:, 1] * 4)  # heavy ties
    got = mi.mutual_info_continuous_discrete(x, y, n_neighbors=10, jitter=0)
    np.testing.assert_allclose(got, sklearn_cd(x, y, 10), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "case", ["wide_label_range", "k_beyond_window", "rare_class_gaps", "ties_beyond_window", "four_classes"]
)
def test_cd_kernel_paths_equal_sklearn(case, sklearn_without_noise):
    """Each path of the C++ kernel against scikit-learn: labels too far apart for the counting encoder
    (sorted instead), k > 64 (sequential merge instead of the window), a 1% class whose same-label gaps
    exceed the fixed-step search width (general search), exact ties spanning more than k + 1 same-label
    neighbours (galloping count), and wide brackets of a 4-class source."""
    rng = np.random.default_rng(7)
    n, k = 3000, 10
    y = rng.integers(0, 5, (n, 2))
    x = rng.standard_normal((n, 2)) + 0.5 * y[:, :1]
    if case == "wide_label_range":
        y[:, 1] = rng.choice(np.array([-(2**62), -5, 0, 2**40, 2**62]), n)
    elif case == "k_beyond_window":
        k = 70
    elif case == "rare_class_gaps":
        y[:, 1] = np.where(rng.random(n) < 0.01, 1, 0)
        y[:, 1] += 2 * (rng.random(n) < 0.5)
    elif case == "ties_beyond_window":
        x[:, 1] = rng.integers(0, 6, n)
    else:
        y = rng.integers(0, 4, (n, 2))
    got = mi.mutual_info_continuous_discrete(x, y, n_neighbors=k, jitter=0)
    want = sklearn_cd(x, y, k)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert (want > 0).any()


@pytest.mark.skipif(not HAVE_KERNEL, reason="latentquant._C not built")
@pytest.mark.parametrize(
    ("n", "lat", "dim", "classes", "k"), [(50, 2, 1, 4, 3), (70, 2, 3, 5, 4), (23, 1, 2, 9, 2)]
)
def test_cd_kernel_equals_reference(n, lat, dim, classes, k):
    rng = np.random.default_rng(n)
    y = torch.from_numpy(rng.integers(0, classes, (n, 3)))
    x = torch.from_numpy(rng.standard_normal((n, lat, dim))) + 0.7 * y[:, :1, None]
    x[: n // 3] = x[: n // 3].round()
    got = torch.ops.latentquant.knn_mi_cd(x, y, k)
    want = knn_mi_cd_ref(x, y, k)
    assert (want > 0).any()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.skipif(not HAVE_KERNEL, reason="latentquant._C not built")
@pytest.mark.parametrize(("n", "dx", "dy", "k"), [(60, 1, 1, 3), (45, 2, 1, 2), (30, 3, 2, 5)])
def test_cc_kernel_equals_reference(n, dx, dy, k):
    rng = np.random.default_rng(n)
    x = torch.from_numpy(rng.standard_normal((n, 2, dx)))
    y = torch.from_numpy(rng.standard_normal((n, 3, dy))) + x[:, :1, :1]
    y[: n // 2] = y[: n // 2].round()
    got = torch.ops.latentquant.knn_mi_cc(x, y, k)
    want = knn_mi_cc_ref(x, y, k)
    assert (want > 0).any()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.skipif(not HAVE_KERNEL, reason="latentquant._C not built")
def test_opcheck_and_compile():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((40, 2, 1)))
    y = torch.from_numpy(rng.integers(0, 3, (40, 2)))
    torch.library.opcheck(torch.ops.latentquant.knn_mi_cd, (x, y, 3))
    torch.library.opcheck(torch.ops.latentquant.knn_mi_cc, (x, x[:, :1], 3))
    compiled = torch.compile(lambda a, b: torch.ops.latentquant.knn_mi_cd(a, b, 3), fullgraph=True)
    torch.testing.assert_close(compiled(x, y), torch.ops.latentquant.knn_mi_cd(x, y, 3), rtol=0, atol=0)


def test_numpy_and_tensor_in_out():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((200, 3)), rng.integers(0, 4, (200, 2))
    out = mi.mutual_info_continuous_discrete(x, y)
    assert isinstance(out, np.ndarray) and out.shape == (3, 2) and out.dtype == np.float64
    out_t = mi.mutual_info_continuous_discrete(torch.from_numpy(x), torch.from_numpy(y))
    assert isinstance(out_t, torch.Tensor) and out_t.device.type == "cpu"
    np.testing.assert_array_equal(out_t.numpy(), out)  # same scaling (numpy's std) and same seeded noise
    assert mi.mutual_info_continuous_discrete(x[:, 0], y).shape == (2,)
    assert mi.mutual_info_continuous_discrete(x, y[:, 0]).shape == (3,)
    assert mi.mutual_info_continuous_discrete(x[:, 0], y[:, 0]).shape == ()
    assert mi.mutual_info_continuous_continuous(x, x[:, :2]).shape == (3, 2)
    assert mi.mutual_info_continuous_discrete(x.reshape(200, 1, 3), y).shape == (1, 2)  # vector-valued
    assert mi.mutual_info_discrete_discrete(y, y[:, 0]).shape == (2,)
    ent = mi.entropy_discrete(torch.from_numpy(y))
    assert isinstance(ent, torch.Tensor) and ent.shape == (2,)


def test_jitter_is_seeded():
    rng = np.random.default_rng(0)
    x, y = np.round(rng.standard_normal((300, 2))), rng.integers(0, 3, (300, 2))
    a = mi.mutual_info_continuous_discrete(x, y, seed=5)
    np.testing.assert_array_equal(a, mi.mutual_info_continuous_discrete(x, y, seed=5))
    assert not np.array_equal(a, mi.mutual_info_continuous_discrete(x, y, seed=6))  # ties broken differently


def test_known_answers():
    rng = np.random.default_rng(0)
    n = 3000
    x = rng.standard_normal((n, 2))
    y = np.stack([np.digitize(x[:, 0], [-1.0, 0.0, 1.0]), rng.integers(0, 4, n)], 1)
    got = mi.mutual_info_continuous_discrete(x, y)
    h = mi.entropy_discrete(y[:, 0])
    assert abs(got[0, 0] - h) < 0.05  # y = f(x): I(x; y) = H(y)
    assert got[1, 0] < 0.02 and got[0, 1] < 0.02 and got[1, 1] < 0.02  # independent
    rho = 0.8
    z = rho * x[:, 0] + np.sqrt(1 - rho**2) * x[:, 1]
    cc = mi.mutual_info_continuous_continuous(x[:, 0], np.stack([z, rng.standard_normal(n)], 1))
    assert abs(cc[0] - (-0.5 * np.log(1 - rho**2))) < 0.05  # Gaussian: -log(1 - rho^2) / 2
    assert cc[1] < 0.02


def test_plugin_equals_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, (500, 3))
    b = np.stack([a[:, 0] // 2, rng.integers(0, 7, 500)], 1)
    got = mi.mutual_info_discrete_discrete(a, b)
    want = np.array([[mutual_info_score(a[:, i], b[:, j]) for j in range(2)] for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    ent = mi.entropy_discrete(a)
    np.testing.assert_allclose(
        ent, [scipy_entropy(np.bincount(a[:, i])) for i in range(3)], rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(got[0, 0], mi.entropy_discrete(b[:, 0]), rtol=0, atol=1e-12)  # b0 = f(a0)
    assert mi.mutual_info_discrete_discrete(["a", "b", "a", "b"], [1, 2, 1, 2]) == pytest.approx(np.log(2))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda x, y: mi.mutual_info_continuous_discrete(np.full((10, 2), np.nan), y),
            "x contains NaN or Inf",
        ),
        (lambda x, y: mi.mutual_info_continuous_discrete(x, y[:9]), "same number of samples"),
        (
            lambda x, y: mi.mutual_info_continuous_discrete(x, y, n_neighbors=0),
            r"n_neighbors must be in \[1, N - 1\]",
        ),
        (lambda x, y: mi.mutual_info_continuous_discrete(x, y, n_neighbors=10), "got 10"),
        (lambda x, y: mi.mutual_info_continuous_discrete(x, y.astype(float)), "integer class labels"),
        (lambda x, y: mi.mutual_info_continuous_discrete(x, y, jitter=-1.0), "jitter"),
        (lambda x, y: mi.mutual_info_continuous_continuous(x, np.full(10, np.inf)), "y contains NaN or Inf"),
        (
            lambda x, y: mi.mutual_info_continuous_continuous(x, x, n_neighbors=3.0),
            "n_neighbors must be an int",
        ),
        (lambda x, y: mi.mutual_info_discrete_discrete(x, y), "x must hold integer class labels"),
        (lambda x, y: mi.entropy_discrete(x), "y must hold integer class labels"),
        (lambda x, y: mi.mutual_info_continuous_discrete(x.reshape(10, 2, 1, 1), y), "x must have shape"),
    ],
)
def test_errors(call, message):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((10, 2)), rng.integers(0, 3, (10, 2))
    with pytest.raises(ValueError, match=message):
        call(x, y)


@pytest.mark.parametrize("n", [1, 2, 7, 1001, 50_000])
def test_column_std_has_sklearns_bits(n):
    """The scaling uses np.std where scikit-learn uses np.nanstd: on finite data they must agree to the bit,
    or neighbour ties could flip between our estimate and scikit-learn's."""
    from latentquant.mi import _inputs

    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 5)) * rng.uniform(1e-3, 1e3, 5) + rng.uniform(-1e6, 1e6, 5)
    mask = np.ones(5, dtype=bool)
    want = np.nanstd(x[:, mask], axis=0)  # sklearn's _estimate_mi on features
    np.testing.assert_array_equal(_inputs._column_std(torch.from_numpy(x), False).numpy(), want)
    want_target = np.array([np.nanstd(np.ascontiguousarray(x[:, j])) for j in range(5)])  # regression y
    np.testing.assert_array_equal(_inputs._column_std(torch.from_numpy(x), True).numpy(), want_target)


def test_cc_large_n_equals_sklearn(sklearn_without_noise):
    """The k-d tree search of the C++ KSG kernel at a size where it has many levels: independent, dependent
    and heavily tied columns against scikit-learn."""
    rng = np.random.default_rng(11)
    n = 4000
    x = rng.standard_normal((n, 3))
    x[:, 2] = np.round(x[:, 2] * 3)  # heavy ties
    y = np.stack([x[:, 0] + 0.2 * rng.standard_normal(n), rng.standard_cauchy(n)], 1)
    got = mi.mutual_info_continuous_continuous(x, y, n_neighbors=10, jitter=0)
    want = np.stack([mutual_info_regression(x, y[:, j], n_neighbors=10) for j in range(2)], 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert want[0, 0] > 0.5


@pytest.mark.skipif(not HAVE_KERNEL, reason="latentquant._C is not built")
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_raw_ops_reject_non_finite_input(bad):
    """The raw ops validate like the public functions (NaN/Inf were accepted and gave an estimate)."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((30, 2, 1)))
    y = torch.from_numpy(rng.integers(0, 3, (30, 2)))
    yc = torch.from_numpy(rng.standard_normal((30, 1, 1)))
    xb = x.clone()
    xb[7, 1, 0] = bad
    with pytest.raises(ValueError, match="knn_mi_cd: x contains NaN or Inf"):
        torch.ops.latentquant.knn_mi_cd(xb, y, 3)
    with pytest.raises(ValueError, match="knn_mi_cc: x contains NaN or Inf"):
        torch.ops.latentquant.knn_mi_cc(xb, yc, 3)
    yb = yc.clone()
    yb[2, 0, 0] = bad
    with pytest.raises(ValueError, match="knn_mi_cc: y contains NaN or Inf"):
        torch.ops.latentquant.knn_mi_cc(x, yb, 3)


@pytest.mark.skipif(not HAVE_KERNEL, reason="latentquant._C is not built")
def test_raw_ops_reject_bad_shapes_with_value_errors():
    x = torch.zeros(10, 1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="knn_mi_cd: y must have 2 dimensions"):
        torch.ops.latentquant.knn_mi_cd(x, torch.tensor(3), 3)
    with pytest.raises(ValueError, match="knn_mi_cc: y must have 3 dimensions"):
        torch.ops.latentquant.knn_mi_cc(x, torch.zeros(10, 1, dtype=torch.float64), 3)
    with pytest.raises(ValueError, match="knn_mi_cd: x and y must have the same number of samples"):
        torch.ops.latentquant.knn_mi_cd(x, torch.zeros(9, 1, dtype=torch.long), 3)
