"""Procedural 3D Shapes look-alike: a ray-cast room with one object, on the real dataset's factor grid.

Scene: a floor and three walls (back, left, right) around an object standing on the floor at the origin;
a perspective camera orbits the object (yaw = ``orientation``, -30..30 degrees, as the real dataset turns
its camera), and a fixed light gives Lambert shading and the object's shadow. The object is a cube, an
upright cylinder, a sphere or a capsule lying along the world x axis (so the camera's turn changes every
shape's silhouette or shading, and the walls shift for all of them).

Rendering is split in two, which is what makes it fast and exact per index:

1. geometry, which depends on (scale, shape, orientation) only — 480 combinations: rays are cast
   analytically (2 x 2 samples per pixel) and each pixel gets three weights, the shaded coverage of the
   wall, of the floor and of the object. These maps are computed on first use (vectorized over the
   combinations a batch needs) and kept for the process;
2. colour: ``image = wall_map * rgb(wall_hue) + floor_map * rgb(floor_hue) + object_map * rgb(object_hue)``,
   elementwise over the batch.

Hues are ``linspace(0, 1, 10, endpoint=False)`` (0.0 .. 0.9, as the real file; hue 1.0 would repeat hue
0.0) at saturation 0.75 and value 0.95; scales ``linspace(0.75, 1.25, 8)``; orientations
``linspace(-30, 30, 15)`` degrees.
"""

from __future__ import annotations

import colorsys
import threading

import numpy as np
import torch

from latentquant.data.base import GroundTruthDataset

FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
FACTOR_SIZES = (10, 10, 10, 8, 4, 15)
SHAPE_NAMES = ("cube", "cylinder", "sphere", "capsule")
IMAGE_SIZE = 64

_HUES = np.linspace(0.0, 1.0, 10, endpoint=False)
_SCALES = np.linspace(0.75, 1.25, 8)
_ORIENTATIONS_DEG = np.linspace(-30.0, 30.0, 15)
_SATURATION, _VALUE = 0.75, 0.95

_TARGET = np.array([0.0, 0.45, 0.0])
_CAMERA_DISTANCE = 8.0
_ELEVATION = np.deg2rad(22.0)
_HALF_FOV = np.deg2rad(14.0)
_BACK_WALL_Z = -3.0
_SIDE_WALL_X = 3.0
_LIGHT = (np.array([-0.55, 1.0, 0.65]) / np.linalg.norm([-0.55, 1.0, 0.65])).astype(np.float32)
_AMBIENT, _DIFFUSE, _SHADOW = 0.4, 0.6, 0.55
_SUPERSAMPLE = 2
_CHUNK = 32  # geometries ray-cast per vectorized step (bounds the scratch memory to ~100 MB)
_RENDER_CHUNK = 32  # images composed per step


def _hue_table() -> torch.Tensor:
    rgb = [colorsys.hsv_to_rgb(float(h), _SATURATION, _VALUE) for h in _HUES]
    return torch.tensor(rgb, dtype=torch.float32)


def _camera(orientation: int) -> tuple[np.ndarray, np.ndarray]:
    """Eye position (3,) and camera basis (3, 3) — rows right, up, forward — of one orientation index."""
    yaw = np.deg2rad(_ORIENTATIONS_DEG[orientation])
    offset = np.array(
        [np.sin(yaw) * np.cos(_ELEVATION), np.sin(_ELEVATION), np.cos(yaw) * np.cos(_ELEVATION)]
    )
    forward = -offset
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    return _TARGET + _CAMERA_DISTANCE * offset, np.stack([right, np.cross(right, forward), forward])


def _camera_rays(orientation: int) -> tuple[np.ndarray, np.ndarray]:
    """Eye (3,) and unit ray directions (H, S, W, S, 3) float32 of one orientation index (S = supersampling)."""
    eye, (right, up, forward) = _camera(orientation)
    n = IMAGE_SIZE * _SUPERSAMPLE
    s = (np.arange(n) + 0.5) / n * 2.0 - 1.0  # sample centres in [-1, 1]
    x = s[None, :] * np.tan(_HALF_FOV)
    y = -s[:, None] * np.tan(_HALF_FOV)
    d = forward + x[..., None] * right + y[..., None] * up
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    shape = (IMAGE_SIZE, _SUPERSAMPLE, IMAGE_SIZE, _SUPERSAMPLE, 3)
    return eye.astype(np.float32), d.reshape(shape).astype(np.float32)


