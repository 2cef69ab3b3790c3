"""The GPU kernels of the ops on CUDA tensors, through the dispatcher (``torch.ops.latentquant``): the CUDA
kernels (csrc/cuda/*.cu), or the Triton ones when run with ``LATENTQUANT_GPU_BACKEND=triton`` (as
benchmarks/gpu_check.sh does). The checks the Triton kernels get under the interpreter (tests/quant_checks.py)
plus what only a GPU shows: grid-stride loops that wrap on a 132-SM GPU (> 1.1M elements vectorized, > 270k
misaligned, VQ > 135k rows), > 2^31 elements, exact ties, a second device, a non-default stream, CUDA-graph
capture, torch.compile, gradients at large n with tight relative tolerances, k-NN MI against the C++ kernel.
Skipped without a GPU or without GPU kernels.
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
        ((100_003,), 12, 10),  # 1.2M elements: past one vectorized grid-stride sweep on 132 SMs
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
    [
        ((1,), 1, 1),
        ((9,), 3, 5),
        ((2, 21), 7, 70),
        ((40,), 33, 13),
        ((3000,), 64, 512),
        ((129,), 100, 130),
        ((140_001,), 3, 5),  # past one grid-stride sweep of 64-row tiles on 132 SMs
    ],
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
    n, d, k = 45_001, 7, 9  # 315k elements: past one unvectorized grid-stride sweep on 132 SMs
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


# ---- what a first GPU run must show (issue 12) ----


def _cuda_memory_gib() -> float:
    return torch.cuda.get_device_properties(0).total_memory / 2**30


@pytest.mark.skipif(
    not torch.cuda.is_available() or _cuda_memory_gib() < 48, reason="needs 48 GiB of GPU memory"
)
def test_scalar_quantize_past_2_31_elements():
    """float16 z with 2^31 + 8,000,008 elements (int64 offsets everywhere), checked chunk by chunk."""
    d, k = 8, 10
    n = (2**31 + 8_000_008) // d
    gen = torch.Generator(device=DEV).manual_seed(0)
    z = torch.randn(n, d, device=DEV, dtype=torch.float16, generator=gen)
    values = torch.linspace(-2, 2, k, device=DEV, dtype=torch.float16).repeat(d, 1)
    z_q, idx = OPS["scalar_quantize"](z, values, True)
    from latentquant.reference.scalar_quantize import scalar_quantize_ref

    step = 2**23
    for r0 in list(range(0, n, step))[:: max(1, n // step // 8)] + [n - step]:
        ref_q, ref_i = scalar_quantize_ref(z[r0 : r0 + step], values)
        assert torch.equal(idx[r0 : r0 + step], ref_i) and torch.equal(z_q[r0 : r0 + step], ref_q), r0
    del z_q, idx, z


def test_ties_at_exact_midpoints_and_duplicate_wide_codes_cuda():
    values = torch.tensor([[0.5, -0.5, 0.0, 0.5, 1.0], [1.0, 0.0, 0.5, -1.0, 0.75]], device=DEV)
    z = torch.tensor([[0.25, 0.25], [0.75, 0.875], [-0.25, -0.5], [10.0, 0.5]], device=DEV)
    assert OPS["scalar_quantize"](z, values, True)[1].tolist() == [[0, 1], [0, 0], [1, 1], [4, 2]]
    gen = torch.Generator().manual_seed(1)
    for c in (131, 257, 1027):
        for dtype in (torch.float32, torch.float64):
            codebook = torch.randn(300, c, generator=gen, dtype=dtype)
            for dup in (129, 258, 299):
                codebook[dup] = codebook[3]  # rows at different alignments
            z = torch.cat(
                [codebook[3:4], codebook[3:4] + 1e-3 * torch.randn(7, c, generator=gen, dtype=dtype)]
            )
            assert OPS["vector_quantize"](z.to(DEV), codebook.to(DEV), True)[1].tolist() == [3] * 8


def _step(z, values, codebook, check=True):
    """One forward + backward of each op through the dispatcher; returns every output."""
    z_hat, idx, loss = OPS["latent_quantize"](z, values, 0.3, 0.2, check)
    gz, gv = OPS["latent_quantize_backward"](
        z, torch.full((), 1.5, dtype=loss.dtype, device=z.device), z, values, idx, 0.3, 0.2
    )
    z_q, sidx = OPS["scalar_quantize"](z, values, check)
    gs = OPS["scalar_quantize_backward"](z, sidx, values)
    v_q, vidx = OPS["vector_quantize"](z, codebook, check)
    gc = OPS["vector_quantize_backward"](z, vidx, codebook)
    return [z_hat, idx, loss, gz, gv, z_q, sidx, gs, v_q, vidx, gc]


def _inputs(device, n=5000, d=6, k=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=gen, dtype=torch.float64).to(device)
    values = torch.randn(d, k, generator=gen, dtype=torch.float64).to(device)
    codebook = torch.randn(11, d, generator=gen, dtype=torch.float64).to(device)
    return z, values, codebook


def _assert_same(got, want):
    for a, b in zip(got, want):
        if a.is_floating_point():
            torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-12, atol=1e-12)
        else:
            assert torch.equal(a.cpu(), b.cpu())


def test_non_default_stream():
    """Launches go to the current stream: results computed on a side stream equal the default stream's."""
    want = _step(*_inputs(DEV))
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        inputs = _inputs(DEV)
        got = _step(*inputs)
    side.synchronize()
    _assert_same(got, want)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device_while_device_0_is_current():
    """Tensors on cuda:1 with cuda:0 current: every launch runs on cuda:1 (device guard)."""
    want = _step(*_inputs(DEV))
    with torch.cuda.device(0):
        got = _step(*_inputs("cuda:1"))
    assert all(t.device == torch.device("cuda:1") for t in got)
    _assert_same(got, want)


