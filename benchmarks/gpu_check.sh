#!/usr/bin/env bash
# The first-GPU check, one command (issue 12): on a fresh GPU machine with a CUDA build of torch, nvcc and
# triton installed (no network needed), run from anywhere:
#
#   bash benchmarks/gpu_check.sh            # PYTHON=/path/to/python to choose the interpreter
#
# 1. builds latentquant._C with its CUDA kernels in place (all cores; TORCH_CUDA_ARCH_LIST defaults to the
#    visible GPU) and installs the package in editable mode without dependencies;
# 2. prints nvidia-smi, torch/triton versions and backend_info() for both GPU backends;
# 3. runs the GPU tests with the CUDA kernels (tests/test_cuda_kernels.py, tests/triton -- Triton compiled
#    on CUDA tensors -- and the GPU-only checks), then the same tests with LATENTQUANT_GPU_BACKEND=triton
#    (the dispatcher then serves CUDA tensors with the Triton kernels);
# 4. runs benchmarks/bench_gpu.py: quantizer fwd+bwd bandwidth as a fraction of a device copy, VQ against
#    cdist+argmin, the k-NN MI matrix for 1,000,000 x 64 latents x 10 sources with its sort share;
# 5. writes the summary (stage results, times, the tables) to $SUMMARY (default build/gpu_check/summary.md,
#    next to each stage's log) and, when $OUT is set, copies the summary and the logs into $OUT.
#
# Every stage has a time limit so the whole check fits in 10 minutes on one H100/H200 (build 150 s,
# backend_info 30 s, tests 190 s + 130 s -- Triton compiles each kernel variant at its first launch --,
# benchmarks 90 s: 590 s at most); a failing stage is recorded and the next one still runs; the exit
# status is 1 if any stage failed. GPU_CHECK_DRY_RUN=1 (for a machine without a GPU) skips the build and
# runs the rest against the existing build: the GPU tests skip and the benchmark says it needs a device.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
LOG_DIR=${LOG_DIR:-build/gpu_check}
SUMMARY=${SUMMARY:-$LOG_DIR/summary.md}
DRY=${GPU_CHECK_DRY_RUN:-0}
mkdir -p "$LOG_DIR"
t_start=$(date +%s)
failed=0
: >"$SUMMARY"

say() { echo "$*" | tee -a "$SUMMARY"; }

# stage NAME LIMIT_S COMMAND...: run with a time limit, log to $LOG_DIR/NAME.log, record rc and time.
stage() {
  local name=$1 limit=$2
  shift 2
  local t0 rc
  t0=$(date +%s)
  echo "== $name (limit ${limit} s)"
  timeout --signal=INT --kill-after=15 "$limit" "$@" >"$LOG_DIR/$name.log" 2>&1
  rc=$?
  tail -n 25 "$LOG_DIR/$name.log"
  local status=ok
  if [ "$rc" -ne 0 ]; then
    status="FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ', time limit'))"
    failed=1
  fi
  say "- $name: $status, $(($(date +%s) - t0)) s (log: $LOG_DIR/$name.log)"
}

say "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say ""
say '```'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$SUMMARY" || true
"$PYTHON" - <<'PY' 2>&1 | tee -a "$SUMMARY"
import os, torch
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available: {torch.cuda.is_available()}, "
      f"devices: {torch.cuda.device_count()}, cores: {os.cpu_count()}")
try:
    import triton
    print(f"triton {triton.__version__}")
except ImportError:
    print("triton: not installed (the Triton stages will skip)")
PY
say '```'
say ""

if [ "$DRY" = "1" ]; then
  say "- build: skipped (GPU_CHECK_DRY_RUN=1)"
else
  export MAX_JOBS=${MAX_JOBS:-$(nproc)} LATENTQUANT_BUILD_CUDA=1
  stage build 150 "$PYTHON" -m pip install --no-build-isolation --no-deps -e .
fi

stage backend_info 30 bash -c '
  for backend in cuda triton; do
    LATENTQUANT_GPU_BACKEND=$backend '"$PYTHON"' -c "import json, latentquant; print(\"$backend:\", json.dumps(latentquant.ops.backend_info()))"
  done'
sed -n 's/^/    /p' "$LOG_DIR/backend_info.log" >>"$SUMMARY"

TESTS=(tests/test_cuda_kernels.py tests/triton tests/test_backend.py)
stage tests_cuda 190 "$PYTHON" -m pytest -q -p no:cacheprovider --maxfail=10 "${TESTS[@]}"
grep -E "passed|failed|skipped|error" "$LOG_DIR/tests_cuda.log" | tail -1 | sed 's/^/    /' >>"$SUMMARY"
stage tests_triton 130 env LATENTQUANT_GPU_BACKEND=triton "$PYTHON" -m pytest -q -p no:cacheprovider --maxfail=10 tests/test_cuda_kernels.py
grep -E "passed|failed|skipped|error" "$LOG_DIR/tests_triton.log" | tail -1 | sed 's/^/    /' >>"$SUMMARY"

stage bench_gpu 90 "$PYTHON" benchmarks/bench_gpu.py
say ""
say '```'
grep -v "^JSON " "$LOG_DIR/bench_gpu.log" | tail -n 40 >>"$SUMMARY"
say '```'
grep "^JSON " "$LOG_DIR/bench_gpu.log" >>"$SUMMARY" || true

say ""
say "total: $(($(date +%s) - t_start)) s, $([ $failed -eq 0 ] && echo 'all stages passed' || echo 'some stage FAILED')"
if [ -n "${OUT:-}" ]; then
  cp -r "$LOG_DIR" "$OUT/gpu_check" && cp "$SUMMARY" "$OUT/gpu_check_summary.md"
fi
exit $failed