def _object_window() -> tuple[slice, slice]:
    """Rows and columns that can show an object or its shadow, for every scale, shape and orientation.

    Projects the corners of a world box holding the largest object and its shadow on the floor.
    """
    reach = _SCALES[-1] * 0.97  # capsule half-length + radius at the largest scale; the others are narrower
    height = _SCALES[-1] * 1.24  # the sphere is the tallest
    drop = height / _LIGHT[1]  # the shadow of the object's top lands this far along -light (x, z)
    xs = (-reach + min(0.0, -drop * _LIGHT[0]), reach + max(0.0, -drop * _LIGHT[0]))
    zs = (-reach + min(0.0, -drop * _LIGHT[2]), reach + max(0.0, -drop * _LIGHT[2]))
    corners = np.array([[x, y, z] for x in xs for y in (0.0, height) for z in zs])
    cols, rows = [], []
    for k in range(len(_ORIENTATIONS_DEG)):
        eye, basis = _camera(k)
        cam = (corners - eye) @ basis.T
        ndc = cam[:, :2] / (cam[:, 2:] * np.tan(_HALF_FOV))
        cols.append((ndc[:, 0] + 1) / 2 * IMAGE_SIZE)
        rows.append((1 - ndc[:, 1]) / 2 * IMAGE_SIZE)
    return _pixel_span(np.concatenate(rows)), _pixel_span(np.concatenate(cols))