def test_cuda_graph_capture_with_checks_on():
    """check_finite=True and the index checks read nothing back while capturing (no sync, no .item()), so
    the ops capture; a replay on new data equals eager."""
    z, values, codebook = _inputs(DEV)
    static_z = z.clone()
    _step(static_z, values, codebook)  # warm-up (compiles Triton kernels, allocator pools)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = _step(static_z, values, codebook)
    z2 = _inputs(DEV, seed=1)[0]
    static_z.copy_(z2)
    graph.replay()
    torch.cuda.synchronize()
    _assert_same(outs, _step(z2, values, codebook))
    # Outside capture the checks are back.
    bad = z2.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="latent_quantize: z contains NaN or Inf"):
        OPS["latent_quantize"](bad, values, 0.3, 0.2, True)


def test_torch_compile_on_cuda():
    """Inductor on CUDA, channel-first at batch 1 (a transposed (H*W, C) view: the fakes' strides must match
    the kernels'), fullgraph, and mode="reduce-overhead" (CUDA graphs) with the default checks on."""
    from latentquant.ops import latent_quantize, vector_quantize

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 6, 8, 8, generator=gen).to(DEV)  # (B, C, H, W)
    values = torch.linspace(-1, 1, 7).repeat(6, 1).to(DEV)
    codebook = torch.randn(9, 6, generator=gen).to(DEV)

    def f(x):
        z = x.permute(0, 2, 3, 1).reshape(-1, 6)
        z_hat, idx, loss = latent_quantize(z, values)
        v_q, vidx = vector_quantize(z, codebook)
        return z_hat.sum(0) + v_q.sum(0), idx, vidx, loss

    want = f(x)
    for mode in (None, "reduce-overhead"):
        compiled = torch.compile(f, fullgraph=True, mode=mode)
        for _ in range(3):
            got = compiled(x)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_terms_at_large_n(dtype):
    """At n = 2^22 the 2 qw (z_q - z) / n and 2 cw (z - z_q) / n terms are tiny: compared on their own
    (grad_z_hat = 0) with relative tolerances, so a dropped, halved or sign-flipped term fails."""
    gen = torch.Generator().manual_seed(6)
    n, d, k = 2**22 // 8, 8, 10
    z = (torch.randn(n, d, generator=gen, dtype=torch.float64) * 0.7).to(dtype).to(DEV)
    values = torch.linspace(-1, 1, k, dtype=dtype).repeat(d, 1).to(DEV)
    qw, cw = 0.01, 0.25
    z_hat, idx, loss = OPS["latent_quantize"](z, values, qw, cw, True)
    diff = z.double() - z_hat.double()
    numel = z.numel()
    grad_z, grad_values = OPS["latent_quantize_backward"](
        torch.zeros_like(z), torch.tensor(1.0, dtype=dtype, device=DEV), z, values, idx, qw, cw
    )
    want_gz = 2 * cw * diff / numel
    want_gv = torch.zeros(d * k, dtype=torch.float64, device=DEV).index_add_(
        0, (idx + torch.arange(d, device=DEV) * k).reshape(-1), (-2 * qw * diff / numel).reshape(-1)
    )
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(grad_z.double(), want_gz, rtol=rtol, atol=rtol * float(want_gz.abs().max()))
    torch.testing.assert_close(
        grad_values.double().reshape(-1), want_gv, rtol=rtol, atol=rtol * float(want_gv.abs().max())
    )
    torch.testing.assert_close(loss.double(), (qw + cw) * (diff**2).sum() / numel, rtol=rtol, atol=0)


