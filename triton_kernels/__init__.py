"""Triton kernels, one file per op (installed as ``latentquant.triton_kernels``).

Each file holds ``_<op>_fwd_kernel`` (the ``@triton.jit`` kernel), ``_<op>_fwd`` (its launcher, which
launches the kernel directly under the tensor's device, see ``_common``) and ``KERNELS``, the op-signature
functions that ``latentquant.ops`` registers (lazily, at the first call) as the CUDA kernels of the ops.
Launchers serve CUDA tensors; on the CPU they run under ``TRITON_INTERPRET=1`` for testing.
"""
