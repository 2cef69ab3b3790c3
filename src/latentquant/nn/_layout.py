"""Layouts shared by the layers: channel-first <-> channel-last, vector-quantize-pytorch's detection rule,
mixed-radix flat code indices, and the optional input/output projections."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

INT64_MAX = 2**63 - 1


def is_channel_first(ndim: int, channel_first: bool | None) -> bool:
    """The layout rule of vector-quantize-pytorch's ``FSQ`` and ``VectorQuantize``.

    ``channel_first=None`` (auto): input with 4 or more dims is an image or video, (B, C, H, W) or
    (B, C, T, H, W), channel first; (B, D) and (B, N, D) are channel last. ``True`` / ``False`` force the layout
    (``False`` allows channel-last images (B, H, W, C); ``True`` allows a (B, D, N) sequence).
    """
    if channel_first is None:
        return ndim >= 4
    return bool(channel_first)


def to_channel_last(z: torch.Tensor, channel_first: bool) -> torch.Tensor:
    """(B, C, *spatial) -> (B, *spatial, C) when ``channel_first``; a view, no copy."""
    if not channel_first:
        return z
    if z.dim() < 2:
        raise ValueError(f"channel_first=True needs input of shape (B, C, ...), got shape {tuple(z.shape)}")
    return z.movedim(1, -1)


def from_channel_last(t: torch.Tensor, channel_first: bool) -> torch.Tensor:
    """Inverse of :func:`to_channel_last` for a tensor whose last dim is the channel dim."""
    return t.movedim(-1, 1) if channel_first else t


def channel_last_input(
    layer: str, z: torch.Tensor, channel_first: bool | None, dim: int
) -> tuple[torch.Tensor, bool]:
    """A layer's input ``z`` in channel-last layout, checked to carry ``dim`` features.

    Args:
        layer: the layer's name, for the error message.
        z: (..., dim) channel last or (B, dim, *spatial) channel first, by :func:`is_channel_first`.
        channel_first: the layer's setting (None: auto).
        dim: the expected feature size.

    Returns:
        ``(zl, cf)``: ``z`` as (..., dim) (a view) and whether it was channel first.
    """
    cf = is_channel_first(z.dim(), channel_first)
    zl = to_channel_last(z, cf)
    if zl.shape[-1] != dim:
        raise ValueError(
            f"{layer}: expected {dim} features in the {'channel (dim 1)' if cf else 'last'} dimension, "
            f"got input of shape {tuple(z.shape)}"
        )
    return zl, cf


def flat_indices_channel_first(ndim: int, channel_first: bool | None) -> bool:
    """Whether decoding flat code indices of ``ndim`` dims gives channel-first output: with ``channel_first=None``
    when they have 3+ dims, (B, H, W) or (B, T, H, W) from an image or video (as vector-quantize-pytorch)."""
    return ndim >= 3 if channel_first is None else channel_first


def check_levels(layer: str, levels: Sequence[int], name: str = "levels", minimum: int = 1) -> list[int]:
    """A non-empty list of ints >= ``minimum`` (the number of values per latent)."""
    if isinstance(levels, (int, float, str)) or len(levels) == 0:
        raise ValueError(f"{layer}: {name} must be a non-empty list of ints, got {levels!r}")
    out = []
    for n in levels:
        if isinstance(n, bool) or int(n) != n or int(n) < minimum:
            raise ValueError(
                f"{layer}: every latent needs at least {minimum} value(s): each entry of {name} must be an int "
                f">= {minimum}, got {name}={list(levels)}"
            )
        out.append(int(n))
    return out


class MixedRadix:
    """Flat code index <-> per-latent indices, first latent least significant (vector-quantize-pytorch's basis):
    ``flat = sum_d indices[..., d] * prod(levels[:d])``. The product codebook is never enumerated."""

    def __init__(self, layer: str, levels: Sequence[int]) -> None:
        self.layer = layer
        self.levels = list(levels)
        self.size = math.prod(self.levels)
        self.basis = [math.prod(self.levels[:d]) for d in range(len(self.levels))]

    def check_fits(self) -> None:
        if self.size > INT64_MAX:
            raise ValueError(
                f"{self.layer}: flat code indices need prod(levels) <= 2**63 - 1 to fit int64, got {self.size}; "
                "use per-latent indices (flat_indices=False)"
            )

    def to_flat(self, indices: torch.Tensor) -> torch.Tensor:
        """(..., L) per-latent indices -> (...) int64 flat indices."""
        self.check_fits()
        basis = torch.tensor(self.basis, dtype=torch.int64, device=indices.device)
        return (indices.long() * basis).sum(-1)

    def from_flat(self, flat: torch.Tensor) -> torch.Tensor:
        """(...) flat indices -> (..., L) int64 per-latent indices."""
        self.check_fits()
        if flat.is_floating_point() or flat.is_complex() or flat.dtype == torch.bool:
            raise ValueError(f"{self.layer}: flat indices must be integers, got {flat.dtype}")
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.size):
            raise ValueError(
                f"{self.layer}: flat indices must be in [0, {self.size}) (prod(levels), levels={self.levels}), "
                f"got values in [{int(flat.min())}, {int(flat.max())}]"
            )
        basis = torch.tensor(self.basis, dtype=torch.int64, device=flat.device)
        levels = torch.tensor(self.levels, dtype=torch.int64, device=flat.device)
        return (flat.long()[..., None] // basis) % levels


def projections(dim: int, num_latents: int, bias: bool) -> tuple[nn.Module, nn.Module]:
    """Learned ``Linear(dim, L)`` in and ``Linear(L, dim)`` out when ``dim != L``; identities otherwise."""
    if dim == num_latents:
        return nn.Identity(), nn.Identity()
    return nn.Linear(dim, num_latents, bias=bias), nn.Linear(num_latents, dim, bias=bias)
