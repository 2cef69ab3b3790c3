"""MIG, DCI, SAP, modularity and explicitness transcribed loop by loop after disentanglement_lib,
with scikit-learn and scipy estimators: the oracle for ``latentquant.metrics``' batched versions.

Matrices follow disentanglement_lib's (latents x sources) orientation here; the tests transpose.
"""

from __future__ import annotations

import numpy as np
import scipy.stats
from sklearn import linear_model, metrics, preprocessing


def histogram_discretize_ref(latents: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """(N, L) bin numbers: ``np.digitize`` against ``np.histogram``'s edges without the last, per latent."""
    out = np.zeros(latents.shape, dtype=np.int64)
    for j in range(latents.shape[1]):
        out[:, j] = np.digitize(latents[:, j], np.histogram(latents[:, j], num_bins)[1][:-1])
    return out


def discrete_mutual_info_ref(latent_codes: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """(L, S) plug-in MI by ``sklearn.metrics.mutual_info_score``, one pair at a time."""
    out = np.zeros((latent_codes.shape[1], sources.shape[1]))
    for j in range(latent_codes.shape[1]):
        for i in range(sources.shape[1]):
            out[j, i] = metrics.mutual_info_score(sources[:, i], latent_codes[:, j])
    return out


def mig_ref(sources: np.ndarray, latents: np.ndarray, num_bins: int = 20) -> float:
    """MIG: mean over sources of (top − second MI over latents) / H(source)."""
    m = discrete_mutual_info_ref(histogram_discretize_ref(latents, num_bins), sources)
    entropy = np.array(
        [metrics.mutual_info_score(sources[:, i], sources[:, i]) for i in range(sources.shape[1])]
    )
    ordered = np.sort(m, axis=0)[::-1]
    return float(np.mean((ordered[0] - ordered[1]) / entropy))


def modularity_ref(mutual_information: np.ndarray) -> float:
    """Ridgeway & Mozer modularity of an (L, S) MI matrix, latent by latent."""
    scores = []
    for row in mutual_information:
        squared = row**2
        peak = squared.max()
        if peak == 0:
            scores.append(0.0)
            continue
        scores.append(1.0 - (squared.sum() - peak) / (peak * (len(row) - 1)))
    return float(np.mean(scores))


def explicitness_ref(
    sources: np.ndarray, latents: np.ndarray, train: np.ndarray, test: np.ndarray
) -> tuple[float, float]:
    """(train, test) mean over sources of the class-averaged one-vs-rest ROC AUC of a default
    ``LogisticRegression`` on latents normalized with the training mean and std."""
    mean, std = latents[train].mean(axis=0), latents[train].std(axis=0)
    x = (latents - mean) / np.where(std > 0, std, 1.0)
    scores = np.zeros((2, sources.shape[1]))
    for i in range(sources.shape[1]):
        y = preprocessing.LabelEncoder().fit_transform(sources[:, i])
        model = linear_model.LogisticRegression().fit(x[train], y[train])
        for k, index in enumerate((train, test)):
            probabilities = model.predict_proba(x[index])
            aucs = []
            for column, c in enumerate(model.classes_):
                positive = y[index] == c
                if 0 < positive.sum() < positive.size:
                    aucs.append(metrics.roc_auc_score(positive, probabilities[:, column]))
            scores[k, i] = np.mean(aucs)
    return float(scores[0].mean()), float(scores[1].mean())


def dci_from_importance_ref(importance: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) of an (L, S) importance matrix with ``scipy.stats.entropy``."""
    per_code = 1.0 - scipy.stats.entropy(importance.T + 1e-11, base=importance.shape[1])
    per_factor = 1.0 - scipy.stats.entropy(importance + 1e-11, base=importance.shape[0])
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    code_share = weights.sum(axis=1) / weights.sum()
    factor_share = weights.sum(axis=0) / weights.sum()
    return float(np.sum(per_code * code_share)), float(np.sum(per_factor * factor_share))


def sap_continuous_ref(sources: np.ndarray, latents: np.ndarray) -> float:
    """SAP with continuous sources: squared correlation per (latent, source) pair by ``np.cov``."""
    score = np.zeros((latents.shape[1], sources.shape[1]))
    for j in range(latents.shape[1]):
        for i in range(sources.shape[1]):
            cov = np.cov(latents[:, j], sources[:, i], ddof=1)
            score[j, i] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[0, 0] > 1e-12 else 0.0
    ordered = np.sort(score, axis=0)
    return float(np.mean(ordered[-1] - ordered[-2]))
