"""latentquant.ops.scalar_quantize against its reference: values, ties, layouts, gradients, registration."""

import pytest
import torch
from kernel_utils import DTYPES, SHAPES, non_contiguous, poisoned_allocations, random_codebook

from latentquant.ops import scalar_quantize
from latentquant.reference.scalar_quantize import scalar_quantize_ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 2, 10, 17])
def test_matches_reference(shape, dtype, k):
    g = torch.Generator().manual_seed(hash((shape, k)) % 2**31)
    z = (torch.randn(shape, generator=g, dtype=torch.float64) * 0.8).to(dtype)
    values = random_codebook(shape[-1], k, dtype, g)
    with poisoned_allocations():
        z_q, idx = scalar_quantize(z, values)
    z_q_ref, idx_ref = scalar_quantize_ref(z, values)
    assert z_q.shape == z.shape and idx.shape == z.shape
    assert z_q.dtype == dtype and idx.dtype == torch.int64
    torch.testing.assert_close(idx, idx_ref, rtol=0, atol=0)
    torch.testing.assert_close(z_q, z_q_ref, rtol=0, atol=0)


def test_ties_go_to_lowest_index():
    values = torch.tensor([[0.5, -0.5, 0.0, 0.5, 1.0]])
    # 0.25 is equidistant from 0.5 (k=0) and 0.0 (k=2); 0.5 appears at k=0 and k=3; 0.75 between 0.5 and 1.0.
    z = torch.tensor([[0.25], [0.5], [0.75], [-0.25], [10.0]])
    _, idx = scalar_quantize(z, values)
    assert idx.flatten().tolist() == [0, 0, 0, 1, 4]
    assert idx.flatten().tolist() == scalar_quantize_ref(z, values)[1].flatten().tolist()


def test_ragged_padding_never_wins():
    values = torch.tensor([[-1.0, 1.0, 1.0, 1.0], [-1.0, 0.0, 1.0, 2.0]])
    z = torch.tensor([[5.0, 5.0], [1.0, 1.0]])
    _, idx = scalar_quantize(z, values)
    assert idx.tolist() == [[1, 3], [1, 2]]


def test_non_contiguous_and_mixed_dtypes():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(9, 6, generator=g)
    values = random_codebook(6, 7, torch.float64, g)
    for zz in (non_contiguous(z), z.t().contiguous().t(), z[::2]):
        z_q, idx = scalar_quantize(zz, values)
        z_q_ref, idx_ref = scalar_quantize_ref(zz, values)
        assert torch.equal(idx, idx_ref) and torch.equal(z_q, z_q_ref) and z_q.dtype == torch.float32


def test_gradient_matches_reference_scatter():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(50, 4, 3, generator=g, dtype=torch.float64)
    values = random_codebook(3, 5, torch.float64, g).requires_grad_()
    upstream = torch.randn(50, 4, 3, generator=g, dtype=torch.float64)
    (scalar_quantize(z, values)[0] * upstream).sum().backward()
    grad = values.grad.clone()
    values.grad = None
    (scalar_quantize_ref(z, values)[0] * upstream).sum().backward()
    torch.testing.assert_close(grad, values.grad, rtol=1e-12, atol=1e-12)


def test_no_gradient_to_z():
    z = torch.randn(4, 3, requires_grad=True)
    values = torch.randn(3, 4, requires_grad=True)
    z_q, _ = scalar_quantize(z, values)
    z_q.sum().backward()
    assert z.grad is None and values.grad is not None


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(13, 3, generator=g, dtype=torch.float64)
    values = random_codebook(3, 4, torch.float64, g).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: scalar_quantize(z, v)[0], (values,))


def test_backward_is_deterministic_across_thread_counts():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(20000, 6, generator=g)
    values = random_codebook(6, 10, torch.float32, g)
    upstream = torch.randn(20000, 6, generator=g)
    idx = scalar_quantize(z, values)[1]
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(torch.ops.latentquant.scalar_quantize_backward(upstream, idx, values))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


def test_opcheck():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(16, 3, generator=g, dtype=torch.float64)
    values = random_codebook(3, 5, torch.float64, g).requires_grad_()
    torch.library.opcheck(torch.ops.latentquant.scalar_quantize.default, (z, values, True))
    idx = scalar_quantize(z, values)[1].reshape(16, 3)
    torch.library.opcheck(
        torch.ops.latentquant.scalar_quantize_backward.default, (torch.randn_like(z), idx, values)
    )


