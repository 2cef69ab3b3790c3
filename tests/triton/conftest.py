"""Where the Triton tests run: compiled on CUDA tensors when a GPU is present, else on CPU tensors under
Triton's interpreter.

``TRITON_INTERPRET=1`` takes effect only if it is set before triton is first imported; tests/conftest.py
sets it (without a GPU) before any test module loads, and ``import latentquant`` never imports triton (its
Triton kernels are registered lazily), so the order of collection does not matter.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
