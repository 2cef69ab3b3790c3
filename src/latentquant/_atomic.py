"""Crash-safe file placement shared by the run directory (``train/rundir.py``), the decoded-image caches
(``data/cache.py``) and the downloads (``data/download.py``).

A file or folder is written under a temporary name tagged with its writer's pid (``.NAME.tmp-PID``,
``.NAME.unpack-PID``), fsynced, then renamed into place with ``os.replace``, so readers never see a
partial result; temporaries whose writer process no longer exists are orphans and can be removed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path


def temp_path(path: Path) -> Path:
    """The temporary name ``path`` is written under before its rename: ``.NAME.tmp-PID`` in the same folder."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_directory(directory: Path) -> None:
    """Make renames in ``directory`` durable (best effort: some file systems refuse directory fsync)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_replace(source: Path, target: Path) -> None:
    """Flush the finished file ``source`` to disk, then rename it over ``target`` (``os.replace``).

    Raises:
        OSError: from the fsync or the rename (``target`` is then unchanged).
    """
    with open(source, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(source, target)


def remove_entry(entry: Path) -> None:
    """Delete ``entry``: a folder with its contents, anything else (a file, a link) unlinked; missing is fine."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def remove_orphans(entries: Iterable[Path]) -> None:
    """Remove those of ``entries`` (temporaries named ``...-PID``) whose writer process ``PID`` is gone.

    An entry whose name does not end in ``-`` and digits, or whose process still runs, is left alone.
    """
    for entry in entries:
        pid = entry.name.rpartition("-")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            remove_entry(entry)
