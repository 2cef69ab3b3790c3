"""Decoded-image caches: one memory-mappable uint8 ``.npy`` per dataset file, built once, written atomically.

Used where the distributed format cannot be read fast at random (PNG folders, compressed HDF5 chunks).
Where a cache goes, first match wins: the ``cache_dir`` argument, ``$LATENTQUANT_CACHE_DIR``, the data's
own folder when writable, else ``$XDG_CACHE_HOME/latentquant`` (``~/.cache/latentquant``). Outside the
data's folder the file name starts with a digest of the data's absolute path, so two copies never share
a cache. A cache is used only when its shape, dtype and byte size are right and it is newer than its
source; otherwise it is rebuilt. Building checks the free disk space and reserves the file's blocks first
(a full disk is a clear error before any work), writes ``.NAME.tmp-PID`` beside the target with a progress
bar, flushes and fsyncs it, then renames it into place, so readers never see a partial cache; temporary
files of dead processes are removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from latentquant._atomic import fsync_replace, remove_orphans, temp_path

CACHE_ENV = "LATENTQUANT_CACHE_DIR"
_SPARE_BYTES = 64 * 2**20  # left free beyond the cache itself


def cache_file(source: Path, stem: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the cache of ``source`` (a data file or folder) called ``stem`` (``NAME.npy``) lives."""
    home = source.parent if source.is_file() else source
    env = os.environ.get(CACHE_ENV)
    if cache_dir is not None:
        directory = Path(cache_dir).expanduser()
    elif env:
        directory = Path(env).expanduser()
    elif os.access(home, os.W_OK):
        directory = home
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        directory = Path(base) / "latentquant"
    if directory.resolve() != home.resolve():
        stem = f"{hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]}-{stem}"
    return directory / stem


def open_cache(path: Path, shape: tuple[int, ...], source: Path) -> np.memmap | None:
    """The cache at ``path`` memory-mapped read-only, or None when it is missing, damaged or stale.

    Valid means: a readable ``.npy`` of uint8 ``shape``, exactly as many bytes as that, and modified no
    earlier than ``source`` (a cache older than its data is stale).
    """
    try:
        cached = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if not isinstance(cached, np.memmap) or cached.shape != shape or cached.dtype != np.uint8:
        return None
    stat = path.stat()
    if stat.st_size != cached.offset + cached.nbytes or stat.st_mtime < source.stat().st_mtime:
        return None
    return cached


def ensure_cache(
    path: Path,
    shape: tuple[int, ...],
    source: Path,
    fill: Callable[[int, int], np.ndarray],
    chunk: int,
    name: str,
    progress: bool | None = None,
) -> np.memmap:
    """The valid cache at ``path`` (see :func:`open_cache`); when it is missing, damaged or stale, first build
    it (uint8 ``shape``) from ``fill(start, stop)`` blocks, atomically.

    Args:
        path: the cache file (its folder is created).
        shape: ``(N, ...)`` of the whole cache.
        source: the data it caches (a cache older than it is stale).
        fill: returns the uint8 rows ``[start, stop)``; its exceptions abort the build, leaving nothing.
        chunk: rows per ``fill`` call.
        name: the dataset's name, for the message and the progress bar.
        progress: show the bar (None: only on a terminal).
    Returns:
        the finished cache, memory-mapped read-only.
    """
    cached = open_cache(path, shape, source)
    if cached is not None:
        return cached
    from numpy.lib.format import open_memmap
    from tqdm import tqdm

    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent.glob(f".{path.name}.tmp-*"))
    tmp = temp_path(path)
    n = shape[0]
    size_gib = np.prod(shape, dtype=np.float64) / 2**30
    print(
        f"latentquant: caching {n} {name} images as uint8 {shape[1:]} in {path} ({size_gib:.2f} GiB, once)",
        file=sys.stderr,
    )
    quiet = not sys.stderr.isatty() if progress is None else not progress
    nbytes = int(np.prod(shape, dtype=np.int64))
    free = shutil.disk_usage(path.parent).free
    if free < nbytes + _SPARE_BYTES:
        raise ValueError(
            f"{path.parent}: the {name} cache needs {nbytes / 2**30:.2f} GiB of disk, only {free / 2**30:.2f} GiB "
            f"are free; set {CACHE_ENV} (or cache_dir) to a folder with room"
        )
    try:
        out = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        try:  # reserve the blocks now: a full disk under a memory map is SIGBUS, not an error
            with open(tmp, "r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as err:
            raise ValueError(
                f"{path.parent}: cannot reserve {nbytes / 2**30:.2f} GiB for the {name} cache ({err})"
            ) from err
        with tqdm(total=n, unit="img", desc=f"{name} cache", disable=quiet) as bar:
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                out[start:stop] = fill(start, stop)
                bar.update(stop - start)
        out.flush()
        del out
        stamp = max(time.time(), source.stat().st_mtime)  # never older than its source (clock skew)
        os.utime(tmp, (stamp, stamp))
        fsync_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    cached = open_cache(path, shape, source)
    if cached is None:
        raise ValueError(f"{path}: the cache just written does not read back")
    return cached
