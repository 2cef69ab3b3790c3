"""Registration of ``latentquant::logistic_loss_grad``: fake impl and the wrapper that picks kernel or oracle.

The op evaluates the weighted softmax cross-entropy of a batch of multinomial logistic regressions on
shared features and its gradient, the inner step of the batched L-BFGS of
:mod:`latentquant.metrics.logistic`. CPU: C++ (csrc/cpu/logistic.cpp), one fused pass over blocks of
samples. Other devices (CUDA) and builds without the extension: the torch composition of
``latentquant.reference.logistic``. No autograd: the op returns its own gradient.
"""

from __future__ import annotations

import torch

from latentquant.ops import _registry
from latentquant.reference.logistic import logistic_loss_grad_ref

_OP = "logistic_loss_grad"

if _registry.HAVE_C:

    @torch.library.register_fake("latentquant::logistic_loss_grad")
    def _(x1t, weights, labels, sample_weight):
        return weights.new_empty(weights.shape[0]), torch.empty_like(
            weights, memory_format=torch.contiguous_format
        )


_registry.PUBLIC_OPS.append(_OP)

# Dispatch keys with a compiled kernel, looked up once: the wrapper then costs one set lookup per call,
# and torch.compile traces it without a graph break.
_KERNEL_KEYS = frozenset(key for key in ("CPU", "CUDA") if _registry.has_kernel(_OP, key))


def _check_ref_inputs(
    x1t: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, sample_weight: torch.Tensor
) -> None:
    """On the oracle path, the shape and dtype errors the kernel raises (the label range is not checked:
    that would synchronize a GPU on every call)."""
    op = _OP
    for name, t, rank in (
        ("x1t", x1t, 2),
        ("weights", weights, 3),
        ("labels", labels, 2),
        ("sample_weight", sample_weight, 2),
    ):
        if t.dim() != rank:
            raise ValueError(f"{op}: {name} must have {rank} dimensions, got shape {list(t.shape)}")
    if weights.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{op}: weights must be float32 or float64, got {weights.dtype}")
    for name, t in (("x1t", x1t), ("sample_weight", sample_weight)):
        if t.dtype != weights.dtype:
            raise ValueError(f"{op}: {name} must have weights' dtype {weights.dtype}, got {t.dtype}")
    if labels.dtype != torch.int64:
        raise ValueError(f"{op}: labels must be int64, got {labels.dtype}")
    f1, n, t = x1t.shape[0], x1t.shape[1], weights.shape[0]
    if weights.shape[2] != f1:
        raise ValueError(
            f"{op}: weights must have shape (T, C, F1) with F1 = x1t.shape[0] = {f1}, got weights of shape "
            f"{list(weights.shape)}"
        )
    if weights.shape[1] < 1:
        raise ValueError(
            f"{op}: weights needs at least one class (shape (T, C, F1), C >= 1), got {list(weights.shape)}"
        )
    for name, u in (("labels", labels), ("sample_weight", sample_weight)):
        if tuple(u.shape) != (t, n):
            raise ValueError(
                f"{op}: {name} must have shape (T, N) = ({t}, {n}) from weights and x1t, got {list(u.shape)}"
            )


def logistic_loss_grad(
    x1t: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, sample_weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted softmax cross-entropy of T multinomial logistic regressions and its gradient.

    ``loss[t] = sum_n w[t, n] * (logsumexp_c z[t, c, n] - z[t, labels[t, n], n])`` with logits
    ``z[t] = weights[t] @ x1t``, and ``grad[t] = sum_n w[t, n] (softmax(z[t, :, n]) - onehot) x1t[:, n]^T``.
    Logits more than 80 below a sample's largest count as that floor in the softmax (so a padded class,
    intercept -1e30, gets probability e^-80 relative at most). The loss is accumulated in float64.

    Args:
        x1t: (F1, N) float32/float64 features, feature-major, last row ones (the intercept).
        weights: (T, C, F1) in x1t's dtype; the last column is the intercept.
        labels: (T, N) int64 classes in [0, C).
        sample_weight: (T, N) in x1t's dtype (each row usually sums to 1; not required).

    Returns:
        loss (T,) and grad (T, C, F1), in weights' dtype.

    Raises:
        ValueError: wrong ranks, dtypes or shapes, or (CPU kernel) a label outside [0, C).
    """
    key = "CUDA" if x1t.device.type == "cuda" else x1t.device.type.upper()
    if key in _KERNEL_KEYS:
        return torch.ops.latentquant.logistic_loss_grad(x1t, weights, labels, sample_weight)
    _check_ref_inputs(x1t, weights, labels, sample_weight)
    return logistic_loss_grad_ref(x1t, weights, labels, sample_weight)
