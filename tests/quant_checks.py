"""Checks of a backend's kernels for the three quantization ops, shared by the Triton-interpreter tests
(tests/triton/) and the CUDA tests (tests/test_cuda_kernels.py).

``ops`` maps op names to callables with the op signatures (2-D inputs, as the public wrappers pass them):
``latentquant.triton_kernels.<op>.KERNELS`` or ``torch.ops.latentquant.<op>``. Expectations come from
the references in ``latentquant.reference`` (indices, values) and from the reference math in float64
(losses and gradients, rounded once to the output dtype and compared with ``kernel_utils.tol``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from kernel_utils import non_contiguous, poisoned_allocations, random_codebook, tol

from latentquant.reference.latent_quantize import latent_quantize_ref
from latentquant.reference.scalar_quantize import scalar_quantize_ref
from latentquant.reference.vector_quantize import vector_quantize_ref

Ops = dict[str, Callable]

# Backward inputs, per op, with one index outside [0, 3) (the codebook size): every backend raises the C++
# kernels' ValueError. Each entry: (op name, device -> the op's arguments).
BACKWARD_BAD_INDEX: list[tuple[str, Callable[[str], tuple]]] = [
    (
        "scalar_quantize_backward",
        lambda dev: (
            torch.ones(2, 2, device=dev),
            torch.tensor([[0, 5], [0, 0]], device=dev),
            torch.zeros(2, 3, device=dev),
        ),
    ),
    (
        "vector_quantize_backward",
        lambda dev: (
            torch.ones(2, 4, device=dev),
            torch.tensor([0, -1], device=dev),
            torch.zeros(3, 4, device=dev),
        ),
    ),
    (
        "latent_quantize_backward",
        lambda dev: (
            torch.ones(2, 2, device=dev),
            torch.tensor(1.0, device=dev),
            torch.ones(2, 2, device=dev),
            torch.zeros(2, 3, device=dev),
            torch.tensor([[0, 3], [1, 1]], device=dev),
            0.1,
            0.1,
        ),
    ),
]


def _compute(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def make_latents(
    lead: tuple[int, ...], d: int, dtype: torch.dtype, device: str, gen: torch.Generator, strided: bool
) -> torch.Tensor:
    """z (*lead, d), standard normal scaled to the codebook range; every other element of a wider buffer
    when ``strided`` (a non-contiguous tensor whose flattening to (N, d) is still a strided view)."""
    z = (torch.randn(*lead, d, generator=gen, dtype=torch.float64) * 0.8).to(dtype).to(device)
    return non_contiguous(z) if strided else z


def flat(z: torch.Tensor) -> torch.Tensor:
    """What the public wrappers pass to the kernels: leading dimensions flattened, no copy."""
    return z.reshape(-1, z.shape[-1])


def expected_scatter(contrib: torch.Tensor, bins: torch.Tensor, num_bins: int) -> torch.Tensor:
    """sum of contrib[i] into bins[i], in float64."""
    out = torch.zeros(num_bins, dtype=torch.float64, device=contrib.device)
    return out.index_add_(0, bins.reshape(-1), contrib.reshape(-1).to(torch.float64))


def scalar_bins(indices: torch.Tensor, k: int) -> torch.Tensor:
    d = indices.shape[-1]
    return torch.arange(d, device=indices.device) * k + indices


def scatter_modes(backward: Callable[[], object]) -> list[object]:
    """``backward()`` twice: under ``poisoned_allocations()`` (deterministic algorithms on: the scatters take
    their deterministic path, and unwritten outputs show as NaN) and plainly (the atomic scatters)."""
    with poisoned_allocations():
        deterministic = backward()
    return [deterministic, backward()]


# ---- scalar_quantize ----


def check_scalar_quantize(
    ops: Ops, lead, d, k, dtype, vdtype, device, strided=False, ties=False, seed=0
) -> None:
    gen = torch.Generator().manual_seed(seed)
    z = make_latents(lead, d, dtype, device, gen, strided)
    values = random_codebook(d, k, vdtype, gen).to(device)
    z2 = flat(z)
    if ties and k >= 3 and d:
        values[:, 2] = values[:, 0]  # duplicate value: index 0 must win
        if z2.shape[0]:
            z2[0] = values[:, 0].to(dtype)  # exactly on the duplicated value
    with poisoned_allocations():
        z_q, indices = ops["scalar_quantize"](z2, values, True)
    ref_q, ref_i = scalar_quantize_ref(z2, values)
    assert z_q.dtype == z.dtype and indices.dtype == torch.int64
    assert z_q.shape == z2.shape and indices.shape == z2.shape
    torch.testing.assert_close(indices, ref_i, rtol=0, atol=0)
    torch.testing.assert_close(z_q, ref_q, rtol=0, atol=0, equal_nan=False)
    if ties and k >= 3:
        assert not (indices == 2).any(), "a duplicated value must resolve to its lowest index"

    grad = torch.randn(z2.shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    expected = expected_scatter(grad, scalar_bins(indices, k), d * k).view(d, k)
    for grad_values in scatter_modes(lambda: ops["scalar_quantize_backward"](grad, indices, values)):
        assert grad_values.dtype == values.dtype and grad_values.shape == values.shape
        assert grad_values.is_contiguous()
        torch.testing.assert_close(grad_values, expected.to(vdtype), **tol(vdtype))


# ---- latent_quantize ----


def check_latent_quantize(
    ops: Ops, lead, d, k, dtype, vdtype, device, strided=False, ties=False, seed=0, qw=0.01, cw=0.25
) -> None:
    gen = torch.Generator().manual_seed(seed)
    z = make_latents(lead, d, dtype, device, gen, strided)
    values = random_codebook(d, k, vdtype, gen).to(device)
    if ties and k >= 2 and d:
        values[:, 1] = values[:, 0]
    z2 = flat(z)
    with poisoned_allocations():
        z_hat, indices, aux_loss = ops["latent_quantize"](z2, values, qw, cw, True)
    # z_hat has the value of z_q exactly (the reference's ``z + (z_q - z)`` rounds again in low precision).
    ref_q, ref_i = scalar_quantize_ref(z2, values)
    ct = _compute(z, values)
    torch.testing.assert_close(indices, ref_i, rtol=0, atol=0)
    torch.testing.assert_close(z_hat, ref_q, rtol=0, atol=0)
    if ties and k >= 2:
        assert not (indices == 1).any(), "a duplicated value must resolve to its lowest index"
    assert aux_loss.shape == () and aux_loss.dtype == ct
    # The loss math in float64 with the chosen values at full precision.
    chosen = values.to(torch.float64).gather(1, indices.t()).t() if z2.numel() else z2.to(torch.float64)
    diff = z2.to(torch.float64) - chosen
    n = max(z2.numel(), 1)
    expected_loss = (qw + cw) * (diff**2).sum() / n
    torch.testing.assert_close(aux_loss, expected_loss.to(ct), **tol(ct))

    grad_z_hat = torch.randn(z2.shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    grad_loss = torch.tensor(1.7, dtype=ct, device=device)
    expected_gz = grad_z_hat.to(torch.float64) + 1.7 * 2 * cw * diff / n
    expected_gv = expected_scatter(-1.7 * 2 * qw * diff / n, scalar_bins(indices, k), d * k).view(d, k)
    for grad_z, grad_values in scatter_modes(
        lambda: ops["latent_quantize_backward"](grad_z_hat, grad_loss, z2, values, indices, qw, cw)
    ):
        assert grad_z.dtype == z.dtype and grad_z.shape == z2.shape
        assert grad_values.dtype == values.dtype and grad_values.shape == values.shape
        torch.testing.assert_close(grad_z, expected_gz.to(dtype), **tol(dtype))
        torch.testing.assert_close(grad_values, expected_gv.to(vdtype), **tol(vdtype))


def check_latent_matches_reference_autograd(ops: Ops, dtype, device) -> None:
    """Same-dtype float32/float64: the fused backward equals autograd through the reference."""
    gen = torch.Generator().manual_seed(3)
    z = make_latents((9,), 5, dtype, device, gen, False)
    values = random_codebook(5, 6, dtype, gen).to(device)
    qw, cw = 0.3, 0.7
    z_hat, indices, loss = ops["latent_quantize"](z, values, qw, cw, True)
    zr, vr = z.clone().requires_grad_(), values.clone().requires_grad_()
    ref_hat, _, ref_loss = latent_quantize_ref(zr, vr, qw, cw)
    g = torch.randn(z.shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    (ref_hat * g).sum().add(ref_loss * 2.0).backward()
    grad_z, grad_values = ops["latent_quantize_backward"](
        g, torch.tensor(2.0, dtype=dtype, device=device), z, values, indices, qw, cw
    )
    torch.testing.assert_close(loss, ref_loss.detach(), **tol(dtype))
    torch.testing.assert_close(grad_z, zr.grad, **tol(dtype))
    torch.testing.assert_close(grad_values, vr.grad, **tol(dtype))


# ---- vector_quantize ----


def check_vector_quantize(
    ops: Ops, lead, c, k, dtype, cdtype, device, strided=False, ties=False, seed=0
) -> None:
    gen = torch.Generator().manual_seed(seed)
    z = make_latents(lead, c, dtype, device, gen, strided)
    codebook = (torch.rand(k, c, generator=gen, dtype=torch.float64) * 2 - 1).to(cdtype).to(device)
    z2 = flat(z)
    if ties and k >= 3:
        codebook[k - 1] = codebook[1]  # exact duplicate: index 1 must win over k - 1
        if z2.shape[0]:
            z2[0] = codebook[1].to(dtype)  # z on the duplicated code
    with poisoned_allocations():
        z_q, indices = ops["vector_quantize"](z2, codebook, True)
    _, ref_i = vector_quantize_ref(z2, codebook)
    assert z_q.dtype == z.dtype and z_q.shape == z2.shape
    assert indices.dtype == torch.int64 and indices.shape == (z2.shape[0],)
    ct = _compute(z, codebook)
    # Exact distances in float64; the kernels use ||c||^2 - 2 z.c in ct, so a code whose distance is within
    # the rounding of that expansion of the best one may be chosen instead (DESIGN §3 allows it).
    zf, cf = z2.to(torch.float64), codebook.to(torch.float64)
    dist = ((zf[:, None, :] - cf[None, :, :]) ** 2).sum(-1)
    eps = torch.finfo(ct).eps
    slack = 8 * eps * ((zf**2).sum(-1) + (cf**2).sum(-1).max() + 1) * max(c, 1)
    if z2.shape[0]:
        chosen = dist.gather(1, indices[:, None]).squeeze(1)
        best = dist.gather(1, ref_i[:, None]).squeeze(1)
        assert bool((chosen <= best + slack).all()), "a chosen code is farther than the nearest one"
        second = dist.clone()
        second.scatter_(1, ref_i[:, None], float("inf"))
        clear = (second.min(1).values - best) > 2 * slack  # rows without a near-tie
        clear |= (dist == best[:, None]).sum(1) == (dist <= (best + 2 * slack)[:, None]).sum(1)
        torch.testing.assert_close(indices[clear], ref_i[clear], rtol=0, atol=0)
    if ties and k >= 3:
        assert not (indices == k - 1).any(), "an exact duplicate code must resolve to the lowest index"
        if z2.shape[0] and dtype == cdtype:
            assert int(indices[0]) == 1
    torch.testing.assert_close(z_q, codebook[indices].to(dtype), rtol=0, atol=0)

    grad = torch.randn(z2.shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    bins = indices[:, None] * c + torch.arange(c, device=device)
    expected = expected_scatter(grad, bins, k * c).view(k, c)
    for grad_codebook in scatter_modes(lambda: ops["vector_quantize_backward"](grad, indices, codebook)):
        assert grad_codebook.dtype == codebook.dtype and grad_codebook.shape == codebook.shape
        torch.testing.assert_close(grad_codebook, expected.to(cdtype), **tol(cdtype))


# ---- errors and empty input ----


def check_not_finite(ops: Ops, device) -> None:
    z = torch.zeros(4, 3, device=device)
    values = torch.linspace(-1, 1, 6, device=device).repeat(3, 1)
    codebook = torch.randn(5, 3, device=device)
    for bad in (float("nan"), float("inf")):
        zb = z.clone()
        zb[2, 1] = bad
        with pytest.raises(ValueError, match="scalar_quantize: z contains NaN or Inf"):
            ops["scalar_quantize"](zb, values, True)
        with pytest.raises(ValueError, match="latent_quantize: z contains NaN or Inf"):
            ops["latent_quantize"](zb, values, 0.1, 0.1, True)
        with pytest.raises(ValueError, match="vector_quantize: z contains NaN or Inf"):
            ops["vector_quantize"](zb, codebook, True)
        # check_finite=False skips the check and still writes every finite element.
        z_q, _ = ops["scalar_quantize"](zb, values, False)
        assert torch.isfinite(z_q).all()
        ops["latent_quantize"](zb, values, 0.1, 0.1, False)
        ops["vector_quantize"](zb, codebook, False)
    bad_values = values.clone()
    bad_values[1, 3] = float("nan")
    with pytest.raises(ValueError, match="latent_quantize: values contains NaN or Inf"):
        ops["latent_quantize"](z, bad_values, 0.1, 0.1, True)


def check_empty(ops: Ops, device) -> None:
    for dtype in (torch.float32, torch.float64):
        z = torch.empty(0, 4, dtype=dtype, device=device)
        values = torch.randn(4, 3, dtype=dtype, device=device)
        z_q, idx = ops["scalar_quantize"](z, values, True)
        assert z_q.shape == (0, 4) and idx.shape == (0, 4) and idx.dtype == torch.int64
        z_hat, idx, loss = ops["latent_quantize"](z, values, 0.1, 0.2, True)
        assert z_hat.shape == (0, 4) and loss.shape == () and loss.dtype == dtype and float(loss) == 0.0
        gz, gv = ops["latent_quantize_backward"](
            z, torch.tensor(1.0, dtype=dtype, device=device), z, values, idx, 0.1, 0.2
        )
        assert gz.shape == (0, 4) and torch.equal(gv, torch.zeros_like(values))
        gv = ops["scalar_quantize_backward"](z, idx, values)
        assert torch.equal(gv, torch.zeros_like(values))
        codebook = torch.randn(5, 4, dtype=dtype, device=device)
        z_q, idx = ops["vector_quantize"](z, codebook, True)
        assert z_q.shape == (0, 4) and idx.shape == (0,)
        gc = ops["vector_quantize_backward"](z, idx, codebook)
        assert torch.equal(gc, torch.zeros_like(codebook))


def check_bad_arguments(ops: Ops, device) -> None:
    z = torch.zeros(4, 3, device=device)
    with pytest.raises(ValueError, match=r"scalar_quantize: values must have shape \(D, K\)"):
        ops["scalar_quantize"](z, torch.zeros(2, 5, device=device), True)
    with pytest.raises(ValueError, match="latent_quantize: z must be"):
        ops["latent_quantize"](z.long(), torch.zeros(3, 5, device=device), 0.1, 0.1, True)
    with pytest.raises(ValueError, match=r"vector_quantize: codebook must have shape \(K, C\)"):
        ops["vector_quantize"](z, torch.zeros(5, 4, device=device), True)