def test_torch_compile_fullgraph():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, 7, 3, generator=g)
    values = random_codebook(3, 6, torch.float32, g).requires_grad_()

    def f(z, values):
        z_q, idx = scalar_quantize(z, values)
        return (z_q * 2).sum(), idx

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out, idx = compiled(z, values)
    out.backward()
    grad = values.grad.clone()
    values.grad = None
    out_e, idx_e = f(z, values)
    out_e.backward()
    assert torch.equal(idx, idx_e)
    torch.testing.assert_close(out, out_e)
    torch.testing.assert_close(grad, values.grad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_z_raises(bad):
    z = torch.zeros(5, 2)
    z[3, 1] = bad
    values = torch.randn(2, 3)
    with pytest.raises(ValueError, match="scalar_quantize: z contains NaN or Inf"):
        scalar_quantize(z, values)
    _, idx = scalar_quantize(z, values, check_finite=False)
    assert idx.shape == (5, 2)


@pytest.mark.parametrize(
    "z, values, message",
    [
        (torch.zeros(4, 3), torch.zeros(2, 5), r"values must have shape \(D, K\) with D = z.shape\[-1\] = 3"),
        (torch.zeros(4, 3), torch.zeros(3), "values must be 2-D"),
        (torch.zeros(4, 3), torch.zeros(3, 0), "values is empty"),
        (
            torch.zeros(4, 3, dtype=torch.int64),
            torch.zeros(3, 2),
            "z must be float16, bfloat16, float32 or float64",
        ),
        (torch.zeros(4, 3), torch.zeros(3, 2, dtype=torch.int32), "values must be float16"),
        (torch.tensor(1.0), torch.zeros(1, 2), "at least one dimension"),
        (torch.zeros(4, 2), torch.tensor([[0.0, float("nan")], [0.0, 1.0]]), "NaN or Inf"),
    ],
)
def test_bad_input_messages(z, values, message):
    with pytest.raises(ValueError, match=message):
        scalar_quantize(z, values)


def test_backward_ops_reject_out_of_range_indices():
    ops = torch.ops.latentquant
    with pytest.raises(ValueError, match=r"scalar_quantize_backward: indices must lie in \[0, 3\)"):
        ops.scalar_quantize_backward(torch.ones(2, 2), torch.tensor([[0, 5], [0, 0]]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"vector_quantize_backward: indices must lie in \[0, 3\)"):
        ops.vector_quantize_backward(torch.ones(2, 4), torch.tensor([0, -1]), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"latent_quantize_backward: indices must lie in \[0, 3\)"):
        ops.latent_quantize_backward(
            torch.ones(2, 2),
            torch.tensor(1.0),
            torch.ones(2, 2),
            torch.zeros(2, 3),
            torch.tensor([[0, 3], [1, 1]]),
            0.1,
            0.1,
        )


# ---- memory, raw-op validation, layouts (issues 9 and 12) ----

PEAK_RSS = r"""
import resource, sys, torch
import latentquant.ops
z, values = torch.randn(2, 1), torch.randn(1, 2**20)
latentquant.ops.scalar_quantize(z, values)  # warm-up: lazy initialisations are not the table
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
latentquant.ops.scalar_quantize(z, values)
latentquant.ops.latent_quantize(z, values)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_wide_codebook_memory_is_bounded():
    """K = 2^20 values for one latent: the replicated lookup table is capped at 4 MiB (it took 1 GiB, and
    K = 2^24 took 16 GiB). Peak RSS growth over the calls, measured in a fresh process."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS],
        capture_output=True,
        text=True,
        check=True,
        env={"OMP_NUM_THREADS": "1"},
    )
    grown_mib = int(out.stdout.strip().splitlines()[-1])
    assert grown_mib < 48, f"peak RSS grew by {grown_mib} MiB"


@pytest.mark.parametrize(("d", "k"), [(1, 2**20), (3, 300_000), (3, 400_000), (300, 5000)])
def test_codebooks_past_the_table_budget_match_reference(d, k):
    """Codebooks whose table fits only with fewer rows per block (K D = 3 x 300,000 floats) or not at all
    (the direct path: 3 x 400,000, 1 x 2^20 with doubles) give the reference's indices and values, ties
    included."""
    g = torch.Generator().manual_seed(d + k)
    dtype = torch.float64 if k == 2**20 else torch.float32
    values = random_codebook(d, k, dtype, g)
    values[:, k - 1] = values[:, 0]  # a duplicate: index 0 must win
    z = (torch.randn(6, d, generator=g, dtype=torch.float64) * 0.8).to(dtype)
    z[0] = values[:, 0]
    z_q, idx = scalar_quantize(z, values)
    z_q_ref, idx_ref = scalar_quantize_ref(z, values)
    assert torch.equal(idx, idx_ref) and torch.equal(z_q, z_q_ref)
    assert not (idx == k - 1).any()


def test_codebook_that_cannot_fit_in_memory_is_a_clear_error():
    """A (1, 2^50) codebook (a stride-0 view) would need a 4 PiB working copy: a ValueError naming the op
    before anything is allocated, not an allocator failure or the OOM killer."""
    values = torch.zeros(1, 1).expand(1, 2**50)
    with pytest.raises(
        ValueError, match="scalar_quantize: values needs 1125899906842624 elements of 4 bytes"
    ):
        scalar_quantize(torch.zeros(2, 1), values)
    with pytest.raises(ValueError, match="scalar_quantize_backward: the gradient accumulator"):
        torch.ops.latentquant.scalar_quantize_backward(
            torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.long), values
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            (torch.ones(4, 2), torch.zeros(4, 2, dtype=torch.long), torch.zeros(3, 5)),
            r"values must have shape \(D, K\) with D = grad_z_q.shape\[1\] = 2, got values of shape \[3, 5\]",
        ),
        (
            (torch.ones(4, 2), torch.zeros(4, 3, dtype=torch.long), torch.zeros(2, 5)),
            r"grad_z_q \[4, 2\] and indices \[4, 3\] must have the same shape",
        ),
        (
            (torch.ones(4, 2, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long), torch.zeros(2, 5)),
            "grad_z_q must be a floating-point",
        ),
        (
            (torch.ones(8), torch.zeros(8, dtype=torch.long), torch.zeros(2, 5)),
            "grad_z_q must have 2 dimensions",
        ),
    ],
)
def test_raw_backward_op_rejects_mismatched_arguments(args, message):
    """The raw op validates like the public wrapper (it returned a (2, 5) gradient for (3, 5) values)."""
    with pytest.raises(ValueError, match=f"scalar_quantize_backward: {message}"):
        torch.ops.latentquant.scalar_quantize_backward(*args)


