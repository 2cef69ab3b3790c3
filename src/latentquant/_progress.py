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


class Stages:
    """A bar over named stages of a computation (``desc``: the current stage), only when :func:`show_progress`.

    ``start(name)`` marks the previous stage done and shows ``name``; names not in ``names`` are ignored, so the
    calls can sit before optional blocks. Use as a context manager.
    """

    def __init__(self, names: Iterable[str], desc: str, enabled: bool | None = None) -> None:
        self.names = list(names)
        self.desc = desc
        self.started = 0
        self.bar = None
        if show_progress(enabled) and self.names:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=len(self.names), desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True
            )

    def start(self, name: str) -> None:
        if name not in self.names or self.bar is None:
            return
        if self.started:
            self.bar.update(1)
        self.started += 1
        self.bar.set_description(f"{self.desc}: {name}")

    def __enter__(self) -> Stages:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
