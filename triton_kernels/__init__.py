"""Triton kernels, one file per op (installed as ``latentquant.triton_kernels``).

Each file holds ``_<op>_fwd_kernel`` (the ``@triton.jit`` kernel) and ``_<op>_fwd`` (its launcher,
wrapped with ``torch.library.wrap_triton`` so ``torch.compile`` can trace it). Launchers serve CUDA
tensors; on the CPU they run under ``TRITON_INTERPRET=1`` for testing.
"""
