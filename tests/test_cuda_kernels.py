"""The CUDA kernels (csrc/cuda/*.cu) on CUDA tensors, with the checks the Triton kernels get under the
interpreter (tests/quant_checks.py) plus sizes that only a GPU runs quickly: grid-stride loops that wrap,
codebooks too large for shared memory, misaligned (unvectorized) inputs. Skipped without a GPU or without
a CUDA build of latentquant._C.
"""

from __future__ import annotations

import pytest
import quant_checks
import torch
from kernel_utils import tol

from latentquant.ops import _registry

OP_NAMES = [
    "scalar_quantize",
    "scalar_quantize_backward",
    "latent_quantize",
    "latent_quantize_backward",
    "vector_quantize",
    "vector_quantize_backward",
]

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(
        not all(_registry.has_kernel(op, "CUDA") for op in OP_NAMES),
        reason="latentquant._C was built without CUDA kernels (LATENTQUANT_BUILD_CUDA=1 to build them)",
    ),
]

OPS = {name: getattr(torch.ops.latentquant, name) for name in OP_NAMES}
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
DEV = "cuda"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("lead", "d", "k"),
    [
        ((1,), 1, 1),
        ((7,), 5, 10),
        ((3, 11), 3, 4),
        ((300,), 6, 9),
        ((0,), 4, 3),
        ((70001,), 12, 10),
        ((513,), 64, 200),
    ],
)
def test_scalar_quantize_cuda(lead, d, k, dtype):
    quant_checks.check_scalar_quantize(OPS, lead, d, k, dtype, dtype, DEV, seed=d * 31 + k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("lead", "d", "k"),
    [((1,), 1, 1), ((7,), 5, 10), ((2, 13), 3, 4), ((260,), 12, 10), ((50001,), 12, 10), ((257,), 64, 200)],
)
def test_latent_quantize_cuda(lead, d, k, dtype):
    quant_checks.check_latent_quantize(OPS, lead, d, k, dtype, dtype, DEV, seed=d * 17 + k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("lead", "c", "k"),
    [((1,), 1, 1), ((9,), 3, 5), ((2, 21), 7, 70), ((40,), 33, 13), ((3000,), 64, 512), ((129,), 100, 130)],
)
def test_vector_quantize_cuda(lead, c, k, dtype):
    quant_checks.check_vector_quantize(OPS, lead, c, k, dtype, dtype, DEV, seed=c * 13 + k)


MIXED = [
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32),
    (torch.float32, torch.float64),
    (torch.float64, torch.float16),
]


