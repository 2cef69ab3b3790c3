"""``latentquant data download NAME``: fetch the official dataset files, verified, resumable and atomic.

``DOWNLOADS`` is the one table of what is fetched (README "Datasets" shows the same table). For each file:
its official URL, the checksums published for it (SHA-256 where one is published anywhere we could read,
MD5 where only that is — both come from other projects' download code, named in ``source``) and its size
when known. Where no checksum is published (the authors' Google Drive copies of MPI3D-complex, Falcor3D and
Isaac3D) the file is instead verified by format: it must open with its loader (image count, labels, PNGs).

Steps: stream to ``DIR/.NAME.part`` with a progress bar; when a ``.part`` is already there (an earlier cut),
ask the server for the rest (HTTP ``Range``) and append, retrying a cut connection a few times; verify size
and checksums (a mismatch deletes the download); unpack archives (zip, tar) into a temporary folder inside
``DIR`` and move the result into place with one rename; single files are checked by format and renamed
into place. Nothing is written under the final name until it is complete and verified, so an interruption
at any point leaves either nothing or the previous state, and a rerun picks up where it stopped.

Nothing downloads unless asked. ``base_url`` (``--base-url``, or ``LATENTQUANT_DOWNLOAD_BASE_URL``)
replaces every URL by ``base_url/<file name>``: for mirrors and for the loopback tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from latentquant._atomic import remove_orphans

BASE_URL_ENV = "LATENTQUANT_DOWNLOAD_BASE_URL"
_BLOCK = 2**20
_ATTEMPTS = 4  # connections per file: the first and up to three resumes after a cut
_TIMEOUT_S = 60.0
_DRIVE = "https://drive.usercontent.google.com/download?export=download&confirm=t&id="


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset as published.

    Attributes:
        url: official download URL.
        filename: name of the downloaded file under ``--dir`` (and under ``--base-url`` mirrors).
        provides: what ends up under ``--dir``: ``filename`` itself, or the folder an archive unpacks to.
        sha256, md5: published checksums (None where none is published).
        size: size in bytes where published.
        source: where the URL and checksums come from.
    """

    url: str
    filename: str
    provides: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    source: str = ""

    @property
    def is_archive(self) -> bool:
        return self.provides != self.filename


@dataclass(frozen=True)
class DatasetDownload:
    """A downloadable dataset: its files, the ``--dataset`` name it serves and what ``--data-path`` to pass."""

    dataset: str
    files: tuple[RemoteFile, ...]
    note: str = ""


_DISENT = "nmichlo/disent (disent/dataset/data/_groundtruth__mpi3d.py, MD5 'full')"


def _mpi3d_variant(variant: str, md5: str) -> DatasetDownload:
    """An MPI3D variant as disentanglement_lib publishes it: ``mpi3d_<variant>.npz``, with its MD5."""
    filename = f"mpi3d_{variant}.npz"
    remote = RemoteFile(
        url=f"https://storage.googleapis.com/disentanglement_dataset/Final_Dataset/{filename}",
        filename=filename,
        provides=filename,
        md5=md5,
        source=_DISENT,
    )
    return DatasetDownload("mpi3d", (remote,))


