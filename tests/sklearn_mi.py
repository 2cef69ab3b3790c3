"""scikit-learn's continuous-discrete MI matrix as the parity tests call it (tests/test_mi.py,
tests/test_mi_paths.py), one source at a time; the fixture that switches scikit-learn's jitter off,
``sklearn_without_noise``, is in conftest.py."""

from __future__ import annotations

import numpy as np
from sklearn.feature_selection import mutual_info_classif


def sklearn_cd(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """(L, S) ``mutual_info_classif`` of every latent column of x against every source column of y."""
    out = np.zeros((x.shape[1], y.shape[1]))
    for j in range(y.shape[1]):
        if np.unique(y[:, j], return_counts=True)[1].max() < 2:
            continue  # every label seen once: scikit-learn raises, we return 0
        out[:, j] = mutual_info_classif(x, y[:, j], n_neighbors=k)
    return out
