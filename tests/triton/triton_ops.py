"""The Triton launchers under test and the device they run on.

``DEVICE`` is "cuda" when triton compiles for a GPU (the kernels run compiled on CUDA tensors) and "cpu"
under ``TRITON_INTERPRET=1`` (tests/triton/conftest.py sets it when no GPU is present). If triton was
imported in compiled mode on a machine without a GPU, these tests skip and say why.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install '.[triton]')")

from latentquant.triton_kernels import _common, latent_quantize, scalar_quantize, vector_quantize  # noqa: E402

INTERPRETED = type(_common.nearest_scalar).__name__ == "InterpretedFunction"
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip(
        "triton was imported in compiled mode without a GPU (before TRITON_INTERPRET=1 was set); "
        "run `TRITON_INTERPRET=1 pytest tests/triton`",
        allow_module_level=True,
    )
DEVICE = "cpu" if INTERPRETED else "cuda"

OPS = {**scalar_quantize.KERNELS, **latent_quantize.KERNELS, **vector_quantize.KERNELS}
