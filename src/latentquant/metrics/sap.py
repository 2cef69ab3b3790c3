"""SAP, the Separated Attribute Predictability score (Kumar et al. 2018), as disentanglement_lib.

A score matrix over (source, latent) pairs: for discrete sources, the held-out accuracy of scikit-learn's
``LinearSVC(C=0.01, class_weight="balanced")`` predicting the source from that single latent (fit on
the training split); for continuous sources, the squared correlation of the pair (0 for a latent with
variance <= 1e-12). SAP = mean over sources of (best − second best score over latents).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn import svm
from sklearn.exceptions import ConvergenceWarning

from latentquant.metrics._inputs import EncodedSources, check_pair, encode_sources, train_test_split


@dataclass
class SAPResult:
    """SAP score.

    Attributes:
        sap: mean gap in [0, 1].
        score: (S, L) predictability of each source from each single latent.
    """

    sap: float
    score: np.ndarray

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (arrays as nested lists)."""
        return {"sap": self.sap, "score": self.score.tolist()}


def _discrete_scores(codes: np.ndarray, x: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    score = np.zeros((codes.shape[1], x.shape[1]))
    for i in range(codes.shape[1]):
        for j in range(x.shape[1]):
            classifier = svm.LinearSVC(C=0.01, class_weight="balanced")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                classifier.fit(x[train, j : j + 1], codes[train, i])
            score[i, j] = np.mean(classifier.predict(x[test, j : j + 1]) == codes[test, i])
    return score


def _continuous_scores(sources: np.ndarray, x: np.ndarray) -> np.ndarray:
    centered_s = sources - sources.mean(axis=0)
    centered_x = x - x.mean(axis=0)
    covariance = centered_s.T @ centered_x / (x.shape[0] - 1)
    var_s = centered_s.var(axis=0, ddof=1)
    var_x = centered_x.var(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = covariance**2 / (var_s[:, None] * var_x[None, :])
    return np.where(var_x[None, :] > 1e-12, score, 0.0)


def sap(
    sources: np.ndarray | torch.Tensor,
    latents: np.ndarray | torch.Tensor,
    continuous_sources: bool = False,
    test_fraction: float = 1 / 3,
    seed: int = 0,
) -> SAPResult:
    """SAP score of a representation (disentanglement_lib's procedure).

    Args:
        sources: ground-truth factors; label-encoded per column unless ``continuous_sources``; none constant.
        latents: the representation, L >= 2.
        continuous_sources: score pairs by squared correlation on all samples instead of classifiers.
        test_fraction: share of samples the classifiers are scored on (one third, as disentanglement_lib's
            10,000 / 5,000).
        seed: seed of the split.

    Returns:
        :class:`SAPResult`.

    Shapes:
        sources (N, S), latents (N, L).
    """
    sources, latents = check_pair(sources, latents, continuous_sources)
    if continuous_sources:
        if latents.shape[1] < 2:
            raise ValueError(f"SAP needs at least 2 latents, got {latents.shape[1]}")
        values = sources.detach().cpu().numpy() if isinstance(sources, torch.Tensor) else np.asarray(sources)
        values = values.astype(np.float64)
        constant = np.flatnonzero(values.std(axis=0) == 0).tolist()
        if constant:
            raise ValueError(
                f"sources columns {constant} are constant (one value): drop them before evaluating"
            )
        return _sap_from_score(_continuous_scores(values, latents.cpu().numpy()))
    encoded = encode_sources(sources, device=torch.device("cpu"))
    return _sap_encoded(encoded, latents, test_fraction, seed)


def _sap_encoded(
    encoded: EncodedSources, latents: torch.Tensor, test_fraction: float, seed: int
) -> SAPResult:
    if latents.shape[1] < 2:
        raise ValueError(f"SAP needs at least 2 latents, got {latents.shape[1]}")
    train, test = train_test_split(latents.shape[0], test_fraction, seed)
    return _sap_from_score(_discrete_scores(encoded.codes.cpu().numpy(), latents.cpu().numpy(), train, test))


def _sap_from_score(score: np.ndarray) -> SAPResult:
    top = np.sort(score, axis=1)
    return SAPResult(sap=float(np.mean(top[:, -1] - top[:, -2])), score=score)
