"""DCI: disentanglement, completeness, informativeness (Eastwood & Williams 2018).

``model="gbt"`` is disentanglement_lib's procedure: per source, scikit-learn's
``GradientBoostingClassifier()`` (default settings) fit on the training split; its
``feature_importances_`` form the importance matrix and its accuracies the informativeness.
``model="linear"`` is the fast variant: one multinomial logistic regression per source (scikit-learn's
defaults: L2, C = 1) on standardized latents, all sources batched in torch; a latent's importance for a
source is the mean over classes of its |coefficient|.

From an importance matrix R (S sources x L latents, non-negative):
disentanglement = sum_j rho_j (1 − H_S(R[:, j])), rho_j = R[:, j].sum() / R.sum();
completeness = sum_i rho_i (1 − H_L(R[i, :])), rho_i = R[i, :].sum() / R.sum();
H_K is the entropy in base K of the normalized vector (1e-11 added to every entry, as disentanglement_lib).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn import ensemble

from latentquant._progress import progress
from latentquant.metrics._inputs import (
    EncodedSources,
    check_pair,
    encode_sources,
    standardize,
    train_test_split,
)
from latentquant.metrics.logistic import fit_logistic, predict_logistic

DCI_MODELS = ("gbt", "linear")


@dataclass
class DCIResult:
    """DCI scores.

    Attributes:
        disentanglement: in [0, 1].
        completeness: in [0, 1].
        informativeness_train: mean accuracy over sources on the training split.
        informativeness_test: mean accuracy over sources on the held-out split.
        importance: (S, L) importance of each latent for each source.
        model: ``"gbt"`` or ``"linear"``.
    """

    disentanglement: float
    completeness: float
    informativeness_train: float
    informativeness_test: float
    importance: np.ndarray
    model: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (arrays as nested lists)."""
        return {
            "disentanglement": self.disentanglement,
            "completeness": self.completeness,
            "informativeness_train": self.informativeness_train,
            "informativeness_test": self.informativeness_test,
            "importance": self.importance.tolist(),
            "model": self.model,
        }


def _weighted_one_minus_entropy(matrix: np.ndarray) -> float:
    """sum over columns of (column share of the total) * (1 − entropy of the column in base #rows)."""
    probabilities = (matrix + 1e-11) / (matrix + 1e-11).sum(axis=0, keepdims=True)
    entropy = -(probabilities * np.log(probabilities)).sum(axis=0) / np.log(matrix.shape[0])
    weights = matrix if matrix.sum() > 0 else np.ones_like(matrix)
    return float(np.sum((1.0 - entropy) * weights.sum(axis=0) / weights.sum()))


def disentanglement_completeness(importance: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) of an (S, L) non-negative importance matrix; needs S, L >= 2."""
    importance = np.asarray(importance, dtype=np.float64)
    if importance.ndim != 2 or min(importance.shape) < 2:
        raise ValueError(f"importance must be (S, L) with S, L >= 2, got shape {importance.shape}")
    if (importance < 0).any():
        raise ValueError("importance must be non-negative")
    return _weighted_one_minus_entropy(importance), _weighted_one_minus_entropy(importance.T)


def _gbt(
    codes: np.ndarray,
    x: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    seed: int,
    show_progress: bool | None,
):
    importance = np.zeros((codes.shape[1], x.shape[1]))
    accuracy = np.zeros((2, codes.shape[1]))
    for i in progress(
        range(codes.shape[1]), "DCI: gradient-boosted trees, one per source", enabled=show_progress
    ):
        model = ensemble.GradientBoostingClassifier(random_state=seed).fit(x[train], codes[train, i])
        importance[i] = np.abs(model.feature_importances_)
        for k, index in enumerate((train, test)):
            accuracy[k, i] = np.mean(model.predict(x[index]) == codes[index, i])
    return importance, accuracy.mean(axis=1)


def _linear(encoded: EncodedSources, latents: torch.Tensor, train: np.ndarray, test: np.ndarray):
    x = latents.cpu()
    x = standardize(x, rows=train)
    codes = encoded.codes.cpu()
    fit = fit_logistic(
        x[train], codes[train], num_classes=encoded.num_classes.cpu(), class_weight=None, l2=1.0 / len(train)
    )
    real = torch.arange(fit.weights.shape[1])[None, :] < encoded.num_classes.cpu()[:, None]
    coefficients = fit.weights[:, :, :-1].abs() * real[:, :, None]
    importance = (coefficients.sum(dim=1) / real.sum(dim=1, keepdim=True)).numpy()
    accuracy = [
        float((predict_logistic(fit, x[index]) == codes[index]).double().mean()) for index in (train, test)
    ]
    return importance, np.array(accuracy)


def dci(
    sources: np.ndarray | torch.Tensor,
    latents: np.ndarray | torch.Tensor,
    model: str = "gbt",
    test_fraction: float = 1 / 3,
    seed: int = 0,
    show_progress: bool | None = None,
) -> DCIResult:
    """Disentanglement, completeness and informativeness of a representation.

    Args:
        sources: ground-truth factors, any values; each column label-encoded, none constant; S >= 2.
        latents: the representation, L >= 2.
        model: ``"gbt"`` (gradient-boosted trees, disentanglement_lib; slow) or ``"linear"`` (batched
            logistic regression; fast).
        test_fraction: share of samples held out for the test informativeness (one third, as
            disentanglement_lib's 10,000 / 5,000).
        seed: seed of the split and of the trees.
        show_progress: a bar over the per-source tree fits (``"gbt"``); None: only when stderr is a terminal.

    Returns:
        :class:`DCIResult`.

    Shapes:
        sources (N, S), latents (N, L).
    """
    sources, latents = check_pair(sources, latents)
    encoded = encode_sources(sources, device=torch.device("cpu"))
    return _dci_encoded(encoded, latents, model, test_fraction, seed, show_progress)


def _dci_encoded(
    encoded: EncodedSources,
    latents: torch.Tensor,
    model: str,
    test_fraction: float,
    seed: int,
    show_progress: bool | None = None,
) -> DCIResult:
    if model not in DCI_MODELS:
        raise ValueError(f"model must be one of {DCI_MODELS}, got {model!r}")
    train, test = train_test_split(latents.shape[0], test_fraction, seed)
    if model == "gbt":
        codes = encoded.codes.cpu().numpy()
        importance, accuracy = _gbt(codes, latents.cpu().numpy(), train, test, seed, show_progress)
    else:
        importance, accuracy = _linear(encoded, latents, train, test)
    disentanglement, completeness = disentanglement_completeness(importance)
    return DCIResult(
        disentanglement=disentanglement,
        completeness=completeness,
        informativeness_train=float(accuracy[0]),
        informativeness_test=float(accuracy[1]),
        importance=importance,
        model=model,
    )
