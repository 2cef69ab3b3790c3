"""Registration of ``latentquant::logistic_loss_grad`` and ``latentquant::logistic_onehot_loss_grad``: fake
impls and the wrappers that pick kernel or oracle.

The ops evaluate the weighted softmax cross-entropy of a batch of multinomial logistic regressions on
shared features and its gradient, the inner step of the batched L-BFGS of
:mod:`latentquant.metrics.logistic`: on dense features (``logistic_loss_grad``) or on one-hot features
given as integer codes (``logistic_onehot_loss_grad``: gathered weight columns and a scatter-add instead
of two dense products). CPU: C++ (csrc/cpu/logistic.cpp), one fused pass over blocks of samples. Other
devices (CUDA) and builds without the extension: the torch compositions of
``latentquant.reference.logistic``. No autograd: the ops return their own gradient.

``latentquant::logistic_fit_lbfgs`` (CPU only) runs the whole L-BFGS of
:func:`latentquant.metrics.logistic.fit_logistic` on those kernels in one call, the targets shared among
threads of its own; on other devices fit_logistic runs its torch loop instead.
"""

from __future__ import annotations

import torch

from latentquant.ops import _registry
from latentquant.reference.logistic import logistic_loss_grad_ref, logistic_onehot_loss_grad_ref

_OP = "logistic_loss_grad"
_OP_ONEHOT = "logistic_onehot_loss_grad"
_OP_FIT = "logistic_fit_lbfgs"

if _registry.HAVE_C:

    @torch.library.register_fake("latentquant::logistic_loss_grad")
    def _(x1t, weights, labels, sample_weight):
        return weights.new_empty(weights.shape[0]), torch.empty_like(
            weights, memory_format=torch.contiguous_format
        )

    @torch.library.register_fake("latentquant::logistic_onehot_loss_grad")
    def _(codes, weights, labels, sample_weight):
        return weights.new_empty(weights.shape[0]), torch.empty_like(
            weights, memory_format=torch.contiguous_format
        )

    @torch.library.register_fake("latentquant::logistic_fit_lbfgs")
    def _(data, weights, labels, sample_weight, num_classes, l2, onehot, max_iter, tol, num_threads):
        return (
            torch.empty_like(weights, memory_format=torch.contiguous_format),
            num_classes.new_empty(weights.shape[0]),
            weights.new_empty(weights.shape[0], dtype=torch.float64),
        )


_registry.PUBLIC_OPS.extend([_OP, _OP_ONEHOT, _OP_FIT])

# Dispatch keys with a compiled kernel, looked up once: the wrapper then costs one set lookup per call,
# and torch.compile traces it without a graph break.
_KERNEL_KEYS = frozenset(key for key in ("CPU", "CUDA") if _registry.has_kernel(_OP, key))
_ONEHOT_KERNEL_KEYS = frozenset(key for key in ("CPU", "CUDA") if _registry.has_kernel(_OP_ONEHOT, key))
_FIT_KERNEL_KEYS = frozenset(key for key in ("CPU", "CUDA") if _registry.has_kernel(_OP_FIT, key))


def _dispatch_key(t: torch.Tensor) -> str:
    return "CUDA" if t.device.type == "cuda" else t.device.type.upper()


def _check_ranks(
    op: str,
    first: str,
    features: torch.Tensor,
    weights: torch.Tensor,
    labels: torch.Tensor,
    sample_weight: torch.Tensor,
) -> None:
    """The rank checks both ops open with: ``features`` (named ``first``: x1t or codes) 2-D, weights 3-D,
    labels and sample_weight 2-D."""
    for name, t, rank in (
        (first, features, 2),
        ("weights", weights, 3),
        ("labels", labels, 2),
        ("sample_weight", sample_weight, 2),
    ):
        if t.dim() != rank:
            raise ValueError(f"{op}: {name} must have {rank} dimensions, got shape {list(t.shape)}")


def _check_targets(
    op: str, first: str, n: int, weights: torch.Tensor, labels: torch.Tensor, sample_weight: torch.Tensor
) -> None:
    """The checks both ops share: weights (T, C, F1) float32/float64, labels and sample_weight (T, N)."""
    if weights.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{op}: weights must be float32 or float64, got {weights.dtype}")
    if sample_weight.dtype != weights.dtype:
        raise ValueError(
            f"{op}: sample_weight must have weights' dtype {weights.dtype}, got {sample_weight.dtype}"
        )
    if labels.dtype != torch.int64:
        raise ValueError(f"{op}: labels must be int64, got {labels.dtype}")
    if weights.shape[1] < 1:
        raise ValueError(
            f"{op}: weights needs at least one class (shape (T, C, F1), C >= 1), got {list(weights.shape)}"
        )
    t = weights.shape[0]
    for name, u in (("labels", labels), ("sample_weight", sample_weight)):
        if tuple(u.shape) != (t, n):
            raise ValueError(
                f"{op}: {name} must have shape (T, N) = ({t}, {n}) from weights and {first}, got {list(u.shape)}"
            )


def _check_ref_inputs(
    x1t: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, sample_weight: torch.Tensor
) -> None:
    """On the oracle path, the shape and dtype errors the kernel raises (the label range is not checked:
    that would synchronize a GPU on every call)."""
    op = _OP
    _check_ranks(op, "x1t", x1t, weights, labels, sample_weight)
    if weights.dtype in (torch.float32, torch.float64) and x1t.dtype != weights.dtype:
        raise ValueError(f"{op}: x1t must have weights' dtype {weights.dtype}, got {x1t.dtype}")
    _check_targets(op, "x1t", x1t.shape[1], weights, labels, sample_weight)
    f1 = x1t.shape[0]
    if weights.shape[2] != f1:
        raise ValueError(
            f"{op}: weights must have shape (T, C, F1) with F1 = x1t.shape[0] = {f1}, got weights of shape "
            f"{list(weights.shape)}"
        )


