"""MIG, DCI, SAP, modularity/explicitness: against loop-by-loop re-derivations after disentanglement_lib,
and its known answers (perfect ~1, constant ~0, duplicated or mixed latents penalized)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentquant.metrics import (
    dci,
    disentanglement_completeness,
    evaluate_representation,
    histogram_discretize,
    infomec,
    mig,
    modularity_explicitness,
    sap,
)
from latentquant.metrics._inputs import train_test_split
from latentquant.reference.disentanglement_lib import (
    dci_from_importance_ref,
    discrete_mutual_info_ref,
    explicitness_ref,
    histogram_discretize_ref,
    mig_ref,
    modularity_ref,
    sap_continuous_ref,
)

CARDINALITIES = (4, 3, 5)


def _sources(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, c, n) for c in CARDINALITIES], axis=1)


def _noisy(sources: np.ndarray, noise: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return sources / np.array(CARDINALITIES) + noise * rng.standard_normal(sources.shape)


ROTATION = np.linalg.qr(np.random.default_rng(5).standard_normal((3, 3)))[0]


@pytest.fixture(scope="module")
def reps() -> dict[str, np.ndarray]:
    s = _sources(900)
    z = _noisy(s, 0.08)
    return {
        "sources": s,
        "perfect": s.astype(float),
        "noisy": z,
        "rotated": z @ ROTATION,
        "duplicated": np.concatenate([z, z[:, :1]], axis=1),
        "constant": np.zeros((len(s), 3)),
    }


def test_histogram_discretize_matches_numpy_digitize(reps: dict[str, np.ndarray]) -> None:
    z = np.concatenate([reps["noisy"], reps["perfect"], reps["constant"][:, :1]], axis=1)
    ours = histogram_discretize(torch.from_numpy(z), 20).numpy()
    np.testing.assert_array_equal(ours, histogram_discretize_ref(z, 20))
    assert ours.min() >= 1 and ours.max() <= 20


@pytest.mark.parametrize("name", ["perfect", "noisy", "rotated", "duplicated"])
def test_mig_and_modularity_match_reference(reps: dict[str, np.ndarray], name: str) -> None:
    s, z = reps["sources"], reps[name]
    result = mig(s, z)
    assert result.mig == pytest.approx(mig_ref(s, z), abs=1e-12)
    mutual_information = discrete_mutual_info_ref(histogram_discretize_ref(z), s)
    np.testing.assert_allclose(result.mutual_information, mutual_information.T, atol=1e-12)
    modular = modularity_explicitness(s, z)
    assert modular.modularity == pytest.approx(modularity_ref(mutual_information), abs=1e-12)


@pytest.mark.parametrize("name", ["noisy", "rotated"])
def test_explicitness_matches_sklearn_logistic_regression(reps: dict[str, np.ndarray], name: str) -> None:
    s, z = reps["sources"], reps[name]
    train, test = train_test_split(len(s), 1 / 3, seed=0)
    result = modularity_explicitness(s, z, seed=0)
    expected_train, expected_test = explicitness_ref(s, z, train, test)
    # AUCs of two L-BFGS fits of the same L2 problem, both stopped at max |grad| <= 1e-4
    assert result.explicitness_train == pytest.approx(expected_train, abs=1e-3)
    assert result.explicitness_test == pytest.approx(expected_test, abs=1e-3)


def test_disentanglement_completeness_match_scipy_entropy() -> None:
    rng = np.random.default_rng(0)
    for shape in [(3, 5), (4, 4), (2, 7)]:
        importance = rng.exponential(size=shape) * (rng.uniform(size=shape) > 0.3)
        ours = disentanglement_completeness(importance)
        ref = dci_from_importance_ref(importance.T)  # reference takes (latents, sources)
        np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert disentanglement_completeness(np.eye(3)) == pytest.approx((1.0, 1.0), abs=1e-9)
    assert disentanglement_completeness(np.ones((3, 3))) == pytest.approx((0.0, 0.0), abs=1e-9)
    assert disentanglement_completeness(np.zeros((3, 3))) == pytest.approx((0.0, 0.0), abs=1e-9)


def test_sap_continuous_matches_covariance_reference(reps: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(6)
    s = rng.standard_normal((500, 3))
    z = np.concatenate([s @ ROTATION + 0.3 * rng.standard_normal((500, 3)), np.zeros((500, 1))], axis=1)
    assert sap(s, z, continuous_sources=True).sap == pytest.approx(sap_continuous_ref(s, z), abs=1e-12)


def test_known_answers_mig_modularity_sap(reps: dict[str, np.ndarray]) -> None:
    s = reps["sources"]
    scores = {name: (mig(s, reps[name]).mig, sap(s, reps[name]).sap) for name in reps if name != "sources"}
    assert scores["perfect"][0] > 0.98
    assert scores["constant"] == (0.0, 0.0)
    assert scores["rotated"][0] < scores["noisy"][0] - 0.2
    assert scores["duplicated"][0] < scores["noisy"][0] - 0.2  # source 0's top two latents tie
    assert scores["duplicated"][1] < scores["noisy"][1]
    assert scores["rotated"][1] < scores["noisy"][1]
    assert modularity_explicitness(s, reps["perfect"]).modularity > 0.98
    constant = modularity_explicitness(s, reps["constant"])
    assert constant.modularity == 0.0
    assert constant.explicitness_test == pytest.approx(0.5)


@pytest.mark.parametrize("model", ["gbt", "linear"])
def test_dci_known_answers(reps: dict[str, np.ndarray], model: str) -> None:
    # Importance that leaks onto unrelated latents (finite-sample fit noise) costs entropy fast: 2% on each
    # of two latents already gives 1 - H = 0.86. The linear fit leaks ~1/sqrt(N) (D = 0.92 / 0.93 / 0.97
    # at N = 450 / 900 / 3000), so it gets all 900 samples; the trees (slow) get 450.
    n = 450 if model == "gbt" else 900
    s = reps["sources"][:n]
    results = {name: dci(s, reps[name][:n], model=model) for name in ("perfect", "rotated", "duplicated")}
    assert results["perfect"].disentanglement > 0.9 and results["perfect"].completeness > 0.9
    assert results["perfect"].informativeness_test > 0.95
    assert results["rotated"].disentanglement < results["perfect"].disentanglement - 0.3
    assert results["duplicated"].completeness < results["perfect"].completeness - 0.1
    constant = dci(s, reps["constant"][:n], model=model)
    assert (constant.disentanglement, constant.completeness) == pytest.approx((0.0, 0.0), abs=1e-6)
    assert results["perfect"].importance.shape == (3, 3)


def test_evaluate_representation_shares_and_matches(reps: dict[str, np.ndarray]) -> None:
    s, z = reps["sources"], reps["noisy"]
    result = evaluate_representation(s, z, dci_model="linear", convention="standalone")
    assert result.mig.mig == mig(s, z).mig
    assert result.sap.sap == sap(s, z).sap
    assert result.dci.disentanglement == dci(s, z, model="linear").disentanglement
    assert result.modularity.modularity == modularity_explicitness(s, z).modularity
    assert result.infomec.infom == infomec(s, z, False, "standalone").infom
    scalars = result.scalars()
    assert set(scalars) == {
        "infom", "infoe", "infoc", "mig", "dci_disentanglement", "dci_completeness",
        "dci_informativeness", "sap", "modularity", "explicitness",
    }  # fmt: skip
    json.loads(json.dumps(result.to_dict()))
    only = evaluate_representation(s, z, metrics=["mig"])
    assert only.infomec is None and only.dci is None and only.mig is not None


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s, z: evaluate_representation(s, z, metrics=["mig", "beta_vae"]), "metrics must be"),
        (lambda s, z: evaluate_representation(s, z, dci_model="forest"), "dci_model must be"),
        (lambda s, z: dci(s, z, model="forest"), "model must be one of"),
        (lambda s, z: mig(s, z[:, :1]), "MIG needs at least 2 latents"),
        (lambda s, z: sap(s, z[:, :1]), "SAP needs at least 2 latents"),
        (lambda s, z: modularity_explicitness(s[:, :1], z), "at least 2 sources"),
        (lambda s, z: mig(s, z, num_bins=0), "num_bins must be >= 1"),
        (lambda s, z: dci(s, z, test_fraction=1.5), "test_fraction must be in"),
    ],
)
def test_bad_arguments_are_named(call, match: str) -> None:  # noqa: ANN001
    s = _sources(60)
    with pytest.raises(ValueError, match=match):
        call(s, _noisy(s, 0.1))