def _pixel_span(coords: np.ndarray) -> slice:
    """Pixels covering continuous image coordinates ``coords``, with a one-pixel margin."""
    return slice(max(0, int(np.floor(coords.min())) - 1), min(IMAGE_SIZE, int(np.ceil(coords.max())) + 1))


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product over the last axis as explicit elementwise sums: no BLAS or SIMD reduction, whose
    rounding could depend on how many rays share the call (a pixel must not depend on its batch)."""
    total = a[..., 0] * b[..., 0]
    for i in range(1, a.shape[-1]):
        total = total + a[..., i] * b[..., i]
    return total


def _plane_hit(o: np.ndarray, d: np.ndarray, axis: int, level: float, facing: float) -> np.ndarray:
    """Distance along rays to the plane ``x[axis] = level`` seen from its front (normal sign ``facing``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (level - o[..., axis]) / d[..., axis]
    return np.where((d[..., axis] * facing < 0) & (t > 0), t, np.inf)


def _sphere_hit(o: np.ndarray, d: np.ndarray, c: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of rays ``o + t d`` (unit d) with spheres (centre ``c``, radius ``r``): ``(t, normal)``."""
    oc = o - c
    b = _dot(oc, d)
    disc = b * b - (_dot(oc, oc) - r * r)
    with np.errstate(invalid="ignore"):
        t = -b - np.sqrt(disc)
    t = np.where((disc >= 0) & (t > 1e-6), t, np.inf)
    p = o + np.where(np.isfinite(t), t, 0.0)[..., None] * d
    return t, (p - c) / r[..., None]


def _tube_hit(
    o: np.ndarray, d: np.ndarray, c: np.ndarray, r: np.ndarray, half: np.ndarray, axis: int
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit with open tubes of radius ``r`` around the axis through ``c`` along ``axis``,
    ``|x[axis] - c[axis]| <= half``: ``(t, normal)``."""
    keep = [i for i in range(3) if i != axis]
    oc = (o - c)[..., keep]
    dd = d[..., keep]
    a = _dot(dd, dd)
    b = _dot(oc, dd)
    disc = b * b - a * (_dot(oc, oc) - r * r)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / a
    along = o[..., axis] + np.where(np.isfinite(t), t, 0.0) * d[..., axis] - c[..., axis]
    t = np.where((disc >= 0) & (t > 1e-6) & (np.abs(along) <= half), t, np.inf)
    p = o + np.where(np.isfinite(t), t, 0.0)[..., None] * d
    normal = p - c
    normal[..., axis] = 0.0
    return t, normal / r[..., None]


def _object_hit(o: np.ndarray, d: np.ndarray, shape: int, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of rays ``o + t d`` (``o``, ``d``: (G, ..., 3)) with one kind of object: ``(t, normal)``.

    ``scale`` holds each geometry's scale value, shaped (G, 1, ..., 1) to broadcast against the rays.
    """
    zeros = np.zeros_like(scale)
    if shape == 0:  # cube of half-size a standing on the floor
        a = 0.55 * scale[..., None]
        lo = np.concatenate([-a, zeros[..., None], -a], axis=-1)
        hi = np.concatenate([a, 2 * a, a], axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (lo - o) / d, (hi - o) / d
        tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
        t_near, t_far = tmin.max(axis=-1), tmax.min(axis=-1)
        t = np.where((t_near <= t_far) & (t_near > 1e-6), t_near, np.inf)
        face = tmin.argmax(axis=-1)
        normal = np.zeros_like(o)
        np.put_along_axis(normal, face[..., None], -np.sign(np.take_along_axis(d, face[..., None], -1)), -1)
        return t, normal
    if shape == 1:  # upright cylinder with a top cap
        r = 0.55 * scale
        half = 0.55 * scale
        c = np.stack([zeros, half, zeros], axis=-1)
        t_side, n_side = _tube_hit(o, d, c, r, half, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_cap = (2 * half - o[..., 1]) / d[..., 1]
        p = o + np.where(np.isfinite(t_cap), t_cap, 0.0)[..., None] * d
        on_cap = (d[..., 1] < 0) & (t_cap > 1e-6) & (p[..., 0] * p[..., 0] + p[..., 2] * p[..., 2] <= r * r)
        t_cap = np.where(on_cap, t_cap, np.inf)
        n_cap = np.broadcast_to(np.array([0.0, 1.0, 0.0], dtype=o.dtype), o.shape)
        use_cap = t_cap < t_side
        return np.minimum(t_side, t_cap), np.where(use_cap[..., None], n_cap, n_side)
    if shape == 2:  # sphere resting on the floor
        r = 0.62 * scale
        return _sphere_hit(o, d, np.stack([zeros, r, zeros], axis=-1), r)
    # capsule lying along x: a tube and two end spheres
    r = 0.42 * scale
    half = 0.55 * scale
    best_t, best_n = _tube_hit(o, d, np.stack([zeros, r, zeros], axis=-1), r, half, axis=0)
    for sign in (-1.0, 1.0):
        t, n = _sphere_hit(o, d, np.stack([sign * half, r, zeros], axis=-1), r)
        closer = t < best_t
        best_t = np.where(closer, t, best_t)
        best_n = np.where(closer[..., None], n, best_n)
    return best_t, best_n


def _lambert(normal: np.ndarray) -> np.ndarray:
    return _AMBIENT + _DIFFUSE * np.clip(_dot(normal, _LIGHT), 0.0, None)


class _GeometryCache:
    """Per-process cache of the (wall, floor, object) weight maps of the 480 geometries, filled on demand.

    Outside ``_object_window()`` a map is its orientation's bare room; inside, rays are cast at the object.
    """

    def __init__(self) -> None:
        self.maps = torch.zeros((8 * 4 * 15, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.float32)
        self.ready = torch.zeros(8 * 4 * 15, dtype=torch.bool)
        self._lock = threading.Lock()
        self._rows, self._cols = _object_window()
        self._eyes, self._rays, self._room, rooms = [], [], [], []
        for k in range(len(_ORIENTATIONS_DEG)):
            eye, d = _camera_rays(k)
            t, floor, shade = _cast_room(eye, d)
            window = (self._rows, slice(None), self._cols, slice(None))
            self._eyes.append(eye)
            self._rays.append(d[window])
            self._room.append((t[window], floor[window], shade[window]))
            rooms.append(_pixels(np.stack([np.where(floor, 0.0, shade), np.where(floor, shade, 0.0)])))
        self._room_maps = torch.from_numpy(np.stack(rooms))  # (orientations, 2, H, W)

    def get(self, geometry: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Weight maps ``(B, 3, H, W)`` of geometry ids ``(B,)`` (id = (scale * 4 + shape) * 15 + orientation)."""
        if not bool(self.ready[geometry].all()):
            with self._lock:
                missing = torch.unique(geometry[~self.ready[geometry]])
                for start in range(0, len(missing), _CHUNK):
                    self._fill(missing[start : start + _CHUNK])
        return torch.index_select(self.maps, 0, geometry, out=out)

    def _fill(self, ids: torch.Tensor) -> None:
        scale_idx, rest = np.divmod(ids.numpy(), 60)
        shape_idx, orient_idx = np.divmod(rest, 15)
        maps = torch.zeros((len(ids), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.float32)
        maps[:, :2] = self._room_maps[torch.from_numpy(orient_idx)]
        window = np.zeros((len(ids), 3, *self._rays[0].shape[:-1]), dtype=np.float32)
        for shape in np.unique(shape_idx):
            sel = np.nonzero(shape_idx == shape)[0]
            ks = orient_idx[sel]
            d = np.stack([self._rays[k] for k in ks])
            o = np.broadcast_to(np.stack([self._eyes[k] for k in ks])[:, None, None, None, None], d.shape)
            scale = _SCALES[scale_idx[sel]].astype(np.float32).reshape(-1, 1, 1, 1, 1)
            t_obj, n_obj = _object_hit(o, d, int(shape), scale)
            t_room, floor, shade = (np.stack([self._room[k][i] for k in ks]) for i in range(3))
            on_object = t_obj < t_room
            # shadow rays from the visible room point towards the light
            p = o + t_room[..., None] * d
            t_shadow, _ = _object_hit(p, np.broadcast_to(_LIGHT, d.shape), int(shape), scale)
            shade = np.where(np.isfinite(t_shadow), shade * _SHADOW, shade)
            window[sel, 0] = np.where(~on_object & ~floor, shade, 0.0)
            window[sel, 1] = np.where(~on_object & floor, shade, 0.0)
            window[sel, 2] = np.where(on_object, _lambert(n_obj), 0.0)
        maps[:, :, self._rows, self._cols] = torch.from_numpy(_pixels(window))
        self.maps[ids] = maps
        self.ready[ids] = True


def _cast_room(eye: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance, is-floor flag and Lambert shade of the nearest floor or wall along rays ``d`` (..., 3)."""
    o = np.broadcast_to(eye, d.shape)
    hits = np.stack(
        [
            _plane_hit(o, d, axis=1, level=0.0, facing=1.0),  # floor
            _plane_hit(o, d, axis=2, level=_BACK_WALL_Z, facing=1.0),  # back wall
            _plane_hit(o, d, axis=0, level=-_SIDE_WALL_X, facing=1.0),  # left wall
            _plane_hit(o, d, axis=0, level=_SIDE_WALL_X, facing=-1.0),  # right wall
        ]
    )
    which = hits.argmin(axis=0)
    normals = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0], [-1, 0, 0]], dtype=np.float32)
    return hits.min(axis=0), which == 0, _lambert(normals[which])


def _pixels(samples: np.ndarray) -> np.ndarray:
    """Average supersamples: (..., H, S, W, S) → (..., H, W) float32, summed in a fixed order."""
    s = _SUPERSAMPLE
    total = sum(samples[..., :, i, :, j] for i in range(s) for j in range(s))
    return (total / (s * s)).astype(np.float32)


_CACHE: _GeometryCache | None = None
_CACHE_LOCK = threading.Lock()


def _geometry_cache() -> _GeometryCache:
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None:
            _CACHE = _GeometryCache()
        return _CACHE


class Shapes3D(GroundTruthDataset):
    """Procedural 3D Shapes: 480,000 RGB images 64x64 on the grid of the real dataset.

    Factors (slowest first): floor_hue 10, wall_hue 10, object_hue 10, scale 8, shape 4
    (cube, cylinder, sphere, capsule), orientation 15. Images are ``(3, 64, 64)`` float32 in [0, 1].
    """

    def __init__(self) -> None:
        super().__init__(
            "shapes3d",
            FACTOR_NAMES,
            FACTOR_SIZES,
            (_HUES, _HUES, _HUES, _SCALES, np.arange(4.0), _ORIENTATIONS_DEG),
            (3, IMAGE_SIZE, IMAGE_SIZE),
        )
        self._hues = _hue_table()

    def _render(self, factors: torch.Tensor) -> torch.Tensor:
        floor_hue, wall_hue, object_hue, scale, shape, orientation = factors.unbind(dim=1)
        cache = _geometry_cache()
        geometry = (scale * 4 + shape) * 15 + orientation
        colours = [self._hues[h][:, :, None, None] for h in (wall_hue, floor_hue, object_hue)]
        out = torch.empty((len(factors), *self.image_shape), dtype=torch.float32)
        maps = torch.empty((_RENDER_CHUNK, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.float32)
        # chunks keep the working set in cache; every image is computed by the same elementwise ops
        for start in range(0, len(factors), _RENDER_CHUNK):
            end = min(start + _RENDER_CHUNK, len(factors))
            m = cache.get(geometry[start:end], out=maps[: end - start])
            image = out[start:end]
            torch.mul(m[:, 0:1], colours[0][start:end], out=image)
            image.addcmul_(m[:, 1:2], colours[1][start:end])
            image.addcmul_(m[:, 2:3], colours[2][start:end])
        return out.clamp_(0.0, 1.0)
