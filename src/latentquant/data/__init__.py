"""Ground-truth datasets: procedural ``shapes3d`` and ``dsprites``, and loaders for the real files.

    >>> from latentquant.data import get_dataset
    >>> ds = get_dataset("shapes3d")                  # procedural, 480,000 images (3, 64, 64)
    >>> images, factors = ds.sample_batch(128, generator=0)
    >>> real = get_dataset("shapes3d", data_path="3dshapes.h5")   # the real file, same interface
    >>> falcor = get_dataset("falcor3d", data_path="data/Falcor3D_down128")  # PNGs, cached at 64x64

Every dataset is a ``GroundTruthDataset`` (see ``latentquant.data.base``). The real files are fetched
with ``latentquant data download NAME`` (``latentquant.data.download``).
"""

from __future__ import annotations

import os
from pathlib import Path

from latentquant.data.base import GroundTruthDataset, as_torch_generator
from latentquant.data.dsprites import DSprites
from latentquant.data.files import (
    MPI3D_FACTOR_NAMES,
    MPI3D_FACTOR_SIZES,
    MPI3D_GRIDS,
    DSpritesFile,
    MPI3DFile,
    Shapes3DFile,
)
from latentquant.data.folders import FALCOR3D, ISAAC3D, ImageFolderDataset
from latentquant.data.grid import factor_sweep, save_factor_grid
from latentquant.data.shapes3d import Shapes3D

DATASET_NAMES = ("shapes3d", "dsprites", "mpi3d", "falcor3d", "isaac3d")
PROCEDURAL = ("shapes3d", "dsprites")
# file names looked for when --data-path is a folder (the names `latentquant data download` writes)
_FILE_NAMES = {
    "shapes3d": ("3dshapes.h5",),
    "dsprites": ("dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz",),
    "mpi3d": (
        "real3d_complicated_shapes_ordered.npz",
        "mpi3d_toy.npz",
        "mpi3d_realistic.npz",
        "mpi3d_real.npz",
    ),
}

__all__ = [
    "DATASET_NAMES",
    "FALCOR3D",
    "ISAAC3D",
    "MPI3D_FACTOR_NAMES",
    "MPI3D_FACTOR_SIZES",
    "MPI3D_GRIDS",
    "DSprites",
    "DSpritesFile",
    "GroundTruthDataset",
    "ImageFolderDataset",
    "MPI3DFile",
    "Shapes3D",
    "Shapes3DFile",
    "as_torch_generator",
    "factor_sweep",
    "get_dataset",
    "save_factor_grid",
]


def _resolve_file(name: str, path: Path) -> Path:
    """``path`` itself, or the one known file of ``name`` inside the folder ``path``."""
    if not path.is_dir():
        return path
    found = [path / f for f in _FILE_NAMES[name] if (path / f).is_file()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(
            f"{name}: no {' or '.join(_FILE_NAMES[name])} in folder {path} "
            f"(get it with `latentquant data download {name} --dir {path}`)"
        )
    raise ValueError(f"{name}: folder {path} holds several files {[f.name for f in found]}; pass one of them")


def get_dataset(
    name: str,
    data_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache: bool = True,
) -> GroundTruthDataset:
    """The dataset called ``name``: procedural without ``data_path``, read from the real files with it.

    Args:
        name: one of ``DATASET_NAMES``; ``mpi3d``, ``falcor3d`` and ``isaac3d`` have no procedural version.
        data_path: ``3dshapes.h5``, the dSprites ``.npz``, an MPI3D ``.npz`` (toy/realistic/real or the
            paper's complex one, told apart by image count), the ``Falcor3D_down128`` / ``Isaac3D_down128``
            folder — or the folder ``latentquant data download`` wrote them to.
        cache_dir: where Falcor3D/Isaac3D keep their 64x64 cache and a gzip-chunked 3dshapes.h5 its
            decompressed one (default: ``latentquant.data.cache``).
        cache: use those caches (built on first use or by ``dataset.prepare()``); False reads the PNGs /
            HDF5 chunks of every batch (fine for a few images, ~400 images/s).
    Raises:
        ValueError: unknown name, a real-only dataset without ``data_path``, or a bad file.
        FileNotFoundError: ``data_path`` does not exist (the message names the download command).
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"dataset: expected one of {', '.join(DATASET_NAMES)}, got {name!r}")
    if data_path is None:
        if name not in PROCEDURAL:
            raise ValueError(
                f"dataset {name} has no procedural version: get the files with "
                f"`latentquant data download {name} --dir DIR` and pass --data-path DIR"
            )
        return Shapes3D() if name == "shapes3d" else DSprites()
    if name in ("falcor3d", "isaac3d"):
        return ImageFolderDataset(
            data_path, FALCOR3D if name == "falcor3d" else ISAAC3D, cache_dir=cache_dir, cache=cache
        )
    path = Path(data_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{name} file not found: {path} (get it with `latentquant data download {name} --dir DIR`)"
        )
    if name == "shapes3d":
        return Shapes3DFile(_resolve_file(name, path), cache=cache, cache_dir=cache_dir)
    return (DSpritesFile if name == "dsprites" else MPI3DFile)(_resolve_file(name, path))
