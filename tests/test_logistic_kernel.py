"""latentquant::logistic_loss_grad and logistic_onehot_loss_grad (csrc/cpu/logistic.cpp) against their oracles
(and the one-hot op against the dense one): values on many shapes, padded classes, the -80 floor, the
polynomial exp and log, finite differences / gradcheck, thread-count and instruction-set independence,
registration, and the errors users see."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_utils import poisoned_allocations

from latentquant.metrics.logistic import _two_loop
from latentquant.ops import _registry
from latentquant.ops.logistic import (
    _check_onehot_ref_inputs,
    _check_ref_inputs,
    logistic_fit_lbfgs,
    logistic_loss_grad,
    logistic_onehot_loss_grad,
)
from latentquant.reference.logistic import logistic_loss_grad_ref, logistic_onehot_loss_grad_ref

HAVE_KERNEL = _registry.has_kernel("logistic_loss_grad", "CPU")
needs_kernel = pytest.mark.skipif(not HAVE_KERNEL, reason="latentquant._C not built")

# The kernel's instruction-set copies: "default" is the widest the CPU has (AVX-512, else AVX2 + FMA, else the
# baseline), "avx2" stops below AVX-512, "generic" is the x86-64 baseline.
PATHS = ["default", "avx2", "generic"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    if request.param == "generic":
        monkeypatch.setenv("LATENTQUANT_DISABLE_AVX2", "1")  # read by the kernel on every call
    if request.param == "avx2":
        monkeypatch.setenv("LATENTQUANT_DISABLE_AVX512", "1")
    return request.param


def make_problem(
    t: int,
    c: int,
    f1: int,
    n: int,
    dtype: torch.dtype,
    seed: int,
    scale: float = 1.0,
    pad: int = 0,
    normalized: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x1t (f1, n) with a last row of ones, weights (t, c, f1), labels (t, n), sample_weight (t, n).

    The first target's last ``pad`` classes are padding (zero coefficients, intercept -1e30, never a label);
    ``scale`` multiplies the coefficients (large scales push logits past the -80 floor)."""
    g = torch.Generator().manual_seed(seed)
    x1t = torch.randn(f1, n, generator=g, dtype=torch.float64)
    x1t[-1] = 1.0
    weights = scale * torch.randn(t, c, f1, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (t, n), generator=g)
    if pad and t:
        weights[0, c - pad :] = 0.0
        weights[0, c - pad :, -1] = -1e30
        labels[0] = torch.randint(0, c - pad, (n,), generator=g)
    sample_weight = torch.rand(t, n, generator=g, dtype=torch.float64) + 0.1
    if normalized:
        sample_weight = sample_weight / sample_weight.sum(dim=1, keepdim=True).clamp_min(1e-300)
    else:
        sample_weight = 3.7 * sample_weight
    return x1t.to(dtype), weights.to(dtype), labels, sample_weight.to(dtype)


def _scales(x1t, weights, sample_weight):
    """Magnitudes the rounding errors scale with: per target sum_n w |z| (loss) and sum_n w |x| (gradient)."""
    x = x1t.double()
    logits = weights.double().clamp_min(-1e3) @ x  # padded intercepts would swamp the scale
    loss_scale = (sample_weight.double() * logits.abs().amax(dim=1)).sum(dim=1) + sample_weight.double().sum(
        dim=1
    )
    grad_scale = (sample_weight.double()[:, None, :] * x.abs()[None]).sum(dim=2)  # (T, F1)
    return loss_scale, grad_scale


def assert_same_at_one_and_two_threads(op, args: tuple) -> None:
    """``op(*args)`` -> (loss, grad) is bit-identical at 1 and 2 torch threads (fixed chunking, no race)."""
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(op(*args))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def assert_same_on_column_major_inputs(op, args: tuple) -> None:
    """``op`` on (features (T, ...), weights (T, C, F), labels (T, N), sw (T, N)) stored column-major (strided,
    non-contiguous) gives exactly what it gives on the contiguous tensors."""
    first, weights, labels, sw = args
    got = op(
        first.T.contiguous().T,
        weights.transpose(1, 2).contiguous().transpose(1, 2),
        labels.T.contiguous().T,
        sw.T.contiguous().T,
    )
    want = op(*args)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def assert_compiles_fullgraph(op, args: tuple) -> None:
    """``op`` traced by ``torch.compile(fullgraph=True)`` inside a function that uses both outputs gives the
    eager loss exactly and the gradient within the default tolerance."""

    def f(*inputs):
        loss, grad = op(*inputs)
        return loss * 2, grad.sum(dim=2)

    compiled = torch.compile(f, fullgraph=True)
    got, want = compiled(*args), f(*args)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def assert_close_to(loss, grad, want_loss, want_grad, scales, ulps: float):
    """|error| <= ulps * eps(dtype) * scale, elementwise: loss scale per target, gradient scale per feature."""
    eps = torch.finfo(loss.dtype).eps
    loss_scale, grad_scale = scales
    loss_err = (loss.double() - want_loss.double()).abs()
    grad_err = (grad.double() - want_grad.double()).abs()
    assert (loss_err <= ulps * eps * loss_scale + 1e-300).all(), (loss_err / (eps * loss_scale)).max()
    assert (grad_err <= ulps * eps * grad_scale[:, None, :] + 1e-300).all(), (
        grad_err / (eps * grad_scale[:, None, :])
    ).max()


