"""k-nearest-neighbour mutual-information estimators (Ross 2014; Kraskov, Stoegbauer, Grassberger 2004)."""

from __future__ import annotations

import numpy as np
import torch

from latentquant.mi import _inputs
from latentquant.mi._inputs import ArrayLike
from latentquant.ops.knn_mi import knn_mi_cc, knn_mi_cd


def mutual_info_continuous_discrete(
    x: ArrayLike, y: ArrayLike, n_neighbors: int = 3, jitter: float = 1e-10, seed: int = 0
) -> np.ndarray | torch.Tensor:
    """Mutual information (nats) between each continuous column of ``x`` and each discrete column of ``y``.

    The estimator of Ross (2014) as scikit-learn's ``mutual_info_classif``: every column of ``x`` is divided
    by its std (no centering) and jittered; then per sample, r = distance to its k-th nearest neighbour of
    the same label (k = min(n_neighbors, label count - 1)) shrunk by one ulp, so "within r" is strict;
    m = number of samples of any label within r, itself included; labels seen once are dropped; and
    MI = psi(N) + <psi(k)> - <psi(N_label)> - <psi(m)>, clipped at 0. With ``jitter=0`` the result equals
    scikit-learn's on the same scaled data to rounding of the final means (about 1e-15 nats), distances and
    all. The deliberate difference: our jitter is drawn from ``seed`` (scikit-learn's default
    ``random_state=None`` is unseeded). If every label is seen once the estimate is 0 (scikit-learn raises).

    Args:
        x: (N,), (N, L) or, for vector-valued latents, (N, L, D); float or integer. Vector-valued latents
            use the Euclidean distance between their D components.
        y: (N,) or (N, S) integer (or bool, or string) class labels.
        n_neighbors: k, in [1, N - 1].
        jitter: relative noise scale (scikit-learn uses 1e-10); 0 turns the noise off.
        seed: seed of the jitter noise.

    Returns:
        (L, S) float64 nats; the L or S dimension is absent when x or y is given as (N,) (or (N, D) is
        not possible for x: a 2-D x is always L scalar latents). numpy when no argument is a tensor, else a
        tensor on their device.

    Raises:
        ValueError: NaN/Inf in x, float labels in y, mismatched N, n_neighbors outside [1, N - 1],
            negative jitter.
    """
    fn = "mutual_info_continuous_discrete"
    res = _inputs.result_for(fn, x=x, y=y)
    xt, x_dims = _inputs.continuous(x, fn, "x", res.device)
    yt, y_dims = _inputs.discrete(y, fn, "y", res.device)
    _inputs.check_lengths(fn, xt, yt)
    _inputs.check_knn(fn, xt.shape[0], n_neighbors, jitter)
    (xt,) = _inputs.preprocess([xt], jitter, seed)
    out = knn_mi_cd(xt, yt, int(n_neighbors))
    return res.wrap(out.reshape(x_dims + y_dims))


def mutual_info_continuous_continuous(
    x: ArrayLike, y: ArrayLike, n_neighbors: int = 3, jitter: float = 1e-10, seed: int = 0
) -> np.ndarray | torch.Tensor:
    """Mutual information (nats) between each continuous column of ``x`` and each continuous column of ``y``.

    KSG estimator 1 with the max-norm, as scikit-learn's ``mutual_info_regression``: both are divided by
    their std (no centering) and jittered; per sample r = max-norm distance to its k-th nearest neighbour
    in the joint space, shrunk by one ulp; n_x, n_y = samples within r in each marginal, itself included;
    MI = psi(N) + psi(k) - <psi(n_x)> - <psi(n_y)>, clipped at 0. With ``jitter=0`` it equals scikit-learn's
    estimate on the same scaled data to rounding of the final means. Our jitter is drawn from ``seed``.

    Args:
        x: (N,), (N, L) or (N, L, Dx) float or integer; a vector-valued column uses the max-norm over its
            components.
        y: (N,), (N, S) or (N, S, Dy), likewise.
        n_neighbors: k, in [1, N - 1].
        jitter: relative noise scale (scikit-learn uses 1e-10); 0 turns the noise off.
        seed: seed of the jitter noise (x's columns first, then y's).

    Returns:
        (L, S) float64 nats (a dimension is absent when its argument is (N,)); numpy when no argument is a
        tensor, else a tensor on their device.

    Raises:
        ValueError: NaN/Inf, mismatched N, n_neighbors outside [1, N - 1], negative jitter.
    """
    fn = "mutual_info_continuous_continuous"
    res = _inputs.result_for(fn, x=x, y=y)
    xt, x_dims = _inputs.continuous(x, fn, "x", res.device)
    yt, y_dims = _inputs.continuous(y, fn, "y", res.device)
    _inputs.check_lengths(fn, xt, yt)
    _inputs.check_knn(fn, xt.shape[0], n_neighbors, jitter)
    xt, yt = _inputs.preprocess([xt, yt], jitter, seed, targets=(False, True))
    out = knn_mi_cc(xt, yt, int(n_neighbors))
    return res.wrap(out.reshape(x_dims + y_dims))
