import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Without a GPU the Triton kernels run in Triton's interpreter; the variable must be set before triton
# is first imported (which `import latentquant` may do), so it is set here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def sklearn_without_noise(monkeypatch):
    """scikit-learn's k-NN MI estimators with their jitter switched off, so they run on exactly the data our
    estimators scale (tests/test_mi.py, tests/test_mi_paths.py; tests/sklearn_mi.py)."""
    import numpy as np
    import sklearn.feature_selection._mutual_info as sk_mi

    class NoNoise(np.random.RandomState):
        def standard_normal(self, size=None):
            return np.zeros(size)

    monkeypatch.setattr(sk_mi, "check_random_state", lambda seed: NoNoise(0))
