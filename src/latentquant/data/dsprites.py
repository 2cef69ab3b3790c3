"""Procedural dSprites: white 2D shapes on black, on the real dataset's factor grid.

Factors (slowest first): shape 3 (square, ellipse, heart), scale 6 (``linspace(0.5, 1, 6)``), orientation 40,
pos_x 32, pos_y 32 — 737,280 images of 1 x 64 x 64.

Choices, where the real dataset leaves room:

- orientation ``k`` is a counter-clockwise turn by ``2 pi k / 40`` (``endpoint=False``). The real file uses
  ``linspace(0, 2 pi, 40)``, whose last value repeats its first; here the 40 values are 40 different turns.
  A shape's own symmetry still makes some of them look alike: the square repeats every 10 steps (90
  degrees), the ellipse every 20 (180 degrees); the heart's 40 orientations are all distinct.
- the sprite's centre moves 1.5 pixels per position step, from 8.75 to 55.25 (pixel ``j`` spans
  ``[j, j + 1)``), so the largest sprite (radius 8.5 pixels) never leaves the image. ``pos_x`` moves it
  right, ``pos_y`` moves it down.
- pixels are anti-aliased (4 x 4 samples per pixel) rather than binary, so small turns of small sprites stay
  visible; values are coverage fractions in [0, 1].

Rendering: a sprite depends on (shape, scale, orientation) and on the centre's sub-pixel phase (0.75 or
0.25, alternating with the position index), 2,880 small patches in all. Patches are rasterized on first use
from implicit inside-tests (vectorized over the patches a batch needs) and kept for the process; a batch
is then pasted patch by patch into blank canvases in one indexed assignment.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from latentquant.data.base import GroundTruthDataset

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPE_NAMES = ("square", "ellipse", "heart")
IMAGE_SIZE = 64

_SCALES = np.linspace(0.5, 1.0, 6)
_ORIENTATIONS = 2 * np.pi * np.arange(40) / 40
# fixed tables: vectorized trig may round differently with the array's length, and a patch must not
# depend on which other patches share its batch
_COS, _SIN = np.cos(_ORIENTATIONS), np.sin(_ORIENTATIONS)
_FIRST_CENTRE, _STEP = 8.75, 1.5
_POSITIONS = np.linspace(0.0, 1.0, 32)  # the real file's position values
_UNIT = 7.0  # pixels per shape unit at scale 1 (the heart reaches 1.2 units from its centre)
_PATCH = 20  # patch side; covers [floor(centre) - 10, floor(centre) + 10)
_PAD = 4  # canvas margin so every patch lands inside the canvas
_SUBSAMPLES = 4
_CHUNK = 128  # patches rasterized per vectorized step


def _inside(shape: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside test of a shape in its own frame (units; y up), at scale 1 and orientation 0."""
    if shape == 0:  # square of half-side 0.85 (corner radius 1.2)
        return np.maximum(np.abs(x), np.abs(y)) <= 0.85
    if shape == 1:  # ellipse with semi-axes 1.2 (along x) and 0.6
        ex, ey = x / 1.2, y / 0.6
        return ex * ex + ey * ey <= 1.0
    # heart (x^2 + y^2 - 1)^3 <= x^2 y^3, scaled by 0.9 and centred on its bounding box
    hx, hy = x / 0.9, y / 0.9 + 0.11
    w = hx * hx + hy * hy - 1.0
    return w * w * w - hx * hx * hy * hy * hy <= 0.0


