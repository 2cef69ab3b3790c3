"""The ``latentquant`` command: one entry point, one sub-command module per area.

Each area registers its sub-commands through a ``register(subparsers)`` function in its own ``cli``
module (``latentquant.data.cli``, ``latentquant.metrics.cli``, ``latentquant.train.cli``,
``latentquant.study.cli``); a sub-command
stores its handler as ``func`` on the parsed arguments. Errors a user can fix (bad arguments, missing or
corrupt files) exit with status 2 and one line naming what was wrong.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

_AREAS = (
    "latentquant.data.cli",
    "latentquant.metrics.cli",
    "latentquant.train.cli",
    "latentquant.study.cli",
)


_DESCRIPTION = """\
Learn and measure disentangled representations with quantized latents: QLAE and its baselines, after
"Disentanglement via Latent Quantization" (Hsu et al., NeurIPS 2023), with InfoMEC, MIG, DCI and SAP."""

_EPILOG = """\
quick start (300 steps, about a minute on an idle 2-core CPU):
  latentquant train --config configs/demo.yaml --out runs/quick steps=300 eval_samples=1000
  then open runs/quick/report.html: metrics, reconstructions, traversals, NMI heatmap, loss curves

common tasks:
  latentquant train --model qlae --dataset shapes3d --out runs/qlae    train with the paper's settings
  latentquant evaluate runs/qlae --metrics infomec,mig,dci,sap         re-score a run into metrics.json
  latentquant metrics rep.npz          score saved arrays 'sources' (N, S) and 'latents' (N, L)
  latentquant data show shapes3d --out factors.png                     see what each factor changes
  latentquant sweep --models qlae,ae --datasets shapes3d --seeds 0-2 --out sweeps/a
  latentquant table sweeps/a           the paper's tables (mean +- 95% CI) from a folder of runs

from Python: latentquant.evaluate(encode_fn, dataset) scores any encoder; latentquant.nn holds the layers
(LatentQuantizer, FSQ, VectorQuantizer; vector-quantize-pytorch's call convention).
Each command has its own --help (e.g. latentquant train --help)."""


class _Version(argparse.Action):
    """``--version``: package, torch and (in a git checkout) commit; computed only when asked."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        import torch

        from latentquant import __version__
        from latentquant.provenance import git_commit

        commit = git_commit()
        print(
            f"latentquant {__version__} (torch {torch.__version__}" + (f", git {commit})" if commit else ")")
        )
        parser.exit()


class UsageError(Exception):
    """A problem with the command line or its input files, reported as one line with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentquant",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="print the version (and git commit) and exit")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for name in _AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.register(sub)
    return parser


# Commands that compute on the CPU (or start processes that do) and run with latentquant's OpenMP wait
# policy (latentquant._openmp: a short spin, so that training holds its speed beside other processes).
OPENMP_COMMANDS = frozenset({"train", "evaluate", "metrics", "sweep"})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may stand anywhere, also after flags: argparse's positional list takes the first
    # run of them, parse_known_args returns the others, which go to the sub-command's overrides.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(arg.startswith("-") or "=" not in arg for arg in extra):
            parser.parse_args(argv)  # reports the unrecognized arguments and exits with status 2
        args.overrides = [*args.overrides, *extra]
    args.argv = list(sys.argv[1:] if argv is None else argv)  # e.g. to relaunch the command under torchrun
    if argv is None and args.command in OPENMP_COMMANDS:  # the program, not a call from Python
        from latentquant import _openmp

        if args.command == "sweep":  # the runs it starts inherit the environment
            _openmp.apply_default(os.environ)
        elif not getattr(args, "print_config", False):
            _openmp.reexec_with_default(args.argv)
    try:
        result = args.func(args)
    except (UsageError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"latentquant {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
