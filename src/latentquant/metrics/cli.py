"""``latentquant metrics FILE.npz``: evaluate a saved representation, print a table, write JSON and a heatmap.

The file holds arrays ``sources`` (N, S) and ``latents`` (N, L), and optionally ``source_names`` (S,).
Output (default: ``<FILE stem>_metrics/`` beside the file): ``metrics.json`` (every result in full) and,
when InfoMEC is computed, ``nmi.png`` (inactive latents hatched and labelled).
"""

from __future__ import annotations

import argparse
import json
import time
import zipfile
from pathlib import Path

import numpy as np

from latentquant.metrics.dci import DCI_MODELS
from latentquant.metrics.evaluate import ALL_METRICS, evaluate_representation
from latentquant.metrics.infomec import CONVENTIONS
from latentquant.metrics.plots import plot_nmi


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``metrics`` sub-command to the ``latentquant`` parser."""
    parser = subparsers.add_parser(
        "metrics",
        help="evaluate a representation saved as .npz (arrays sources, latents)",
        description="Evaluate a representation saved as .npz (arrays sources, latents): print a table of "
        "InfoM/InfoE/InfoC, MIG, DCI, SAP, modularity and explicitness, write metrics.json and nmi.png.",
    )
    parser.add_argument("file", type=Path, help=".npz file with arrays 'sources' (N, S) and 'latents' (N, L)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <FILE stem>_metrics)")
    parser.add_argument("--discrete-latents", action="store_true", help="latents are quantized (plug-in MI)")
    parser.add_argument("--convention", choices=CONVENTIONS, default="paper", help="InfoMEC convention")
    parser.add_argument(
        "--metrics",
        default=",".join(ALL_METRICS),
        help=f"comma-separated subset of {','.join(ALL_METRICS)} (default: all)",
    )
    parser.add_argument("--dci-model", choices=DCI_MODELS, default="gbt", help="DCI importance model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split and MI jitter")
    parser.set_defaults(func=run)


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Read only ``sources``, ``latents`` and ``source_names`` from the .npz, each member's declared size
    checked against the file and the available memory before anything is allocated."""
    from latentquant.cli import UsageError
    from latentquant.data.npz import npz_keys, open_npz, read_member

    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{path}: not an .npz archive (expected np.savez output)")
    try:
        with open_npz(path) as archive:
            keys = npz_keys(archive)
            missing = [name for name in ("sources", "latents") if name not in keys]
            if missing:
                raise UsageError(f"{path}: missing array(s) {missing}; found {keys}")
            sources = np.asarray(read_member(path, archive, "sources", mmap=False))
            latents = np.asarray(read_member(path, archive, "latents", mmap=False))
            names = read_member(path, archive, "source_names", mmap=False) if "source_names" in keys else None
    except ValueError as err:
        raise UsageError(str(err)) from err
    return sources, latents, None if names is None else [str(n) for n in names]


def run(args: argparse.Namespace) -> int:
    """Handler of ``latentquant metrics``: returns the exit status (user errors raise, exit 2)."""
    from latentquant.cli import UsageError
    from latentquant.provenance import provenance

    started = time.perf_counter()
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown or not metrics:
        raise UsageError(
            f"--metrics must be a comma-separated subset of {','.join(ALL_METRICS)}, got {args.metrics!r}"
        )
    sources, latents, source_names = _load(args.file)
    if source_names is not None and (sources.ndim != 2 or len(source_names) != sources.shape[1]):
        raise UsageError(f"source_names has {len(source_names)} entries, sources has shape {sources.shape}")
    result = evaluate_representation(
        sources,
        latents,
        discrete_latents=args.discrete_latents,
        convention=args.convention,
        metrics=metrics,
        dci_model=args.dci_model,
        seed=args.seed,
    )
    out = args.out if args.out is not None else args.file.with_name(f"{args.file.stem}_metrics")
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "file": str(args.file),
        "num_samples": int(latents.shape[0]),
        "num_sources": int(sources.shape[1]),
        "num_latents": int(latents.shape[1]),
        "discrete_latents": bool(args.discrete_latents),
        "convention": args.convention,
        "dci_model": args.dci_model,
        "seed": args.seed,
        **result.to_dict(),
        "provenance": provenance("cpu", time.perf_counter() - started),
    }
    written = [out / "metrics.json"]
    (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    if result.infomec is not None:
        written.append(
            plot_nmi(result.infomec.nmi, result.infomec.active_latents, out / "nmi.png", source_names)
        )

    scalars = result.scalars()
    width = max(len(name) for name in scalars)
    print(f"{'metric':<{width}}  value")
    for name, value in scalars.items():
        print(f"{name:<{width}}  {value:.4f}")
    if result.infomec is not None:
        active = result.infomec.active_latents
        print(f"active latents: {int(active.sum())} of {active.size} ({args.convention} convention)")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
