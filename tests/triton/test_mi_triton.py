"""Triton k-NN MI launchers (compiled on a GPU, else the interpreter on CPU tensors) against
knn_mi_cd_ref / knn_mi_cc_ref (computed on the CPU) at 1e-12; the launch grid and the argument checks."""

import numpy as np
import pytest
import torch
from kernel_utils import poisoned_allocations
from latentquant.triton_kernels.knn_mi import (
    MAX_GRID_Y,
    knn_mi_cc_triton,
    knn_mi_cd_triton,
    launch_grids,
)
from triton_ops import DEVICE

from latentquant.reference.knn_mi import knn_mi_cc_ref, knn_mi_cd_ref


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
        got = knn_mi_cd_triton(x.to(DEVICE), y.to(DEVICE), k)
    want = knn_mi_cd_ref(x, y, k)
    assert (want > 0).any() and got.device.type == DEVICE
    torch.testing.assert_close(got.cpu(), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("n", "dx", "dy", "k"), [(31, 1, 1, 3), (20, 2, 1, 1), (16, 1, 3, 5)])
def test_knn_mi_cc_triton(n, dx, dy, k):
    rng = np.random.default_rng(n)
    x = torch.from_numpy(rng.standard_normal((n, 2, dx)))
    y = torch.from_numpy(np.round(rng.standard_normal((n, 2, dy)) * 2) + x[:, :, :1].numpy())
    with poisoned_allocations():
        got = knn_mi_cc_triton(x.to(DEVICE), y.to(DEVICE), k)
    want = knn_mi_cc_ref(x, y, k)
    assert (want > 0).any()
    torch.testing.assert_close(got.cpu(), want, atol=1e-12, rtol=0)


def test_query_blocks_on_grid_axis_0():
    """Axis 1 holds at most 65,535 programs: 10M samples in blocks of 128 (78,125 query blocks) and
    70,000 pairs must both fit (before: query blocks on axis 1, launches failed above ~8.4M samples)."""
    [(p0, grid)] = launch_grids(640, 10_000_000, 128)
    assert p0 == 0 and grid == (78_125, 640)
    launches = launch_grids(70_000, 1000, 32)
    assert [p0 for p0, _ in launches] == [0, MAX_GRID_Y]
    assert [g for _, g in launches] == [(32, MAX_GRID_Y), (32, 70_000 - MAX_GRID_Y)]
    assert launch_grids(0, 10, 32) == []


def test_more_pairs_than_one_launch(monkeypatch):
    """Pairs split over several launches give the same estimates (a small MAX_GRID_Y forces the split)."""
    import latentquant.triton_kernels.knn_mi as knn

    x, y = _data(3, 24, 2, 1, 3, 0.0)
    want = knn_mi_cd_ref(x, y, 3)
    monkeypatch.setattr(knn, "MAX_GRID_Y", 3)
    assert len(knn.launch_grids(4, 24, 128)) == 2
    torch.testing.assert_close(
        knn_mi_cd_triton(x.to(DEVICE), y.to(DEVICE), 3).cpu(), want, atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_raise(bad):
    x, y = _data(1, 20, 1, 1, 2, 0.0)
    xb = x.clone()
    xb[3, 0, 0] = bad
    with pytest.raises(ValueError, match="knn_mi_cd: x contains NaN or Inf"):
        knn_mi_cd_triton(xb.to(DEVICE), y.to(DEVICE), 3)
    yc = x.clone()
    yc[5, 0, 0] = bad
    with pytest.raises(ValueError, match="knn_mi_cc: y contains NaN or Inf"):
        knn_mi_cc_triton(x.to(DEVICE), yc.to(DEVICE), 3)


def test_bad_arguments_name_the_op():
    x, y = _data(2, 20, 1, 1, 2, 0.0)
    x, y = x.to(DEVICE), y.to(DEVICE)
    with pytest.raises(ValueError, match=r"knn_mi_cd: n_neighbors must be in \[1, N - 1\]"):
        knn_mi_cd_triton(x, y, 20)
    with pytest.raises(ValueError, match="knn_mi_cd: x and y must have the same number of samples"):
        knn_mi_cd_triton(x, y[:5], 3)
    with pytest.raises(ValueError, match="knn_mi_cc: y must be float64"):
        knn_mi_cc_triton(x, y[:, :, None], 3)
