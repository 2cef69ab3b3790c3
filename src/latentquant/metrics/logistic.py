"""Batched multinomial logistic regression in torch: one fit per target column, all columns at once.

Used by InfoE (no penalty, balanced class weights, fit and scored on the same samples) and by the linear
DCI variant. It solves the same problem as scikit-learn's ``LogisticRegression(solver="lbfgs")``:

    minimize_W  sum_n w[y_n] * CE(softmax(x_n W + b), y_n) / sum_n w[y_n]  +  l2 / 2 * ||W||^2

per target, with a batched L-BFGS: history 10 and the stopping rules and iteration budget of scipy's
L-BFGS-B as scikit-learn calls it (at most ``max_iter`` iterations, max |gradient| <= ``tol``, relative
decrease <= 64 eps); the line search is Armijo backtracking with quadratic interpolation rather than
scipy's More-Thuente, so iterates differ slightly on the way to the same optimum. Every target keeps its
own curvature history and step length, so the targets' fits are independent.

On CPU (with the compiled extension) the whole fit is one call of ``latentquant::logistic_fit_lbfgs``: the
targets are shared out, widest first, among ``workers`` threads of its own, and each evaluation is the fused
C++ pass over blocks of samples of the loss ops below, on one target's real classes. Elsewhere (CUDA, no
extension) the same algorithm runs as one loop over all targets in torch ops (its bookkeeping once per
iteration, not once per group), each evaluation one call of ``latentquant::logistic_loss_grad`` per group of
targets of similar class counts (targets with fewer classes padded with classes that are never predicted).
Both give the same iterates up to rounding (float64: cross-entropies within ~1e-11, the same iteration
counts; tests/test_logistic_kernel.py). One-hot features of discrete latents can be given as their codes
(:class:`OneHotCodes`): each evaluation then gathers G weight columns per sample and scatter-adds the
gradient (``latentquant::logistic_onehot_loss_grad``) instead of an F-long product (F ~ hundreds of one-hot
columns), the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from latentquant.metrics._inputs import cpu_threads
from latentquant.ops.logistic import (
    has_fit_kernel,
    logistic_fit_lbfgs,
    logistic_loss_grad,
    logistic_onehot_loss_grad,
)

_HISTORY = 10
_MAX_LINE_SEARCH = 50
_ARMIJO = 1e-4
_PAD_LOGIT = -1e30  # intercept of padding classes: they are never predicted


@dataclass
class LogisticFit:
    """Result of :func:`fit_logistic`.

    Attributes:
        weights: (T, C, F + 1) coefficients, the last feature column is the intercept; padded classes
            have zero coefficients and an intercept of -1e30 (never predicted).
        cross_entropy: (T,) float64 unweighted mean cross-entropy of the fit on the samples it was fit on (nats).
        n_iter: (T,) L-BFGS iterations each target used.
    """

    weights: torch.Tensor
    cross_entropy: torch.Tensor
    n_iter: torch.Tensor


@dataclass(frozen=True)
class OneHotCodes:
    """One-hot features of discrete latents, given as their codes (never formed as an (N, F) matrix).

    Latent g's code ``codes[n, g]`` in ``[0, num_values[g])`` is one-hot in its own block of ``num_values[g]``
    feature columns, the blocks in latent order: F = sum(num_values) columns in all, as
    ``torch.cat([one_hot(codes[:, g], num_values[g]) for g ...], dim=1)`` (:meth:`dense`) would give.
    :func:`fit_logistic` accepts it wherever it accepts a feature matrix.

    Attributes:
        codes: (N, G) int64 codes.
        num_values: (G,) int64 values per latent (each >= 1).
        dtype: float dtype the fit computes in.
    """

    codes: torch.Tensor
    num_values: torch.Tensor
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.codes.ndim != 2 or self.codes.dtype != torch.int64:
            raise ValueError(
                f"OneHotCodes: codes must be a 2-D int64 tensor (N, G), got shape {tuple(self.codes.shape)} "
                f"{self.codes.dtype}"
            )
        if tuple(self.num_values.shape) != (self.codes.shape[1],) or bool((self.num_values < 1).any()):
            raise ValueError(
                f"OneHotCodes: num_values must be (G,) = ({self.codes.shape[1]},) counts >= 1, got "
                f"{self.num_values.tolist()}"
            )
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"OneHotCodes: dtype must be float32 or float64, got {self.dtype}")

    @property
    def shape(self) -> tuple[int, int]:
        """(N, F) of the one-hot matrix."""
        return self.codes.shape[0], int(self.num_values.sum())

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def to(self, dtype: torch.dtype) -> OneHotCodes:
        """The same features, fit in ``dtype``."""
        return OneHotCodes(self.codes, self.num_values, dtype)

    def offset_codes(self) -> torch.Tensor:
        """(G, N) column index of each code in the one-hot matrix (the op's ``codes``)."""
        starts = torch.cumsum(self.num_values, 0) - self.num_values
        return (self.codes + starts.to(self.codes.device)).T.contiguous()

    def dense(self) -> torch.Tensor:
        """(N, F) the one-hot matrix in ``dtype``."""
        out = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        return out.scatter_(1, self.offset_codes().T, 1.0)


class _Design(NamedTuple):
    """The features as the loss op takes them: ``data`` (dense x1t (F1, N) or offset codes (G, N)), the
    number of weight columns F1 (intercept last) and the op."""

    data: torch.Tensor
    num_features: int
    loss_grad: Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _design(features: torch.Tensor | OneHotCodes) -> _Design:
    if isinstance(features, OneHotCodes):
        return _Design(features.offset_codes(), features.shape[1] + 1, logistic_onehot_loss_grad)
    return _Design(_with_intercept(features), features.shape[1] + 1, logistic_loss_grad)


def _with_intercept(features: torch.Tensor) -> torch.Tensor:
    """(F + 1, N): features transposed, with a row of ones for the intercept."""
    return torch.cat([features.T, features.new_ones(1, features.shape[0])], dim=0)


def _initial_weights(
    num_classes: torch.Tensor, width: int, num_features: int, dtype: torch.dtype
) -> torch.Tensor:
    """(T, C, F + 1) zeros, except the intercept of padded classes, set so low it never wins."""
    columns = torch.arange(width, device=num_classes.device)
    weights = torch.zeros(num_classes.shape[0], width, num_features, dtype=dtype, device=num_classes.device)
    weights[..., -1].masked_fill_(columns[None, :] >= num_classes[:, None], _PAD_LOGIT)
    return weights


def _logits(x1t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(T, C, N) logits of every target; samples last so reductions over classes vectorize."""
    num_targets, width, num_features = weights.shape
    return (weights.reshape(num_targets * width, num_features) @ x1t).view(num_targets, width, -1)


def _loss_and_gradient(
    design: _Design,
    weights: torch.Tensor,
    labels: torch.Tensor,
    sample_weight: torch.Tensor,
    l2: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean cross-entropy (T,) and its gradient (T, C, F + 1).

    ``labels`` and ``sample_weight`` are (T, N); each target's weights sum to 1; ``l2`` is (T,) or None. Padded classes get a
    probability of at most e^-80 relative to the top class, so their gradient is below 1e-34. The
    cross-entropy part is the design's op (one fused pass on CPU, torch ops elsewhere).
    """
    loss, gradient = design.loss_grad(design.data, weights, labels, sample_weight)
    if l2 is not None:
        coefficients = weights[:, :, :-1]
        loss = loss + 0.5 * l2 * coefficients.square().sum(dim=(1, 2))
        gradient[:, :, :-1] += l2[:, None, None] * coefficients
    return loss, gradient


def _two_loop(gradient: torch.Tensor, s: torch.Tensor, y: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """L-BFGS direction -H g per target from its curvature pairs, newest first: ``s``, ``y`` (T, m, D) and
    ``rho`` (T, m), 0 for empty or rejected pairs.

    The two-loop recursion with each loop solved as the unit-triangular system it is, rather than pair by
    pair: the first loop's ``alpha_k = rho_k s_k'(g - sum_{j<k} alpha_j y_j)`` is
    ``(I + diag(rho) tril(S Y', -1)) alpha = rho * S g``, the second loop's
    ``beta_k = rho_k y_k'(r0 + sum_{j>k} (alpha_j - beta_j) s_j)`` is
    ``(I + diag(rho) triu(Y S', 1)) beta = rho * (Y r0 + triu(Y S', 1) alpha)``. The same values up to
    rounding in ~25 torch calls instead of ~10 per pair: the tensors are tiny, each call's overhead is the
    cost (measured: 0.25 ms instead of 1.1 ms per iteration for 4 targets and 10 pairs).
    """
    rho_col = rho.unsqueeze(2)  # (T, m, 1)
    sy = torch.bmm(s, y.transpose(1, 2))  # (T, m, m): s_k' y_j
    rhs = rho_col * torch.bmm(s, gradient.unsqueeze(2))
    alpha = torch.linalg.solve_triangular(torch.tril(sy, -1) * rho_col, rhs, upper=False, unitriangular=True)
    q = gradient - torch.bmm(alpha.transpose(1, 2), y).squeeze(1)  # g - sum_k alpha_k y_k
    # The newest valid pair sets the initial scaling s'y / y'y = 1 / (rho y'y); 1 without one.
    valid = rho > 0
    scale = 1.0 / (rho * (y * y).sum(dim=2)).clamp_min(torch.finfo(y.dtype).tiny)
    newest = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first valid slot
    r0 = q.mul_(torch.where(valid.any(dim=1, keepdim=True), scale.gather(1, newest), 1.0))
    ys = torch.triu(sy.transpose(1, 2), 1)  # y_k' s_j for j > k
    rhs = rho_col * torch.baddbmm(torch.bmm(y, r0.unsqueeze(2)), ys, alpha)
    beta = torch.linalg.solve_triangular(ys * rho_col, rhs, upper=True, unitriangular=True)
    return (r0 + torch.bmm((alpha - beta).transpose(1, 2), s).squeeze(1)).neg_()


def fit_logistic(
    features: torch.Tensor | OneHotCodes,
    labels: torch.Tensor,
    num_classes: torch.Tensor | None = None,
    class_weight: str | None = "balanced",
    l2: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-4,
    num_threads: int | None = 1,
    workers: int = 1,
) -> LogisticFit:
    """Fit one multinomial logistic regression per column of ``labels`` on shared ``features``.

    Args:
        features: float features, computed in their dtype (use float64 for scikit-learn-like precision);
            or :class:`OneHotCodes`, one-hot features given as codes (computed in its ``dtype``).
        labels: int class indices ``0 .. num_classes[t] - 1`` per target column.
        num_classes: classes per target; default ``labels.max(0) + 1``.
        class_weight: ``"balanced"`` (weight ``N / (C * count)`` per class, as scikit-learn) or None.
        l2: L2 penalty strength on the coefficients (not the intercept), scikit-learn's ``1 / (C * N)``.
            scikit-learn fits a 2-class target as one binomial weight vector w; the two-class softmax
            reaches the same model with w = w_1 − w_0, w_0 = −w_1, at half the penalty, so binary targets
            get ``2 * l2`` here and the same optimum as scikit-learn.
        max_iter: L-BFGS iteration budget (scikit-learn's default 100).
        tol: stop a target when max |gradient| <= tol (scikit-learn's ``tol``).
        num_threads: torch intra-op threads during a CPU fit (restored afterwards); None keeps torch's
            setting. The default 1: the fit is a long chain of small ops, which a second thread barely
            speeds up on an idle machine and slows down by 10-30x on a shared one (measured here: 0.6 s
            vs 16.7 s for N = 1200 under load 10 on 2 cores), as every op waits for a descheduled thread.
        workers: threads of the CPU fit kernel (``latentquant::logistic_fit_lbfgs``), which share out the
            targets, widest first; a thread with no target left runs halves of the others' evaluations (so
            a single target, or the last one, uses two). Threads of its own that block or yield rather than
            spin for long, so a busy machine costs no more than the time they lose. A target's fit does not
            depend on it (bit-identical for any count).

    Returns:
        :class:`LogisticFit` with weights (T, C_max, F + 1), unweighted cross-entropy (T,) and iterations (T,).

    Shapes:
        features (N, F), labels (N, T), num_classes (T,).
    """
    if not isinstance(features, OneHotCodes) and (features.ndim != 2 or not features.is_floating_point()):
        raise ValueError(
            f"features must be a 2-D float tensor, got shape {tuple(features.shape)} {features.dtype}"
        )
    if labels.ndim != 2 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"labels must have shape (N, T) with N = {features.shape[0]}, got {tuple(labels.shape)}"
        )
    if class_weight not in ("balanced", None):
        raise ValueError(f"class_weight must be 'balanced' or None, got {class_weight!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    labels = labels.to(device=features.device, dtype=torch.int64)
    if num_classes is None:
        num_classes = labels.max(dim=0).values + 1
    num_classes = num_classes.to(device=features.device, dtype=torch.int64)
    groups = _class_count_groups(num_classes.tolist())
    with cpu_threads(features.device, num_threads):
        return _fit(features, labels, num_classes, groups, class_weight, l2, max_iter, tol, workers)


def _class_count_groups(num_classes: list[int], max_padding: float = 1.25) -> list[list[int]]:
    """Split targets into batches of similar class counts, so padding to a batch's widest target costs
    at most ``max_padding`` x the real classes (shapes3d's 4, 8, 10, 10, 10, 15: 59 padded rows, not 90)."""
    groups: list[list[int]] = []
    real = 0
    for t in sorted(range(len(num_classes)), key=lambda t: num_classes[t]):
        if groups and (len(groups[-1]) + 1) * num_classes[t] <= max_padding * (real + num_classes[t]):
            groups[-1].append(t)
            real += num_classes[t]
        else:
            groups.append([t])
            real = num_classes[t]
    return groups


class _Part(NamedTuple):
    """The active targets of one class-count group: their rows in the active batch, the group's width, and
    their labels and sample weights (T_part, N)."""

    rows: torch.Tensor | None  # None: every row of the batch
    width: int
    labels: torch.Tensor
    sample_weight: torch.Tensor


def _parts(
    idx: torch.Tensor,
    group_of: torch.Tensor,
    widths: list[int],
    width: int,
    labels: torch.Tensor,
    sample_weight: torch.Tensor,
) -> list[_Part]:
    """Split the active targets ``idx`` by class-count group (recomputed only when the active set shrinks)."""
    if len(widths) == 1:
        return [_Part(None, width, labels[idx], sample_weight[idx])]
    parts = []
    member = group_of[idx]
    for g, w in enumerate(widths):
        rows = (member == g).nonzero().squeeze(1)
        if len(rows):
            targets = idx[rows]
            parts.append(_Part(rows, w, labels[targets], sample_weight[targets]))
    return parts


def _evaluate(
    design: _Design, weights: torch.Tensor, parts: list[_Part], l2: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (A,) and gradient (A, W, F1) of a batch of targets, one op call per class-count group on the
    group's own width (the gradient of a group's columns beyond its width is 0: they never move)."""
    if len(parts) == 1 and parts[0].rows is None and parts[0].width == weights.shape[1]:
        part = parts[0]
        return _loss_and_gradient(design, weights, part.labels, part.sample_weight, l2)
    loss = weights.new_empty(weights.shape[0])
    gradient = torch.zeros_like(weights)
    for part in parts:
        rows = slice(None) if part.rows is None else part.rows
        l2_part = None if l2 is None else l2[rows]
        f, g = _loss_and_gradient(
            design, weights[rows, : part.width].contiguous(), part.labels, part.sample_weight, l2_part
        )
        loss[rows] = f
        if part.rows is None:
            gradient[:, : part.width] = g
        else:
            gradient[part.rows, : part.width] = g
    return loss, gradient


def _fit(
    features: torch.Tensor | OneHotCodes,
    labels: torch.Tensor,
    num_classes: torch.Tensor,
    groups: list[list[int]],
    class_weight: str | None,
    l2: float,
    max_iter: int,
    tol: float,
    workers: int = 1,
) -> LogisticFit:
    """The fit: on CPU with the extension the whole L-BFGS is one call of ``latentquant::logistic_fit_lbfgs``
    (the targets shared among ``workers`` threads); elsewhere one batched L-BFGS over every target, whose
    per-iteration bookkeeping (two-loop recursion, line-search tests, history updates) runs once for all
    targets, each evaluation calling the op once per class-count group on that group's width (``groups`` from
    :func:`_class_count_groups`). Both run the same algorithm; each target's iterates depend only on itself."""
    labels = labels.T.contiguous()
    num_targets, num_samples = labels.shape
    width = int(num_classes.max())
    dtype = features.dtype
    device = features.device
    group_of = torch.empty(num_targets, dtype=torch.int64, device=device)
    widths = []
    for g, members in enumerate(groups):
        group_of[members] = g
        widths.append(int(num_classes[members].max()))

    design = _design(features)
    num_features = design.num_features
    counts = torch.zeros(num_targets, width, dtype=dtype, device=device)
    counts.scatter_add_(1, labels, torch.ones_like(labels, dtype=dtype))
    if class_weight == "balanced":
        present = (counts > 0).sum(dim=1, keepdim=True).to(dtype)
        per_class = torch.where(counts > 0, num_samples / (present * counts.clamp_min(1)), 0.0)
        sample_weight = per_class.gather(1, labels)
    else:
        sample_weight = torch.ones(num_targets, num_samples, dtype=dtype, device=device)
    sample_weight = sample_weight / sample_weight.sum(dim=1, keepdim=True)

    if l2 > 0:
        l2_per_target = torch.where(num_classes == 2, 2.0 * l2, l2).to(dtype)
    else:
        l2_per_target = None
    weights = _initial_weights(num_classes, width, num_features, dtype)
    if has_fit_kernel(design.data):
        weights, n_iter, cross_entropy = logistic_fit_lbfgs(
            design.data,
            weights,
            labels,
            sample_weight,
            num_classes,
            l2_per_target if l2_per_target is not None else weights.new_zeros(num_targets),
            isinstance(features, OneHotCodes),
            max_iter,
            tol,
            workers,
        )
    else:
        weights, n_iter = _lbfgs(
            design, weights, labels, sample_weight, l2_per_target, group_of, widths, max_iter, tol
        )
        # The unweighted mean cross-entropy: the loss with uniform sample weights (the kernel returns it).
        uniform = torch.full_like(sample_weight, 1.0 / max(num_samples, 1))
        all_targets = torch.arange(num_targets, device=device)
        cross_entropy = _evaluate(
            design, weights, _parts(all_targets, group_of, widths, width, labels, uniform), None
        )[0].to(torch.float64)
    return LogisticFit(weights=weights, cross_entropy=cross_entropy, n_iter=n_iter)


def _lbfgs(
    design: _Design,
    weights: torch.Tensor,
    labels: torch.Tensor,
    sample_weight: torch.Tensor,
    l2_per_target: torch.Tensor | None,
    group_of: torch.Tensor,
    widths: list[int],
    max_iter: int,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batched L-BFGS loop in torch ops (devices without the fit kernel): final weights and iterations."""
    num_targets, width, num_features = weights.shape
    dtype, device = weights.dtype, weights.device
    all_targets = torch.arange(num_targets, device=device)
    parts = _parts(all_targets, group_of, widths, width, labels, sample_weight)
    loss, gradient = _evaluate(design, weights, parts, l2_per_target)
    s_hist = torch.zeros(num_targets, _HISTORY, width * num_features, dtype=dtype, device=device)
    y_hist = torch.zeros_like(s_hist)
    rho = torch.zeros(num_targets, _HISTORY, dtype=dtype, device=device)
    n_iter = torch.zeros(num_targets, dtype=torch.int64, device=device)
    active = gradient.flatten(1).abs().amax(dim=1) > tol
    ftol = 64 * torch.finfo(torch.float64).eps
    order: list[int] = []
    num_active = num_targets  # the active set only shrinks: another size is another set

    for iteration in range(max_iter):
        if not bool(active.any()):
            break
        idx = active.nonzero().squeeze(1)
        x_a, f_a, g_a = weights[idx].flatten(1), loss[idx], gradient[idx].flatten(1)
        if order:
            pairs = (idx[:, None], torch.tensor(order, device=idx.device))  # (active, m), newest first
            direction = _two_loop(g_a, s_hist[pairs], y_hist[pairs], rho[pairs])
        else:
            direction = -g_a
        slope = (direction * g_a).sum(dim=1)
        downhill = slope < 0  # a non-descent direction (stale curvature) restarts as steepest descent
        direction = torch.where(downhill[:, None], direction, -g_a)
        slope = torch.where(downhill, slope, -(g_a * g_a).sum(dim=1))
        if iteration == 0:
            step = (1.0 / direction.norm(dim=1)).clamp(max=1.0)
        else:
            step = torch.ones_like(f_a)

        if len(idx) != num_active:
            num_active = len(idx)
            parts = _parts(idx, group_of, widths, width, labels, sample_weight)
        l2_a = None if l2_per_target is None else l2_per_target[idx]
        pending = torch.ones_like(downhill)
        new_f, new_g = f_a.clone(), g_a.clone()
        for _ in range(_MAX_LINE_SEARCH):
            trial = (x_a + step[:, None] * direction).view(-1, width, num_features)
            f_t, g_t = _evaluate(design, trial, parts, l2_a)
            accept = pending & torch.isfinite(f_t) & (f_t <= f_a + _ARMIJO * step * slope)
            new_f = torch.where(accept, f_t, new_f)
            new_g = torch.where(accept[:, None], g_t.flatten(1), new_g)
            pending = pending & ~accept
            if not bool(pending.any()):
                break
            curvature = 2 * (f_t - f_a - step * slope)
            interpolated = torch.where(curvature > 0, -slope * step * step / curvature, 0.5 * step)
            shrunk = interpolated.nan_to_num(nan=0.5).clamp(min=0.1 * step, max=0.5 * step)
            step = torch.where(pending, shrunk, step)
        moved = ~pending
        new_x = torch.where(moved[:, None], x_a + step[:, None] * direction, x_a)

        s = new_x - x_a
        y = new_g - g_a
        sy = (s * y).sum(dim=1)
        slot = iteration % _HISTORY
        keep = moved & (sy > torch.finfo(dtype).eps * (y * y).sum(dim=1))
        s_hist[idx, slot] = torch.where(keep[:, None], s, 0.0)
        y_hist[idx, slot] = torch.where(keep[:, None], y, 0.0)
        rho[idx, slot] = torch.where(keep, 1.0 / torch.where(keep, sy, 1.0), 0.0)
        order = ([slot] + [k for k in order if k != slot])[:_HISTORY]

        weights[idx] = new_x.view(-1, width, num_features)
        decrease = f_a - new_f
        loss[idx], gradient[idx] = new_f, new_g.view(-1, width, num_features)
        n_iter[idx] += moved.to(torch.int64)
        scale = torch.maximum(torch.maximum(f_a.abs(), new_f.abs()), torch.ones_like(f_a))
        converged = (new_g.abs().amax(dim=1) <= tol) | (decrease <= ftol * scale)
        active[idx] = moved & ~converged
    return weights, n_iter


def predict_proba_logistic(fit: LogisticFit, features: torch.Tensor | OneHotCodes) -> torch.Tensor:
    """Class probabilities of each sample under each target's fit (padded classes get 0).

    Args:
        fit: result of :func:`fit_logistic`.
        features: features in the same layout as the fit's (:class:`OneHotCodes` are expanded).

    Returns:
        (N, T, C_max) probabilities.

    Shapes:
        features (N, F).
    """
    if isinstance(features, OneHotCodes):
        features = features.dense()
    weights = fit.weights.to(features.dtype)
    if features.ndim != 2 or features.shape[1] + 1 != weights.shape[2]:
        raise ValueError(f"features must have shape (N, {weights.shape[2] - 1}), got {tuple(features.shape)}")
    return torch.softmax(_logits(_with_intercept(features), weights), dim=1).permute(2, 0, 1)


def predict_logistic(fit: LogisticFit, features: torch.Tensor | OneHotCodes) -> torch.Tensor:
    """Most probable class of each sample under each target's fit: (N, T) int64 (features (N, F))."""
    return predict_proba_logistic(fit, features).argmax(dim=2)
