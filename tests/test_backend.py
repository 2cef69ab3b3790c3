"""backend_info, the GPU-backend switch, and the reference fallback when latentquant._C is missing."""

import json
import os
import subprocess
import sys

import pytest

import latentquant


def test_backend_info_reports_live_cpu_kernels():
    info = latentquant.ops.backend_info()
    assert info["extension"] is True and info["extension_error"] is None
    for op in ("scalar_quantize", "latent_quantize", "vector_quantize"):
        assert info["ops"][op]["cpu"] == "c++"


def test_bad_gpu_backend_name():
    from latentquant.ops._registry import gpu_backend

    os.environ["LATENTQUANT_GPU_BACKEND"] = "opencl"
    try:
        with pytest.raises(ValueError, match="LATENTQUANT_GPU_BACKEND must be one of"):
            gpu_backend()
    finally:
        del os.environ["LATENTQUANT_GPU_BACKEND"]


FALLBACK = r"""
import json, sys, warnings
sys.modules["latentquant._C"] = None  # as if the extension had not been built
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import latentquant
    from latentquant.ops import latent_quantize, scalar_quantize, vector_quantize
import torch
z = torch.randn(6, 3, requires_grad=True)
values = torch.linspace(-0.5, 0.5, 4).repeat(3, 1).requires_grad_()
z_hat, idx, loss = latent_quantize(z, values)
(z_hat.sum() + loss).backward()
out = {
    "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
    "info": latentquant.ops.backend_info(),
    "grad_ok": bool(torch.allclose(z.grad, 1 + 2 * 0.01 * (z - z_hat).detach() / 18)),
    "sq": scalar_quantize(z.detach(), values.detach())[1].tolist() == idx.tolist(),
    "vq": vector_quantize(z.detach(), torch.randn(5, 3))[1].shape == (6,),
}
try:
    scalar_quantize(torch.tensor([[float("nan"), 0.0, 0.0]]), values.detach())
except ValueError as err:
    out["nan_error"] = str(err)
print(json.dumps(out))
"""


def test_reference_takes_over_without_the_extension():
    proc = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["warnings"]) == 1 and "latentquant._C is not available" in out["warnings"][0]
    assert out["info"]["extension"] is False
    assert out["info"]["ops"]["latent_quantize"] == {"cpu": "reference", "cuda": "reference"}
    assert out["grad_ok"] and out["sq"] and out["vq"]
    assert out["nan_error"].startswith("scalar_quantize: z contains NaN or Inf")


LAZY_TRITON = r"""
import json, sys
from unittest import mock
import torch
with mock.patch("torch.cuda.is_available", return_value=True):  # as on a GPU machine
    import latentquant
    info = latentquant.ops.backend_info()
print(json.dumps({
    "imported": sorted(m for m in sys.modules if m == "triton" or m.startswith("latentquant.triton_kernels")),
    "cuda": info["ops"]["scalar_quantize"]["cuda"],
}))
"""


@pytest.mark.skipif(not latentquant.ops._registry.triton_available(), reason="triton is not installed")
def test_import_never_imports_triton():
    """On a GPU machine `import latentquant` registered the Triton kernels by importing them, in compiled mode,
    before tests/triton could set TRITON_INTERPRET; the registration is now lazy (first call)."""
    proc = subprocess.run(
        [sys.executable, "-c", LAZY_TRITON],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LATENTQUANT_GPU_BACKEND": "triton"},
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"imported": [], "cuda": "triton"}


def test_lazy_triton_kernel_imports_on_first_call(monkeypatch):
    from latentquant.ops import _registry

    calls = []
    monkeypatch.setattr(
        _registry, "_triton_kernels", lambda module: {"op": lambda *a: calls.append((module, a)) or 7}
    )
    kernel = _registry._lazy_triton_kernel("scalar_quantize", "op")
    assert kernel(1, 2) == 7 and calls == [("scalar_quantize", (1, 2))]


def _setup_module():
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("latentquant_setup", os.path.join(root, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the helpers, builds nothing
    return module


def test_cuda_arch_default_has_ptx_for_newer_gpus():
    """Without a visible GPU the build targeted sm_90 only (no PTX): 'no kernel image' on A100 and Blackwell."""
    setup = _setup_module()
    assert setup.cuda_arch_list({}, gpu_visible=False) == "8.0;9.0+PTX"
    assert setup.cuda_arch_list({"TORCH_CUDA_ARCH_LIST": "8.6"}, gpu_visible=False) == "8.6"
    assert setup.cuda_arch_list({}, gpu_visible=True) is None
