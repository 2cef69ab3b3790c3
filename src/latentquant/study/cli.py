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
