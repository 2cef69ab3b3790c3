"""latentquant.ops.latent_quantize (the fused QLAE step) against the naive composition."""

import pytest
import torch
from kernel_utils import DTYPES, SHAPES, non_contiguous, poisoned_allocations, random_codebook, tol

from latentquant.ops import latent_quantize
from latentquant.reference.latent_quantize import latent_quantize_ref


def _run(fn, z, values, qw, cw, upstream):
    z = z.detach().clone().requires_grad_()
    values = values.detach().clone().requires_grad_()
    z_hat, idx, loss = fn(z, values, qw, cw)
    ((z_hat.float() * upstream).sum() + 3.0 * loss).backward()
    return z_hat, idx, loss, z.grad, values.grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 10, 17])
def test_forward_and_backward_match_reference(shape, dtype, k):
    g = torch.Generator().manual_seed(hash((shape, k, 7)) % 2**31)
    z = (torch.randn(shape, generator=g, dtype=torch.float64) * 0.8).to(dtype)
    values = random_codebook(shape[-1], k, dtype, g)
    upstream = torch.randn(shape, generator=g)
    with poisoned_allocations():
        got = _run(latent_quantize, z, values, 0.3, 0.7, upstream)
    want = _run(latent_quantize_ref, z, values, 0.3, 0.7, upstream)
    names = ["z_hat", "indices", "aux_loss", "grad_z", "grad_values"]
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        t = dict(rtol=0, atol=0) if name in ("z_hat", "indices") else tol(dtype)
        if name == "grad_values" and dtype in (torch.float16, torch.bfloat16):
            # Sums of many half-precision terms: the kernel accumulates in float64, the reference in dtype.
            t = dict(atol=1e-2, rtol=2e-2)
        torch.testing.assert_close(a, b, **t, msg=lambda m, name=name: f"{name}: {m}")


def test_loss_and_gradient_formulas_by_hand():
    z = torch.tensor([[0.3, -0.9], [0.05, 0.6]], dtype=torch.float64, requires_grad=True)
    values = torch.tensor([[-0.5, 0.0, 0.5], [-1.0, 0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    z_hat, idx, loss = latent_quantize(z, values, quantization_weight=0.2, commitment_weight=0.1)
    assert idx.tolist() == [[2, 0], [1, 2]]
    diff = torch.tensor([[0.3 - 0.5, -0.9 + 1.0], [0.05, 0.6 - 1.0]], dtype=torch.float64)
    n = 4
    assert loss.item() == pytest.approx((0.2 + 0.1) * (diff**2).sum().item() / n, rel=1e-14)
    (z_hat.sum() + loss).backward()
    torch.testing.assert_close(z.grad, 1.0 + 2 * 0.1 * diff / n)
    expected_v = torch.zeros(2, 3, dtype=torch.float64)
    expected_v[0, 2] = -2 * 0.2 * diff[0, 0] / n
    expected_v[0, 1] = -2 * 0.2 * diff[1, 0] / n
    expected_v[1, 0] = -2 * 0.2 * diff[0, 1] / n
    expected_v[1, 2] = -2 * 0.2 * diff[1, 1] / n
    torch.testing.assert_close(values.grad, expected_v)


def test_decoder_gradient_never_reaches_values():
    z = torch.randn(8, 3, requires_grad=True)
    values = torch.randn(3, 5, requires_grad=True)
    z_hat, _, _ = latent_quantize(z, values)
    (z_hat**2).sum().backward()
    assert values.grad is None or torch.count_nonzero(values.grad) == 0
    torch.testing.assert_close(z.grad, 2 * z_hat.detach())


def test_gradcheck_float64():
    # z_hat's straight-through gradient and the stop-gradients are not numerical derivatives, so gradcheck
    # each loss term where its stop-gradient is invisible: the quantization term w.r.t. values (cw = 0)
    # and the commitment term w.r.t. z (qw = 0).
    g = torch.Generator().manual_seed(2)
    z = torch.randn(11, 3, generator=g, dtype=torch.float64).requires_grad_()
    values = random_codebook(3, 4, torch.float64, g).requires_grad_()
    assert torch.autograd.gradcheck(lambda b: latent_quantize(z.detach(), b, 0.3, 0.0)[2], (values,))
    assert torch.autograd.gradcheck(lambda a: latent_quantize(a, values.detach(), 0.0, 0.2)[2], (z,))


def test_non_contiguous():
    g = torch.Generator().manual_seed(6)
    z = torch.randn(10, 4, generator=g)
    values = random_codebook(4, 6, torch.float32, g)
    a = latent_quantize(non_contiguous(z), values)
    b = latent_quantize_ref(z, values)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.testing.assert_close(a[2], b[2])


def test_deterministic_across_thread_counts():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(30000, 12, generator=g, requires_grad=True)
    values = random_codebook(12, 10, torch.float32, g).requires_grad_()
    threads = torch.get_num_threads()
    out = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            z.grad = values.grad = None
            z_hat, _, loss = latent_quantize(z, values)
            (z_hat.sum() + loss).backward()
            out.append((loss.detach(), z.grad.clone(), values.grad.clone()))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*out):
        assert torch.equal(a, b)


def test_opcheck():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(16, 3, generator=g, dtype=torch.float64).requires_grad_()
    values = random_codebook(3, 5, torch.float64, g).requires_grad_()
    torch.library.opcheck(torch.ops.latentquant.latent_quantize.default, (z, values, 0.1, 0.2, True))
    _, idx, _ = latent_quantize(z, values)
    args = (
        torch.randn(16, 3, dtype=torch.float64),
        torch.tensor(1.5, dtype=torch.float64),
        z.detach(),
        values.detach(),
        idx,
        0.1,
        0.2,
    )
    torch.library.opcheck(torch.ops.latentquant.latent_quantize_backward.default, args)


def test_double_backward_is_a_clear_error():
    z = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    values = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    _, _, loss = latent_quantize(z, values, 0.1, 0.2)
    (gz,) = torch.autograd.grad(loss, z, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gz.sum().backward()


def test_torch_compile_fullgraph():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, 4, generator=g, requires_grad=True)
    values = random_codebook(4, 7, torch.float32, g).requires_grad_()

    def f(z, values):
        z_hat, _, loss = latent_quantize(z, values, 0.05, 0.02)
        return (torch.tanh(z_hat) ** 2).mean() + loss

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(z, values)
    out.backward()
    grads = (z.grad.clone(), values.grad.clone())
    z.grad = values.grad = None
    out_e = f(z, values)
    out_e.backward()
    torch.testing.assert_close(out, out_e)
    torch.testing.assert_close(grads[0], z.grad)
    torch.testing.assert_close(grads[1], values.grad)


def test_inductor_compile_matches_eager():
    z = torch.randn(32, 12)
    values = torch.linspace(-0.5, 0.5, 10).expand(12, 10).contiguous()

    def f(z, values):
        z_hat, idx, loss = latent_quantize(z * 1.5, values)
        return z_hat.sum(-1), idx, loss

    got = torch.compile(f, fullgraph=True)(z, values)
    want = f(z, values)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_inductor_channel_first_at_batch_one():
    """A channel-first layer at batch 1 hands the op a transposed (H*W, C) view: Inductor asserts the op's
    output strides against the fake's, which must be the kernels' contiguous layout ("expected ... stride
    6==1" before)."""
    from latentquant.nn import LatentQuantizer

    layer = LatentQuantizer(6, 10, channel_first=True)
    x = torch.randn(1, 6, 4, 4, requires_grad=True)

    def step(x):
        z_hat, idx, loss = layer(x)
        (z_hat.sum() + loss).backward()
        return z_hat.detach(), idx, loss.detach(), x.grad.clone(), layer.values.grad.clone()

    want = step(x)
    x.grad = layer.values.grad = None
    got = torch.compile(step, fullgraph=False)(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_empty_input_gives_zero_loss():
    z = torch.zeros(0, 4, requires_grad=True)
    values = torch.randn(4, 3, requires_grad=True)
    z_hat, idx, loss = latent_quantize(z, values)
    assert z_hat.shape == (0, 4) and idx.shape == (0, 4) and loss.item() == 0.0
    (z_hat.sum() + loss).backward()
    assert torch.count_nonzero(values.grad) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(quantization_weight=-1.0), "quantization_weight must be a finite number >= 0"),
        (dict(commitment_weight=float("nan")), "commitment_weight must be a finite number >= 0"),
    ],
)
def test_bad_weights(kwargs, message):
    with pytest.raises(ValueError, match=message):
        latent_quantize(torch.zeros(2, 2), torch.zeros(2, 3), **kwargs)


