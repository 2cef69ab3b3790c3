"""Triton k-NN MI launchers (interpreter, CPU tensors) against knn_mi_cd_ref / knn_mi_cc_ref, bit for bit."""

import numpy as np
import pytest
import torch

pytest.importorskip("triton")
from kernel_utils import poisoned_allocations  # noqa: E402
from latentquant.triton_kernels.knn_mi import knn_mi_cc_triton, knn_mi_cd_triton  # noqa: E402

from latentquant.reference.knn_mi import knn_mi_cc_ref, knn_mi_cd_ref  # noqa: E402


def _data(seed: int, n: int, lat: int, dim: int, classes: int, offset: float):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, (n, 2))
    x = rng.standard_normal((n, lat, dim)) + offset + 0.8 * y[:, :lat, None]
    x[: n // 4] = np.round(x[: n // 4])  # ties
    y[0, 0] = 10_000  # a label seen once
    return torch.from_numpy(x), torch.from_numpy(y)


@pytest.mark.parametrize(
    ("n", "dim", "classes", "k", "offset"),
    [(40, 1, 3, 3, 0.0), (57, 1, 12, 4, 1e5), (16, 1, 2, 2, -30.0), (33, 2, 4, 3, 0.0), (25, 3, 6, 2, 1e3)],
)
def test_knn_mi_cd_triton(n, dim, classes, k, offset):
    x, y = _data(n + dim, n, 2, dim, classes, offset)
    with poisoned_allocations():
        got = knn_mi_cd_triton(x, y, k)
    want = knn_mi_cd_ref(x, y, k)
    assert (want > 0).any()
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("n", "dx", "dy", "k"), [(31, 1, 1, 3), (20, 2, 1, 1), (16, 1, 3, 5)])
def test_knn_mi_cc_triton(n, dx, dy, k):
    rng = np.random.default_rng(n)
    x = torch.from_numpy(rng.standard_normal((n, 2, dx)))
    y = torch.from_numpy(np.round(rng.standard_normal((n, 2, dy)) * 2) + x[:, :, :1].numpy())
    with poisoned_allocations():
        got = knn_mi_cc_triton(x, y, k)
    want = knn_mi_cc_ref(x, y, k)
    assert (want > 0).any()
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
