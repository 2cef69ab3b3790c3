"""InfoMEC built from scikit-learn, one estimator call per source: the oracle for tests and the
baseline for benchmarks/bench_infomec.py.

It follows the two conventions of DESIGN §6 with scikit-learn's own estimators:
``mutual_info_classif`` (Ross k-NN estimator) for continuous latents, ``mutual_info_score`` (plug-in)
for discrete latents and for source entropies, and ``LogisticRegression`` (multinomial, no penalty,
balanced class weights, L-BFGS, 100 iterations) scored with the unweighted ``log_loss`` for InfoE.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn import feature_selection, linear_model, metrics, preprocessing

_CONVENTIONS = ("paper", "standalone")


def _label_encode(columns: np.ndarray) -> np.ndarray:
    return np.stack(
        [preprocessing.LabelEncoder().fit_transform(columns[:, i]) for i in range(columns.shape[1])], axis=1
    )


def _logistic_cross_entropy(features: np.ndarray, labels: np.ndarray) -> float:
    model = linear_model.LogisticRegression(
        C=np.inf, tol=1e-4, fit_intercept=True, class_weight="balanced", solver="lbfgs", max_iter=100
    )
    model.fit(features, labels)
    return float(metrics.log_loss(labels, model.predict_proba(features), labels=model.classes_))


def _ratio(numerator: float, denominator: float) -> float:
    return (
        numerator / denominator
        if denominator != 0
        else (math.nan if numerator == 0 else math.copysign(math.inf, numerator))
    )


def _infom_infoc(pruned: np.ndarray, convention: str) -> tuple[float, float]:
    """InfoM and InfoC of an NMI matrix restricted to the active latents, one latent/source at a time.

    A 0/0 share is NaN; "paper" drops NaN latent shares from InfoM (the authors' ``isfinite`` mask),
    "standalone" keeps them; NaN source shares stay in InfoC in both (DESIGN §6, ``metrics.infomec``).
    """
    num_sources, num_active = pruned.shape
    if num_active == 0:
        return math.nan, math.nan
    latent_shares = [_ratio(pruned[:, j].max(), pruned[:, j].sum()) for j in range(num_active)]
    if convention == "paper":
        latent_shares = [v for v in latent_shares if math.isfinite(v)]
    source_shares = [_ratio(pruned[i].max(), pruned[i].sum()) for i in range(num_sources)]

    def normalized(shares: list[float], count: int) -> float:
        mean = math.fsum(shares) / len(shares) if shares else math.nan
        return _ratio(mean - 1 / count, 1 - 1 / count)

    return normalized(latent_shares, num_sources), normalized(source_shares, num_active)


def infomec_ref(
    sources: np.ndarray,
    latents: np.ndarray,
    discrete_latents: bool,
    convention: str = "paper",
    seed: int = 0,
) -> dict[str, Any]:
    """InfoMEC with one scikit-learn call per source (slow, independent of ``latentquant.mi``).

    Args:
        sources: ground-truth factors, any values (label-encoded per column).
        latents: the representation.
        discrete_latents: treat each latent as categorical (plug-in MI on its unique values).
            Integer-typed latents get one-hot InfoE features in both conventions.
        convention: ``"paper"`` or ``"standalone"`` (DESIGN §6).
        seed: ``random_state`` of ``mutual_info_classif`` (its 1e-10 jitter).

    Returns:
        dict with ``infom``, ``infoe``, ``infoc`` (floats), ``nmi`` (S, L) and ``active_latents`` (L,) bool.

    Shapes:
        sources (N, S), latents (N, L).
    """
    if convention not in _CONVENTIONS:
        raise ValueError(f"convention must be one of {_CONVENTIONS}, got {convention!r}")
    sources = np.asarray(sources)
    integer_latents = np.issubdtype(np.asarray(latents).dtype, np.integer)
    latents = np.asarray(latents, dtype=np.float64)
    codes = _label_encode(sources)
    num_sources, num_latents = codes.shape[1], latents.shape[1]

    nmi = np.zeros((num_sources, num_latents))
    if discrete_latents:
        latent_codes = _label_encode(latents)
        for i in range(num_sources):
            for j in range(num_latents):
                nmi[i, j] = metrics.mutual_info_score(codes[:, i], latent_codes[:, j])
    else:
        if convention == "paper":
            knn_input, n_neighbors = latents, 3
        else:
            knn_input, n_neighbors = preprocessing.StandardScaler().fit_transform(latents), 10
        for i in range(num_sources):
            nmi[i] = feature_selection.mutual_info_classif(
                knn_input, codes[:, i], discrete_features=False, n_neighbors=n_neighbors, random_state=seed
            )
    for i in range(num_sources):
        entropy = metrics.mutual_info_score(codes[:, i], codes[:, i])
        nmi[i] = nmi[i] / entropy if entropy > 0 else 0.0

    ranges = latents.max(axis=0) - latents.min(axis=0)
    if convention == "paper":
        active = ranges > ranges.max() / 8
    elif discrete_latents:
        active = ranges > 0
    else:
        active = ranges > ranges.max() / 20
    infom, infoc = _infom_infoc(nmi[:, active], convention)

    if integer_latents or (convention == "standalone" and discrete_latents):
        features = preprocessing.OneHotEncoder(sparse_output=False).fit_transform(latents)
    else:
        features = preprocessing.StandardScaler().fit_transform(latents)
    per_source = []
    for i in range(num_sources):
        predictive = _logistic_cross_entropy(features, codes[:, i])
        null = _logistic_cross_entropy(np.zeros_like(latents), codes[:, i])
        per_source.append((null - predictive) / null)
    return {
        "infom": infom,
        "infoe": float(np.mean(per_source)),
        "infoc": infoc,
        "nmi": nmi,
        "active_latents": active,
    }
