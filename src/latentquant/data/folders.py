"""Falcor3D and Isaac3D: folders of 128x128 PNGs plus a labels array, served at 64x64 from a cache.

Layout as distributed (Nie et al., "Semi-supervised StyleGAN for disentanglement learning"):

- ``Falcor3D_down128/images/000000.png ...`` (233,280 PNGs) and ``Falcor3D_down128/train-rec.labels``
  (a ``.npy`` array (233280, 7) float of factor values),
- ``Isaac3D_down128/images/000000.png ...`` (737,280 PNGs) and ``Isaac3D_down128/labels.npy`` (737280, 9).

Images are resized 128→64 as the authors do (``tf.image.resize(bicubic, antialias=True)``, then
``/255`` and clipped to [0, 1]): here ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``,
the same Keys cubic (a = -0.5) widened by the scale factor, on 0..255 values, clipped, then rounded to
uint8 for the cache (at most 0.5/255 from the authors' float pixels).

The factor grid is read from the labels (the sorted distinct values of each column, rounded to 6
decimals), so the official folders give the official grids (Falcor3D 5,6,6,6,6,6,6; Isaac3D
3,8,5,4,4,4,6,4,4) and a smaller folder in the same layout works too. The labels must hold every grid
point exactly once, in any row order (image ``k`` is ``images/{k:06d}.png``).

Decoding hundreds of thousands of PNGs per epoch is too slow, so the first use builds a cache: one
memory-mappable ``.npy`` of uint8 (N, 64, 64, 3), written to a temporary file with a progress bar and
moved into place atomically (``latentquant.data.cache``: next to the data, or under ``cache_dir`` /
``$LATENTQUANT_CACHE_DIR``). It is reused while its shape and size are right and it is newer than the
labels file; otherwise it is rebuilt. ``cache=False`` reads and resizes the PNGs of every batch instead.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latentquant.data.base import GroundTruthDataset
from latentquant.data.cache import CACHE_ENV, cache_file, ensure_cache
from latentquant.data.files import uint8_to_float

__all__ = ["CACHE_ENV", "FALCOR3D", "ISAAC3D", "FolderSpec", "ImageFolderDataset", "resize_images"]

CACHE_SIZE = 64  # cached images are CACHE_SIZE x CACHE_SIZE x 3
_CACHE_VERSION = 1  # bump when the resize changes: older caches are then ignored
_CHUNK = 256  # images decoded and resized per step while building the cache


@dataclass(frozen=True)
class FolderSpec:
    """One PNG-folder dataset: its names, files and official grid."""

    name: str
    folder: str
    labels: str
    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]
    source_size: int = 128


FALCOR3D = FolderSpec(
    name="falcor3d",
    folder="Falcor3D_down128",
    labels="train-rec.labels",
    factor_names=(
        "lighting_intensity",
        "lighting_x",
        "lighting_y",
        "lighting_z",
        "camera_x",
        "camera_y",
        "camera_z",
    ),
    factor_sizes=(5, 6, 6, 6, 6, 6, 6),
)
ISAAC3D = FolderSpec(
    name="isaac3d",
    folder="Isaac3D_down128",
    labels="labels.npy",
    factor_names=(
        "object_shape",
        "robot_x",
        "robot_y",
        "camera_height",
        "object_scale",
        "lighting_intensity",
        "lighting_y",
        "object_color",
        "wall_color",
    ),
    factor_sizes=(3, 8, 5, 4, 4, 4, 6, 4, 4),
)
FOLDER_SPECS = {spec.name: spec for spec in (FALCOR3D, ISAAC3D)}


def resize_images(images: np.ndarray, size: int = CACHE_SIZE) -> np.ndarray:
    """Antialiased bicubic downsizing of uint8 images, clipped and rounded back to uint8.

    Args:
        images: ``(B, H, W, 3)`` uint8.
        size: output height and width.
    Returns:
        ``(B, size, size, 3)`` uint8.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32)
    y = torch.nn.functional.interpolate(
        x, size=(size, size), mode="bicubic", antialias=True, align_corners=False
    )
    return y.clamp_(0.0, 255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _png_name(index: int) -> str:
    return f"{index:06d}.png"


def _read_png(path: Path, size: int) -> np.ndarray:
    """One PNG as uint8 (size, size, 3); ValueError naming the file when it is missing, corrupt or off-size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            pixels = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise ValueError(f"{path}: image missing") from None
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise ValueError(f"{path}: not a readable PNG — truncated or corrupt? ({err})") from err
    if pixels.shape != (size, size, 3):
        raise ValueError(f"{path}: image has shape {pixels.shape}, expected ({size}, {size}, 3)")
    return pixels


class ImageFolderDataset(GroundTruthDataset):
    """A Falcor3D or Isaac3D folder (see the module docstring), images served at 64x64.

    Args:
        path: the dataset folder (``Falcor3D_down128`` / ``Isaac3D_down128``) or the folder holding it.
        spec: ``FALCOR3D`` or ``ISAAC3D``.
        cache: serve images from the 64x64 uint8 cache, built on first use (default); False decodes and
            resizes the PNGs of every batch.
        cache_dir: where the cache goes (default: see the module docstring).
        progress: show a progress bar while building the cache (None: only on a terminal).
    Raises:
        FileNotFoundError: no such folder, or no labels file in it (the message names the download command).
        ValueError: labels of the wrong shape or not covering the grid once, images missing or off-size.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        spec: FolderSpec,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
    ) -> None:
        folder = Path(path).expanduser()
        if (folder / spec.folder).is_dir():
            folder = folder / spec.folder
        hint = f"get it with `latentquant data download {spec.name} --dir DIR`"
        if not folder.is_dir():
            raise FileNotFoundError(f"{spec.name} folder not found: {folder} ({hint})")
        labels_path = folder / spec.labels
        if not labels_path.is_file():
            raise FileNotFoundError(
                f"{spec.name}: {labels_path} not found; expected the {spec.folder}/ folder with {spec.labels} "
                f"and images/000000.png ... ({hint})"
            )
        self.folder, self.spec, self.progress, self.labels_path = folder, spec, progress, labels_path
        labels = self._read_labels(labels_path)
        rounded = np.round(labels, 6)
        uniques, classes = zip(*(np.unique(col, return_inverse=True) for col in rounded.T))
        sizes = tuple(len(u) for u in uniques)
        n = len(labels)
        if math.prod(sizes) != n:
            raise ValueError(
                f"{labels_path}: the labels take {dict(zip(spec.factor_names, sizes))} distinct values = "
                f"{math.prod(sizes)} grid points, but there are {n} rows; expected one row per grid point "
                f"(the official grid is {dict(zip(spec.factor_names, spec.factor_sizes))})"
            )
        strides = np.array([math.prod(sizes[i + 1 :]) for i in range(len(sizes))], dtype=np.int64)
        grid_index = np.stack(classes, axis=1).astype(np.int64) @ strides
        if (np.bincount(grid_index, minlength=n) != 1).any():
            raise ValueError(f"{labels_path}: some factor combinations repeat and others are missing")
        # row of the PNG holding each grid index (None when the images are already in grid order)
        self._row_of = None if (grid_index == np.arange(n)).all() else np.argsort(grid_index)
        self._check_images(n)
        super().__init__(spec.name, spec.factor_names, sizes, uniques, (3, CACHE_SIZE, CACHE_SIZE))
        stem = f"{spec.name}_{n}x{CACHE_SIZE}x{CACHE_SIZE}_v{_CACHE_VERSION}.npy"
        self.cache_path = cache_file(folder, stem, cache_dir)
        self._use_cache = cache
        self._cache: np.ndarray | None = None

    # ------------------------------------------------------------------------------------------- opening
    def _read_labels(self, labels_path: Path) -> np.ndarray:
        try:
            labels = np.load(labels_path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"{labels_path}: not a readable .npy labels array ({err})") from err
        if not isinstance(labels, np.ndarray):  # an .npz archive
            labels.close()
            raise ValueError(f"{labels_path}: an .npz archive, expected one .npy array of labels")
        width = len(self.spec.factor_names)
        if labels.ndim != 2 or labels.shape[1] != width or labels.dtype.kind not in "iuf":
            raise ValueError(
                f"{labels_path}: labels have shape {labels.shape} {labels.dtype}, expected (N, {width}) numbers "
                f"for {self.spec.factor_names}"
            )
        return np.asarray(labels, dtype=np.float64)

    def _check_images(self, n: int) -> None:
        images = self.folder / "images"
        if not images.is_dir():
            raise ValueError(f"{self.folder}: no images/ folder (expected images/000000.png ...)")
        for index in {0, n - 1}:
            if not (images / _png_name(index)).is_file():
                raise ValueError(
                    f"{images / _png_name(index)}: image missing; the labels have {n} rows, so images/ "
                    f"should hold {_png_name(0)} ... {_png_name(n - 1)}"
                )
        count = sum(1 for entry in os.scandir(images) if entry.name.endswith(".png"))
        if count != n:
            raise ValueError(f"{images}: holds {count} PNG files, expected {n} (one per labels row)")

    # ------------------------------------------------------------------------------------------- images
    def _png_rows(self, rows: np.ndarray) -> np.ndarray:
        """Decoded and resized PNGs of file rows ``rows`` (R,) → uint8 (R, 64, 64, 3)."""
        paths = [self.folder / "images" / _png_name(int(r)) for r in rows]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            decoded = list(pool.map(lambda p: _read_png(p, self.spec.source_size), paths))
        return resize_images(np.stack(decoded))

    @property
    def _cache_shape(self) -> tuple[int, ...]:
        return (len(self), CACHE_SIZE, CACHE_SIZE, 3)

    def prepare(self) -> None:
        """Build the 64x64 cache now (when images are served from it)."""
        if self._use_cache:
            self.build_cache()

    def build_cache(self) -> Path:
        """Build (or reuse) the 64x64 cache; returns its path. Safe to run from several processes at once."""
        self._ensure_cache()
        return self.cache_path

    def _ensure_cache(self) -> np.memmap:
        return ensure_cache(
            self.cache_path,
            self._cache_shape,
            self.labels_path,
            lambda start, stop: self._png_rows(np.arange(start, stop)),
            _CHUNK,
            self.name,
            self.progress,
        )

    def _images(self) -> np.ndarray:
        if self._cache is None:
            self._cache = self._ensure_cache()
        return self._cache

    def _render(self, factors: torch.Tensor) -> torch.Tensor:
        index = self.factors_to_index(factors).numpy()
        rows = index if self._row_of is None else self._row_of[index]
        unique, inverse = np.unique(rows, return_inverse=True)
        pixels = np.asarray(self._images()[unique]) if self._use_cache else self._png_rows(unique)
        return uint8_to_float(pixels[inverse], 255.0)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = None  # each process maps the cache itself
        return state


def falcor3d(path: str | os.PathLike[str], **kwargs) -> ImageFolderDataset:
    """The Falcor3D folder (``Falcor3D_down128`` or its parent); keyword arguments as ``ImageFolderDataset``."""
    return ImageFolderDataset(path, FALCOR3D, **kwargs)


def isaac3d(path: str | os.PathLike[str], **kwargs) -> ImageFolderDataset:
    """The Isaac3D folder (``Isaac3D_down128`` or its parent); keyword arguments as ``ImageFolderDataset``."""
    return ImageFolderDataset(path, ISAAC3D, **kwargs)