def test_nan_raises_naming_the_op():
    z = torch.zeros(3, 3)
    z[1, 1] = float("nan")
    with pytest.raises(ValueError, match="latent_quantize: z contains NaN or Inf"):
        latent_quantize(z, torch.zeros(3, 2))


@pytest.mark.parametrize("lead", [(5,), (0,)])
def test_zero_width_latents_empty_in_empty_out(lead):
    """z (..., 0): empty z_hat and indices, zero loss, empty gradients (it raised a reshape error)."""
    z = torch.randn(*lead, 0, requires_grad=True)
    values = torch.randn(0, 4, requires_grad=True)
    z_hat, idx, loss = latent_quantize(z, values)
    assert z_hat.shape == z.shape and idx.shape == z.shape and loss.item() == 0.0
    (z_hat.sum() + loss).backward()
    assert z.grad.shape == z.shape and values.grad.shape == (0, 4)


def test_large_codebook_direct_path_matches_reference():
    """K = 400,000 values for 3 latents exceeds the 4 MiB table budget: the direct path gives the same
    indices and loss as the reference, and the same gradients."""
    g = torch.Generator().manual_seed(8)
    values = random_codebook(3, 400_000, torch.float32, g)
    z = torch.randn(6, 3, generator=g) * 0.8
    upstream = torch.randn(6, 3, generator=g)
    got = _run(latent_quantize, z, values, 0.3, 0.7, upstream)
    want = _run(latent_quantize_ref, z, values, 0.3, 0.7, upstream)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for a, b in zip(got[2:], want[2:]):
        torch.testing.assert_close(a, b, **tol(torch.float32))


def test_zeros_for_empty_input_are_contiguous():
    """The backward's zero gradient for empty z has the kernels' (contiguous) layout even for a transposed
    codebook, as the fake says."""
    values = torch.randn(5, 4, dtype=torch.float64).t()
    z = torch.zeros(0, 4, dtype=torch.float64)
    idx = torch.zeros(0, 4, dtype=torch.long)
    _, gv = torch.ops.latentquant.latent_quantize_backward(
        z, torch.tensor(1.0, dtype=torch.float64), z, values, idx, 0.1, 0.1
    )
    assert gv.shape == (4, 5) and gv.is_contiguous() and not gv.any()