# (T, C, F1, N): N = 0, 1, odd sizes around the 256-sample block and the 2048-sample chunk; C = 1, 2, 15.
SHAPES = [
    (1, 2, 3, 0),
    (3, 15, 13, 0),
    (1, 1, 4, 7),
    (1, 2, 1, 1),
    (3, 2, 13, 1),
    (1, 15, 13, 255),
    (3, 15, 13, 257),
    (3, 2, 5, 1000),
    (1, 15, 2, 1031),
    (3, 1, 13, 2049),
    (1, 2, 13, 4099),
    (3, 15, 6, 5001),
]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"T{t}-C{c}-F{f}-N{n}" for t, c, f, n in SHAPES])
def test_matches_reference(shape, dtype, path):
    t, c, f1, n = shape
    x1t, weights, labels, sw = make_problem(t, c, f1, n, dtype, seed=hash(shape) % 2**31, pad=min(2, c - 1))
    with poisoned_allocations():
        loss, grad = logistic_loss_grad(x1t, weights, labels, sw)
    assert loss.shape == (t,) and grad.shape == (t, c, f1)
    assert loss.dtype == dtype and grad.dtype == dtype
    want_loss, want_grad = logistic_loss_grad_ref(x1t, weights, labels, sw)
    truth = logistic_loss_grad_ref(x1t.double(), weights.double(), labels, sw.double())
    scales = _scales(x1t, weights, sw)
    # Both implementations round every per-sample quantity a few times (F1-term logit sums, exp, log,
    # the residual) and sum over samples in different orders: each error is a few eps of the magnitude it
    # is relative to (scales: sum_n w |z| for the loss, sum_n w |x| for the gradient), and averaging over
    # samples shrinks it. Measured here: <= 0.9 eps in float32, <= 2.6 eps in float64 (its sums over
    # samples, not the per-sample terms, dominate). Bound: 8 eps.
    assert_close_to(loss, grad, want_loss, want_grad, scales, ulps=8)
    assert_close_to(loss, grad, truth[0].to(dtype), truth[1].to(dtype), scales, ulps=8)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unnormalized_weights_and_extreme_logits(dtype, path):
    """Weights that do not sum to 1, and coefficients so large that most logits fall more than 80 below the
    top one (the floor): still the oracle's values."""
    x1t, weights, labels, sw = make_problem(
        3, 15, 13, 3001, dtype, seed=7, scale=60.0, pad=3, normalized=False
    )
    loss, grad = logistic_loss_grad(x1t, weights, labels, sw)
    want_loss, want_grad = logistic_loss_grad_ref(x1t, weights, labels, sw)
    z = weights.double() @ x1t.double()
    assert ((z.amax(dim=1, keepdim=True) - z) > 80).double().mean() > 0.5  # the floor is hit a lot
    # Logits of ~|200| carry F1 * eps * 200 of rounding in either implementation; the scales include |z|.
    # Measured: <= 0.9 eps.
    assert_close_to(loss, grad, want_loss, want_grad, _scales(x1t, weights, sw), ulps=8)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_padded_classes_change_nothing(dtype, path):
    """Padding a target with classes of intercept -1e30 leaves its loss and real rows as they were, and the
    padded rows' gradient is below 1e-30 (their probability is e^-80 relative at most)."""
    x1t, weights, labels, sw = make_problem(2, 6, 5, 1500, dtype, seed=3)
    padded = torch.cat([weights, torch.zeros(2, 4, 5, dtype=dtype)], dim=1)
    padded[:, 6:, -1] = -1e30
    loss, grad = logistic_loss_grad(x1t, weights, labels, sw)
    loss_p, grad_p = logistic_loss_grad(x1t, padded, labels, sw)
    # exp(-80) is below half an ulp of the per-sample total (>= 1): the sums and the real rows are unchanged.
    assert torch.equal(loss_p, loss)
    assert torch.equal(grad_p[:, :6], grad)
    assert grad_p[:, 6:].abs().max() < 1e-30


def _exp_log_problem(a: torch.Tensor, dtype: torch.dtype):
    """One target per value a_t (identity sample weights, label 0), 16 classes: m = 1 + t % 15 classes of
    logit 0, then one of logit a_t, then padding. The per-sample total is m + exp(a_t), rounded once (the
    ones add exactly, the padding adds e^-80, below half an ulp), so the target's loss is log(m + exp(a_t))
    and the gradient of class m's intercept is exp(a_t) / (m + exp(a_t))."""
    n = len(a)
    m = 1 + torch.arange(n) % 15
    x1t = torch.stack([a, torch.ones(n, dtype=torch.float64)]).to(dtype)  # (2, N): a and the intercept
    weights = torch.zeros(n, 16, 2, dtype=dtype)
    classes = torch.arange(16)[None, :]
    weights[..., 0] = (classes == m[:, None]).to(dtype)
    weights[..., 1] = torch.where(classes > m[:, None], -1e30, 0.0).to(dtype)
    return m, (x1t, weights, torch.zeros(n, n, dtype=torch.int64), torch.eye(n, dtype=dtype))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_polynomial_exp_and_log(dtype, path):
    """The kernel's exp (on [-100, 0], floored at -80) and log (on [1, 16]) read out one sample at a time,
    against torch's float64 exp and log (themselves within 1 ulp of float64, which the float64 bounds
    include). Measured against long double: residual <= 1.3 eps relative, loss <= 1.6 eps absolute, both
    dtypes and both instruction sets."""
    n = 2048
    a = torch.cat(
        [torch.linspace(-100.0, 0.0, n - 8, dtype=torch.float64), torch.tensor([-80.0, -79.99] * 4)]
    )
    a = a.to(dtype).double()  # representable in dtype
    m, args = _exp_log_problem(a, dtype)
    loss, grad = logistic_loss_grad(*args)
    e = torch.exp(a.clamp_min(-80.0))
    eps = torch.finfo(dtype).eps
    # Residual exp(a) / (m + exp(a)): exp's error (logistic.cpp: <= 0.7 eps), the total's rounding (0.5),
    # the reciprocal's and the product's (0.5 each): <= 2.2 eps relative, plus 1 eps for the float64
    # reference in the float64 test. Bound: 4 eps.
    p = grad[torch.arange(n), m, 1].double()
    want_p = e / (m + e)
    p_err = ((p - want_p).abs() / (eps * want_p)).max()
    assert p_err <= 4, p_err
    # Loss log(m + exp(a)): the total's rounding (0.5 eps relative, which log turns into 0.5 eps absolute),
    # log's own error (logistic.cpp: <= 1.6 eps absolute) and exp's (<= 0.7 eps, scaled by e / total <= 1):
    # <= 2.8 eps absolute. Bound: 4 eps.
    want_loss = torch.log(m + e)
    loss_err = ((loss.double() - want_loss).abs() / eps).max()
    assert loss_err <= 4, loss_err