DOWNLOADS: dict[str, DatasetDownload] = {
    "shapes3d": DatasetDownload(
        "shapes3d",
        (
            RemoteFile(
                url="https://storage.googleapis.com/3d-shapes/3dshapes.h5",
                filename="3dshapes.h5",
                provides="3dshapes.h5",
                sha256="0a0f6ed98baff276a50f3a081a7434d788da63cb135a98189b2a5b5769be1785",
                md5="099a2078d58cec4daad0702c55d06868",
                size=267_573_662,
                source="deepmind/3d-shapes; MD5 as in nmichlo/disent, SHA-256 and size from a public "
                "download script that lists the same MD5",
            ),
        ),
    ),
    "dsprites": DatasetDownload(
        "dsprites",
        (
            RemoteFile(
                url="https://github.com/deepmind/dsprites-dataset/raw/master/"
                "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz",
                filename="dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz",
                provides="dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz",
                md5="7da33b31b13a06f4b04a70402ce90c2e",
                source="deepmind/dsprites-dataset; MD5 as published in several loaders (no SHA-256 published)",
            ),
        ),
    ),
    "mpi3d": DatasetDownload(
        "mpi3d",
        (
            RemoteFile(
                url=_DRIVE + "1Tp8eTdHxgUMtsZv5uAoYAbJR1BOa_OQm",
                filename="real3d_complicated_shapes_ordered.npz",
                provides="real3d_complicated_shapes_ordered.npz",
                source="the authors' copy (kylehkhsu/latent_quantization mpi3d builder); no checksum "
                "published: verified by format (460,800 images of 64x64x3)",
            ),
        ),
        note="the paper's MPI3D: the 'complex' real-world shapes, grid 4,4,2,3,3,40,40",
    ),
    "mpi3d-toy": _mpi3d_variant("toy", md5="55889cb7c7dfc655d6e0277beee88868"),
    "mpi3d-realistic": _mpi3d_variant("realistic", md5="59a6225b88b635365f70c91b3e52f70f"),
    "mpi3d-real": _mpi3d_variant("real", md5="0f33f609918fb5c97996692f91129802"),
    "falcor3d": DatasetDownload(
        "falcor3d",
        (
            RemoteFile(
                url=_DRIVE + "1XAQfFK1x6cpN1eiovbP0hVfLTm5SsSoJ",
                filename="Falcor3D_down128.zip",
                provides="Falcor3D_down128",
                source="the authors' copy (kylehkhsu/latent_quantization falcor3d builder); no checksum "
                "published: verified by format (labels and one PNG per row)",
            ),
        ),
    ),
    "isaac3d": DatasetDownload(
        "isaac3d",
        (
            RemoteFile(
                url=_DRIVE + "1OmQ1G2wnm6eTsSFGTKFZZAh5D3nQTW1B",
                filename="Isaac3D_down128.zip",
                provides="Isaac3D_down128",
                source="the authors' copy (kylehkhsu/latent_quantization isaac3d builder); no checksum "
                "published: verified by format (labels and one PNG per row)",
            ),
        ),
    ),
}


class DownloadError(ValueError):
    """A download that failed or did not verify; the message names the file and the URL."""


def _log(message: str) -> None:
    print(f"latentquant data download: {message}", file=sys.stderr)


def _url(remote: RemoteFile, base_url: str | None) -> str:
    base = base_url or os.environ.get(BASE_URL_ENV)
    return f"{base.rstrip('/')}/{remote.filename}" if base else remote.url


def _fetch(url: str, part: Path, expected_size: int | None, progress: bool) -> None:
    """Download ``url`` into ``part``, resuming from its current length; retries a cut connection."""
    from tqdm import tqdm

    for attempt in range(_ATTEMPTS):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "latentquant"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
                if response.headers.get_content_type() == "text/html":
                    raise DownloadError(
                        f"{url} returned a web page, not the file (Google Drive asks to confirm large files "
                        f"or its quota is exceeded): download it in a browser and put it in {part.parent}"
                    )
                if have and response.status != 206:
                    have = 0  # the server ignored the Range header: start over
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else expected_size
                _need_space(part.parent, (total or 0) - have, url)
                mode = "ab" if have else "wb"
                with (
                    open(part, mode) as out,
                    tqdm(
                        total=total,
                        initial=have,
                        unit="B",
                        unit_scale=True,
                        desc=part.name.lstrip(".").removesuffix(".part"),
                        disable=not progress,
                    ) as bar,
                ):
                    while block := response.read(_BLOCK):
                        out.write(block)
                        bar.update(len(block))
                if length is not None and part.stat().st_size < total:
                    raise ConnectionError(f"connection closed at {part.stat().st_size} of {total} bytes")
                return
        except urllib.error.HTTPError as err:
            if err.code == 416 and have and expected_size in (None, have):
                return  # the .part already holds the whole file (verified next)
            if err.code == 416 and have and attempt + 1 < _ATTEMPTS:
                _log(f"{part} ({have} bytes) is longer than the file on the server; starting over")
                part.unlink()
                continue
            raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
        except (urllib.error.URLError, HTTPException, ConnectionError, TimeoutError) as err:
            got = part.stat().st_size if part.exists() else 0
            if attempt + 1 == _ATTEMPTS:
                raise DownloadError(
                    f"{url}: download interrupted at {got} bytes ({err}); run the command again to resume "
                    f"from {part}"
                ) from err
            _log(f"connection cut at {got} bytes ({err}); resuming")
            time.sleep(min(2.0**attempt, 10.0) * 0.1)
        except OSError as err:  # writing the .part: disk full, permissions
            raise DownloadError(
                f"{part}: cannot write the download ({err}); rerunning resumes from it"
            ) from err


