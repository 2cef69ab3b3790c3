"""Reading ``.npz`` archives safely: only the members asked for, every declared size checked first.

A ``.npz`` is a zip of ``.npy`` members. ``numpy.load`` trusts each member's header: a crafted (or
damaged) file can declare a 1 TiB array and make ``read_array`` try to allocate it. Here, before any
allocation, a member's declared array size is checked against

- the member's uncompressed size in the zip directory (a header promising more data than the member holds
  is truncated or crafted),
- for deflate members, the compressed bytes actually in the file (deflate cannot expand data more than
  about 1032:1, so a larger claim is impossible),
- for members read into memory, the memory available now (``MemAvailable`` in ``/proc/meminfo``).

Members stored without compression are memory-mapped instead of read (no memory needed). Every problem
raises ``ValueError`` naming the file and the member. Used by the dataset loaders and ``latentquant metrics``.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

MAX_DEFLATE_RATIO = 1032  # the most deflate can expand: 258-byte matches from 2-bit codes
_CRC_CHECK_BYTES = 64 * 2**20  # stored members up to this size get their CRC checked when mapped


@dataclass(frozen=True)
class MemberHeader:
    """The ``.npy`` header of one member: its array's shape and dtype and where its data starts.

    Attributes:
        key: member name without ``.npy``.
        shape, dtype, fortran_order: as written in the header.
        header_bytes: bytes of the ``.npy`` magic + header before the data.
        data_offset: absolute offset of the data in the archive file (stored members only, else None).
    """

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    header_bytes: int
    data_offset: int | None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def open_npz(path: Path) -> zipfile.ZipFile:
    """Open ``path`` as a zip archive (reads only the central directory).

    Raises:
        ValueError: not a zip file, truncated or corrupt directory (the message names ``path``).
    """
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise ValueError(f"{path}: not a readable .npz (zip) file — truncated or corrupt? ({err})") from err


def npz_keys(archive: zipfile.ZipFile) -> list[str]:
    """Sorted names of the ``.npy`` members, without the ``.npy`` suffix."""
    return sorted(n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy"))


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (``MemAvailable``; physical pages elsewhere)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _local_data_start(path: Path, info: zipfile.ZipInfo) -> int:
    """Absolute offset of a member's bytes: after its local header, name and extra field."""
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        local = raw.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise ValueError("bad zip local header (truncated or corrupt file)")
    name_len = int.from_bytes(local[26:28], "little")
    extra_len = int.from_bytes(local[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def _read_header(stream: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    if version == (3, 0):
        return np.lib.format._read_array_header(stream, version)
    raise ValueError(f"unsupported .npy format version {version}")


def member_header(path: Path, archive: zipfile.ZipFile, key: str) -> MemberHeader:
    """Parse member ``key``'s ``.npy`` header (a few hundred bytes read) and check its declared size.

    Raises:
        ValueError: no such member, an unreadable header, an object dtype (pickles are never loaded), or a
            declared size the member or the file cannot hold. The message names ``path`` and ``key``.
    """
    try:
        info = archive.getinfo(f"{key}.npy")
    except KeyError:
        raise ValueError(f"{path}: no member '{key}' (found {npz_keys(archive)})") from None
    try:
        if info.compress_type == zipfile.ZIP_STORED:
            start = _local_data_start(path, info)
            with open(path, "rb") as raw:
                raw.seek(start)
                shape, fortran, dtype = _read_header(raw)
                header_bytes = raw.tell() - start
            data_offset: int | None = start + header_bytes
        else:
            with archive.open(info) as member:
                shape, fortran, dtype = _read_header(member)
                header_bytes = member.tell()
            data_offset = None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as err:
        raise ValueError(f"{path}: member '{key}' has no readable .npy header ({err})") from err
    header = MemberHeader(
        key, tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran), header_bytes, data_offset
    )
    if header.dtype.hasobject:
        raise ValueError(
            f"{path}: member '{key}' holds Python objects (dtype {header.dtype}); refusing to unpickle"
        )
    declared = header_bytes + header.nbytes
    if declared > info.file_size:
        raise ValueError(
            f"{path}: member '{key}' declares shape {header.shape} {header.dtype} ({header.nbytes:,} bytes) but "
            f"holds only {info.file_size - header_bytes:,} bytes of data (truncated or crafted)"
        )
    file_size = path.stat().st_size
    if info.header_offset + info.compress_size > file_size:
        raise ValueError(
            f"{path}: member '{key}' runs past the end of the file ({file_size:,} bytes): truncated download?"
        )
    if (
        info.compress_type == zipfile.ZIP_DEFLATED
        and info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024
    ):
        raise ValueError(
            f"{path}: member '{key}' claims {info.file_size:,} bytes uncompressed from {info.compress_size:,} "
            f"compressed bytes, more than deflate can produce (crafted or corrupt file)"
        )
    return header


def _check_crc(path: Path, info: zipfile.ZipInfo, start: int) -> None:
    crc = 0
    with open(path, "rb") as raw:
        raw.seek(start)
        left = info.file_size
        while left:
            block = raw.read(min(left, 2**20))
            if not block:
                break
            crc = zlib.crc32(block, crc)
            left -= len(block)
    if crc != info.CRC:
        raise ValueError(f"{path}: corrupt .npz: member '{info.filename}' fails its CRC check")


def read_member(path: Path, archive: zipfile.ZipFile, key: str, mmap: bool = True) -> np.ndarray:
    """Member ``key`` as an array: memory-mapped (read-only) when stored uncompressed and ``mmap``, else read.

    Before reading into memory, the declared size is checked against the memory available now.
    Stored members up to 64 MiB have their CRC checked; compressed ones are checked by zlib while read.

    Raises:
        ValueError: any problem of ``member_header``, not enough memory, a CRC mismatch or a read error.
    """
    header = member_header(path, archive, key)
    info = archive.getinfo(f"{key}.npy")
    if header.data_offset is not None and info.file_size <= _CRC_CHECK_BYTES:
        _check_crc(path, info, header.data_offset - header.header_bytes)
    if mmap and header.data_offset is not None and not header.fortran_order:
        if header.nbytes == 0:
            return np.zeros(header.shape, dtype=header.dtype)
        return np.memmap(path, dtype=header.dtype, mode="r", shape=header.shape, offset=header.data_offset)
    free = available_memory()
    if header.nbytes > free:
        raise ValueError(
            f"{path}: member '{key}' ({header.shape} {header.dtype}) needs {header.nbytes / 2**30:.1f} GiB "
            f"in memory, only {free / 2**30:.1f} GiB are available"
        )
    try:
        with archive.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, MemoryError) as err:
        raise ValueError(f"{path}: member '{key}' is not a readable .npy array ({err})") from err