def test_deterministic_mode_gives_identical_gradients():
    """torch.use_deterministic_algorithms(True): the scatters take the index_put_ path, bit-identical run to
    run (the atomic path is not), and equal to it within rounding."""
    z, values, codebook = _inputs(DEV, n=200_000, d=4, k=5)
    atomic = _step(z, values, codebook)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = _step(z, values, codebook), _step(z, values, codebook)
    finally:
        torch.use_deterministic_algorithms(was)
    for a, b, c in zip(first, second, atomic):
        assert torch.equal(a, b)
        if a.is_floating_point():
            torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_out_of_range_indices_raise_like_the_cpu():
    """A ValueError with the CPU's message (the CUDA kernels hit a device assert that killed the context);
    the device stays usable afterwards."""
    for op, args in quant_checks.BACKWARD_BAD_INDEX:
        with pytest.raises(ValueError, match=rf"{op}: indices must lie in \[0, 3\)"):
            getattr(torch.ops.latentquant, op)(*args(DEV))
    assert float(torch.ones(3, device=DEV).sum()) == 3.0


@pytest.mark.parametrize("layout", ["transposed", "sliced"])
def test_opcheck_layouts_cuda(layout):
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(10, 4, generator=gen).to(DEV)
    z = (
        base.t().contiguous().t()
        if layout == "transposed"
        else torch.randn(10, 9, generator=gen).to(DEV)[:, 1:9:2]
    )
    values = torch.randn(6, 4, generator=gen).to(DEV).t()
    codebook = torch.randn(7, 4, generator=gen).to(DEV)
    torch.library.opcheck(torch.ops.latentquant.scalar_quantize.default, (z, values, True))
    torch.library.opcheck(torch.ops.latentquant.latent_quantize.default, (z, values, 0.1, 0.2, True))
    torch.library.opcheck(torch.ops.latentquant.vector_quantize.default, (z, codebook, True))


@pytest.mark.skipif(
    not _registry.has_kernel("knn_mi_cd", "CUDA"), reason="no GPU kernel for knn_mi_cd (triton?)"
)
@pytest.mark.parametrize(("n", "dim"), [(5000, 1), (1200, 2)])
def test_knn_mi_gpu_equals_the_cpu_kernel(n, dim):
    """k-NN MI on CUDA against the C++ kernel at 1e-12, with ties and a singleton label."""
    import numpy as np

    rng = np.random.default_rng(n)
    y = rng.integers(0, 7, (n, 3))
    x = rng.standard_normal((n, 4, dim)) + 0.5 * y[:, :1, None]
    x[: n // 5] = np.round(x[: n // 5], 1)
    y[0, 0] = 99
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    want = torch.ops.latentquant.knn_mi_cd(xt, yt, 3)
    got = torch.ops.latentquant.knn_mi_cd(xt.to(DEV), yt.to(DEV), 3)
    torch.testing.assert_close(got.cpu(), want, atol=1e-12, rtol=0)
    yc = torch.from_numpy(rng.standard_normal((n, 2, 1)) + x[:, :2, :1])
    want = torch.ops.latentquant.knn_mi_cc(xt, yc, 3)
    got = torch.ops.latentquant.knn_mi_cc(xt.to(DEV), yc.to(DEV), 3)
    torch.testing.assert_close(got.cpu(), want, atol=1e-12, rtol=0)
