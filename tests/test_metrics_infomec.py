"""InfoMEC: against the scikit-learn reference in both conventions, known answers, input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentquant.metrics import infomec
from latentquant.metrics._inputs import encode_sources
from latentquant.metrics.infomec import active_latents, modularity_compactness
from latentquant.reference.infomec import infomec_ref

CARDINALITIES = (5, 4, 6)


def _sources(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, c, n) for c in CARDINALITIES], axis=1)


def _noisy(sources: np.ndarray, noise: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return sources / np.array(CARDINALITIES) + noise * rng.standard_normal(sources.shape)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    s = _sources(1200)
    informative = np.concatenate([_noisy(s, 0.15), 0.1 * rng.standard_normal((len(s), 2))], axis=1)
    widest = np.ptp(informative, axis=0).max()
    # a weak latent whose range is 1/12 of the widest: inactive under max/8, active under max/20
    weak = rng.uniform(0.0, widest / 12, (len(s), 1))
    continuous = np.concatenate([informative, weak], axis=1)
    return {"sources": s, "continuous": continuous, "discrete": np.round(continuous * 4) / 4}


@pytest.mark.parametrize("convention", ["paper", "standalone"])
@pytest.mark.parametrize("discrete", [False, True])
def test_matches_sklearn_reference(data: dict[str, np.ndarray], convention: str, discrete: bool) -> None:
    latents = data["discrete" if discrete else "continuous"]
    ours = infomec(data["sources"], latents, discrete, convention)
    ref = infomec_ref(data["sources"], latents, discrete, convention)
    # The k-NN estimates differ only through the 1e-10 jitter draws (ours seeded from torch, scikit-learn's
    # from numpy); plug-in MI is exact.
    np.testing.assert_allclose(ours.nmi, ref["nmi"], rtol=0, atol=1e-6 if not discrete else 1e-12)
    np.testing.assert_array_equal(ours.active_latents, ref["active_latents"])
    assert ours.infom == pytest.approx(ref["infom"], abs=1e-5)
    assert ours.infoc == pytest.approx(ref["infoc"], abs=1e-5)
    assert ours.infoe == pytest.approx(ref["infoe"], abs=0.02)
    assert 0.3 < ours.infoe < 0.95  # non-separable: the fit is not trivially 0 or 1


def test_conventions_differ_where_the_table_says(data: dict[str, np.ndarray]) -> None:
    s, z = data["sources"], data["continuous"]
    paper = infomec(s, z, False, "paper")
    standalone = infomec(s, z, False, "standalone")
    assert not paper.active_latents[-1] and standalone.active_latents[-1]
    assert paper.active_latents[:-1].all()
    assert paper.infoe == standalone.infoe  # continuous latents: same InfoE features in both
    discrete_paper = infomec(s, data["discrete"], True, "paper")
    discrete_standalone = infomec(s, data["discrete"], True, "standalone")
    np.testing.assert_array_equal(discrete_paper.nmi, discrete_standalone.nmi)
    assert discrete_paper.infoe != discrete_standalone.infoe  # standardized vs one-hot features


def test_standalone_discrete_active_is_nonzero_range() -> None:
    s = _sources(300)
    z = np.stack([s[:, 0], s[:, 1], np.where(np.arange(300) == 0, 1.0, 0.0)], axis=1).astype(float)
    assert active_latents(torch.from_numpy(z), True, "standalone").tolist() == [True, True, True]
    assert active_latents(torch.from_numpy(z), True, "paper").tolist() == [True, True, True]
    z[:, 2] = 0.0
    assert active_latents(torch.from_numpy(z), True, "standalone").tolist() == [True, True, False]


@pytest.mark.parametrize("convention", ["paper", "standalone"])
def test_perfect_representation_scores_one(convention: str) -> None:
    s = _sources(2000)
    result = infomec(s, s.astype(float), True, convention)
    # off-diagonal NMI is the plug-in bias of independent sources, ~(C1 - 1)(C2 - 1) / (2 N H) ~ 0.004
    assert result.infom > 0.98 and result.infoc > 0.98
    assert result.infoe > 0.97
    np.testing.assert_allclose(np.diag(result.nmi), 1.0, atol=1e-12)
    assert np.abs(result.nmi - np.diag(np.diag(result.nmi))).max() < 0.01


def test_constant_representation_is_undefined_but_not_explicit() -> None:
    s = _sources(500)
    result = infomec(s, np.zeros((500, 4)), False, "paper")
    # no active latent: InfoM and InfoC are 0/0, NaN as in the authors' code (tests/test_protocol.py)
    assert math.isnan(result.infom) and math.isnan(result.infoc)
    assert result.infoe == pytest.approx(0.0, abs=1e-6)  # ln C recomputed from float32 log-probabilities
    assert not result.active_latents.any()


def test_duplicated_latent_lowers_compactness_not_modularity() -> None:
    s = _sources(1500)
    z = _noisy(s, 0.05)
    single = infomec(s, z, False, "standalone")
    duplicated = infomec(s, np.concatenate([z, z[:, :1]], axis=1), False, "standalone")
    assert duplicated.infoc < single.infoc - 0.1
    assert duplicated.infom == pytest.approx(single.infom, abs=0.02)


def test_rotated_representation_lowers_modularity_not_explicitness() -> None:
    s = _sources(1500)
    z = _noisy(s, 0.05)
    rotation = np.linalg.qr(np.random.default_rng(3).standard_normal((3, 3)))[0]
    aligned = infomec(s, z, False, "standalone")
    rotated = infomec(s, z @ rotation, False, "standalone")
    assert rotated.infom < aligned.infom - 0.3
    assert rotated.infoc < aligned.infoc - 0.3
    assert rotated.infoe == pytest.approx(aligned.infoe, abs=1e-3)  # a linear map keeps linear explicitness


def test_formulas_on_a_hand_made_nmi() -> None:
    nmi = torch.tensor([[0.8, 0.2, 0.0, 0.5], [0.0, 0.6, 0.0, 0.5]], dtype=torch.float64)
    active = torch.tensor([True, True, True, False])
    infom, infoc = modularity_compactness(nmi, active)
    # latent 2 carries nothing: dropped ("paper"); latents 0, 1 shares 1.0 and 0.75, S = 2
    assert infom == pytest.approx(((1.0 + 0.75) / 2 - 0.5) / 0.5)
    # sources over 3 active latents: shares 0.8 and 1.0
    assert infoc == pytest.approx(((0.8 + 1.0) / 2 - 1 / 3) / (2 / 3))


def test_null_cross_entropy_is_log_classes() -> None:
    """CE_null (the reference's fit on zero features) is ln C, which InfoE uses in closed form."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    y = np.random.default_rng(4).choice(5, size=400, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    model = LogisticRegression(C=np.inf, class_weight="balanced").fit(np.zeros((400, 3)), y)
    assert log_loss(y, model.predict_proba(np.zeros((400, 3)))) == pytest.approx(math.log(5), abs=1e-12)


def test_torch_input_matches_numpy(data: dict[str, np.ndarray]) -> None:
    s, z = data["sources"], data["continuous"]
    a = infomec(s, z, False, "standalone")
    b = infomec(torch.from_numpy(s), torch.from_numpy(z).float(), False, "standalone")
    np.testing.assert_allclose(a.nmi, b.nmi, atol=1e-6)
    assert a.infoe == pytest.approx(b.infoe, abs=1e-4)
    assert isinstance(b.infom, float) and isinstance(b.nmi, np.ndarray)


def test_sources_of_any_values_are_label_encoded() -> None:
    s = _sources(400)
    z = _noisy(s, 0.1)
    shifted = infomec(s * 10.0 - 3.5, z, False)
    plain = infomec(s, z, False)
    np.testing.assert_array_equal(shifted.nmi, plain.nmi)
    assert encode_sources(s * 10.0 - 3.5).num_classes.tolist() == list(CARDINALITIES)


@pytest.mark.parametrize(
    ("sources", "latents", "match"),
    [
        (np.zeros((10, 2)), np.zeros((9, 2)), "same number of samples"),
        (np.zeros(10), np.zeros((10, 2)), "sources must be 2-D"),
        (np.arange(20).reshape(10, 2), np.full((10, 2), np.nan), "NaN or Inf"),
        (np.stack([np.arange(10), np.zeros(10)], 1), np.ones((10, 2)), r"columns \[1\] are constant"),
        (np.arange(20).reshape(10, 2), np.array([["a", "b"]] * 10), "real numbers"),
    ],
)
def test_bad_input_is_named(sources: np.ndarray, latents: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        infomec(sources, latents, False)


def test_bad_convention() -> None:
    with pytest.raises(ValueError, match="convention must be one of"):
        infomec(np.arange(20).reshape(10, 2), np.ones((10, 2)), False, convention="papr")


def test_thread_cap_is_restored_and_checked() -> None:
    s = _sources(200)
    before = torch.get_num_threads()
    capped = infomec(s, _noisy(s, 0.1), False, num_threads=1)
    assert torch.get_num_threads() == before
    free = infomec(s, _noisy(s, 0.1), False, num_threads=None)
    np.testing.assert_array_equal(capped.nmi, free.nmi)
    with pytest.raises(ValueError, match="num_threads must be >= 1 or None, got 0"):
        infomec(s, _noisy(s, 0.1), False, num_threads=0)
