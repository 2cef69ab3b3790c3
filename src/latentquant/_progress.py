"""Progress bars for long evaluations: tqdm on a terminal, nothing otherwise (logs, pipes, CI, pytest)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def show_progress(enabled: bool | None = None) -> bool:
    """Whether to draw a bar: ``enabled`` if given, else whether stderr is a terminal."""
    if enabled is not None:
        return bool(enabled)
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress(
    items: Iterable[T], desc: str, total: int | None = None, enabled: bool | None = None
) -> Iterator[T]:
    """Iterate ``items`` with a tqdm bar on stderr when :func:`show_progress` says so (the bar is cleared at the
    end); a plain iteration otherwise."""
    if not show_progress(enabled):
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, leave=False, file=sys.stderr, dynamic_ncols=True)
