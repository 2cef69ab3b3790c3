"""QLInfoWGAN-GP against InfoWGAN-GP over seeds: train each (model, seed) with configs/demo_gan.yaml at a chosen
budget, then print InfoM / InfoE / InfoC / PSNR mean ± std (population std over seeds) and steps/s as a
markdown table (the GAN rows of benchmarks/RESULTS.md).

    python benchmarks/gan_seeds.py --steps 3000 --seeds 0 1 2 --out runs/gan_seeds
    python benchmarks/gan_seeds.py --summarize-only --out runs/gan_seeds

Runs go to ``OUT/<model>_seed<seed>``; a run whose metrics.json exists is not trained again, and an interrupted
one is resumed (``--resume``). ``--parallel`` runs that many trainings at once, each with ``--threads`` torch
threads (keep parallel x threads <= cores). Extra ``key=value`` settings are passed to every training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("infom", "infoe", "infoc", "psnr", "steps_per_second")


def _run(model: str, seed: int, args: argparse.Namespace) -> Path:
    out = args.out / f"{model}_seed{seed}"
    if (out / "metrics.json").is_file():
        return out
    command = [sys.executable, "-m", "latentquant.cli", "train", "--no-progress"]
    if (out / "checkpoint.safetensors").is_file():
        command += ["--resume", str(out)]
    else:
        command += ["--config", str(args.config), "--model", model, "--seed", str(seed), "--out", str(out)]
        command += [f"steps={args.steps}", f"num_threads={args.threads}", *args.settings]
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(args.out / f"{model}_seed{seed}.log", "w") as log:
        code = subprocess.call(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    print(f"{model} seed {seed}: exit {code} after {time.time() - started:.0f} s", flush=True)
    if code != 0:
        raise RuntimeError(f"training {model} seed {seed} failed (exit {code}); see {log.name}")
    return out


def summarize(out_root: Path, models: list[str], seeds: list[int]) -> str:
    """The markdown table of mean ± population std over ``seeds`` per model (missing runs are listed)."""
    lines = [
        "| model | seeds | InfoM | InfoE | InfoC | PSNR (dB) | steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    missing = []
    for model in models:
        rows = []
        for seed in seeds:
            path = out_root / f"{model}_seed{seed}" / "metrics.json"
            if path.is_file():
                rows.append((seed, json.loads(path.read_text())))
            else:
                missing.append(f"{model} seed {seed}")
        if not rows:
            continue
        cells = []
        for key in METRICS:
            values = [float(r[key]) for _, r in rows if r.get(key) is not None]
            digits = 2 if key in ("psnr", "steps_per_second") else 3
            spread = statistics.pstdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.{digits}f} ± {spread:.{digits}f}")
        lines.append(f"| {model} | {len(rows)} | " + " | ".join(cells) + " |")
        per_seed = ", ".join(
            f"seed {seed}: InfoM {r['infom']:.3f} InfoE {r['infoe']:.3f} InfoC {r['infoc']:.3f}"
            for seed, r in rows
        )
        lines.append(f"<!-- {model}: {per_seed} -->")
    if missing:
        lines.append(f"\nMissing runs: {', '.join(missing)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["qlinfowgan", "infowgan"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3000, help="iterations per run (critic steps)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo_gan.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gan_seeds")
    parser.add_argument("--parallel", type=int, default=1, help="trainings at once")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training")
    parser.add_argument("--summarize-only", action="store_true", help="only print the table of finished runs")
    parser.add_argument("settings", nargs="*", metavar="key=value", help="extra settings for every run")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.parallel < 1 or args.threads < 1:
        parser.error("--steps, --parallel and --threads must be >= 1")
    if not args.summarize_only:
        jobs = [(model, seed) for seed in args.seeds for model in args.models]
        failures = []
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            for future in [pool.submit(_run, model, seed, args) for model, seed in jobs]:
                try:
                    future.result()
                except RuntimeError as err:
                    failures.append(str(err))
        for failure in failures:
            print(failure, file=sys.stderr)
    print(summarize(args.out, args.models, args.seeds))
    return 1 if not args.summarize_only and failures else 0


if __name__ == "__main__":
    sys.exit(main())
