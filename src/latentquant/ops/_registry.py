"""Loads the compiled extension and chooses the GPU backend.

- ``HAVE_C``: whether ``latentquant._C`` imported (it registers the CPU and, when built, CUDA kernels).
- ``LATENTQUANT_GPU_BACKEND=cuda|triton`` (default ``cuda``): which kernels serve CUDA tensors. With
  ``triton`` -- or when the extension has no CUDA kernel for an op but Triton is installed -- the Triton
  launchers are registered as the op's CUDA kernel, so device selection stays with the dispatcher.
  The registration is lazy: ``latentquant.triton_kernels.<module>`` (and triton itself) is imported at the
  first call on a CUDA tensor, never by ``import latentquant``, so ``TRITON_INTERPRET`` and the other
  Triton settings may still be chosen after importing latentquant.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import warnings
from collections.abc import Callable

import torch

NAMESPACE = "latentquant"

try:
    from latentquant import _C  # noqa: F401  (importing registers the kernels)

    HAVE_C = True
    _C_ERROR: str | None = None
except ImportError as err:  # pragma: no cover - exercised with LATENTQUANT_NO_EXT=1 installs
    HAVE_C = False
    _C_ERROR = str(err)
    warnings.warn(
        f"latentquant._C is not available ({err}); using the plain-PyTorch reference implementations, "
        "which are correct but slow. Reinstall with `pip install --no-build-isolation .` to build the kernels.",
        RuntimeWarning,
        stacklevel=2,
    )

_GPU_BACKENDS = ("cuda", "triton")


def gpu_backend() -> str:
    """The backend requested for CUDA tensors through ``LATENTQUANT_GPU_BACKEND``."""
    backend = os.environ.get("LATENTQUANT_GPU_BACKEND", "cuda").lower()
    if backend not in _GPU_BACKENDS:
        raise ValueError(f"LATENTQUANT_GPU_BACKEND must be one of {_GPU_BACKENDS}, got {backend!r}")
    return backend


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``latentquant::<op>`` has a kernel registered for ``dispatch_key`` (e.g. "CPU", "CUDA")."""
    if not HAVE_C:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", dispatch_key)


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


# Forward ops listed by backend_info(); each op module adds its own on import.
PUBLIC_OPS: list[str] = []

_LIB = torch.library.Library(NAMESPACE, "IMPL") if HAVE_C else None
_TRITON_OPS: set[str] = set()


def register_triton_cuda(op: str, fn: Callable) -> None:
    """Serve CUDA tensors of ``latentquant::<op>`` with the Triton-backed ``fn`` when asked to
    (``LATENTQUANT_GPU_BACKEND=triton``) or when the extension has no CUDA kernel for it."""
    if _LIB is None or not triton_available():
        return
    if gpu_backend() == "triton" or not has_kernel(op, "CUDA"):
        _LIB.impl(op, fn, "CUDA")
        _TRITON_OPS.add(op)


@functools.cache
def _triton_kernels(module: str) -> dict[str, Callable]:
    return importlib.import_module(f"latentquant.triton_kernels.{module}").KERNELS


def _lazy_triton_kernel(module: str, op: str) -> Callable:
    """``op``'s Triton launcher, imported from ``latentquant.triton_kernels.<module>`` at the first call."""

    def kernel(*args):
        return _triton_kernels(module)[op](*args)

    kernel.__name__ = f"{op}_triton"
    return kernel


def register_triton_module(module: str, ops: tuple[str, ...]) -> None:
    """Register the launchers ``latentquant.triton_kernels.<module>.KERNELS[op]`` for ``ops`` as CUDA
    kernels where :func:`register_triton_cuda` says so, lazily (the module is imported at the first call).
    Skipped without a CUDA device."""
    if _LIB is None or not triton_available() or not torch.cuda.is_available():
        return
    for op in ops:
        register_triton_cuda(op, _lazy_triton_kernel(module, op))


def backend_info() -> dict[str, object]:
    """Which kernels are compiled and live.

    Returns:
        ``{"extension": bool, "extension_error": str | None, "gpu_backend": "cuda" | "triton",
        "cuda_available": bool, "triton_installed": bool, "ops": {op: {"cpu": kernel, "cuda": kernel}}}``
        where a kernel is ``"c++"``, ``"cuda"``, ``"triton"``, ``"reference"`` (the extension is missing and
        the plain-PyTorch oracle runs) or ``"none"`` (no kernel for CUDA tensors in this build).
    """
    ops = {}
    for op in PUBLIC_OPS:
        cpu = "c++" if has_kernel(op, "CPU") else "reference"
        if op in _TRITON_OPS:
            cuda = "triton"
        elif has_kernel(op, "CUDA"):
            cuda = "cuda"
        else:
            cuda = "reference" if not HAVE_C else "none"
        ops[op] = {"cpu": cpu, "cuda": cuda}
    return {
        "extension": HAVE_C,
        "extension_error": _C_ERROR,
        "gpu_backend": gpu_backend(),
        "cuda_available": torch.cuda.is_available(),
        "triton_installed": triton_available(),
        "ops": ops,
    }


def register_nearest_codebook_op(
    op: str,
    index_shape: Callable[[torch.Tensor], tuple[int, ...]],
    gather: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """Fake impls and autograd of a quantization op pair sharing one shape of contract:
    ``op(z, table, check_finite) -> (z_q, indices)`` (indices not differentiable; the gradient reaches
    ``table`` only, through ``op_backward(grad_z_q, indices, table) -> grad_table``), whose backward is
    linear in grad_z_q, so its own gradient (double backward) is ``gather(grad_grad_table, indices)``.

    Args:
        op: ``"scalar_quantize"`` or ``"vector_quantize"``.
        index_shape: z -> shape of the int64 indices.
        gather: (grad_grad_table, indices) -> grad of grad_z_q.
    """
    if not HAVE_C:
        return
    name = f"{NAMESPACE}::{op}"

    # The kernels return fresh contiguous tensors whatever the input layout, so the fakes do too.
    @torch.library.register_fake(name)
    def _(z, table, check_finite=True):
        return (
            z.new_empty(z.shape),
            torch.empty(index_shape(z), dtype=torch.long, device=z.device),
        )

    @torch.library.register_fake(f"{name}_backward")
    def _(grad_z_q, indices, table):
        return table.new_empty(table.shape)

    def setup_context(ctx, inputs, output):
        _, table, _ = inputs
        _, indices = output
        ctx.save_for_backward(indices, table)
        ctx.mark_non_differentiable(indices)

    backward_op = getattr(torch.ops.latentquant, f"{op}_backward")

    def backward(ctx, grad_z_q, _grad_indices):
        indices, table = ctx.saved_tensors
        grad_table = backward_op(grad_z_q, indices, table) if ctx.needs_input_grad[1] else None
        return None, grad_table, None

    torch.library.register_autograd(name, backward, setup_context=setup_context)

    def setup_backward(ctx, inputs, output):
        _, indices, _ = inputs
        ctx.save_for_backward(indices)

    def backward_backward(ctx, grad_grad_table):
        (indices,) = ctx.saved_tensors
        return gather(grad_grad_table, indices), None, None

    torch.library.register_autograd(f"{name}_backward", backward_backward, setup_context=setup_backward)