class _PatchCache:
    """Per-process cache of the 2,880 sprite patches, filled on demand.

    Patch id = (((shape * 6 + scale) * 40 + orientation) * 2 + phase_x) * 2 + phase_y.
    """

    def __init__(self) -> None:
        self.patches = torch.zeros((3 * 6 * 40 * 4, _PATCH, _PATCH), dtype=torch.float32)
        self.ready = torch.zeros(len(self.patches), dtype=torch.bool)
        self._lock = threading.Lock()

    def get(self, ids: torch.Tensor) -> torch.Tensor:
        """Patches ``(B, P, P)`` of patch ids ``(B,)``."""
        if not bool(self.ready[ids].all()):
            with self._lock:
                missing = torch.unique(ids[~self.ready[ids]])
                for start in range(0, len(missing), _CHUNK):
                    chunk = missing[start : start + _CHUNK]
                    self.patches[chunk] = self._rasterize(chunk.numpy())
                    self.ready[chunk] = True
        return self.patches[ids]

    @staticmethod
    def _rasterize(ids: np.ndarray) -> torch.Tensor:
        rest, phase_y = np.divmod(ids, 2)
        rest, phase_x = np.divmod(rest, 2)
        rest, orientation = np.divmod(rest, 40)
        shape, scale = np.divmod(rest, 6)
        frac_x = _centre(phase_x) % 1.0
        frac_y = _centre(phase_y) % 1.0
        # sample offsets inside a pixel, then pixel centres relative to the sprite centre (pixels)
        sub = (np.arange(_SUBSAMPLES) + 0.5) / _SUBSAMPLES
        grid = np.arange(_PATCH)[:, None] - _PATCH // 2 + sub[None, :]  # (P, S)
        px = grid[None, None, None, :, :] - frac_x[:, None, None, None, None]  # (N, 1, 1, P, S) columns
        py = grid[None, :, :, None, None] - frac_y[:, None, None, None, None]  # (N, P, S, 1, 1) rows
        radius = (_UNIT * _SCALES[scale])[:, None, None, None, None]
        # rotate the sample back by the orientation (y up, so image rows are negated)
        u, v = px / radius, -py / radius
        cos = _COS[orientation][:, None, None, None, None]
        sin = _SIN[orientation][:, None, None, None, None]
        x = cos * u + sin * v
        y = -sin * u + cos * v
        out = np.zeros(x.shape, dtype=bool)
        for kind in np.unique(shape):
            sel = shape == kind
            out[sel] = _inside(int(kind), x[sel], y[sel])
        coverage = out.reshape(len(ids), _PATCH, _SUBSAMPLES, _PATCH, _SUBSAMPLES).sum(axis=(2, 4))
        return torch.from_numpy((coverage / _SUBSAMPLES**2).astype(np.float32))


def _centre(position: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Centre coordinate (pixels) of position indices."""
    return _FIRST_CENTRE + _STEP * position


_CACHE: _PatchCache | None = None
_CACHE_LOCK = threading.Lock()


def _patch_cache() -> _PatchCache:
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None:
            _CACHE = _PatchCache()
        return _CACHE


class DSprites(GroundTruthDataset):
    """Procedural dSprites: 737,280 images ``(1, 64, 64)`` float32 in [0, 1] (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(
            "dsprites",
            FACTOR_NAMES,
            FACTOR_SIZES,
            (np.arange(3.0) + 1, _SCALES, _ORIENTATIONS, _POSITIONS, _POSITIONS),
            (1, IMAGE_SIZE, IMAGE_SIZE),
        )
        self._offsets = torch.arange(_PATCH)

    def _render(self, factors: torch.Tensor) -> torch.Tensor:
        shape, scale, orientation, pos_x, pos_y = factors.unbind(dim=1)
        ids = (((shape * 6 + scale) * 40 + orientation) * 2 + pos_x % 2) * 2 + pos_y % 2
        patches = _patch_cache().get(ids)
        # top-left canvas pixel of each patch: floor(centre) - P/2, shifted by the canvas margin
        left = torch.floor(_centre(pos_x.to(torch.float64))).to(torch.int64) - _PATCH // 2 + _PAD
        top = torch.floor(_centre(pos_y.to(torch.float64))).to(torch.int64) - _PATCH // 2 + _PAD
        n = len(factors)
        side = IMAGE_SIZE + 2 * _PAD
        canvas = torch.zeros((n, side, side), dtype=torch.float32)
        rows = (top[:, None] + self._offsets)[:, :, None]
        cols = (left[:, None] + self._offsets)[:, None, :]
        canvas[torch.arange(n)[:, None, None], rows, cols] = patches
        return canvas[:, None, _PAD : _PAD + IMAGE_SIZE, _PAD : _PAD + IMAGE_SIZE].contiguous()
