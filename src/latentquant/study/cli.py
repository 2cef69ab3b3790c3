"""``latentquant sweep`` (a model x dataset x seed grid of training runs through submitit) and
``latentquant table`` (the paper's tables from a folder of finished runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from latentquant.cli import UsageError


def register(subparsers: Any) -> None:
    """Add the ``table`` and ``sweep`` sub-commands to the ``latentquant`` parser."""
    from latentquant.study.table import FORMATS

    table = subparsers.add_parser(
        "table",
        help="the paper's tables (mean ± 95%% CI over seeds) from a folder of runs",
        description="Read every run's metrics.json under RUN_DIR_ROOT (any depth) and print the paper's "
        "tables: rows = models, columns = datasets + an aggregate column, cells = InfoM/InfoE/InfoC (and PSNR "
        "in the per-dataset tables) as mean ± t(0.975, n-1)·std/sqrt(n). The aggregate is the mean over all "
        "of a model's runs with t(0.975, N-1) times the mean of its per-dataset standard errors. Bold: every "
        "entry whose mean+CI reaches the best entry's mean-CI (best: highest mean+CI). Unfinished runs and "
        "missing metrics are listed on stderr.",
    )
    table.add_argument("root", type=Path, metavar="RUN_DIR_ROOT", help="folder holding run directories")
    table.add_argument(
        "--format", choices=FORMATS, default="markdown", help="output format (default: markdown)"
    )
    table.add_argument(
        "--ddof",
        type=int,
        choices=(0, 1),
        default=0,
        help="std degrees of freedom: 0 = population std as the paper's tables (default), 1 = sample std",
    )
    table.set_defaults(func=_table)

    sweep = subparsers.add_parser(
        "sweep",
        help="train a grid of models x datasets x seeds through submitit (local processes or Slurm)",
        description="Expand models x datasets x seeds (x overrides given as key=v1,v2,...) into run directories "
        "OUT/<model>-<dataset>[-<key>=<value>...]-seed<seed> and train them through submitit: runs that are "
        "complete are skipped, runs with a checkpoint resume, the others start. Run the same command again to "
        "continue a sweep. A failed run is reported with its log and does not stop the others.",
        epilog=_SWEEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("--models", help="comma-separated zoo models (e.g. qlae,ae,beta_vae); or model=...")
    sweep.add_argument("--datasets", help="comma-separated datasets (e.g. shapes3d,dsprites); or dataset=...")
    sweep.add_argument("--seeds", help="seeds: '0-6', '0,1,2' or '0-2,7' (default: 0); or seed=...")
    sweep.add_argument(
        "--config", type=Path, help="YAML file of settings for every run (as latentquant train)"
    )
    sweep.add_argument("--out", type=Path, required=True, help="the sweep's folder (one directory per run)")
    sweep.add_argument(
        "--launcher", choices=("local", "slurm"), default="local", help="submitit executor (default: local)"
    )
    sweep.add_argument(
        "--max-parallel",
        type=int,
        help="runs at once (local default: 1; Slurm: the job array's parallelism, default unlimited); "
        "local runs get cores // max-parallel threads each (a larger num_threads setting is lowered to it)",
    )
    sweep.add_argument(
        "--timeout-min", type=int, help="time limit per run in minutes (Slurm default: 3 days)"
    )
    slurm = sweep.add_argument_group("Slurm (with --launcher slurm)")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per run (default: 0)")
    slurm.add_argument("--cpus-per-task", type=int, help="CPUs per run (also the run's torch threads)")
    slurm.add_argument("--mem-gb", type=float, help="memory per run in GB")
    slurm.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="any other submitit Slurm parameter, e.g. --slurm account:myproject --slurm qos:high "
        "(becomes slurm_account=..., slurm_qos=...); repeatable",
    )
    slurm.add_argument("--no-wait", action="store_true", help="return after submitting (Slurm)")
    sweep.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="settings for every run (as latentquant train); key=v1,v2 sweeps the key",
    )
    sweep.set_defaults(func=_sweep)


_SWEEP_EPILOG = """examples:
  latentquant sweep --models qlae,ae,beta_vae,beta_tcvae,bioae --datasets shapes3d --seeds 0-4 \\
      --config configs/demo.yaml --out runs/study --max-parallel 2
  latentquant sweep --models qlae --datasets shapes3d --seeds 0-2 lr=0.001,0.0003 --out runs/lr
  latentquant sweep --models qlae,ae --datasets shapes3d,mpi3d --seeds 0-6 --launcher slurm \\
      --partition gpu --gpus-per-node 1 --cpus-per-task 8 --timeout-min 1440 --out runs/paper
  latentquant table runs/study"""


def _sweep(args: argparse.Namespace) -> int:
    from latentquant.data import DATASET_NAMES
    from latentquant.study.sweep import (
        GRID_KEYS,
        SUBMITIT_FOLDER,
        command_line,
        expand_grid,
        grid_overrides,
        make_executor,
        parse_names,
        parse_seeds,
        run_sweep,
        summarize,
        thread_budget,
    )
    from latentquant.train.config import load_yaml_config, resolve_config
    from latentquant.zoo import MODELS

    overrides, grid = grid_overrides(args.overrides)
    given = {"model": args.models, "dataset": args.datasets, "seed": args.seeds}
    for key, option in GRID_KEYS.items():
        if key in grid and given[key] is not None:
            raise UsageError(f"{option} and the override {key}={grid[key]} both give the {key}s; give one")
        if key in grid:
            given[key] = grid[key]
    if given["model"] is None or given["dataset"] is None:
        raise UsageError("give the models (--models qlae,ae or model=qlae,ae) and the datasets (--datasets)")
    models = parse_names(given["model"], "--models", list(MODELS))
    datasets = parse_names(given["dataset"], "--datasets", list(DATASET_NAMES))
    seeds = parse_seeds(given["seed"] if given["seed"] is not None else "0")
    if args.max_parallel is not None and args.max_parallel < 1:
        raise UsageError(f"--max-parallel must be >= 1, got {args.max_parallel}")
    base = load_yaml_config(args.config) if args.config is not None else {}
    specs = expand_grid(models, datasets, seeds, args.out, overrides, base)
    for spec in specs:  # every run's settings are checked before anything starts
        try:
            resolve_config(spec.settings)
        except ValueError as err:
            raise UsageError(f"run {spec.name}: {err}") from err
    slurm_args = {}
    for item in args.slurm:
        name, sep, value = item.partition(":")
        if not sep or not name:
            raise UsageError(f"--slurm expects NAME:VALUE, got {item!r}")
        # numbers as numbers (submitit computes with e.g. array_parallelism, signal_delay_s)
        slurm_args[name if name.startswith("slurm_") else f"slurm_{name}"] = (
            int(value) if value.isdigit() else value
        )
    local = args.launcher == "local"
    max_parallel = args.max_parallel or (1 if local else None)
    executor = make_executor(
        args.launcher,
        args.out / SUBMITIT_FOLDER,
        timeout_min=args.timeout_min,
        partition=args.partition,
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb,
        max_parallel=None if local else max_parallel,
        slurm_args=slurm_args,
    )
    threads = thread_budget(max_parallel) if local else args.cpus_per_task
    if local:
        print(f"{len(specs)} runs in {args.out}, {max_parallel} at a time, at most {threads} thread(s) each")
    report = run_sweep(
        specs, executor, args.launcher, max_parallel or 1, threads, wait=not args.no_wait, echo=print
    )
    print(summarize(report, len(specs), command_line()))
    if report.failed:
        return 1
    return 130 if (report.interrupted or report.not_started) else 0


def _table(args: argparse.Namespace) -> int:
    from latentquant.study.table import collect_runs, compute_table, format_problems, render

    runs, problems = collect_runs(args.root)
    if problems:
        print(f"{len(problems)} run(s) left out of the table, in whole or in part:", file=sys.stderr)
        print(format_problems(problems), end="", file=sys.stderr)
    if not runs:
        raise UsageError(f"no finished run (a directory with metrics.json) under {args.root}")
    sys.stdout.write(render(compute_table(runs, ddof=args.ddof), args.format))
    return 0
