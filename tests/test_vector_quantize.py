"""latentquant.ops.vector_quantize against its reference (exact squared-L2 distances)."""

import pytest
import torch
from kernel_utils import DTYPES, SHAPES, non_contiguous, poisoned_allocations

from latentquant.ops import vector_quantize
from latentquant.reference.vector_quantize import vector_quantize_ref


def _exact_distances(z, codebook):
    flat = z.reshape(-1, z.shape[-1]).double()
    return ((flat[:, None, :] - codebook.double()[None]) ** 2).sum(-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 3, 64])
def test_matches_reference(shape, dtype, k):
    g = torch.Generator().manual_seed(hash((shape, k, 3)) % 2**31)
    z = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    codebook = torch.randn(k, shape[-1], generator=g, dtype=torch.float64).to(dtype)
    with poisoned_allocations():
        z_q, idx = vector_quantize(z, codebook)
    z_q_ref, idx_ref = vector_quantize_ref(z, codebook)
    assert (
        z_q.shape == z.shape and idx.shape == z.shape[:-1] and idx.dtype == torch.int64 and z_q.dtype == dtype
    )
    # The kernel ranks codes by ||c||^2 - 2 z.c; where it disagrees with the exact formula the two codes
    # must be equally near up to that expansion's rounding.
    dist = _exact_distances(z, codebook)
    if dist.numel():
        flat_idx, flat_ref = idx.reshape(-1), idx_ref.reshape(-1)
        chosen = dist.gather(1, flat_idx[:, None]).squeeze(1)
        best = dist.gather(1, flat_ref[:, None]).squeeze(1)
        eps = {torch.float64: 1e-12}.get(dtype, 1e-5) * (1 + dist.max(1).values)
        assert bool(((chosen - best) <= eps).all())
        agree = flat_idx == flat_ref
        assert agree.float().mean() > 0.99
        torch.testing.assert_close(
            z_q.reshape(-1, shape[-1])[agree], z_q_ref.reshape(-1, shape[-1])[agree], rtol=0, atol=0
        )


def test_duplicate_codes_go_to_lowest_index():
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[0.9, 0.1], [0.1, 0.8], [0.5, 0.5]])
    _, idx = vector_quantize(z, codebook)
    assert idx.tolist() == [0, 1, 0]


def test_large_codebook_tiles_and_non_contiguous():
    g = torch.Generator().manual_seed(9)
    z = torch.randn(3000, 16, generator=g, dtype=torch.float64)
    codebook = torch.randn(700, 16, generator=g, dtype=torch.float64)
    _, idx = vector_quantize(non_contiguous(z), codebook)
    assert torch.equal(idx, vector_quantize_ref(z, codebook)[1])


def test_gradient_to_codebook_only():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(40, 5, generator=g, dtype=torch.float64, requires_grad=True)
    codebook = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(40, 5, generator=g, dtype=torch.float64)
    (vector_quantize(z, codebook)[0] * upstream).sum().backward()
    grad = codebook.grad.clone()
    codebook.grad = None
    (vector_quantize_ref(z, codebook)[0] * upstream).sum().backward()
    torch.testing.assert_close(grad, codebook.grad, rtol=1e-12, atol=1e-12)
    assert z.grad is None


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(9, 3, generator=g, dtype=torch.float64)
    codebook = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: vector_quantize(z, c)[0], (codebook,))
    assert torch.autograd.gradgradcheck(lambda c: vector_quantize(z, c)[0] ** 2, (codebook,))


def test_opcheck_and_compile():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(16, 3, generator=g, dtype=torch.float64)
    codebook = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.latentquant.vector_quantize.default, (z, codebook, True))
    idx = vector_quantize(z, codebook)[1]
    torch.library.opcheck(
        torch.ops.latentquant.vector_quantize_backward.default, (torch.randn_like(z), idx, codebook)
    )

    def f(z, c):
        z_q, idx = vector_quantize(z, c)
        return (z_q**2).sum(), idx

    out, idx_c = torch.compile(f, fullgraph=True, backend="aot_eager")(z, codebook)
    out_e, idx_e = f(z, codebook)
    assert torch.equal(idx_c, idx_e)
    torch.testing.assert_close(out, out_e)


def test_errors():
    with pytest.raises(ValueError, match=r"codebook must have shape \(K, C\) with C = z.shape\[-1\] = 4"):
        vector_quantize(torch.zeros(2, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="vector_quantize: z contains NaN or Inf"):
        vector_quantize(torch.tensor([[0.0, float("inf")]]), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="z must be float16"):
        vector_quantize(torch.zeros(2, 2, dtype=torch.int32), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="codebook is empty"):
        vector_quantize(torch.zeros(2, 2), torch.zeros(0, 2))


def test_raw_backward_op_rejects_mismatched_arguments():
    """The raw op validates like the public wrapper (it returned a (3, 2) gradient for a (3, 5) codebook)."""
    ops = torch.ops.latentquant
    with pytest.raises(
        ValueError, match=r"vector_quantize_backward: codebook must have shape \(K, C\) with C = "
    ):
        ops.vector_quantize_backward(torch.ones(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="vector_quantize_backward: grad_z_q must be a floating-point"):
        ops.vector_quantize_backward(
            torch.ones(4, 5).long(), torch.zeros(4, dtype=torch.long), torch.zeros(3, 5)
        )


@pytest.mark.parametrize("lead", [(5,), (2, 3), (0,)])
def test_zero_width_latents_empty_in_empty_out(lead):
    """z (..., 0) against a (K, 0) codebook: every code is at distance 0, index 0 wins; empty z_q."""
    z = torch.randn(*lead, 0)
    codebook = torch.randn(3, 0, requires_grad=True)
    z_q, idx = vector_quantize(z, codebook)
    assert z_q.shape == z.shape and idx.shape == lead and not idx.any()
    z_q.sum().backward()
    assert codebook.grad.shape == (3, 0)


def test_identical_codes_get_identical_norms():
    """||c||^2 is summed in column order in the kernel, so duplicates at C >= 128 with C % 4 != 0 (rows at
    different alignments) tie exactly and the lower index wins."""
    g = torch.Generator().manual_seed(3)
    for c in (131, 257):
        codebook = torch.randn(70, c, generator=g)
        codebook[65] = codebook[3]
        z = torch.cat([codebook[3:4], codebook[3:4] + 1e-3 * torch.randn(5, c, generator=g)])
        assert vector_quantize(z, codebook)[1].tolist() == [3] * 6