def _need_space(directory: Path, nbytes: int, what: str) -> None:
    free = shutil.disk_usage(directory).free
    if nbytes > free:
        raise DownloadError(
            f"{directory}: {what} needs {nbytes / 2**30:.2f} GiB of disk, only {free / 2**30:.2f} GiB are free"
        )


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _verify(remote: RemoteFile, part: Path, url: str) -> None:
    """Size and published checksums; a mismatch removes the download (it would never verify)."""
    problems = []
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        problems.append(f"size {size} bytes, expected {remote.size}")
    for algorithm in ("sha256", "md5"):
        expected = getattr(remote, algorithm)
        if expected is not None and not problems:
            got = _digest(part, algorithm)
            if got != expected:
                problems.append(f"{algorithm.upper()} {got}, expected {expected}")
    if problems:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{remote.filename} from {url} does not verify: {'; '.join(problems)}. The download was removed; "
            "run the command again (or check the mirror)"
        )


def _safe_members_zip(archive: zipfile.ZipFile, archive_path: Path) -> None:
    for name in archive.namelist():
        target = Path(name)
        if target.is_absolute() or ".." in target.parts:
            raise DownloadError(f"{archive_path}: member {name!r} would unpack outside its folder; refusing")


def _unpack(archive_path: Path, destination: Path) -> None:
    """Unpack a zip or tar archive into ``destination`` (an empty folder), refusing paths that escape it."""
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as archive:
            _safe_members_zip(archive, archive_path)
            _need_space(
                destination, sum(i.file_size for i in archive.infolist()), f"unpacking {archive_path.name}"
            )
            for info in archive.infolist():
                archive.extract(info, destination)
    elif tarfile.is_tarfile(archive_path):
        with tarfile.open(archive_path) as archive:
            archive.extractall(destination, filter="data")
    else:
        raise DownloadError(f"{archive_path}: not a zip or tar archive")


def _check_format(dataset: str, path: Path) -> None:
    """Check a download that has no published checksum by its format (ValueError when it is wrong).

    MPI3D: the ``images`` member's header must declare one of the known grids (nothing is read beyond
    it); the PNG folders: the loader's checks (labels, one PNG per row), without building the cache.
    """
    from latentquant.data import get_dataset
    from latentquant.data.files import MPI3D_GRIDS
    from latentquant.data.npz import member_header, open_npz

    if dataset != "mpi3d":
        get_dataset(dataset, data_path=path)
        return
    with open_npz(path) as archive:
        header = member_header(path, archive, "images")
    if header.dtype != "uint8" or len(header.shape) != 4 or header.shape[0] not in MPI3D_GRIDS:
        raise ValueError(
            f"{path}: 'images' is {header.shape} {header.dtype}, expected (N, 64, 64, 3) uint8 with N one of "
            f"{sorted(MPI3D_GRIDS)}"
        )


