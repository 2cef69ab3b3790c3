"""Registration of ``latentquant::knn_mi_cd`` and ``latentquant::knn_mi_cc``: fake impls, GPU kernels, wrappers.

The ops take preprocessed float64 data (``latentquant.mi`` scales and jitters it) and return the (L, S)
matrix of k-NN mutual-information estimates. CPU: C++ (csrc/cpu/knn_mi.cpp). CUDA: the Triton launchers
of ``latentquant.triton_kernels.knn_mi`` (registered through ``register_triton_cuda``). Without the
extension, or on a device with no kernel, the oracles of ``latentquant.reference.knn_mi`` run.
No autograd: the estimators are not differentiable.
"""

from __future__ import annotations

import torch

from latentquant.ops import _registry
from latentquant.reference.knn_mi import knn_mi_cc_ref, knn_mi_cd_ref

if _registry.HAVE_C:

    @torch.library.register_fake("latentquant::knn_mi_cd")
    def _(x, y, n_neighbors):
        return x.new_empty((x.shape[1], y.shape[1]))

    @torch.library.register_fake("latentquant::knn_mi_cc")
    def _(x, y, n_neighbors):
        return x.new_empty((x.shape[1], y.shape[1]))


_registry.PUBLIC_OPS.extend(["knn_mi_cd", "knn_mi_cc"])
_registry.register_triton_module("knn_mi", ("knn_mi_cd", "knn_mi_cc"))


def _has_kernel(op: str, device: torch.device) -> bool:
    key = "CUDA" if device.type == "cuda" else device.type.upper()
    return _registry.has_kernel(op, key)


def knn_mi_cd(x: torch.Tensor, y: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    """Ross (2014) continuous-discrete MI of every (latent, source) pair, in nats.

    Args:
        x: (N, L, D) float64, already scaled and jittered; D > 1 for vector-valued latents.
        y: (N, S) int64 labels on x's device.
        n_neighbors: k, in [1, N - 1].

    Returns:
        (L, S) float64 on x's device.
    """
    if _has_kernel("knn_mi_cd", x.device):
        return torch.ops.latentquant.knn_mi_cd(x, y, n_neighbors)
    return knn_mi_cd_ref(x, y, n_neighbors)


def knn_mi_cc(x: torch.Tensor, y: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    """KSG-1 (max-norm) continuous-continuous MI of every (column of x, column of y) pair, in nats.

    Args:
        x: (N, L, Dx) float64, already scaled and jittered.
        y: (N, S, Dy) float64, already scaled and jittered.
        n_neighbors: k, in [1, N - 1].

    Returns:
        (L, S) float64 on x's device.
    """
    if _has_kernel("knn_mi_cc", x.device):
        return torch.ops.latentquant.knn_mi_cc(x, y, n_neighbors)
    return knn_mi_cc_ref(x, y, n_neighbors)