@needs_kernel
def test_gradient_matches_finite_differences(path):
    x1t, weights, labels, sw = make_problem(2, 4, 5, 300, torch.float64, seed=11)
    _, grad = logistic_loss_grad(x1t, weights, labels, sw)
    h = 1e-6
    fd = torch.zeros_like(weights)
    for index in range(weights.numel()):
        step = torch.zeros(weights.numel(), dtype=torch.float64)
        step[index] = h
        step = step.view_as(weights)
        up = logistic_loss_grad(x1t, weights + step, labels, sw)[0]
        down = logistic_loss_grad(x1t, weights - step, labels, sw)[0]
        t = index // (weights.shape[1] * weights.shape[2])
        fd.view(-1)[index] = (up[t] - down[t]) / (2 * h)
    # Central differences: truncation h^2 |f'''| / 6 ~ 1e-12, rounding eps |f| / h ~ 1e-9.
    torch.testing.assert_close(grad, fd, rtol=0, atol=1e-8)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_result_does_not_depend_on_thread_count(dtype):
    x1t, weights, labels, sw = make_problem(3, 10, 13, 20011, dtype, seed=5, pad=2)  # 10 chunks of 2048
    assert_same_at_one_and_two_threads(logistic_loss_grad, (x1t, weights, labels, sw))


@needs_kernel
def test_instruction_sets_agree(monkeypatch):
    """The AVX2 and baseline copies differ only in rounding (FMA contraction)."""
    x1t, weights, labels, sw = make_problem(3, 15, 13, 3000, torch.float32, seed=9, pad=3)
    loss, grad = logistic_loss_grad(x1t, weights, labels, sw)
    monkeypatch.setenv("LATENTQUANT_DISABLE_AVX512", "1")
    loss_a, grad_a = logistic_loss_grad(x1t, weights, labels, sw)
    assert_close_to(loss, grad, loss_a, grad_a, _scales(x1t, weights, sw), ulps=32)
    monkeypatch.setenv("LATENTQUANT_DISABLE_AVX2", "1")
    loss_g, grad_g = logistic_loss_grad(x1t, weights, labels, sw)
    assert_close_to(loss, grad, loss_g, grad_g, _scales(x1t, weights, sw), ulps=32)


@needs_kernel
def test_non_finite_logits_give_non_finite_loss():
    """As in the oracle: a NaN or +Inf logit makes that target's loss NaN, other targets are untouched."""
    x1t, weights, labels, sw = make_problem(3, 4, 3, 600, torch.float32, seed=2)
    weights[0, 1, 0] = float("nan")
    weights[1, 2, 2] = float("inf")  # the intercept: +Inf logits on every sample
    loss, _ = logistic_loss_grad(x1t, weights, labels, sw)
    want, _ = logistic_loss_grad_ref(x1t, weights, labels, sw)
    assert torch.isnan(loss[:2]).all() and torch.isnan(want[:2]).all()
    assert torch.isfinite(loss[2]) and loss[2] == pytest.approx(float(want[2]), rel=1e-6)


@needs_kernel
def test_non_contiguous_inputs():
    x1t, weights, labels, sw = make_problem(2, 5, 4, 700, torch.float64, seed=4)
    assert_same_on_column_major_inputs(logistic_loss_grad, (x1t, weights, labels, sw))


@needs_kernel
def test_opcheck():
    for dtype in (torch.float32, torch.float64):
        args = make_problem(2, 3, 4, 300, dtype, seed=6)
        torch.library.opcheck(torch.ops.latentquant.logistic_loss_grad.default, args)


@needs_kernel
def test_torch_compile_fullgraph():
    x1t, weights, labels, sw = make_problem(2, 3, 4, 300, torch.float32, seed=8)
    assert_compiles_fullgraph(logistic_loss_grad, (x1t, weights, labels, sw))


def _bad_inputs():
    x1t, weights, labels, sw = make_problem(2, 3, 4, 10, torch.float32, seed=0)
    return [
        ((x1t[0], weights, labels, sw), r"x1t must have 2 dimensions, got shape \[10\]"),
        ((x1t, weights[0], labels, sw), r"weights must have 3 dimensions"),
        ((x1t, weights, labels[0], sw), r"labels must have 2 dimensions"),
        ((x1t, weights, labels, sw[None]), r"sample_weight must have 2 dimensions"),
        ((x1t, weights.half(), labels, sw), r"weights must be float32 or float64, got (Half|torch.float16)"),
        ((x1t.double(), weights, labels, sw), r"x1t must have weights' dtype"),
        ((x1t, weights, labels, sw.double()), r"sample_weight must have weights' dtype"),
        ((x1t, weights, labels.int(), sw), r"labels must be int64"),
        (
            (x1t, weights[:, :, :3], labels, sw),
            r"weights must have shape \(T, C, F1\) with F1 = x1t.shape\[0\] = 4",
        ),
        ((x1t, weights[:, :0], labels, sw), r"weights needs at least one class"),
        ((x1t, weights, labels[:1], sw), r"labels must have shape \(T, N\) = \(2, 10\)"),
        ((x1t, weights, labels, sw[:, :9]), r"sample_weight must have shape \(T, N\) = \(2, 10\)"),
    ]


@needs_kernel
@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_input_messages(case):
    args, message = _bad_inputs()[case]
    with pytest.raises(ValueError, match="logistic_loss_grad: " + message):
        logistic_loss_grad(*args)
    with pytest.raises(ValueError, match="logistic_loss_grad: " + message):  # the oracle path says the same
        _check_ref_inputs(*args)


