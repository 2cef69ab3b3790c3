"""Build script for latentquant's compiled kernels (latentquant._C).

Build knobs (environment variables, all optional):

- ``LATENTQUANT_NO_EXT=1``: install pure Python; the reference implementations take over.
- ``LATENTQUANT_BUILD_CUDA=auto|0|1`` (default ``auto``): add ``csrc/cuda/*.cu``. ``auto`` builds them when
  torch is a CUDA build *and* a CUDA toolkit (nvcc) is found -- whether a GPU is visible does not matter,
  so CI compiles the CUDA code on a machine without one. ``1`` fails loudly if that is not possible.
- ``TORCH_CUDA_ARCH_LIST``: GPU architectures to compile for. When unset and no GPU is visible we compile
  for ``DEFAULT_CUDA_ARCH_LIST`` = ``8.0;9.0+PTX``: machine code for A100 (sm_80) and H100/H200 (sm_90),
  plus sm_90 PTX that the driver JIT-compiles on newer GPUs (Blackwell), so the build runs on any GPU from
  sm_80 on. With a GPU visible torch picks that GPU's arch. CI (.ci/build_cuda.sh) sets ``9.0`` to keep its
  compile short.
- ``MAX_JOBS``: parallel compile jobs (ninja), honoured by torch's BuildExtension.

torch is not a build requirement: install with ``pip install --no-build-isolation .``.
"""

import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def cuda_arch_list(env: dict[str, str], gpu_visible: bool) -> str | None:
    """The TORCH_CUDA_ARCH_LIST to build with: the user's, else (no GPU visible) DEFAULT_CUDA_ARCH_LIST,
    else None (torch compiles for the visible GPU)."""
    if env.get("TORCH_CUDA_ARCH_LIST"):
        return env["TORCH_CUDA_ARCH_LIST"]
    return None if gpu_visible else DEFAULT_CUDA_ARCH_LIST


def _rel(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extensions():
    if os.environ.get("LATENTQUANT_NO_EXT", "0") == "1":
        return [], {}
    mode = os.environ.get("LATENTQUANT_BUILD_CUDA", "auto")
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"LATENTQUANT_BUILD_CUDA must be auto, 0 or 1; got {mode!r}")

    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cuda_possible = torch.version.cuda is not None and CUDA_HOME is not None
    if mode == "1" and not cuda_possible:
        raise SystemExit(
            "LATENTQUANT_BUILD_CUDA=1 but CUDA cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r} (is nvcc on PATH?)"
        )
    with_cuda = mode == "1" or (mode == "auto" and cuda_possible)

    sources = _rel("csrc/*.cpp") + _rel("csrc/cpu/*.cpp")
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-DLATENTQUANT_EXTENSION"]
    extra_link = ["-fopenmp"]
    if with_cuda:
        arch = cuda_arch_list(dict(os.environ), torch.cuda.is_available())
        if arch is not None:
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch
        ext = CUDAExtension(
            "latentquant._C",
            sources + _rel("csrc/cuda/*.cu"),
            extra_compile_args={
                "cxx": cxx + ["-DLATENTQUANT_WITH_CUDA"],
                "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-DLATENTQUANT_WITH_CUDA"],
            },
            extra_link_args=extra_link,
        )
    else:
        ext = CppExtension(
            "latentquant._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=extra_link
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


if __name__ == "__main__":  # pip's setuptools backend and `python setup.py ...` run it as __main__
    ext_modules, cmdclass = _extensions()
    setup(
        packages=find_packages("src") + ["latentquant.triton_kernels"],
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )
