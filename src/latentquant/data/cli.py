"""``latentquant data ...`` sub-commands: ``data show NAME --out grid.png`` draws one row per factor sweep."""

from __future__ import annotations

import argparse
from pathlib import Path

from latentquant.data import DATASET_NAMES, get_dataset, save_factor_grid


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command and its sub-commands to the ``latentquant`` parser."""
    data = subparsers.add_parser("data", help="ground-truth datasets: inspect procedural or real data")
    sub = data.add_subparsers(dest="data_command", required=True)
    show = sub.add_parser(
        "show",
        help="write a PNG with one row per factor, sweeping that factor while the others stay fixed",
    )
    show.add_argument("name", help=f"dataset: one of {', '.join(DATASET_NAMES)}")
    show.add_argument("--out", required=True, help="PNG file to write")
    show.add_argument(
        "--data-path", default=None, help="real dataset file (3dshapes.h5, dSprites/MPI3D .npz)"
    )
    show.add_argument("--seed", type=int, default=0, help="seed of the factor values held fixed (default 0)")
    show.add_argument("--max-columns", type=int, default=15, help="most values shown per factor (default 15)")
    show.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out: folder {out.parent} does not exist")
    dataset = get_dataset(args.name, args.data_path)
    base = save_factor_grid(dataset, out, generator=args.seed, max_columns=args.max_columns)
    fixed = ", ".join(f"{n}={int(v)}" for n, v in zip(dataset.factor_names, base))
    print(f"wrote {out}: {dataset.name}, {dataset.num_factors} factor sweeps around {fixed}")
    return 0