@needs_kernel
@pytest.mark.parametrize("bad", [3, -1, 2**32 + 1])
def test_label_out_of_range(bad):
    x1t, weights, labels, sw = make_problem(2, 3, 4, 600, torch.float32, seed=1)
    labels[1, 517] = bad
    with pytest.raises(ValueError, match=r"logistic_loss_grad: labels must lie in \[0, C\) = \[0, 3\)"):
        logistic_loss_grad(x1t, weights, labels, sw)


def _two_loop_recursion(gradient, s, y, rho):
    """The textbook two-loop recursion, pair by pair (newest first), as the fit computed it before."""
    q = gradient.clone()
    alphas = []
    for k in range(s.shape[1]):
        alphas.append(rho[:, k] * (s[:, k] * q).sum(dim=1))
        q -= alphas[k][:, None] * y[:, k]
    gamma = torch.ones_like(rho[:, 0])
    for k in reversed(range(s.shape[1])):  # the newest valid pair wins
        yy = (y[:, k] * y[:, k]).sum(dim=1)
        gamma = torch.where(rho[:, k] > 0, 1.0 / (rho[:, k] * yy), gamma)
    r = gamma[:, None] * q
    for k in reversed(range(s.shape[1])):
        beta = rho[:, k] * (y[:, k] * r).sum(dim=1)
        r += (alphas[k] - beta)[:, None] * s[:, k]
    return -r


