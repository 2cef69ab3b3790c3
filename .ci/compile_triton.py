"""Compile every Triton kernel of latentquant for a real GPU without one (CI, next to the nvcc compile).

Each ``@triton.jit`` kernel in ``latentquant.triton_kernels`` is compiled ahead of time with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", ARCH, 32))`` -- Triton's front end, its MLIR
passes, LLVM to PTX and the ptxas that ships in the triton wheel to a cubin -- for every dtype combination
its launcher uses (z float16/bfloat16/float32/float64 with a float32 or float64 compute dtype, each
constexpr switch), so a kernel that would not compile on the GPU fails CI. No device is needed.

Usage: ``python .ci/compile_triton.py [--arch 90] [--jobs N]``. Exits 1 naming every failing variant.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor

# The z dtypes the ops accept and the compute dtype each pairing uses (float64 if z or the codebook is).
PAIRS = [
    ("fp16", "fp32"),
    ("bf16", "fp32"),
    ("fp32", "fp32"),
    ("fp16", "fp64"),
    ("bf16", "fp64"),
    ("fp32", "fp64"),
    ("fp64", "fp64"),
]
BOOLS = (False, True)


def variants() -> list[tuple[str, str, dict[str, str], dict[str, object], dict[str, object]]]:
    """(module, kernel, signature, constexprs, options) for every compiled variant."""
    out = []
    sq, lq, vq, kn = "scalar_quantize", "latent_quantize", "vector_quantize", "knn_mi"
    for z, ct in PAIRS:
        for loss in BOOLS:
            for check in BOOLS:
                sig = {
                    "z_ptr": f"*{z}",
                    "values_ptr": f"*{ct}",
                    "z_q_ptr": f"*{z}",
                    "indices_ptr": "*i64",
                    "partials_ptr": f"*{ct}" if loss else "*i32",
                    "flags_ptr": "*i32",
                    "numel": "i64",
                    "D": "i32",
                    "K": "i32",
                }
                const = {"WITH_LOSS": loss, "CHECK_FINITE": check, "BLOCK": 1024}
                out.append((sq, "_scalar_quantize_fwd_kernel", sig, const, {}))
        # The scalar-codebook scatters: per element (atomic or deterministic) and privatized into NB bins.
        plans = [(False, 0, 1, 1024), (True, 0, 1, 1024)] + [
            (False, nb, 4096 // nb, 8192) for nb in (1, 4, 16, 32)
        ]
        for det, nb, sub, block in plans:
            const = {"DETERMINISTIC": det, "NB": nb, "SUB": sub, "BLOCK": block}
            sig = {
                "grad_ptr": f"*{z}",
                "indices_ptr": "*i64",
                "bins_ptr": f"*{ct}",
                "contrib_ptr": f"*{ct}",
                "bin_ptr": "*i64",
                "flags_ptr": "*i32",
                "numel": "i64",
                "D": "i32",
                "K": "i32",
            }
            out.append((sq, "_scalar_quantize_bwd_kernel", sig, const, {}))
            sig = {
                "grad_z_hat_ptr": f"*{z}",
                "z_ptr": f"*{z}",
                "values_ptr": f"*{ct}",
                "indices_ptr": "*i64",
                "grad_loss_ptr": f"*{ct}",
                "grad_z_ptr": f"*{z}",
                "bins_ptr": f"*{ct}",
                "contrib_ptr": f"*{ct}",
                "bin_ptr": "*i64",
                "flags_ptr": "*i32",
                "z_factor": "fp64",
                "v_factor": "fp64",
                "numel": "i64",
                "D": "i32",
                "K": "i32",
            }
            out.append((lq, "_latent_quantize_bwd_kernel", sig, const, {}))
        for det in BOOLS:
            sig = {
                "grad_ptr": f"*{z}",
                "indices_ptr": "*i64",
                "bins_ptr": f"*{ct}",
                "contrib_ptr": f"*{ct}",
                "bin_ptr": "*i64",
                "flags_ptr": "*i32",
                "numel": "i64",
                "K": "i32",
                "C": "i32",
            }
            out.append((vq, "_vector_quantize_bwd_kernel", sig, {"DETERMINISTIC": det, "BLOCK": 1024}, {}))
        for check in BOOLS:
            sig = {
                "z_ptr": f"*{z}",
                "codebook_ptr": f"*{ct}",
                "z_q_ptr": f"*{z}",
                "indices_ptr": "*i64",
                "flags_ptr": "*i32",
                "N": "i32",
                "K": "i32",
                "C": "i32",
            }
            const = {"CHECK_FINITE": check, "BLOCK_N": 32, "BLOCK_K": 64, "BLOCK_C": 32}
            out.append((vq, "_vector_quantize_fwd_kernel", sig, const, {}))
    # k-NN MI: float64 data, launched with enable_fp_fusion=False; k = 3 (paper) and 10 (standalone).
    exact = {"enable_fp_fusion": False}
    for k in (3, 10):
        sig = {
            "run_ptr": "*fp64",
            "start_ptr": "*i64",
            "cnt_ptr": "*i64",
            "out_ptr": "*fp64",
            "N": "i32",
            "pair0": "i32",
        }
        out.append(
            (
                kn,
                "_knn_mi_cd_scalar_radius_fwd_kernel",
                sig,
                {"K": k, "BRUTE_W": 2 * k + 1, "BLOCK": 128},
                exact,
            )
        )
        for dt, metric in ((2, 0), (3, 0), (2, 1), (4, 1)):
            sig = {
                "pts_ptr": "*fp64",
                "lo_ptr": "*i64",
                "hi_ptr": "*i64",
                "k_ptr": "*i64",
                "out_ptr": "*fp64",
                "N": "i32",
                "pair0": "i32",
            }
            const = {"DT": dt, "METRIC": metric, "K_PAD": 4 if k == 3 else 16, "BLOCK_Q": 32, "BLOCK_P": 64}
            out.append((kn, "_knn_radius_fwd_kernel", sig, const, exact))
    sig = {
        "sorted_ptr": "*fp64",
        "pos_ptr": "*i64",
        "r2_ptr": "*fp64",
        "n_ptr": "*i64",
        "out_ptr": "*fp64",
        "N": "i32",
        "pair0": "i32",
    }
    sig["out_ptr"] = "*i64"
    out.append((kn, "_knn_mi_scalar_count_fwd_kernel", sig, {"LOG_N": 21, "BLOCK": 128}, exact))
    for c0, c1, dt, metric in (
        (0, 2, 2, 0),
        (0, 3, 3, 0),
        (0, 1, 2, 1),
        (1, 2, 2, 1),
        (0, 2, 4, 1),
        (2, 4, 4, 1),
    ):
        sig = {
            "pts_ptr": "*fp64",
            "thr_ptr": "*fp64",
            "n_ptr": "*i64",
            "out_ptr": "*i64",
            "N": "i32",
            "pair0": "i32",
        }
        const = {"C0": c0, "C1": c1, "DT": dt, "METRIC": metric, "BLOCK_Q": 32, "BLOCK_P": 64}
        out.append((kn, "_knn_count_fwd_kernel", sig, const, exact))
    return out


def label_of(module: str, name: str, sig: dict[str, str], const: dict[str, object]) -> str:
    """module.kernel[the float pointer types and the constexprs] of a variant."""
    shown = {k: v for k, v in sig.items() if k.endswith("_ptr") and ("fp" in v or "bf" in v)}
    return f"{module}.{name}[{', '.join(f'{k}={v}' for k, v in {**shown, **const}.items())}]"


def compile_one(args: tuple) -> tuple[str, str | None, int]:
    """Compile one variant; returns (label, error or None, cubin bytes)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name, sig, const, options, arch = args
    label = label_of(module, name, sig, const)
    try:
        fn = getattr(importlib.import_module(f"latentquant.triton_kernels.{module}"), name)
        full = {p: sig.get(p, "constexpr") for p in fn.arg_names}
        missing = [p for p in fn.arg_names if p not in sig and p not in const]
        if missing:
            raise ValueError(f"no type or value for {missing}")
        compiled = triton.compile(
            ASTSource(fn, full, constexprs=const), target=GPUTarget("cuda", arch, 32), options=options
        )
        return label, None, len(compiled.asm["cubin"])
    except Exception:  # noqa: BLE001 - every failure is reported with its variant
        return label, traceback.format_exc(limit=3), 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability as an integer (90 = sm_90)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--match", default="", help="compile only the variants whose label contains this")
    parser.add_argument(
        "--first-per-kernel",
        action="store_true",
        help="compile one variant of each kernel (a quick smoke run; CI compiles them all)",
    )
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_triton: unset TRITON_INTERPRET (the interpreter compiles nothing)", file=sys.stderr)
        return 2
    os.environ.setdefault(
        "TRITON_DEFAULT_FP_FUSION", "1"
    )  # the launch-time default, stated (silences a warning)
    work = [(*v, args.arch) for v in variants() if args.match in label_of(*v[:4])]
    if args.first_per_kernel:
        seen: set[str] = set()
        work = [w for w in work if not (w[1] in seen or seen.add(w[1]))]
    t0 = time.time()
    results = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for label, err, size in pool.map(compile_one, work):
            results.append((label, err, size))
            if err:
                print(f"compile_triton: FAILED {label}\n{err}", file=sys.stderr, flush=True)
            elif len(results) % 10 == 0:
                print(f"compile_triton: {len(results)}/{len(work)} ({time.time() - t0:.0f} s)", flush=True)
    failed = [(label, err) for label, err, _ in results if err]
    kernels = len({(m, n) for m, n, *_ in work})
    size = sum(b for *_, b in results)
    print(
        f"compile_triton: {len(results) - len(failed)}/{len(results)} variants of {kernels} kernels compiled for "
        f"sm_{args.arch} ({size / 1e6:.1f} MB of cubin) in {time.time() - t0:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