@pytest.mark.parametrize("lead", [(5,), (2, 3), (0,)])
def test_zero_width_latents_empty_in_empty_out(lead):
    """z (..., 0) with values (0, K): empty in, empty out (it raised a reshape error)."""
    z = torch.randn(*lead, 0, requires_grad=True)
    values = torch.randn(0, 4, requires_grad=True)
    z_q, idx = scalar_quantize(z, values)
    assert z_q.shape == z.shape and idx.shape == z.shape and idx.dtype == torch.long
    z_q.sum().backward()
    assert values.grad.shape == (0, 4)


def _layouts(n: int, d: int) -> dict[str, torch.Tensor]:
    """2-D (n, d) inputs in the layouts a caller hands the raw ops."""
    g = torch.Generator().manual_seed(n * d)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    wide = torch.randn(n, 2 * d + 1, generator=g, dtype=torch.float64)
    chan = torch.randn(1, d, n, 1, generator=g, dtype=torch.float64).to(memory_format=torch.channels_last)
    return {
        "transposed": base.t().contiguous().t(),
        "sliced": wide[:, 1 : 2 * d + 1 : 2],
        "channels_last": chan.permute(0, 2, 3, 1).reshape(n, d),  # a channel-first layer at batch 1
        "row_sliced": torch.randn(2 * n, d, generator=g, dtype=torch.float64)[::2],
    }


@pytest.mark.parametrize("layout", ["transposed", "sliced", "channels_last", "row_sliced"])
def test_opcheck_on_non_contiguous_layouts(layout):
    """The fakes return the layout the kernels return (contiguous), whatever the input's strides
    (opcheck reported 'Stride mismatch (4,1) vs (1,6)' on a transposed input)."""
    z = _layouts(6, 4)[layout]
    values = _layouts(5, 4)[layout].t()  # (4, 5), a transposed view for "transposed"
    torch.library.opcheck(torch.ops.latentquant.scalar_quantize.default, (z, values, True))
    idx = scalar_quantize(z, values)[1]
    torch.library.opcheck(
        torch.ops.latentquant.scalar_quantize_backward.default, (z.clone() * 0 + z, idx, values)
    )
    torch.library.opcheck(torch.ops.latentquant.latent_quantize.default, (z, values, 0.1, 0.2, True))
    grad_loss = torch.tensor(1.5, dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.latentquant.latent_quantize_backward.default, (z, grad_loss, z, values, idx, 0.1, 0.2)
    )
    codebook = _layouts(7, 4)[layout]
    torch.library.opcheck(torch.ops.latentquant.vector_quantize.default, (z, codebook, True))
    vidx = torch.ops.latentquant.vector_quantize(z, codebook, True)[1]
    torch.library.opcheck(torch.ops.latentquant.vector_quantize_backward.default, (z, vidx, codebook))


def test_check_finite_false_skips_the_codebook_check_too():
    """check_finite covers z and the codebook on every backend (CUDA/Triton skip both; the CPU checked the
    codebook regardless)."""
    values = torch.tensor([[0.0, float("nan"), 1.0]])
    z = torch.tensor([[0.2], [0.9]])
    with pytest.raises(ValueError, match="values contains NaN or Inf"):
        scalar_quantize(z, values)
    z_q, idx = scalar_quantize(z, values, check_finite=False)
    assert idx.shape == (2, 1)