def _check_onehot_ref_inputs(
    codes: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, sample_weight: torch.Tensor
) -> None:
    """On the oracle path, the shape and dtype errors the one-hot kernel raises (no range checks: that would
    synchronize a GPU on every call)."""
    op = _OP_ONEHOT
    _check_ranks(op, "codes", codes, weights, labels, sample_weight)
    if codes.dtype != torch.int64:
        raise ValueError(f"{op}: codes must be int64, got {codes.dtype}")
    if weights.shape[2] < 1:
        raise ValueError(
            f"{op}: weights must have shape (T, C, F1) with F1 >= 1 (the last column is the intercept), got "
            f"{list(weights.shape)}"
        )
    _check_targets(op, "codes", codes.shape[1], weights, labels, sample_weight)


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
    if _dispatch_key(x1t) in _KERNEL_KEYS:
        return torch.ops.latentquant.logistic_loss_grad(x1t, weights, labels, sample_weight)
    _check_ref_inputs(x1t, weights, labels, sample_weight)
    return logistic_loss_grad_ref(x1t, weights, labels, sample_weight)


def logistic_onehot_loss_grad(
    codes: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, sample_weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`logistic_loss_grad` on one-hot features given as integer codes, without forming them.

    The features are ``x1t[f, n] = #{g : codes[g, n] = f}`` (f < F = F1 - 1) plus the intercept row of
    ones: G discrete latents, latent g's values one-hot in its own range of columns (``codes[g]`` already
    offset into it). So ``z[t, :, n] = weights[t, :, F] + sum_g weights[t, :, codes[g, n]]`` (G gathered
    columns instead of an F1-long product) and the gradient of column f sums the residuals of the samples
    that carry code f (a scatter-add): O(T N G C) per call instead of O(T N F1 C). Same floor, precision and
    determinism as :func:`logistic_loss_grad` (results do not depend on the thread count).

    Args:
        codes: (G, N) int64 column indices in [0, F1 - 1).
        weights: (T, C, F1) float32/float64; the last column is the intercept.
        labels: (T, N) int64 classes in [0, C).
        sample_weight: (T, N) in weights' dtype.

    Returns:
        loss (T,) and grad (T, C, F1), in weights' dtype.

    Raises:
        ValueError: wrong ranks, dtypes or shapes, or (CPU kernel) a code outside [0, F1 - 1) or a label
            outside [0, C).
    """
    if _dispatch_key(codes) in _ONEHOT_KERNEL_KEYS:
        return torch.ops.latentquant.logistic_onehot_loss_grad(codes, weights, labels, sample_weight)
    _check_onehot_ref_inputs(codes, weights, labels, sample_weight)
    return logistic_onehot_loss_grad_ref(codes, weights, labels, sample_weight)


def has_fit_kernel(t: torch.Tensor) -> bool:
    """Whether :func:`logistic_fit_lbfgs` has a compiled kernel for ``t``'s device (CPU builds with the extension)."""
    return _dispatch_key(t) in _FIT_KERNEL_KEYS


def logistic_fit_lbfgs(
    data: torch.Tensor,
    weights: torch.Tensor,
    labels: torch.Tensor,
    sample_weight: torch.Tensor,
    num_classes: torch.Tensor,
    l2: torch.Tensor,
    onehot: bool,
    max_iter: int,
    tol: float,
    num_threads: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole L-BFGS of :func:`latentquant.metrics.logistic.fit_logistic` in one call (CPU kernel only).

    The algorithm of the Python loop there (history 10, Armijo backtracking with quadratic interpolation, the
    same stops), each target fit on its own real classes, the targets shared among ``num_threads`` threads
    (std::threads that block rather than spin); a target's result does not depend on the thread count.

    Args:
        data: dense features x1t (F1, N) in weights' dtype (last row ones), or with ``onehot`` offset codes
            (G, N) int64 in [0, F1 - 1) (:meth:`OneHotCodes.offset_codes`).
        weights: (T, C, F1) float32/float64 start (padded classes keep their rows untouched).
        labels: (T, N) int64 in [0, num_classes[t]).
        sample_weight: (T, N) in weights' dtype.
        num_classes: (T,) int64 in [1, C].
        l2: (T,) penalty per target in weights' dtype (0: none).
        onehot: ``data`` are codes.
        max_iter: iteration budget (>= 0); tol: stop at max |gradient| <= tol (>= 0); num_threads: >= 1.

    Returns:
        weights (T, C, F1), iterations that moved (T,) int64, and the unweighted mean cross-entropy (T,)
        float64 of the final weights on the samples (the loss with uniform sample weights, each target
        evaluated on the thread that fit it).

    Raises:
        ValueError: wrong ranks, dtypes, shapes or ranges (labels, codes, num_classes), or no CPU kernel.
    """
    if _dispatch_key(data) not in _FIT_KERNEL_KEYS:
        raise ValueError(
            f"{_OP_FIT}: no compiled kernel for device {data.device} (CPU builds with latentquant._C)"
        )
    return torch.ops.latentquant.logistic_fit_lbfgs(
        data, weights, labels, sample_weight, num_classes, l2, onehot, max_iter, tol, num_threads
    )