@pytest.mark.parametrize("m", [1, 2, 10])
def test_two_loop_solves_match_the_recursion(m):
    g = torch.Generator().manual_seed(m)
    t, d = 4, 30
    gradient = torch.randn(t, d, generator=g, dtype=torch.float64)
    s = torch.randn(t, m, d, generator=g, dtype=torch.float64)
    y = s + 0.3 * torch.randn(t, m, d, generator=g, dtype=torch.float64)
    rho = 1.0 / (s * y).sum(dim=2)
    invalid = rho <= 0
    invalid[1] = True  # a target with no valid pair: steepest descent
    if m > 1:
        invalid[2, 0] = True  # newest pair rejected: the next one sets the scaling
    s[invalid], y[invalid], rho[invalid] = 0.0, 0.0, 0.0
    want = _two_loop_recursion(gradient, s, y, rho)
    torch.testing.assert_close(_two_loop(gradient, s, y, rho), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(want[1], -gradient[1], rtol=0, atol=0)
    assert math.isfinite(float(want.abs().max()))


@needs_kernel
def test_fit_is_the_same_on_the_oracle_path(monkeypatch):
    """fit_logistic with every evaluation on the oracle (what CUDA tensors get) reaches the same fit."""
    from latentquant.metrics.logistic import fit_logistic
    from latentquant.ops import logistic as logistic_op

    g = torch.Generator().manual_seed(12)
    features = torch.randn(1500, 4, generator=g, dtype=torch.float64)
    logits = features @ torch.randn(4, 12, generator=g, dtype=torch.float64)
    labels = torch.stack([logits[:, :3].argmax(1), logits[:, 3:5].argmax(1), logits[:, 5:].argmax(1)], dim=1)
    kernel = fit_logistic(features, labels)
    monkeypatch.setattr(logistic_op, "_KERNEL_KEYS", frozenset())
    monkeypatch.setattr(logistic_op, "_FIT_KERNEL_KEYS", frozenset())  # the Python L-BFGS loop too
    oracle = fit_logistic(features, labels)
    torch.testing.assert_close(kernel.cross_entropy, oracle.cross_entropy, rtol=0, atol=1e-9)
    torch.testing.assert_close(kernel.weights, oracle.weights, rtol=1e-5, atol=1e-5)
    assert (kernel.n_iter - oracle.n_iter).abs().max() <= 1


# ---- latentquant::logistic_onehot_loss_grad: one-hot features given as codes ----

# (T, C, G, values per latent, N): no latents, one class, widths around the 8- and 4-lane vectors (C = 8, 9,
# 17, 40), N around the block and chunk sizes, many one-hot columns.
ONEHOT_SHAPES = [
    (1, 2, 2, 3, 0),
    (1, 1, 0, 1, 5),
    (2, 3, 1, 4, 1),
    (3, 8, 2, 5, 255),
    (1, 9, 3, 7, 257),
    (4, 10, 12, 10, 2049),
    (1, 17, 3, 7, 1031),
    (2, 40, 5, 9, 777),
    (3, 15, 6, 3, 5001),
    (2, 5, 2, 700, 300),  # F1 = 1401 > (G + 1) x 256: the gradient tile is flushed row by row from the codes
]


def make_onehot_problem(t, c, groups, values, n, dtype, seed, pad=0, scale=0.3):
    """codes (G, N) offset into G disjoint ranges of ``values`` columns; weights (T, C, G * values + 1) with
    the first target's last ``pad`` classes padding (intercept -1e30, never a label); labels; weights."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, values, (groups, n), generator=g) + values * torch.arange(groups)[:, None]
    weights = scale * torch.randn(t, c, groups * values + 1, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (t, n), generator=g)
    if pad and t:
        weights[0, c - pad :] = 0.0
        weights[0, c - pad :, -1] = -1e30
        labels[0] = torch.randint(0, c - pad, (n,), generator=g)
    sample_weight = torch.rand(t, n, generator=g, dtype=torch.float64) + 0.1
    sample_weight = sample_weight / sample_weight.sum(dim=1, keepdim=True).clamp_min(1e-300)
    return codes, weights.to(dtype), labels, sample_weight.to(dtype)


def dense_features(codes: torch.Tensor, f1: int, dtype: torch.dtype) -> torch.Tensor:
    """x1t (F1, N): the one-hot counts of the codes and a last row of ones, built independently of the op."""
    x1t = torch.zeros(f1, codes.shape[1], dtype=dtype)
    for row in codes:
        x1t[row, torch.arange(codes.shape[1])] += 1
    x1t[-1] = 1
    return x1t


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape", ONEHOT_SHAPES, ids=[f"T{t}-C{c}-G{g}-V{v}-N{n}" for t, c, g, v, n in ONEHOT_SHAPES]
)
def test_onehot_matches_reference_and_dense(shape, dtype, path):
    t, c, groups, values, n = shape
    codes, weights, labels, sw = make_onehot_problem(
        t, c, groups, values, n, dtype, seed=sum(shape), pad=min(2, c - 1)
    )
    with poisoned_allocations():
        loss, grad = logistic_onehot_loss_grad(codes, weights, labels, sw)
    assert loss.shape == (t,) and grad.shape == weights.shape
    assert loss.dtype == dtype and grad.dtype == dtype
    want = logistic_onehot_loss_grad_ref(codes, weights, labels, sw)
    x1t = dense_features(codes, weights.shape[2], dtype)
    dense = logistic_loss_grad_ref(x1t, weights, labels, sw)
    truth = logistic_loss_grad_ref(x1t.double(), weights.double(), labels, sw.double())
    scales = _scales(x1t, weights, sw)
    # The per-sample logits are sums of G + 1 terms (the dense op: F1 terms, most of them 0): the same few
    # eps as the dense op against its oracle (test_matches_reference), bound 8 eps.
    for want_loss, want_grad in (want, dense, (truth[0].to(dtype), truth[1].to(dtype))):
        assert_close_to(loss, grad, want_loss, want_grad, scales, ulps=8)


@needs_kernel
def test_onehot_equals_dense_kernel_in_float64():
    """Both kernels on the same problem (dense features expanded from the codes): the same numbers."""
    codes, weights, labels, sw = make_onehot_problem(3, 10, 12, 10, 3000, torch.float64, seed=3, pad=2)
    got = logistic_onehot_loss_grad(codes, weights, labels, sw)
    dense = logistic_loss_grad(dense_features(codes, weights.shape[2], torch.float64), weights, labels, sw)
    torch.testing.assert_close(got[0], dense[0], rtol=1e-13, atol=0)
    torch.testing.assert_close(got[1], dense[1], rtol=0, atol=1e-15)


@needs_kernel
def test_onehot_padded_lanes_never_count():
    """Real logits far below 0 (the padded lanes of the class vectors hold 0, 100s above them): their exp
    would overflow; they must contribute exactly nothing, as in the oracle."""
    codes, weights, labels, sw = make_onehot_problem(2, 3, 2, 4, 600, torch.float32, seed=4)
    weights[:, :, -1] -= 300.0
    got = logistic_onehot_loss_grad(codes, weights, labels, sw)
    want = logistic_onehot_loss_grad_ref(codes, weights, labels, sw)
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-6)


@needs_kernel
def test_onehot_gradcheck():
    """The returned gradient is the derivative of the returned loss (torch.autograd.gradcheck, float64)."""
    codes, weights, labels, sw = make_onehot_problem(2, 4, 3, 3, 300, torch.float64, seed=5, scale=1.0)

    class Loss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w):
            loss, grad = logistic_onehot_loss_grad(codes, w, labels, sw)
            ctx.save_for_backward(grad)
            return loss

        @staticmethod
        def backward(ctx, upstream):
            (grad,) = ctx.saved_tensors
            return upstream[:, None, None] * grad

    assert torch.autograd.gradcheck(Loss.apply, (weights.clone().requires_grad_(),), eps=1e-6, atol=1e-8)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_onehot_result_does_not_depend_on_thread_count(dtype):
    codes, weights, labels, sw = make_onehot_problem(3, 10, 6, 8, 20011, dtype, seed=6, pad=2)  # 10 chunks
    assert_same_at_one_and_two_threads(logistic_onehot_loss_grad, (codes, weights, labels, sw))


@needs_kernel
def test_onehot_non_finite_logits_give_non_finite_loss():
    codes, weights, labels, sw = make_onehot_problem(3, 4, 2, 3, 600, torch.float32, seed=7)
    weights[0, 1, 0] = float("nan")
    weights[1, 2, -1] = float("inf")
    loss, _ = logistic_onehot_loss_grad(codes, weights, labels, sw)
    assert torch.isnan(loss[:2]).all() and torch.isfinite(loss[2])


@needs_kernel
def test_onehot_non_contiguous_inputs():
    codes, weights, labels, sw = make_onehot_problem(2, 5, 3, 4, 700, torch.float64, seed=8)
    assert_same_on_column_major_inputs(logistic_onehot_loss_grad, (codes, weights, labels, sw))


@needs_kernel
def test_onehot_opcheck():
    for dtype in (torch.float32, torch.float64):
        args = make_onehot_problem(2, 3, 2, 4, 300, dtype, seed=9)
        torch.library.opcheck(torch.ops.latentquant.logistic_onehot_loss_grad.default, args)


@needs_kernel
def test_onehot_torch_compile_fullgraph():
    codes, weights, labels, sw = make_onehot_problem(2, 3, 2, 4, 300, torch.float32, seed=10)
    assert_compiles_fullgraph(logistic_onehot_loss_grad, (codes, weights, labels, sw))


def _bad_onehot_inputs():
    codes, weights, labels, sw = make_onehot_problem(2, 3, 2, 2, 10, torch.float32, seed=0)
    return [
        ((codes[0], weights, labels, sw), r"codes must have 2 dimensions, got shape \[10\]"),
        ((codes, weights[0], labels, sw), r"weights must have 3 dimensions"),
        ((codes, weights, labels[0], sw), r"labels must have 2 dimensions"),
        ((codes, weights, labels, sw[None]), r"sample_weight must have 2 dimensions"),
        ((codes.int(), weights, labels, sw), r"codes must be int64, got (Int|torch.int32)"),
        (
            (codes, weights.half(), labels, sw),
            r"weights must be float32 or float64, got (Half|torch.float16)",
        ),
        ((codes, weights, labels, sw.double()), r"sample_weight must have weights' dtype"),
        ((codes, weights, labels.int(), sw), r"labels must be int64"),
        ((codes, weights[:, :, :0], labels, sw), r"weights must have shape \(T, C, F1\) with F1 >= 1"),
        ((codes, weights[:, :0], labels, sw), r"weights needs at least one class"),
        ((codes, weights, labels[:1], sw), r"labels must have shape \(T, N\) = \(2, 10\)"),
        ((codes, weights, labels, sw[:, :9]), r"sample_weight must have shape \(T, N\) = \(2, 10\)"),
    ]


@needs_kernel
@pytest.mark.parametrize("case", range(len(_bad_onehot_inputs())))
def test_onehot_bad_input_messages(case):
    args, message = _bad_onehot_inputs()[case]
    with pytest.raises(ValueError, match="logistic_onehot_loss_grad: " + message):
        logistic_onehot_loss_grad(*args)
    with pytest.raises(ValueError, match="logistic_onehot_loss_grad: " + message):
        _check_onehot_ref_inputs(*args)


@needs_kernel
@pytest.mark.parametrize("bad", [4, -1, 2**32 + 1])
def test_onehot_code_out_of_range(bad):
    codes, weights, labels, sw = make_onehot_problem(2, 3, 2, 2, 600, torch.float32, seed=1)  # F = 4
    codes[1, 517] = bad
    with pytest.raises(ValueError, match=r"logistic_onehot_loss_grad: codes must lie in \[0, F\) = \[0, 4\)"):
        logistic_onehot_loss_grad(codes, weights, labels, sw)


@needs_kernel
def test_onehot_label_out_of_range():
    codes, weights, labels, sw = make_onehot_problem(2, 3, 2, 2, 600, torch.float32, seed=2)
    labels[0, 300] = 3
    with pytest.raises(
        ValueError, match=r"logistic_onehot_loss_grad: labels must lie in \[0, C\) = \[0, 3\)"
    ):
        logistic_onehot_loss_grad(codes, weights, labels, sw)


# ---- latentquant::logistic_fit_lbfgs: the whole L-BFGS of fit_logistic in one call ----

# (T, C, F1 or (G, values), N, onehot): N = 0, 1, odd sizes around the block and the chunk; one class; targets
# of fewer classes than the widest (padded); C of 1 to 5 vectors in every copy (one-hot: 17 and 40 classes).
FIT_SHAPES = [
    (1, 3, 4, 0, False),
    (2, 1, 3, 50, False),
    (1, 2, 1, 1, False),
    (3, 5, 6, 257, False),
    (4, 10, 13, 2049, False),
    (2, 15, 5, 3001, False),
    (1, 3, (2, 3), 0, True),
    (2, 4, (1, 3), 1, True),
    (3, 8, (3, 5), 255, True),
    (2, 10, (12, 6), 2100, True),
    (2, 17, (3, 7), 1031, True),
    (1, 40, (5, 9), 777, True),
]


def make_fit_problem(t, c, features, n, dtype, seed, onehot):
    """data (x1t or offset codes), start weights (padded classes of targets with fewer classes: intercept
    -1e30), labels in [0, num_classes[t]), normalized sample weights, num_classes (the first target has c)."""
    from latentquant.metrics.logistic import _initial_weights

    g = torch.Generator().manual_seed(seed)
    num_classes = torch.randint(1, c + 1, (t,), generator=g)
    num_classes[0] = c
    if onehot:
        groups, values = features
        data = torch.randint(0, values, (groups, n), generator=g) + values * torch.arange(groups)[:, None]
        f1 = groups * values + 1
    else:
        data = torch.randn(features, n, generator=g, dtype=torch.float64)
        data[-1] = 1.0
        data = data.to(dtype)
        f1 = features
    labels = (torch.rand(t, n, generator=g) * num_classes[:, None]).long()
    sw = torch.rand(t, n, generator=g, dtype=torch.float64) + 0.1
    sw = (sw / sw.sum(dim=1, keepdim=True).clamp_min(1e-300)).to(dtype)
    return data, _initial_weights(num_classes, c, f1, dtype), labels, sw, num_classes


def python_fit(data, weights, labels, sw, num_classes, l2, onehot, max_iter, tol):
    """The Python L-BFGS loop of fit_logistic (what other devices run) on the same problem, one group."""
    from latentquant.metrics import logistic as metrics_logistic

    op = logistic_onehot_loss_grad if onehot else logistic_loss_grad
    design = metrics_logistic._Design(data, weights.shape[2], op)
    group_of = torch.zeros(weights.shape[0], dtype=torch.int64)
    l2 = None if not bool((l2 != 0).any()) else l2
    return metrics_logistic._lbfgs(
        design, weights.clone(), labels, sw, l2, group_of, [weights.shape[1]], max_iter, tol
    )


def fit_loss(data, weights, labels, sw, onehot):
    return (logistic_onehot_loss_grad if onehot else logistic_loss_grad)(data, weights, labels, sw)[0]


@needs_kernel
@pytest.mark.parametrize("shape", FIT_SHAPES, ids=str)
def test_fit_matches_the_python_loop(shape, path):
    """float64: the same iterates as the Python loop up to rounding: losses to 1e-10, weights to 1e-6, and the
    same iteration counts (within 1); the returned cross-entropy is the op's uniform-weight loss of the result."""
    t, c, features, n, onehot = shape
    data, weights, labels, sw, num_classes = make_fit_problem(t, c, features, n, torch.float64, 3, onehot)
    l2 = torch.zeros(t, dtype=torch.float64)
    got, iters, ce = logistic_fit_lbfgs(data, weights, labels, sw, num_classes, l2, onehot, 60, 1e-6)
    want, want_iters = python_fit(data, weights, labels, sw, num_classes, l2, onehot, 60, 1e-6)
    assert got.shape == weights.shape and iters.dtype == torch.int64
    torch.testing.assert_close(
        fit_loss(data, got, labels, sw, onehot), fit_loss(data, want, labels, sw, onehot), rtol=0, atol=1e-10
    )
    real = torch.arange(c)[None, :] < num_classes[:, None]
    torch.testing.assert_close(got[real], want[real], rtol=1e-6, atol=1e-6)
    assert torch.equal(got[~real], weights[~real])  # padded classes keep their start
    assert (iters - want_iters).abs().max() <= 1
    if n == 0 or c == 1:
        assert (iters == 0).all()
    # The third output: the unweighted mean cross-entropy of the final weights (uniform sample weights 1 / N).
    uniform = torch.full_like(sw, 1.0 / max(n, 1))
    assert ce.dtype == torch.float64 and ce.shape == (t,)
    torch.testing.assert_close(ce, fit_loss(data, got, labels, uniform, onehot), rtol=0, atol=1e-12)


@needs_kernel
@pytest.mark.parametrize("onehot", [False, True])
def test_fit_with_l2_and_float32_matches_the_python_loop(onehot):
    """An L2 penalty per target (0 for one of them); float32 reaches the float64 optimum's loss."""
    features = (4, 5) if onehot else 6
    data, weights, labels, sw, num_classes = make_fit_problem(3, 6, features, 1500, torch.float64, 4, onehot)
    l2 = torch.tensor([1e-3, 0.0, 0.05], dtype=torch.float64)
    got, iters, _ = logistic_fit_lbfgs(data, weights, labels, sw, num_classes, l2, onehot, 200, 1e-8)
    want, want_iters = python_fit(data, weights, labels, sw, num_classes, l2, onehot, 200, 1e-8)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert (iters - want_iters).abs().max() <= 1
    data32 = data if onehot else data.float()
    got32, _, _ = logistic_fit_lbfgs(
        data32, weights.float(), labels, sw.float(), num_classes, l2.float(), onehot, 200, 1e-4
    )
    loss32 = fit_loss(data, got32.double(), labels, sw, onehot)
    loss64 = fit_loss(data, got, labels, sw, onehot)
    assert ((loss32 - loss64) <= 1e-5).all()


@needs_kernel
@pytest.mark.parametrize("targets", [1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("onehot", [False, True])
def test_fit_does_not_depend_on_the_thread_count(onehot, dtype, targets):
    """Bit-identical for 1, 2 and 3 threads: with more threads than targets, or at the end of a fit, idle
    workers run shards of the others' evaluations (the Team), into the same buffers in the same order."""
    features = (3, 4) if onehot else 5
    args = make_fit_problem(targets, 7, features, 5000, dtype, 5, onehot)
    l2 = torch.zeros(targets, dtype=dtype)
    one = logistic_fit_lbfgs(*args, l2, onehot, 40, 1e-4, 1)
    for threads in (2, 3):
        many = logistic_fit_lbfgs(*args, l2, onehot, 40, 1e-4, threads)
        assert all(torch.equal(a, b) for a, b in zip(one, many))


# The paired one-hot layout of the float32 fit (csrc/cpu/logistic.cpp, JointLayout): latents of these sizes pair
# (3 x 40 = 120, 9 x 14, 12 alone or with 1: greedy smallest-with-largest under 256 cells), 40 x 9 does not;
# "overlap": codes whose column ranges overlap (a column counted twice, as the op allows).
PAIRED_CODES = {"mixed": [3, 14, 9, 40, 1, 12], "overlap": [5, 7, 6]}


def paired_codes(kind: str, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    sizes = PAIRED_CODES[kind]
    starts = (
        [2 * i for i in range(len(sizes))]
        if kind == "overlap"
        else [sum(sizes[:i]) for i in range(len(sizes))]
    )
    return torch.stack([torch.randint(0, k, (n,), generator=g) + s for k, s in zip(sizes, starts)])


@needs_kernel
@pytest.mark.parametrize("n", [1, 255, 2049, 5000])
@pytest.mark.parametrize("kind", sorted(PAIRED_CODES))
@pytest.mark.parametrize("classes", [2, 10, 15, 40])
def test_fit_paired_layout_matches_the_float64_fit(monkeypatch, path, kind, classes, n):
    """The float32 fit on the paired layout (forced, whatever N) follows the float64 fit (never paired) as
    closely as the unpaired float32 fit does: 3 iterations, weights to 2e-5, losses to 2e-6 relative (float32
    rounding; N = 1 fits its sample to a loss ~1e-2 with weights ~3); a wrong gather or marginalization would
    be off by whole weights."""
    from latentquant.metrics.logistic import _initial_weights

    codes = paired_codes(kind, n, classes + n)
    f1 = int(codes.max()) + 2
    g = torch.Generator().manual_seed(n)
    num_classes = torch.tensor([classes, max(classes - 1, 1)])
    labels = (torch.rand(2, n, generator=g) * num_classes[:, None]).long()
    sw = torch.rand(2, n, generator=g, dtype=torch.float64) + 0.1
    sw = sw / sw.sum(dim=1, keepdim=True)
    weights = _initial_weights(num_classes, classes, f1, torch.float64)

    def fit(dtype, pairs):
        monkeypatch.setenv("LATENTQUANT_ONEHOT_PAIRS", pairs)
        out, iters, _ = logistic_fit_lbfgs(
            codes,
            weights.to(dtype),
            labels,
            sw.to(dtype),
            num_classes,
            torch.zeros(2, dtype=dtype),
            True,
            3,
            0.0,
        )
        return out.double(), iters

    want, want_iters = fit(torch.float64, "1")
    for pairs in ("1", "0"):
        got, iters = fit(torch.float32, pairs)
        assert torch.equal(iters, want_iters)
        real = torch.arange(classes)[None, :] < num_classes[:, None]
        torch.testing.assert_close(got[real], want[real], rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(
            fit_loss(codes, got, labels, sw, True),
            fit_loss(codes, want, labels, sw, True),
            rtol=2e-6,
            atol=1e-7,
        )


@needs_kernel
def test_fit_paired_layout_is_chosen_at_infomec_sizes(monkeypatch):
    """Unforced, N = 20,000 pairs (the results differ in rounding from the unpaired ones: the path ran) and
    follows the float64 fit as the forced tests do; LATENTQUANT_ONEHOT_PAIRS=0 is the unpaired path."""
    from latentquant.metrics.logistic import _initial_weights

    n = 20_000
    codes = paired_codes("mixed", n, 0)
    f1 = int(codes.max()) + 2
    num_classes = torch.tensor([10])
    labels = (codes[1:2] - codes[1].min()) * 10 // 14
    weights = _initial_weights(num_classes, 10, f1, torch.float64)
    sw = torch.full((1, n), 1.0 / n, dtype=torch.float64)

    def fit(dtype, pairs):
        if pairs is None:
            monkeypatch.delenv("LATENTQUANT_ONEHOT_PAIRS", raising=False)
        else:
            monkeypatch.setenv("LATENTQUANT_ONEHOT_PAIRS", pairs)
        args = (codes, weights.to(dtype), labels, sw.to(dtype), num_classes, torch.zeros(1, dtype=dtype))
        return logistic_fit_lbfgs(*args, True, 3, 0.0)[0].double()

    auto, off, want = fit(torch.float32, None), fit(torch.float32, "0"), fit(torch.float64, None)
    assert not torch.equal(auto, off)
    torch.testing.assert_close(auto, want, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(off, want, rtol=2e-5, atol=2e-5)


@needs_kernel
def test_fit_zero_iterations_returns_the_start():
    data, weights, labels, sw, num_classes = make_fit_problem(2, 4, 3, 100, torch.float64, 6, False)
    got, iters, _ = logistic_fit_lbfgs(
        data, weights, labels, sw, num_classes, torch.zeros(2).double(), False, 0, 1e-4
    )
    assert torch.equal(got, weights) and (iters == 0).all()


@needs_kernel
def test_fit_opcheck():
    for dtype in (torch.float32, torch.float64):
        for onehot, features in ((False, 4), (True, (2, 3))):
            data, weights, labels, sw, num_classes = make_fit_problem(2, 3, features, 300, dtype, 7, onehot)
            args = (data, weights, labels, sw, num_classes, torch.zeros(2, dtype=dtype), onehot, 10, 1e-4, 2)
            torch.library.opcheck(torch.ops.latentquant.logistic_fit_lbfgs.default, args)


def _bad_fit_inputs():
    x1t, weights, labels, sw, nc = make_fit_problem(2, 3, 4, 10, torch.float32, 0, False)
    codes, weights_h, labels_h, sw_h, nc_h = make_fit_problem(2, 3, (2, 2), 10, torch.float32, 0, True)
    l2 = torch.zeros(2)
    dense = (x1t, weights, labels, sw, nc, l2, False, 10, 1e-4, 1)
    onehot = (codes, weights_h, labels_h, sw_h, nc_h, l2, True, 10, 1e-4, 1)

    def with_(args, **changes):
        names = ("data", "weights", "labels", "sw", "nc", "l2", "onehot", "max_iter", "tol", "threads")
        return tuple(changes.get(name, arg) for name, arg in zip(names, args))

    bad_label = labels.clone()
    bad_label[1, 7] = 3
    bad_code = codes.clone()
    bad_code[0, 3] = 4
    return [
        (with_(dense, data=x1t[0]), r"x1t must have 2 dimensions"),
        (with_(dense, weights=weights[0]), r"weights must have 3 dimensions"),
        (with_(dense, weights=weights.half()), r"weights must be float32 or float64"),
        (with_(dense, data=x1t.double()), r"x1t must have weights' dtype"),
        (with_(dense, sw=sw.double()), r"sample_weight must have weights' dtype"),
        (with_(dense, labels=labels.int()), r"labels must be int64"),
        (
            with_(dense, weights=weights[:, :, :3]),
            r"weights must have shape \(T, C, F1\) with F1 = x1t.shape\[0\] = 4",
        ),
        (with_(dense, labels=labels[:1]), r"labels must have shape \(T, N\) = \(2, 10\)"),
        (with_(dense, nc=nc[:1]), r"num_classes must be \(T,\) = \(2,\) int64"),
        (with_(dense, nc=nc.int()), r"num_classes must be \(T,\) = \(2,\) int64"),
        (
            with_(dense, nc=torch.tensor([3, 4])),
            r"num_classes must lie in \[1, C\] = \[1, 3\], C = weights.shape\[1\]; got 4 for target 1",
        ),
        (
            with_(dense, nc=torch.tensor([3, 0])),
            r"num_classes must lie in \[1, C\] = \[1, 3\], C = weights.shape\[1\]; got 0 for target 1",
        ),
        (with_(dense, l2=torch.zeros(3)), r"l2 must be \(T,\) = \(2,\) in weights' dtype"),
        (with_(dense, l2=torch.zeros(2).double()), r"l2 must be \(T,\) = \(2,\) in weights' dtype"),
        (
            with_(dense, labels=bad_label),
            r"labels of target 1 must lie in \[0, num_classes\[t\]\) = \[0, \d\), got 3",
        ),
        (with_(dense, max_iter=-1), r"max_iter must be >= 0, got -1"),
        (with_(dense, tol=-1.0), r"tol must be >= 0"),
        (with_(dense, threads=0), r"num_threads must be >= 1, got 0"),
        (with_(onehot, data=codes.int()), r"codes must be int64"),
        (with_(onehot, data=bad_code), r"codes must lie in \[0, F\) = \[0, 4\)"),
    ]


@needs_kernel
@pytest.mark.parametrize("case", range(len(_bad_fit_inputs())))
def test_fit_bad_input_messages(case):
    args, message = _bad_fit_inputs()[case]
    with pytest.raises(ValueError, match="logistic_fit_lbfgs: " + message):
        logistic_fit_lbfgs(*args)


def test_fit_without_a_kernel_is_a_clear_error(monkeypatch):
    from latentquant.ops import logistic as logistic_op

    monkeypatch.setattr(logistic_op, "_FIT_KERNEL_KEYS", frozenset())
    data, weights, labels, sw, nc = make_fit_problem(1, 2, 3, 10, torch.float64, 0, False)
    with pytest.raises(ValueError, match="logistic_fit_lbfgs: no compiled kernel for device cpu"):
        logistic_fit_lbfgs(data, weights, labels, sw, nc, torch.zeros(1).double(), False, 10, 1e-4)
