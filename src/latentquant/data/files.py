"""Loaders for the real single-file datasets, behind the same ``GroundTruthDataset`` interface.

- ``Shapes3DFile``: DeepMind's ``3dshapes.h5`` — HDF5 datasets ``images`` (N, 64, 64, 3) uint8 and
  ``labels`` (N, 6) float. Read lazily with h5py (the file stays on disk; each process opens its own handle).
- ``DSpritesFile``: ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` — ``imgs`` (N, 64, 64) uint8 of 0/1,
  ``latents_classes`` (N, 6) int with a leading constant ``color`` column, optionally ``latents_values``.
- ``MPI3DFile``: an MPI3D ``.npz`` — ``images`` (N, 64, 64, 3) uint8, no labels. The grid is told by N:
  1,036,800 images = toy / realistic / real (6, 6, 2, 3, 3, 40, 40); 460,800 = the paper's "complex"
  ``real3d_complicated_shapes_ordered.npz`` (4, 4, 2, 3, 3, 40, 40) (``MPI3D_GRIDS``); any other count is
  refused with a message naming the known grids, unless ``factor_sizes`` is given (subsets, tests).

The factor grid: for the two labelled files it is read from the labels (the sorted distinct values of
each column), and the file must hold exactly one image per grid point in mixed-radix order (first factor
slowest), which every label row is checked against. So the official files give the official grids, and a
smaller file written in the same layout (tests, subsets) works too. MPI3D images are stored in factor
order (the first factor slowest), so image ``i``'s factors are ``i`` in mixed radix.

Images in a ``.npz`` member stored without compression (``numpy.savez``, as the MPI3D files are) are
memory-mapped; compressed members (the dSprites file) are loaded into memory (dSprites: 3 GB) after
their declared size is checked against the file and the available memory (``latentquant.data.npz``).
HDF5 files whose datasets live in other files (external storage, external links, virtual datasets with
sources outside the file) are refused: a crafted ``.h5`` could otherwise read any local file as pixels.
Every problem with a file — missing, truncated or corrupt, wrong keys, shapes, dtypes, label order —
raises ``FileNotFoundError`` or ``ValueError`` naming the file and what was wrong; a read error in the
middle of training (a corrupt compressed chunk) is a ``ValueError`` naming the file and the image indices.
"""

from __future__ import annotations

import abc
import math
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch

from latentquant.data import dsprites, shapes3d
from latentquant.data.base import GroundTruthDataset
from latentquant.data.cache import cache_file, ensure_cache
from latentquant.data.npz import member_header, npz_keys, open_npz, read_member

MPI3D_FACTOR_NAMES = (
    "object_color",
    "object_shape",
    "object_size",
    "camera_height",
    "background_color",
    "horizontal_axis",
    "vertical_axis",
)
MPI3D_FACTOR_SIZES = (6, 6, 2, 3, 3, 40, 40)
# image count -> (variant, grid); images are stored in this grid's row-major order
MPI3D_GRIDS: dict[int, tuple[str, tuple[int, ...]]] = {
    1_036_800: ("toy/realistic/real", MPI3D_FACTOR_SIZES),
    460_800: ("complex", (4, 4, 2, 3, 3, 40, 40)),
}
_VALIDATE_ROWS = 4096  # images checked for their pixel range when a file is opened


def _existing_file(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"{what} file not found: {p} (get it with `latentquant data download NAME --dir DIR`, "
            "see `latentquant data download --help`)"
        )
    if not p.is_file():
        raise ValueError(f"{what} file {p} is not a regular file")
    return p