def _place_file(remote: RemoteFile, part: Path, directory: Path, dataset: str) -> Path:
    target = directory / remote.provides
    if remote.sha256 is None and remote.md5 is None:
        try:
            _check_format(dataset, part)
        except (ValueError, FileNotFoundError) as err:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{remote.filename}: downloaded, but not a valid {dataset} file ({err}); the download was removed"
            ) from err
    os.replace(part, target)
    return target


def _place_archive(
    remote: RemoteFile,
    part: Path,
    directory: Path,
    dataset: str,
    unpack: Callable[[Path, Path], None],
) -> Path:
    target = directory / remote.provides
    staging = directory / f".{remote.provides}.unpack-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        unpack(part, staging)
        found = staging / remote.provides
        if not found.is_dir():
            raise DownloadError(
                f"{remote.filename}: the archive holds {sorted(p.name for p in staging.iterdir())}, "
                f"expected a folder {remote.provides}/"
            )
        try:
            _check_format(dataset, found)
        except (ValueError, FileNotFoundError) as err:
            raise DownloadError(
                f"{remote.filename}: unpacked, but not a valid {dataset} folder ({err})"
            ) from err
        os.replace(found, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    part.unlink(missing_ok=True)
    return target


def _clean_stale(directory: Path) -> None:
    """Remove unpack folders left by killed runs (``.X.unpack-PID`` of dead processes)."""
    remove_orphans(e for e in directory.glob(".*-*") if e.name.rpartition("-")[0].endswith(".unpack"))


def download(
    name: str,
    directory: str | os.PathLike[str] = ".",
    base_url: str | None = None,
    progress: bool | None = None,
    unpack: Callable[[Path, Path], None] = _unpack,
) -> list[Path]:
    """Fetch dataset ``name`` into ``directory``; returns the paths to pass as ``--data-path``.

    Args:
        name: a key of ``DOWNLOADS``.
        directory: where the files go (created if needed).
        base_url: a mirror replacing every URL by ``base_url/<file name>`` (default ``$LATENTQUANT_DOWNLOAD_BASE_URL``).
        progress: show progress bars (None: only on a terminal).
        unpack: the archive unpacker (``(archive, empty folder) -> None``).
    Raises:
        ValueError: an unknown name. ``DownloadError`` (a ValueError): a failed, corrupt or invalid download.
    """
    if name not in DOWNLOADS:
        raise ValueError(f"dataset: expected one of {', '.join(DOWNLOADS)}, got {name!r}")
    entry = DOWNLOADS[name]
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    with _directory_lock(directory):
        _clean_stale(directory)
        return _download_files(entry, directory, base_url, progress, unpack)


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """One download at a time per folder (two would append to the same ``.part``): flock on the folder."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(
                f"{directory}: another `latentquant data download` is running in this folder; wait for it"
            ) from None
        yield
    finally:
        os.close(handle)  # releases the lock


def _download_files(
    entry: DatasetDownload,
    directory: Path,
    base_url: str | None,
    progress: bool | None,
    unpack: Callable[[Path, Path], None],
) -> list[Path]:
    show = sys.stderr.isatty() if progress is None else progress
    placed = []
    for remote in entry.files:
        target = directory / remote.provides
        if target.exists():
            _log(f"{target} already exists; not downloading it again (delete it to re-download)")
            placed.append(target)
            continue
        url = _url(remote, base_url)
        part = directory / f".{remote.filename}.part"
        _log(f"{url} -> {target}" + (f" (resuming at {part.stat().st_size} bytes)" if part.exists() else ""))
        _fetch(url, part, remote.size, show)
        _verify(remote, part, url)
        if remote.is_archive:
            placed.append(_place_archive(remote, part, directory, entry.dataset, unpack))
        else:
            placed.append(_place_file(remote, part, directory, entry.dataset))
    return placed
