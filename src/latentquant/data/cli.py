"""``latentquant data ...`` sub-commands.

- ``data show NAME --out grid.png``: one row per factor sweep.
- ``data download NAME [--dir DIR]``: fetch the official files (``latentquant.data.download``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latentquant.data import DATASET_NAMES, get_dataset, save_factor_grid
from latentquant.data.download import BASE_URL_ENV, DOWNLOADS, download


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
        "--data-path",
        default=None,
        help="real dataset file or folder (3dshapes.h5, dSprites/MPI3D .npz, Falcor3D_down128/, Isaac3D_down128/)",
    )
    show.add_argument("--seed", type=int, default=0, help="seed of the factor values held fixed (default 0)")
    show.add_argument("--max-columns", type=int, default=15, help="most values shown per factor (default 15)")
    show.set_defaults(func=_show)

    table = "\n".join(
        f"  {name:<16} {', '.join(r.filename for r in entry.files)}"
        + (f" ({entry.note})" if entry.note else "")
        for name, entry in DOWNLOADS.items()
    )
    fetch = sub.add_parser(
        "download",
        help="download the official dataset files (checksums, resume, atomic); nothing downloads unless asked",
        description="Download a dataset's official files into --dir: streamed to a temporary file, resumed "
        "after a cut, verified (SHA-256/MD5 where published, else by format), unpacked and moved into place "
        "atomically. Then train with --dataset NAME --data-path DIR.\n\nNAME:\n" + table,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument(
        "name", choices=sorted(DOWNLOADS), metavar="NAME", help="dataset to download (see above)"
    )
    fetch.add_argument("--dir", default=".", help="folder to download into (default: the current folder)")
    fetch.add_argument(
        "--base-url",
        default=None,
        help=f"mirror: fetch BASE_URL/<file name> instead of the official URLs (default ${BASE_URL_ENV})",
    )
    fetch.add_argument("--no-progress", action="store_true", help="no progress bars")
    fetch.set_defaults(func=_download)

    prepare = sub.add_parser(
        "prepare",
        help="build a dataset's decoded-image cache now (Falcor3D/Isaac3D PNGs, a gzip-chunked 3dshapes.h5)",
        description="Open a real dataset, check its files and build its memory-mappable 64x64 uint8 cache if it "
        "uses one (otherwise built on the first training step). The cache goes next to the data, or under "
        "$LATENTQUANT_CACHE_DIR / --cache-dir.",
    )
    prepare.add_argument("name", help=f"dataset: one of {', '.join(DATASET_NAMES)}")
    prepare.add_argument("--data-path", required=True, help="the dataset file or folder")
    prepare.add_argument("--cache-dir", default=None, help="where the cache goes (default: see above)")
    prepare.set_defaults(func=_prepare)


def _show(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out: folder {out.parent} does not exist")
    dataset = get_dataset(args.name, args.data_path, cache=False)  # a few images: no cache build
    base = save_factor_grid(dataset, out, generator=args.seed, max_columns=args.max_columns)
    fixed = ", ".join(f"{n}={int(v)}" for n, v in zip(dataset.factor_names, base))
    print(f"wrote {out}: {dataset.name}, {dataset.num_factors} factor sweeps around {fixed}")
    return 0


def _download(args: argparse.Namespace) -> int:
    paths = download(
        args.name, args.dir, base_url=args.base_url, progress=False if args.no_progress else None
    )
    dataset = DOWNLOADS[args.name].dataset
    for path in paths:
        print(f"{args.name}: {path} ready; train with --dataset {dataset} --data-path {path}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    dataset = get_dataset(args.name, args.data_path, cache_dir=args.cache_dir)
    dataset.prepare()
    cache = getattr(dataset, "cache_path", None)
    where = f"cache {cache}" if cache is not None and cache.exists() else "no cache needed"
    print(f"{dataset!r}: ready ({where})")
    return 0
