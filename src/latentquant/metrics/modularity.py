"""Modularity and explicitness (Ridgeway & Mozer 2018) as disentanglement_lib computes them.

Modularity: from the (S, L) MI between sources and histogram-binned latents, each latent scores
1 − (sum_i MI² − max_i MI²) / (max_i MI² · (S − 1)) (0 for a latent with no information); the mean over
latents. Explicitness: per source, a multinomial logistic regression with scikit-learn's defaults
(L2, C = 1, no class weights) on latents normalized with the training mean and std, scored by the
one-vs-rest ROC AUC averaged over classes, on the training and on the held-out samples. All sources are
fit at once by the batched solver of :mod:`latentquant.metrics.logistic`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn import metrics as sk_metrics

from latentquant.metrics._inputs import (
    EncodedSources,
    check_pair,
    encode_sources,
    standardize,
    train_test_split,
)
from latentquant.metrics.logistic import fit_logistic, predict_proba_logistic
from latentquant.metrics.mig import binned_mutual_information


@dataclass
class ModularityExplicitnessResult:
    """Modularity and explicitness scores.

    Attributes:
        modularity: mean per-latent modularity in [0, 1].
        explicitness_train: mean ROC AUC over sources on the training samples.
        explicitness_test: mean ROC AUC over sources on the held-out samples.
        per_latent_modularity: (L,).
        mutual_information: (S, L) MI (nats) between sources and binned latents.
    """

    modularity: float
    explicitness_train: float
    explicitness_test: float
    per_latent_modularity: np.ndarray
    mutual_information: np.ndarray

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (arrays as nested lists)."""
        return {
            "modularity": self.modularity,
            "explicitness_train": self.explicitness_train,
            "explicitness_test": self.explicitness_test,
            "per_latent_modularity": self.per_latent_modularity.tolist(),
            "mutual_information": self.mutual_information.tolist(),
        }


def modularity_from_mutual_information(mutual_information: torch.Tensor) -> np.ndarray:
    """(L,) per-latent modularity from an (S, L) MI matrix; needs S >= 2."""
    num_sources = mutual_information.shape[0]
    if num_sources < 2:
        raise ValueError(f"modularity needs at least 2 sources, got {num_sources}")
    squared = mutual_information.square()
    peak = squared.amax(dim=0)
    deviation = (squared.sum(dim=0) - peak) / torch.where(peak > 0, peak * (num_sources - 1), 1.0)
    return torch.where(peak > 0, 1.0 - deviation, 0.0).cpu().numpy()


def _mean_auc(codes: np.ndarray, probabilities: np.ndarray, num_classes: np.ndarray) -> float:
    """Mean over sources of the class-averaged one-vs-rest AUC; classes absent from (or filling) a split are skipped."""
    per_source = []
    for i in range(codes.shape[1]):
        aucs = []
        for c in range(int(num_classes[i])):
            positive = codes[:, i] == c
            if 0 < positive.sum() < positive.size:
                aucs.append(sk_metrics.roc_auc_score(positive, probabilities[:, i, c]))
        per_source.append(np.mean(aucs) if aucs else 0.5)
    return float(np.mean(per_source))


def explicitness_scores(
    encoded: EncodedSources, latents: torch.Tensor, test_fraction: float = 1 / 3, seed: int = 0
) -> tuple[float, float]:
    """(train, test) explicitness: mean one-vs-rest ROC AUC of an L2 logistic regression per source.

    Shapes:
        encoded.codes (N, S), latents (N, L).
    """
    train, test = train_test_split(latents.shape[0], test_fraction, seed)
    codes = encoded.codes.cpu()
    x = latents.cpu()
    x = standardize(x, rows=train)
    fit = fit_logistic(
        x[train], codes[train], num_classes=encoded.num_classes.cpu(), class_weight=None, l2=1.0 / len(train)
    )
    num_classes = encoded.num_classes.cpu().numpy()
    scores = []
    for index in (train, test):
        probabilities = predict_proba_logistic(fit, x[index]).numpy()
        scores.append(_mean_auc(codes[index].numpy(), probabilities, num_classes))
    return scores[0], scores[1]


def modularity_explicitness(
    sources: np.ndarray | torch.Tensor,
    latents: np.ndarray | torch.Tensor,
    num_bins: int = 20,
    test_fraction: float = 1 / 3,
    seed: int = 0,
) -> ModularityExplicitnessResult:
    """Modularity and explicitness of a representation (disentanglement_lib's procedure).

    Args:
        sources: ground-truth factors, any values; each column label-encoded, none constant; S >= 2.
        latents: the representation.
        num_bins: equal-width bins per latent for the MI (disentanglement_lib: 20).
        test_fraction: share of samples held out for the test explicitness (disentanglement_lib uses
            10,000 training and 5,000 test points: one third).
        seed: seed of the split.

    Returns:
        :class:`ModularityExplicitnessResult`.

    Shapes:
        sources (N, S), latents (N, L).
    """
    sources, latents = check_pair(sources, latents)
    encoded = encode_sources(sources, device=torch.device("cpu"))
    return _modularity_explicitness_encoded(
        encoded, latents, binned_mutual_information(encoded, latents, num_bins), test_fraction, seed
    )


def _modularity_explicitness_encoded(
    encoded: EncodedSources,
    latents: torch.Tensor,
    mutual_information: torch.Tensor,
    test_fraction: float,
    seed: int,
) -> ModularityExplicitnessResult:
    per_latent = modularity_from_mutual_information(mutual_information)
    train_score, test_score = explicitness_scores(encoded, latents, test_fraction, seed)
    return ModularityExplicitnessResult(
        modularity=float(per_latent.mean()),
        explicitness_train=train_score,
        explicitness_test=test_score,
        per_latent_modularity=per_latent,
        mutual_information=mutual_information.cpu().numpy(),
    )
