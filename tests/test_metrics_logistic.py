"""Batched multinomial logistic regression against scikit-learn's LogisticRegression."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from latentquant.metrics.logistic import OneHotCodes, fit_logistic, predict_logistic, predict_proba_logistic


@pytest.fixture(scope="module")
def problem() -> tuple[np.ndarray, np.ndarray]:
    """Non-separable: 4 noisy features, targets of 2, 3, 5 and 7 classes with unequal frequencies."""
    rng = np.random.default_rng(0)
    n = 1500
    latent = rng.standard_normal((n, 4))
    targets = []
    for c, scale in ((2, 1.0), (3, 1.5), (5, 2.0), (7, 0.7)):
        logits = latent @ rng.standard_normal((4, c)) * scale + rng.standard_normal(c)
        gumbel = -np.log(-np.log(rng.uniform(size=(n, c))))
        targets.append(np.argmax(logits + gumbel, axis=1))
    return latent, np.stack(targets, axis=1)


def _sklearn_log_loss(x: np.ndarray, y: np.ndarray, **kwargs: object) -> tuple[float, LogisticRegression]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(**{"max_iter": 100, **kwargs}).fit(x, y)
    return log_loss(y, model.predict_proba(x)), model


def _balanced_objective(y: np.ndarray, probabilities: np.ndarray) -> float:
    weight = (len(y) / (probabilities.shape[1] * np.bincount(y)))[y]
    return float(-(weight * np.log(probabilities[np.arange(len(y)), y])).sum() / weight.sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_balanced_unpenalized_matches_sklearn(
    problem: tuple[np.ndarray, np.ndarray], dtype: torch.dtype
) -> None:
    x, y = problem
    fit = fit_logistic(torch.from_numpy(x).to(dtype), torch.from_numpy(y), class_weight="balanced")
    probabilities = predict_proba_logistic(fit, torch.from_numpy(x).to(torch.float64)).numpy()
    for t in range(y.shape[1]):
        c = int(y[:, t].max()) + 1
        default_loss, _ = _sklearn_log_loss(x, y[:, t], C=np.inf, class_weight="balanced")
        _, tight = _sklearn_log_loss(x, y[:, t], C=np.inf, class_weight="balanced", tol=1e-10, max_iter=1000)
        # the minimized (balanced) objective sits at the tightly converged optimum
        optimum = _balanced_objective(y[:, t], tight.predict_proba(x))
        assert _balanced_objective(y[:, t], probabilities[:, t, :c]) == pytest.approx(optimum, abs=1e-6)
        # the reported unweighted cross-entropy is not what is minimized: it has a slope at the optimum, so
        # two solvers that both stop at max |grad| <= 1e-4 differ in it by ~1e-4 (scikit-learn itself moves
        # 1e-4 between tol=1e-4 and tol=1e-10 here)
        assert float(fit.cross_entropy[t]) == pytest.approx(default_loss, abs=1e-3)
    assert (fit.n_iter > 0).all() and (fit.n_iter < 100).all()


def test_l2_solves_sklearn_default_problem(problem: tuple[np.ndarray, np.ndarray]) -> None:
    """Same objective as LogisticRegression() (C = 1), binary targets included: both converged tightly,
    the models agree to solver precision."""
    x, y = problem
    features = torch.from_numpy(x)
    fit = fit_logistic(
        features, torch.from_numpy(y), class_weight=None, l2=1.0 / len(x), tol=1e-9, max_iter=500
    )
    probabilities = predict_proba_logistic(fit, features).numpy()
    for t in range(y.shape[1]):
        _, model = _sklearn_log_loss(x, y[:, t], tol=1e-10, max_iter=1000)
        c = model.classes_.size
        np.testing.assert_allclose(probabilities[:, t, :c], model.predict_proba(x), atol=1e-6)
        np.testing.assert_array_equal(probabilities[:, t, c:], 0.0)


def test_batched_equals_separate_fits(problem: tuple[np.ndarray, np.ndarray]) -> None:
    """Padding targets to the widest class count changes nothing: each target keeps its own L-BFGS."""
    x, y = problem
    features = torch.from_numpy(x)
    batched = fit_logistic(features, torch.from_numpy(y))
    for t in range(y.shape[1]):
        alone = fit_logistic(features, torch.from_numpy(y[:, t : t + 1]))
        assert float(alone.cross_entropy[0]) == pytest.approx(float(batched.cross_entropy[t]), abs=1e-9)
        assert int(alone.n_iter[0]) == int(batched.n_iter[t])


def test_zero_features_give_log_classes(problem: tuple[np.ndarray, np.ndarray]) -> None:
    _, y = problem
    fit = fit_logistic(torch.zeros(len(y), 3, dtype=torch.float64), torch.from_numpy(y))
    np.testing.assert_allclose(fit.cross_entropy.numpy(), np.log([2, 3, 5, 7]), atol=1e-12)
    assert (fit.n_iter == 0).all()  # balanced weights: the zero start is already optimal


def test_separable_data_runs_the_full_budget() -> None:
    y = np.repeat(np.arange(3), 50)
    fit = fit_logistic(torch.from_numpy(y[:, None] * 1.0), torch.from_numpy(y[:, None]), max_iter=100)
    assert float(fit.cross_entropy[0]) < 0.05
    assert (predict_logistic(fit, torch.from_numpy(y[:, None] * 1.0))[:, 0].numpy() == y).all()


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="features must be a 2-D float tensor"):
        fit_logistic(torch.zeros(4, 2, dtype=torch.int64), torch.zeros(4, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"labels must have shape \(N, T\) with N = 4"):
        fit_logistic(torch.zeros(4, 2), torch.zeros(5, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="class_weight must be"):
        fit_logistic(torch.zeros(4, 2), torch.zeros(4, 1, dtype=torch.int64), class_weight="auto")
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        fit_logistic(torch.zeros(4, 2), torch.zeros(4, 1, dtype=torch.int64), workers=0)
    fit = fit_logistic(torch.randn(6, 2), torch.tensor([[0], [1], [0], [1], [0], [1]]))
    with pytest.raises(ValueError, match=r"features must have shape \(N, 2\)"):
        predict_logistic(fit, torch.zeros(3, 5))


@pytest.mark.parametrize("one_hot", [False, True])
def test_workers_change_nothing(
    problem: tuple[np.ndarray, np.ndarray], discrete_problem: tuple[np.ndarray, np.ndarray], one_hot: bool
) -> None:
    """The targets shared among threads: the same fit, bit for bit."""
    if one_hot:
        codes, y = discrete_problem
        features = OneHotCodes(torch.from_numpy(codes), torch.from_numpy(codes.max(axis=0) + 1))
    else:
        x, y = problem
        features = torch.from_numpy(x).float()
    one = fit_logistic(features, torch.from_numpy(y))
    three = fit_logistic(features, torch.from_numpy(y), workers=3)
    assert torch.equal(one.weights, three.weights) and torch.equal(one.n_iter, three.n_iter)
    assert torch.equal(one.cross_entropy, three.cross_entropy)


@pytest.fixture(scope="module")
def discrete_problem() -> tuple[np.ndarray, np.ndarray]:
    """Quantized latents (integer codes, 3 to 9 values each, two uninformative) and 3 sources of 4, 6, 9
    classes that depend on them noisily."""
    rng = np.random.default_rng(1)
    n = 2000
    codes = np.stack([rng.integers(0, v, n) for v in (3, 5, 9, 4, 7)], axis=1)
    sources = np.stack(
        [
            (codes[:, 0] + rng.integers(0, 2, n)) % 4,
            (codes[:, 1] + codes[:, 3] + rng.integers(0, 2, n)) % 6,
            np.where(rng.uniform(size=n) < 0.7, codes[:, 2], rng.integers(0, 9, n)),
        ],
        axis=1,
    )
    return codes, sources


def test_one_hot_codes_fit_equals_dense_fit(discrete_problem: tuple[np.ndarray, np.ndarray]) -> None:
    """fit_logistic on OneHotCodes (the gather/scatter op) and on the expanded one-hot matrix (the dense op):
    the same fit. In float64 the two L-BFGS runs see the same values up to rounding and take the same steps."""
    codes, sources = discrete_problem
    features = OneHotCodes(torch.from_numpy(codes), torch.tensor([3, 5, 9, 4, 7]), torch.float64)
    assert features.shape == (len(codes), 28)
    dense = features.dense()
    torch.testing.assert_close(dense.sum(dim=1), torch.full((len(codes),), 5.0, dtype=torch.float64))
    labels = torch.from_numpy(sources)
    got = fit_logistic(features, labels)
    want = fit_logistic(dense, labels)
    torch.testing.assert_close(got.cross_entropy, want.cross_entropy, rtol=0, atol=1e-6)
    assert torch.equal(got.n_iter, want.n_iter)
    torch.testing.assert_close(got.weights, want.weights, rtol=0, atol=1e-4)
    torch.testing.assert_close(
        predict_proba_logistic(got, features), predict_proba_logistic(want, dense), rtol=0, atol=1e-6
    )


def test_one_hot_codes_fit_matches_sklearn(discrete_problem: tuple[np.ndarray, np.ndarray]) -> None:
    """Against LogisticRegression(C=inf, balanced) on the one-hot matrix. One-hot blocks each sum to the
    intercept column, so the objective has flat directions and both solvers stop (max |grad| <= 1e-4) some
    1e-5 above the tight optimum (measured: ours 0.9-1.4e-5, scikit-learn's default 0.5-2.2e-5): ours must
    stop as close as scikit-learn's default fit, to 1e-5, and report the cross-entropy within 2e-3 of it (the
    unweighted loss has a slope at the optimum, see test_balanced_unpenalized_matches_sklearn)."""
    codes, sources = discrete_problem
    features = OneHotCodes(torch.from_numpy(codes), torch.tensor([3, 5, 9, 4, 7]), torch.float32)
    fit = fit_logistic(features, torch.from_numpy(sources))
    x = features.to(torch.float64).dense().numpy()
    probabilities = predict_proba_logistic(fit, features.to(torch.float64)).numpy()
    for t in range(sources.shape[1]):
        c = int(sources[:, t].max()) + 1
        default_loss, default = _sklearn_log_loss(x, sources[:, t], C=np.inf, class_weight="balanced")
        _, tight = _sklearn_log_loss(
            x, sources[:, t], C=np.inf, class_weight="balanced", tol=1e-10, max_iter=1000
        )
        optimum = _balanced_objective(sources[:, t], tight.predict_proba(x))
        ours = _balanced_objective(sources[:, t], probabilities[:, t, :c])
        assert optimum - 1e-9 <= ours <= _balanced_objective(sources[:, t], default.predict_proba(x)) + 1e-5
        assert float(fit.cross_entropy[t]) == pytest.approx(default_loss, abs=2e-3)


def test_one_hot_codes_errors() -> None:
    with pytest.raises(ValueError, match=r"OneHotCodes: codes must be a 2-D int64 tensor \(N, G\)"):
        OneHotCodes(torch.zeros(4, 2), torch.tensor([2, 2]))
    with pytest.raises(ValueError, match=r"OneHotCodes: num_values must be \(G,\) = \(2,\) counts >= 1"):
        OneHotCodes(torch.zeros(4, 2, dtype=torch.int64), torch.tensor([2, 0]))
    with pytest.raises(ValueError, match=r"OneHotCodes: dtype must be float32 or float64"):
        OneHotCodes(torch.zeros(4, 1, dtype=torch.int64), torch.tensor([2]), torch.float16)