def _mixed_radix_grid(path: Path, classes: np.ndarray, names: Sequence[str]) -> tuple[int, ...]:
    """Check that ``classes`` (N, F) holds every grid point once, in mixed-radix order; return the sizes."""
    sizes = tuple(int(c.max()) + 1 if len(c) else 0 for c in classes.T)
    n = math.prod(sizes)
    if n != len(classes):
        raise ValueError(
            f"{path}: the labels span a grid of {dict(zip(names, sizes))} = {n} points but the file has "
            f"{len(classes)} rows; expected one image per grid point"
        )
    strides = np.array([math.prod(sizes[i + 1 :]) for i in range(len(sizes))], dtype=np.int64)
    expected = (np.arange(n, dtype=np.int64)[:, None] // strides) % np.array(sizes)
    bad = np.nonzero((classes != expected).any(axis=1))[0]
    if len(bad):
        row = int(bad[0])
        raise ValueError(
            f"{path}: labels are not in mixed-radix order over {tuple(names)} (first factor slowest): "
            f"row {row} has factor indices {classes[row].tolist()}, expected {expected[row].tolist()} "
            f"({len(bad)} rows differ)"
        )
    return sizes


def _check_array(
    path: Path, key: str, actual: np.ndarray | h5py.Dataset, shape: tuple[int | None, ...], dtype: str
) -> None:
    """Check ``actual.shape`` against ``shape`` (None: any size) and its dtype ("uint8", "integer", "number")."""
    got = tuple(actual.shape)
    if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{path}: '{key}' has shape {got}, expected {want}")
    kind = np.dtype(actual.dtype)
    ok = {
        "uint8": kind == np.uint8,
        "integer": kind.kind in "iu",
        "number": kind.kind in "iuf",
    }[dtype]
    if not ok:
        raise ValueError(f"{path}: '{key}' has dtype {kind}, expected {dtype}")


def uint8_to_float(images: np.ndarray, scale: float) -> torch.Tensor:
    """uint8 ``(B, H, W[, C])`` → float32 ``(B, C, H, W)`` divided by ``scale`` (transposed as uint8: 2x faster)."""
    x = images[..., None] if images.ndim == 3 else images
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(torch.float32).div_(scale)


def _require_keys(path: Path, keys: list[str], required: Sequence[str], dataset: str) -> None:
    missing = [k for k in required if k not in keys]
    if missing:
        hint = ""
        if "images" in keys and "imgs" in missing:
            hint = " (this looks like an MPI3D file)"
        elif "imgs" in keys and "images" in missing:
            hint = " (this looks like a dSprites file)"
        raise ValueError(
            f"{path}: not a {dataset} file: missing {missing}, found keys {keys}; "
            f"expected {list(required)}{hint}"
        )


# --------------------------------------------------------------------------------------------- datasets
class _FileDataset(GroundTruthDataset):
    """A ground-truth dataset whose images are read from an array-like ``(N, H, W[, C])`` uint8."""

    _pixel_scale = 255.0

    @abc.abstractmethod
    def _images(self) -> np.ndarray | h5py.Dataset:
        """The image array (N, H, W[, C]) uint8, indexable with increasing integer arrays."""

    def _render(self, factors: torch.Tensor) -> torch.Tensor:
        index = self.factors_to_index(factors).numpy()
        unique, inverse = np.unique(index, return_inverse=True)  # h5py reads increasing indices
        try:
            images = np.asarray(self._images()[unique])
        except OSError as err:  # a corrupt compressed chunk, a file truncated or removed since opening
            shown = ", ".join(str(i) for i in unique[:8]) + (", ..." if len(unique) > 8 else "")
            raise ValueError(
                f"{self.path}: cannot read the images at indices [{shown}] — corrupt or truncated file? ({err})"
            ) from err
        return uint8_to_float(images[inverse], self._pixel_scale)


def _h5_dataset(path: Path, f: h5py.File, key: str) -> h5py.Dataset:
    """``f[key]`` checked to be a dataset whose bytes all live inside ``path``.

    Refused: an external link (the name points into another file), a group, external raw storage
    (``H5Pset_external``: the bytes are read from other files) and a virtual dataset with a source
    outside this file.
    """
    link = f.get(key, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise ValueError(
            f"{path}: '{key}' is an external link to {link.filename}:{link.path}; refusing to read other files"
        )
    obj = f[key]
    if not isinstance(obj, h5py.Dataset):
        raise ValueError(f"{path}: '{key}' is an HDF5 {type(obj).__name__.lower()}, expected a dataset")
    if obj.external:
        files = sorted({str(entry[0]) for entry in obj.external})
        raise ValueError(
            f"{path}: dataset '{key}' stores its data in external files {files}; refusing to read other files"
        )
    if obj.is_virtual:
        outside = sorted({vs.file_name for vs in obj.virtual_sources() if vs.file_name != "."})
        if outside:
            raise ValueError(
                f"{path}: virtual dataset '{key}' maps data from {outside}; refusing to read other files"
            )
    return obj


class Shapes3DFile(_FileDataset):
    """The real 3D Shapes file (``3dshapes.h5``).

    How images are read depends on how the file stores them: an uncompressed contiguous ``images``
    dataset is memory-mapped directly; a chunked (compressed) one, whose random reads decompress a chunk
    per image (~400 images/s), is decompressed once into a uint8 ``.npy`` cache (``latentquant.data.cache``:
    beside the file or under ``cache_dir`` / ``$LATENTQUANT_CACHE_DIR``; 5.9 GB for the official file),
    unless ``cache=False``, which reads through h5py.

    Args:
        path: the HDF5 file, with ``images`` (N, H, W, 3) uint8 and ``labels`` (N, 6) float, N = the
            product of the factor sizes found in the labels (480,000 in the official file).
        cache: decompress a chunked ``images`` into the cache on first use (default True).
        cache_dir: where that cache goes.
        progress: progress bar while caching (None: only on a terminal).
    Attributes:
        storage: ``"memmap"``, ``"cache"`` or ``"hdf5"``: how images are read.
    Raises:
        FileNotFoundError: no such file.
        ValueError: not HDF5 (truncated or corrupt), missing datasets, a group where a dataset belongs,
            data stored outside the file, wrong shape or dtype, labels not in mixed-radix order, an
            unreadable first or last image (checked when opening); later, an unreadable image (named by
            file and index).
    """

    _CHUNK = 4096  # images decompressed per step while caching

    def __init__(
        self,
        path: str | os.PathLike[str],
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
    ) -> None:
        self.path = _existing_file(path, "3dshapes")
        with self._open() as f:
            keys = sorted(f.keys())
            if "images" not in keys or "labels" not in keys:
                raise ValueError(
                    f"{self.path}: not a 3dshapes file: found datasets {keys}, expected 'images' and 'labels'"
                )
            images, labels = _h5_dataset(self.path, f, "images"), _h5_dataset(self.path, f, "labels")
            _check_array(self.path, "images", images, (None, None, None, 3), "uint8")
            _check_array(self.path, "labels", labels, (len(images), 6), "number")
            try:
                values = np.asarray(labels[...], dtype=np.float64)
            except OSError as err:
                raise ValueError(
                    f"{self.path}: cannot read 'labels' — truncated or corrupt? ({err})"
                ) from err
            for i in {0, len(images) - 1} if len(images) else ():
                try:
                    images[i]
                except OSError as err:
                    raise ValueError(
                        f"{self.path}: cannot read 'images'[{i}] — truncated or corrupt? ({err})"
                    ) from err
            self._shape = tuple(int(s) for s in images.shape)
            self._offset = self._contiguous_offset(images)
        uniques, classes = zip(*(np.unique(col, return_inverse=True) for col in values.T))
        sizes = _mixed_radix_grid(self.path, np.stack(classes, axis=1), shapes3d.FACTOR_NAMES)
        super().__init__("shapes3d", shapes3d.FACTOR_NAMES, sizes, uniques, (3, *self._shape[1:3]))
        self.storage = "memmap" if self._offset is not None else "cache" if cache else "hdf5"
        self.progress = progress
        stem = f"{self.path.name}.images_{'x'.join(str(s) for s in self._shape)}.npy"
        self.cache_path = cache_file(self.path, stem, cache_dir)
        self._array: np.ndarray | None = None
        self._handle: tuple[int, h5py.File] | None = None

    def _contiguous_offset(self, images: h5py.Dataset) -> int | None:
        """Byte offset of ``images`` when it is stored contiguous and unfiltered (then memory-mappable)."""
        if images.chunks is not None or images.compression is not None or images.size == 0:
            return None
        offset = images.id.get_offset()
        if offset is None:
            return None
        if offset + images.size > self.path.stat().st_size:
            raise ValueError(
                f"{self.path}: 'images' ends at byte {offset + images.size:,}, past the end of the file "
                f"({self.path.stat().st_size:,} bytes): truncated?"
            )
        return int(offset)

    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r")
        except OSError as err:
            raise ValueError(
                f"{self.path}: not a readable HDF5 file — truncated or corrupt? ({err})"
            ) from err

    def _h5_images(self) -> h5py.Dataset:
        # one handle per process: DataLoader workers must not share the parent's HDF5 handle
        if self._handle is None or self._handle[0] != os.getpid():
            self._handle = (os.getpid(), self._open())
        return self._handle[1]["images"]

    def _read_block(self, start: int, stop: int) -> np.ndarray:
        """Images ``[start, stop)`` through h5py; a read error names the first unreadable index."""
        images = self._h5_images()
        try:
            return images[start:stop]
        except OSError:
            for i in range(start, stop):
                try:
                    images[i]
                except OSError as err:
                    raise ValueError(
                        f"{self.path}: cannot read 'images'[{i}] — corrupt or truncated file? ({err})"
                    ) from err
            raise

    def prepare(self) -> None:
        """Build the decompressed cache now when images are read through it."""
        if self.storage == "cache":
            self.build_cache()

    def build_cache(self) -> Path:
        """Decompress ``images`` into the cache now (normally done on first use); returns its path."""
        self._ensure_cache()
        return self.cache_path

    def _ensure_cache(self) -> np.memmap:
        return ensure_cache(
            self.cache_path, self._shape, self.path, self._read_block, self._CHUNK, "shapes3d", self.progress
        )

    def _images(self) -> np.ndarray | h5py.Dataset:
        if self.storage == "hdf5":
            return self._h5_images()
        if self._array is None:
            if self.storage == "memmap":
                self._array = np.memmap(
                    self.path, dtype=np.uint8, mode="r", offset=self._offset, shape=self._shape
                )
            else:
                self._array = self._ensure_cache()
        return self._array

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_array"] = None  # each process maps the file itself
        return state


class DSpritesFile(_FileDataset):
    """The real dSprites file (``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``).

    Args:
        path: the ``.npz`` with ``imgs`` (N, H, W) uint8 of 0/1 pixels and ``latents_classes`` (N, 6) int
            (a constant ``color`` column, then shape, scale, orientation, pos_x, pos_y).
    Raises:
        FileNotFoundError, ValueError: as ``Shapes3DFile``, and for pixels outside {0, 1}.
    """

    _pixel_scale = 1.0

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _existing_file(path, "dSprites")
        with open_npz(self.path) as archive:
            keys = npz_keys(archive)
            _require_keys(self.path, keys, ("imgs", "latents_classes"), "dSprites")
            classes = read_member(self.path, archive, "latents_classes")
            _check_array(self.path, "latents_classes", classes, (None, 6), "integer")
            values = read_member(self.path, archive, "latents_values") if "latents_values" in keys else None
            _check_array(
                self.path,
                "imgs",
                member_header(self.path, archive, "imgs"),
                (len(classes), None, None),
                "uint8",
            )
            imgs = read_member(self.path, archive, "imgs")
        classes = np.asarray(classes, dtype=np.int64)
        if len(classes) and (classes[:, 0] != classes[0, 0]).any():
            raise ValueError(f"{self.path}: 'latents_classes' column 0 (color) should be constant")
        if len(classes) and classes.min() < 0:
            raise ValueError(f"{self.path}: 'latents_classes' has negative entries")
        top = int(np.asarray(imgs[:_VALIDATE_ROWS]).max(initial=0))
        if top > 1:
            raise ValueError(f"{self.path}: 'imgs' should hold 0/1 pixels, found the value {top}")
        sizes = _mixed_radix_grid(self.path, classes[:, 1:], dsprites.FACTOR_NAMES)
        if values is not None:
            _check_array(self.path, "latents_values", values, (len(classes), 6), "number")
            strides = [math.prod(sizes[i + 1 :]) for i in range(len(sizes))]
            factor_values = [
                values[np.arange(s) * st, i + 1] for i, (s, st) in enumerate(zip(sizes, strides))
            ]
        else:
            factor_values = [np.arange(s, dtype=np.float64) for s in sizes]
        super().__init__("dsprites", dsprites.FACTOR_NAMES, sizes, factor_values, (1, *imgs.shape[1:]))
        self._imgs = imgs

    def _images(self) -> np.ndarray:
        return self._imgs


class MPI3DFile(_FileDataset):
    """An MPI3D ``.npz`` (``images`` (N, H, W, 3) uint8 in factor order), memory-mapped.

    Args:
        path: the ``.npz`` file.
        factor_sizes: the grid, in the order of ``MPI3D_FACTOR_NAMES``; default (None): told by the image
            count from ``MPI3D_GRIDS`` (1,036,800 → toy/realistic/real, 460,800 → complex).
    Attributes:
        variant: ``"toy/realistic/real"``, ``"complex"`` or ``"custom"`` (``factor_sizes`` given).
    Raises:
        ValueError: no ``images`` member, wrong shape or dtype, or an image count that fits no known grid
            (or not ``factor_sizes``); the message names the known grids.
    """

    def __init__(self, path: str | os.PathLike[str], factor_sizes: Sequence[int] | None = None) -> None:
        self.path = _existing_file(path, "MPI3D")
        if factor_sizes is not None and len(factor_sizes) != len(MPI3D_FACTOR_NAMES):
            raise ValueError(
                f"factor_sizes: expected {len(MPI3D_FACTOR_NAMES)} sizes for {MPI3D_FACTOR_NAMES}, "
                f"got {tuple(factor_sizes)}"
            )
        with open_npz(self.path) as archive:
            _require_keys(self.path, npz_keys(archive), ("images",), "MPI3D")
            images = read_member(self.path, archive, "images")
        _check_array(self.path, "images", images, (None, None, None, 3), "uint8")
        if factor_sizes is None:
            if len(images) not in MPI3D_GRIDS:
                known = "; ".join(
                    f"{variant} {dict(zip(MPI3D_FACTOR_NAMES, grid))} = {n:,} images"
                    for n, (variant, grid) in MPI3D_GRIDS.items()
                )
                raise ValueError(
                    f"{self.path}: has {len(images):,} images, which fits no known MPI3D grid ({known}); "
                    "pass factor_sizes for a subset"
                )
            self.variant, factor_sizes = MPI3D_GRIDS[len(images)]
        else:
            self.variant = "custom"
            if len(images) != math.prod(factor_sizes):
                raise ValueError(
                    f"{self.path}: has {len(images)} images, expected {math.prod(factor_sizes)} = product of "
                    f"factor_sizes {dict(zip(MPI3D_FACTOR_NAMES, factor_sizes))}"
                )
        values = [np.arange(s, dtype=np.float64) for s in factor_sizes]
        super().__init__("mpi3d", MPI3D_FACTOR_NAMES, factor_sizes, values, (3, *images.shape[1:3]))
        self._images_array: np.ndarray | None = images

    def _images(self) -> np.ndarray:
        if self._images_array is None:  # in a process this dataset was sent to: map the member again
            with open_npz(self.path) as archive:
                self._images_array = read_member(self.path, archive, "images")
        return self._images_array

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images_array"] = None  # never pickle gigabytes of pixels into worker processes
        return state
