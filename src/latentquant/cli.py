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
import sys

_AREAS = (
    "latentquant.data.cli",
    "latentquant.metrics.cli",
    "latentquant.train.cli",
    "latentquant.study.cli",
)


class UsageError(Exception):
    """A problem with the command line or its input files, reported as one line with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentquant", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (UsageError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"latentquant {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