@pytest.mark.parametrize(("dtype", "vdtype"), MIXED)
def test_mixed_dtypes_cuda(dtype, vdtype):
    quant_checks.check_scalar_quantize(OPS, (2, 9), 4, 7, dtype, vdtype, DEV, seed=5)
    quant_checks.check_latent_quantize(OPS, (11,), 5, 6, dtype, vdtype, DEV, seed=9)
    quant_checks.check_vector_quantize(OPS, (17,), 6, 9, dtype, vdtype, DEV, seed=8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_strided_and_ties_cuda(dtype):
    quant_checks.check_scalar_quantize(OPS, (3, 5), 6, 5, dtype, dtype, DEV, strided=True, ties=True, seed=2)
    quant_checks.check_latent_quantize(OPS, (4, 3), 5, 7, dtype, dtype, DEV, strided=True, ties=True, seed=4)
    quant_checks.check_vector_quantize(OPS, (3, 7), 5, 66, dtype, dtype, DEV, strided=True, ties=True, seed=6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_latent_matches_reference_autograd_cuda(dtype):
    quant_checks.check_latent_matches_reference_autograd(OPS, dtype, DEV)


def test_empty_inputs_cuda():
    quant_checks.check_empty(OPS, DEV)


def test_not_finite_raises_cuda():
    quant_checks.check_not_finite(OPS, DEV)


def test_bad_arguments_name_the_op_cuda():
    quant_checks.check_bad_arguments(OPS, DEV)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_misaligned_inputs_take_the_scalar_path(dtype):
    """z starting one element into its buffer cannot use the 4-wide vector loads; results must not change."""
    gen = torch.Generator().manual_seed(11)
    n, d, k = 1001, 7, 9
    buf = torch.randn(n * d + 1, generator=gen).to(dtype).to(DEV)
    z = buf[1:].view(n, d)
    values = torch.randn(d, k, generator=gen).to(dtype).to(DEV)
    z_q, idx, loss = OPS["latent_quantize"](z, values, 0.1, 0.2, True)
    z_q2, idx2, loss2 = OPS["latent_quantize"](z.clone(), values, 0.1, 0.2, True)
    assert z.data_ptr() % 16 != 0
    torch.testing.assert_close(idx, idx2, rtol=0, atol=0)
    torch.testing.assert_close(z_q, z_q2, rtol=0, atol=0)
    torch.testing.assert_close(loss, loss2, **tol(torch.float32))


def test_loss_is_deterministic_cuda():
    """The loss reduction has a fixed order (per-block partials summed by one block): same bits every run."""
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(262144, 12, generator=gen).to(DEV)
    values = torch.linspace(-0.5, 0.5, 10).repeat(12, 1).to(DEV)
    losses = [OPS["latent_quantize"](z, values, 0.01, 0.01, True)[2] for _ in range(3)]
    assert all(torch.equal(losses[0], other) for other in losses[1:])


def test_public_wrappers_autograd_cuda():
    """Through latentquant.ops (flattening, autograd) on CUDA, against autograd of the references on the CPU."""
    from latentquant.ops import latent_quantize, scalar_quantize, vector_quantize
    from latentquant.reference.latent_quantize import latent_quantize_ref
    from latentquant.reference.scalar_quantize import scalar_quantize_ref
    from latentquant.reference.vector_quantize import vector_quantize_ref

    gen = torch.Generator().manual_seed(7)
    z = torch.randn(4, 6, 5, generator=gen, dtype=torch.float64)
    values = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    codebook = torch.randn(9, 5, generator=gen, dtype=torch.float64)

    def run(fn, ref, *args):
        ins = [a.clone().requires_grad_() for a in args]
        ins_ref = [a.clone().requires_grad_() for a in args]
        out = fn(*[t.to(DEV) for t in ins])
        out_ref = ref(*ins_ref)
        g = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in out_ref]
        sum((o.cpu() * gi).sum() for o, gi in zip(out, g) if o.is_floating_point()).backward()
        sum((o * gi).sum() for o, gi in zip(out_ref, g) if o.is_floating_point()).backward()
        for o, o_ref in zip(out, out_ref):
            torch.testing.assert_close(o.cpu(), o_ref.detach(), **tol(torch.float64))
        for a, a_ref in zip(ins, ins_ref):
            if a_ref.grad is None:
                assert a.grad is None or not a.grad.any()
            else:
                torch.testing.assert_close(a.grad, a_ref.grad, **tol(torch.float64))

    run(
        lambda z, v: latent_quantize(z, v, 0.3, 0.2),
        lambda z, v: latent_quantize_ref(z, v, 0.3, 0.2),
        z,
        values,
    )
    run(scalar_quantize, scalar_quantize_ref, z, values)
    run(vector_quantize, vector_quantize_ref, z, codebook)


def test_gradcheck_float64_cuda():
    """Exact derivatives where the op defines them: scalar/vector z_q w.r.t. the codebook (a gather), the
    commitment loss w.r.t. z (qw = 0) and the quantization loss w.r.t. values (cw = 0). z_hat's straight-through
    gradient is not the numerical derivative, so it is checked against the references above instead."""
    from latentquant.ops import latent_quantize, scalar_quantize, vector_quantize

    gen = torch.Generator().manual_seed(5)
    # z stays away from the midpoints between values, so the indices do not change under the perturbation.
    z = (torch.randn(6, 3, generator=gen, dtype=torch.float64) * 0.3).to(DEV)
    values = torch.linspace(-1, 1, 5, dtype=torch.float64).repeat(3, 1).to(DEV)
    codebook = torch.randn(4, 3, generator=gen, dtype=torch.float64).to(DEV)
    zg, vg, cg = (
        z.clone().requires_grad_(),
        values.clone().requires_grad_(),
        codebook.clone().requires_grad_(),
    )
    assert torch.autograd.gradcheck(lambda v: scalar_quantize(z, v)[0], (vg,))
    assert torch.autograd.gradcheck(lambda c: vector_quantize(z, c)[0], (cg,))
    assert torch.autograd.gradcheck(lambda x: latent_quantize(x, values, 0.0, 0.7)[2], (zg,))
    assert torch.autograd.gradcheck(lambda v: latent_quantize(z, v, 0.3, 0.0)[2], (vg,))


def test_opcheck_cuda():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(10, 4, generator=gen).to(DEV)
    values = torch.randn(4, 6, generator=gen).to(DEV)
    codebook = torch.randn(7, 4, generator=gen).to(DEV)
    torch.library.opcheck(torch.ops.latentquant.scalar_quantize.default, (z, values, True))
    torch.library.opcheck(torch.ops.latentquant.latent_quantize.default, (z, values, 0.1, 0.2, True))
    torch.library.opcheck(torch.ops.latentquant.vector_quantize.default, (z, codebook, True))
