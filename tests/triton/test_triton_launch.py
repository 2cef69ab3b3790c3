"""How the Triton launchers launch and check (GPU readiness, issue 12), on CPU tensors under the
interpreter or compiled on a GPU: direct launches (no wrap_triton side table), the device guard,
out-of-range indices raising the CPU kernels' ValueError, the capture-safe checks, the deterministic
scatters, no host-to-device copies in the latent backward, and exact ties."""

import pytest
import torch
from latentquant.triton_kernels import _common
from quant_checks import BACKWARD_BAD_INDEX
from triton_ops import DEVICE, OPS


@pytest.mark.parametrize(("op", "args"), BACKWARD_BAD_INDEX, ids=[b[0] for b in BACKWARD_BAD_INDEX])
def test_out_of_range_indices_raise_the_cpu_error(op, args):
    with pytest.raises(ValueError, match=rf"{op}: indices must lie in \[0, 3\), the codebook size"):
        OPS[op](*args(DEVICE))
    # The same message as the C++ kernel.
    with pytest.raises(ValueError, match=rf"{op}: indices must lie in \[0, 3\), the codebook size"):
        getattr(torch.ops.latentquant, op)(*args("cpu"))


def test_checks_are_skipped_while_capturing(monkeypatch):
    """While the stream captures a CUDA graph nothing is read back (no sync, nothing can raise); the
    kernels still write every finite element and skip bad indices instead of writing out of bounds."""
    monkeypatch.setattr(_common, "capturing", lambda t: True)
    z = torch.zeros(4, 3, device=DEVICE)
    z[1, 2] = float("nan")
    values = torch.linspace(-1, 1, 5, device=DEVICE).repeat(3, 1)
    z_q, idx = OPS["scalar_quantize"](z, values, True)
    assert torch.isfinite(z_q[0]).all() and idx.shape == (4, 3)
    OPS["latent_quantize"](z, values, 0.1, 0.1, True)
    OPS["vector_quantize"](z, torch.randn(5, 3, device=DEVICE), True)
    op, args = BACKWARD_BAD_INDEX[0]
    grad = OPS[op](*args(DEVICE))
    assert torch.equal(grad.cpu(), torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))


def test_checks_run_when_not_capturing():
    assert _common.checks_enabled(True, torch.zeros(1, device=DEVICE))
    assert not _common.checks_enabled(False, torch.zeros(1, device=DEVICE))


def test_launches_bypass_the_wrap_triton_side_table(monkeypatch):
    """Eager launches go straight to the kernel: never through wrap_triton's higher-order-op dispatch (whose
    side table grows without bound with compiled kernels on a GPU)."""
    from torch._higher_order_ops.triton_kernel_wrap import TraceableTritonKernelWrapper, kernel_side_table

    def no_wrapped_launches(self, grid):
        raise AssertionError("a launch went through torch.library.wrap_triton")

    monkeypatch.setattr(TraceableTritonKernelWrapper, "__getitem__", no_wrapped_launches)
    before = len(kernel_side_table.id_to_kernel)
    z = torch.randn(8, 3, device=DEVICE)
    values = torch.randn(3, 4, device=DEVICE)
    _, idx, _ = OPS["latent_quantize"](z, values, 0.1, 0.1, True)
    OPS["latent_quantize_backward"](z, torch.tensor(1.0, device=DEVICE), z, values, idx, 0.1, 0.1)
    OPS["vector_quantize"](z, values.t().contiguous(), True)
    assert len(kernel_side_table.id_to_kernel) == before


def test_device_guard_targets_the_tensor_device():
    """A tensor on cuda:1 launches with cuda:1 current (and so on its current stream), whatever the current
    device; CPU tensors (interpreter) need no guard."""
    assert not isinstance(_common.device_guard(torch.zeros(1)), torch.cuda.device)
    on_cuda1 = type("OnCuda1", (), {"device": torch.device("cuda", 1)})()  # device_guard reads only .device
    guard = _common.device_guard(on_cuda1)
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


def test_latent_backward_copies_nothing_from_the_host(monkeypatch):
    """The scales are kernel arguments and grad_loss is read on the device: no torch.tensor(...) per call
    (a host-to-device copy, illegal under CUDA-graph capture)."""
    z = torch.randn(6, 3, device=DEVICE)
    values = torch.randn(3, 4, device=DEVICE)
    _, idx, _ = OPS["latent_quantize"](z, values, 0.1, 0.1, True)
    grad_loss = torch.tensor(1.0, device=DEVICE)

    def no_host_tensors(*args, **kwargs):
        raise AssertionError("torch.tensor called inside the launcher")

    monkeypatch.setattr(torch, "tensor", no_host_tensors)
    OPS["latent_quantize_backward"](z, grad_loss, z, values, idx, 0.1, 0.1)


