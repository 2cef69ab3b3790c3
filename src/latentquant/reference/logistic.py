"""Oracles for ``latentquant::logistic_loss_grad`` and ``latentquant::logistic_onehot_loss_grad``: weighted
softmax cross-entropy of a batch of multinomial logistic regressions on shared features (dense, or one-hot
given as codes), and its gradient, as compositions of torch ops.

It is also what runs on devices without a kernel (CUDA) and when the extension is missing.
"""

from __future__ import annotations

import torch

# Logits more than 80 below a sample's top logit are raised to that floor before exp: probabilities
# below e^-80 ~ 2e-35 change by less than that, and exp stays on its fast vectorized path (far-out-of-
# range inputs take a scalar path 5x slower).
LOG_FLOOR = -80.0


def _loss_and_residual(
    logits: torch.Tensor, labels: torch.Tensor, sample_weight: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (T,) in ``dtype`` and residual ``w (softmax - onehot)`` (T, C, N), computed in place in ``logits``."""
    picked = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    peak = logits.amax(dim=1)
    exp = logits.sub_(peak.unsqueeze(1)).clamp_min_(LOG_FLOOR).exp_()
    total = exp.sum(dim=1)
    lse = peak + total.log()
    loss = (sample_weight * (lse - picked)).sum(dim=1, dtype=torch.float64).to(dtype)
    residual = exp.mul_((sample_weight / total).unsqueeze(1))
    residual.scatter_add_(1, labels.unsqueeze(1), -sample_weight.unsqueeze(1))
    return loss, residual


def logistic_loss_grad_ref(
    x1t: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, sample_weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted cross-entropy (T,) and its gradient (T, C, F1) with respect to ``weights``.

    ``loss[t] = sum_n w[t, n] * (logsumexp_c z[t, c, n] - z[t, labels[t, n], n])`` with logits
    ``z = weights @ x1t``; logits more than 80 below a sample's top logit count as that floor in the
    logsumexp (so padded classes, intercept -1e30, get a probability of at most e^-80 relative to the top
    class and a gradient below 1e-34). The loss is summed in float64 and returned in ``weights``' dtype.

    Shapes:
        x1t (F1, N) features transposed with a last row of ones, weights (T, C, F1), labels (T, N) int64
        in [0, C), sample_weight (T, N).
    """
    num_targets, width, num_features = weights.shape
    logits = (weights.reshape(num_targets * width, num_features) @ x1t).view(num_targets, width, x1t.shape[1])
    loss, residual = _loss_and_residual(logits, labels, sample_weight, weights.dtype)
    # (F1, N) @ (N, T * C) runs ~1.5x faster in MKL than the transposed product (T * C, N) @ (N, F1)
    flat = x1t @ residual.view(num_targets * width, x1t.shape[1]).T
    gradient = flat.T.reshape(num_targets, width, num_features)
    return loss, gradient


def logistic_onehot_loss_grad_ref(
    codes: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, sample_weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`logistic_loss_grad_ref` on one-hot features given as codes.

    The features are ``x1t[f, n] = #{g : codes[g, n] = f}`` for ``f < F = F1 - 1`` and a last row of ones:
    the logits are the intercept column plus one gathered weight column per code row, and the gradient of
    a feature column is the scatter-add of the residuals of the samples that carry its code.

    Shapes:
        codes (G, N) int64 in [0, F1 - 1), weights (T, C, F1), labels (T, N) int64 in [0, C),
        sample_weight (T, N).
    """
    logits = weights[:, :, -1:].expand(-1, -1, codes.shape[1]).clone()
    for row in codes:
        logits += weights.index_select(2, row)
    loss, residual = _loss_and_residual(logits, labels, sample_weight, weights.dtype)
    gradient = torch.zeros_like(weights, memory_format=torch.contiguous_format)
    for row in codes:
        gradient.index_add_(2, row, residual)
    gradient[:, :, -1] += residual.sum(dim=2)
    return loss, gradient
