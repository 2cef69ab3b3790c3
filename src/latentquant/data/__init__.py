"""Ground-truth datasets: procedural ``shapes3d`` and ``dsprites``, and loaders for the real files.

    >>> from latentquant.data import get_dataset
    >>> ds = get_dataset("shapes3d")                  # procedural, 480,000 images (3, 64, 64)
    >>> images, factors = ds.sample_batch(128, generator=0)
    >>> real = get_dataset("shapes3d", data_path="3dshapes.h5")   # the real file, same interface

Every dataset is a ``GroundTruthDataset`` (see ``latentquant.data.base``).
"""

from __future__ import annotations

import os

from latentquant.data.base import GroundTruthDataset, as_torch_generator
from latentquant.data.dsprites import DSprites
from latentquant.data.files import (
    MPI3D_FACTOR_NAMES,
    MPI3D_FACTOR_SIZES,
    DSpritesFile,
    MPI3DFile,
    Shapes3DFile,
)
from latentquant.data.grid import factor_sweep, save_factor_grid
from latentquant.data.shapes3d import Shapes3D

DATASET_NAMES = ("shapes3d", "dsprites", "mpi3d")

__all__ = [
    "DATASET_NAMES",
    "MPI3D_FACTOR_NAMES",
    "MPI3D_FACTOR_SIZES",
    "DSprites",
    "DSpritesFile",
    "GroundTruthDataset",
    "MPI3DFile",
    "Shapes3D",
    "Shapes3DFile",
    "as_torch_generator",
    "factor_sweep",
    "get_dataset",
    "save_factor_grid",
]


def get_dataset(name: str, data_path: str | os.PathLike[str] | None = None) -> GroundTruthDataset:
    """The dataset called ``name``: procedural without ``data_path``, read from the real file with it.

    Args:
        name: ``"shapes3d"``, ``"dsprites"`` or ``"mpi3d"`` (mpi3d has no procedural version).
        data_path: ``3dshapes.h5``, the dSprites ``.npz`` or an MPI3D ``.npz``.
    Raises:
        ValueError: unknown name, mpi3d without a file, or a bad file.
        FileNotFoundError: ``data_path`` does not exist.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"dataset: expected one of {', '.join(DATASET_NAMES)}, got {name!r}")
    if data_path is None:
        if name == "mpi3d":
            raise ValueError("dataset mpi3d has no procedural version: pass the MPI3D .npz as data_path")
        return Shapes3D() if name == "shapes3d" else DSprites()
    loader = {"shapes3d": Shapes3DFile, "dsprites": DSpritesFile, "mpi3d": MPI3DFile}[name]
    return loader(data_path)