def test_deterministic_scatter_matches_the_atomic_one():
    gen = torch.Generator().manual_seed(0)
    n, d, k = 3000, 4, 5
    z = torch.randn(n, d, generator=gen, dtype=torch.float64).to(DEVICE)
    values = torch.randn(d, k, generator=gen, dtype=torch.float64).to(DEVICE)
    codebook = torch.randn(7, d, generator=gen, dtype=torch.float64).to(DEVICE)
    grad = torch.randn(n, d, generator=gen, dtype=torch.float64).to(DEVICE)
    _, idx = OPS["scalar_quantize"](z, values, True)
    _, vidx = OPS["vector_quantize"](z, codebook, True)

    def run():
        return (
            OPS["scalar_quantize_backward"](grad, idx, values),
            OPS["latent_quantize_backward"](
                grad, torch.ones((), dtype=torch.float64, device=DEVICE), z, values, idx, 0.3, 0.2
            )[1],
            OPS["vector_quantize_backward"](grad, vidx, codebook),
        )

    atomic = run()
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = run(), run()
    finally:
        torch.use_deterministic_algorithms(was)
    for a, b, c in zip(atomic, first, second):
        assert torch.equal(b, c)  # bit for bit, run to run
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_duplicate_codes_at_wide_codebooks_go_to_the_lowest_index():
    """C >= 128 with C % 4 != 0: identical codes get identical norms (accumulated in the kernel in column
    order) and the lower index wins, for z on the code and near it."""
    gen = torch.Generator().manual_seed(1)
    for c in (131, 257):
        codebook = torch.randn(70, c, generator=gen).to(DEVICE)
        codebook[65] = codebook[3]
        z = torch.cat([codebook[3:4], codebook[3:4] + 1e-3 * torch.randn(5, c, generator=gen).to(DEVICE)])
        _, idx = OPS["vector_quantize"](z, codebook, True)
        assert idx.tolist() == [3] * 6


def test_scalar_ties_at_exact_midpoints_go_to_the_lowest_index():
    values = torch.tensor([[0.5, -0.5, 0.0, 0.5, 1.0], [1.0, 0.0, 0.5, -1.0, 0.75]], device=DEVICE)
    z = torch.tensor([[0.25, 0.25], [0.75, 0.875], [-0.25, -0.5], [10.0, 0.5]], device=DEVICE)
    _, idx = OPS["scalar_quantize"](z, values, True)
    assert idx.tolist() == [[0, 1], [0, 0], [1, 1], [4, 2]]


def test_privatized_scatter_equals_the_per_element_one(monkeypatch):
    """Few bins (D * K <= 32): each program sums into private bins and adds each once; the gradients equal
    the per-element atomic scatter's (several programs, a partial last one, an out-of-range index)."""
    from latentquant.triton_kernels import scalar_quantize as sq

    assert sq.scatter_plan(12, False) == (16, 256, sq.PRIVATE_BLOCK)
    assert sq.scatter_plan(12, True)[0] == 0 and sq.scatter_plan(33, False)[0] == 0
    gen = torch.Generator().manual_seed(2)
    n, d, k = (2 * sq.PRIVATE_BLOCK + 301) // 3, 3, 4
    z = torch.randn(n, d, generator=gen, dtype=torch.float64).to(DEVICE)
    values = torch.randn(d, k, generator=gen, dtype=torch.float64).to(DEVICE)
    grad = torch.randn(n, d, generator=gen, dtype=torch.float64).to(DEVICE)
    _, idx = OPS["scalar_quantize"](z, values, True)
    one = torch.ones((), dtype=torch.float64, device=DEVICE)

    def run():
        return (
            OPS["scalar_quantize_backward"](grad, idx, values),
            *OPS["latent_quantize_backward"](grad, one, z, values, idx, 0.3, 0.2),
        )

    private = run()
    monkeypatch.setattr(sq, "PRIVATE_BINS", 0)
    per_element = run()
    for a, b in zip(private, per_element):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    bad = idx.clone()
    bad[n - 1, 2] = k
    monkeypatch.setattr(sq, "PRIVATE_BINS", 32)
    with pytest.raises(ValueError, match=r"scalar_quantize_backward: indices must lie in \[0, 4\)"):
        OPS["scalar_quantize_backward"](grad, bad, values)
