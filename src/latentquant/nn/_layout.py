"""Channel-first <-> channel-last handling shared by the layers."""

from __future__ import annotations

import torch


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
