"""Metrics refuse to be silently wrong: bad sources, swapped arguments, latents the scaling erases."""

import warnings

import numpy as np
import pytest
import torch

from latentquant import mi
from latentquant.metrics import dci, evaluate_representation, infomec, mig


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    sources = rng.integers(0, 4, (n, 2))
    latents = np.concatenate([sources + 0.1 * rng.normal(size=(n, 2)), rng.normal(size=(n, 1))], axis=1)
    return sources, latents


def test_requires_grad_latents_are_detached():
    sources, latents = _data()
    z = torch.tensor(latents, requires_grad=True)
    result = infomec(sources, z, False)  # a RuntimeError from the InfoE worker thread before
    reference = infomec(sources, latents, False)
    assert result.infom == reference.infom and result.infoe == reference.infoe
    assert mig(sources, z).mig == mig(sources, latents).mig


def test_continuous_sources_are_refused_with_binning_advice():
    sources, latents = _data()
    continuous = np.random.default_rng(1).normal(size=(400, 2))  # not whole numbers, all distinct
    with pytest.raises(
        ValueError, match=r"sources columns \[0, 1\] look continuous .*400 distinct of 400.*np.digitize"
    ):
        infomec(continuous, latents, False)
    with pytest.raises(ValueError, match="look continuous"):
        mig(torch.tensor(continuous), latents)
    # a float factor on a grid (few values) is fine, and so are factor indices stored as floats
    infomec(sources.astype(np.float64) * 0.25, latents, False)
    mig(np.stack([np.arange(400.0), sources[:, 0]], 1), latents)


def test_swapped_arguments():
    sources, latents = _data()
    with pytest.raises(
        ValueError, match=r"look continuous.*did you swap the arguments\? The order is \(sources, latents\)"
    ):
        infomec(latents, sources, False)
    ids = np.arange(400)[:, None] * np.ones(
        (1, 2), dtype=np.int64
    )  # integer columns with 400 distinct values
    with pytest.warns(UserWarning, match="did you swap the arguments"):
        mig(ids, sources)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mig(sources, latents)
        # a 40-valued factor (MPI3D's positions) against 3-valued latents is a real evaluation, not a swap
        rng = np.random.default_rng(2)
        factor = rng.integers(0, 40, (400, 2))
        mig(factor, rng.integers(0, 3, (400, 2)))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_non_finite_sources_are_refused(as_tensor):
    sources, latents = _data()
    bad = sources.astype(np.float64)
    bad[5, 1] = np.nan
    if as_tensor:
        bad = torch.tensor(bad)
    with pytest.raises(ValueError, match=r"sources contain NaN or Inf \(columns \[1\]\)"):
        infomec(bad, latents, False)
    with pytest.raises(ValueError, match=r"sources contain NaN or Inf"):
        evaluate_representation(bad, latents, metrics=["mig"])


def test_latents_the_scaling_erases_are_named():
    sources, latents = _data()
    flat = latents.copy()
    flat[:, 1] = 1e12 + 1e-3 * latents[:, 1]  # spread 1e-15 of the magnitude: the jitter drowns it
    with pytest.warns(UserWarning, match=r"columns \[1\] of x are so flat"):
        result = infomec(sources, flat, False)
    assert result.nmi[:, 1].max() < 0.05  # the MI is indeed lost
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reference = infomec(sources, latents, False)
        mi.mutual_info_continuous_discrete(latents, sources)
        # so large that the variance overflows: scaled as if it did not (all 0 before), no warning needed
        huge = latents.copy()
        huge[:, 2] *= 1e160
        for convention in ("paper", "standalone"):
            expected = reference if convention == "paper" else infomec(sources, latents, False, convention)
            result = infomec(sources, huge, False, convention)
            np.testing.assert_allclose(result.nmi, expected.nmi, rtol=0, atol=1e-12)
            assert result.infoe == pytest.approx(expected.infoe, abs=1e-6)


def test_mig_of_finite_but_huge_latents():
    sources, latents = _data()
    huge = latents.copy()
    huge[:, 0] = np.where(latents[:, 0] > 1.5, 1.7e308, -1.7e308)  # finite; max - min overflows
    # "latents contain NaN or Inf" / numpy's "Too many bins" before; now binned exactly as the scaled copy
    result = mig(sources, huge)
    scaled = latents.copy()
    scaled[:, 0] = np.where(latents[:, 0] > 1.5, 1.0, -1.0)
    np.testing.assert_array_equal(result.mutual_information, mig(sources, scaled).mutual_information)
    if np.finfo(np.longdouble).max > np.finfo(np.float64).max:  # x86-64 Linux: 80-bit long double
        beyond = latents.astype(np.longdouble)
        beyond[:, 1] *= np.longdouble(
            "1e400"
        )  # finite in long double, not in float64: said so, not "NaN or Inf"
        with pytest.raises(ValueError, match=r"latents columns \[1\] hold finite \w+ values beyond float64"):
            mig(sources, beyond)
    huge[3, 0] = np.inf
    with pytest.raises(ValueError, match=r"latents contain NaN or Inf \(columns \[0\]\)"):
        mig(sources, huge)


def test_gbt_dci_draws_no_bar_off_a_terminal(capsys):
    sources, latents = _data(n=120)
    dci(sources, latents)
    assert capsys.readouterr().err == ""


def test_progress_bars_only_when_asked_or_on_a_terminal(capsys):
    sources, latents = _data(n=120)
    evaluate_representation(sources, latents, metrics=["infomec", "dci"])
    assert capsys.readouterr().err == ""  # stderr is not a terminal here
    evaluate_representation(sources, latents, metrics=["infomec", "dci"], show_progress=True)
    err = capsys.readouterr().err
    assert "metrics: dci" in err and "DCI: gradient-boosted trees, one per source" in err


def test_infomec_defaults_to_continuous_latents_like_evaluate_representation():
    sources, latents = _data()
    default = infomec(sources, latents)
    assert default.nmi.tolist() == infomec(sources, latents, False).nmi.tolist()
    assert default.infom == evaluate_representation(sources, latents, metrics=["infomec"]).infomec.infom
