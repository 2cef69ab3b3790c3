#!/usr/bin/env bash
# Compile latentquant._C with its CUDA kernels (csrc/cuda/*.cu) on a machine without a GPU, so CUDA code
# that does not compile fails CI (DESIGN §2). Run from anywhere: `bash .ci/build_cuda.sh`.
#
# - Creates .venv-cuda inside the clone (reused on a later run when it already holds the right torch) with
#   torch==$LATENTQUANT_CUDA_TORCH (default 2.14.1, a CUDA 13.0 build) and the nvidia-* runtime wheels it
#   needs to import; pip caches nothing (PIP_NO_CACHE_DIR).
# - Builds with `LATENTQUANT_BUILD_CUDA=1 python setup.py build_ext` into build/cuda-ci/ (not in place, so
#   the CPU build of .venv is untouched), for TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default 2).
# - Loads the built library and checks every op has a CUDA kernel registered.
# Exits non-zero if anything fails, in particular if any .cu file fails to compile.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv-cuda
TORCH_VERSION=${LATENTQUANT_CUDA_TORCH:-2.14.1}
PYTHON=${PYTHON:-python3}
BUILD=build/cuda-ci
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
t0=$(date +%s)

has_cuda_torch() {
  "$VENV/bin/python" - "$TORCH_VERSION" <<'PY' 2>/dev/null
import sys
import torch
sys.exit(0 if torch.version.cuda and torch.__version__.split("+")[0] == sys.argv[1] else 1)
PY
}

if ! has_cuda_torch; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" "setuptools>=77" wheel ninja numpy
  has_cuda_torch || { echo "build_cuda: torch==$TORCH_VERSION in $VENV is not a CUDA build or does not import" >&2; exit 1; }
fi
t1=$(date +%s)

# The CUDA toolkit: $CUDA_HOME, else /usr/local/cuda, else the directory above the nvcc on PATH.
if [ -z "${CUDA_HOME:-}" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then
    CUDA_HOME=/usr/local/cuda
  elif command -v nvcc >/dev/null; then
    CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  else
    echo "build_cuda: no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)" >&2
    exit 1
  fi
fi
[ -f "$CUDA_HOME/include/cuda_runtime.h" ] || { echo "build_cuda: $CUDA_HOME has no include/cuda_runtime.h" >&2; exit 1; }
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-2}
echo "build_cuda: torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'), CUDA_HOME=$CUDA_HOME, arch $TORCH_CUDA_ARCH_LIST, $MAX_JOBS jobs"

rm -rf "$BUILD"
LATENTQUANT_BUILD_CUDA=1 "$VENV/bin/python" setup.py -q build_ext --build-temp "$BUILD/temp" --build-lib "$BUILD/lib"
t2=$(date +%s)

so=$(ls "$BUILD"/lib/latentquant/_C*.so)
"$VENV/bin/python" - "$so" <<'PY'
import sys

import torch

torch.ops.load_library(sys.argv[1])
ops = ["scalar_quantize", "latent_quantize", "vector_quantize"]
missing = [
    f"latentquant::{name}"
    for op in ops
    for name in (op, f"{op}_backward")
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"latentquant::{name}", "CUDA")
]
if missing:
    sys.exit(f"build_cuda: no CUDA kernel registered for {', '.join(missing)} in {sys.argv[1]}")
print(f"build_cuda: {sys.argv[1]} registers CUDA kernels for all {2 * len(ops)} quantization ops")
PY
echo "build_cuda: ok (venv $((t1 - t0)) s, compile $((t2 - t1)) s)"
