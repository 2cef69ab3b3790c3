"""Finite scalar quantization (FSQ, Mentzer et al. 2023, arXiv 2309.15505) on the scalar-quantize kernel.

Each latent d is bounded with a shifted tanh to ``levels[d]`` integer positions and rounded with the straight-through
gradient; the codes are those positions divided by ``levels[d] // 2`` (in [-1, 1]). The math, operation for
operation, is vector-quantize-pytorch's ``FSQ`` (1.32, ``preserve_symmetry=False``), so the same levels, input and
projection weights give the same outputs; the rounding is ``latentquant.ops.scalar_quantize`` on the fixed grid of
integer positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from latentquant.nn._layout import (
    MixedRadix,
    channel_last_input,
    check_levels,
    flat_indices_channel_first,
    from_channel_last,
    projections,
)
from latentquant.ops import scalar_quantize

_EPS = 1e-3  # vqp's bound() eps: the tanh range is widened by 0.1% so the outermost positions are reachable


class FSQ(nn.Module):
    """Finite scalar quantization with vector-quantize-pytorch's call convention ``codes, indices = fsq(z)``.

    Args:
        levels: positions per latent, each >= 3 (L = len(levels) latents); e.g. [8, 5, 5, 5] (1000 codes).
        dim: input/output feature size; learned ``Linear(dim, L)`` / ``Linear(L, dim)`` projections when it differs
            from L. Default L.
        channel_first: None (auto: 4+ dims are (B, C, ...) images/videos, as vqp), True or False.
        projection_has_bias: the projections have biases.
        check_finite: raise ``ValueError`` on NaN/Inf input.

    Levels of 2 are refused (their codes {-1, 0} are asymmetric; vqp refuses them without its
    ``preserve_symmetry``, which is not implemented here). Indices are int64 (vqp's are int32); rounding ties,
    which random input never hits, go to the lower position (``torch.round`` rounds half to even).
    """

    def __init__(
        self,
        levels: Sequence[int],
        dim: int | None = None,
        channel_first: bool | None = None,
        projection_has_bias: bool = True,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.levels = check_levels("FSQ", levels, minimum=3)
        self.num_latents = len(self.levels)
        if dim is not None and (not isinstance(dim, int) or dim < 1):
            raise ValueError(f"FSQ: dim must be a positive int or None, got {dim!r}")
        if channel_first not in (None, True, False):
            raise ValueError(f"FSQ: channel_first must be None, True or False, got {channel_first!r}")
        self.dim = self.num_latents if dim is None else dim
        self.channel_first = channel_first
        self.check_finite = check_finite
        self.project_in, self.project_out = projections(self.dim, self.num_latents, projection_has_bias)
        self._radix = MixedRadix("FSQ", self.levels)
        self._radix.check_fits()
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.int32), persistent=False)
        # grid[d, k] = k - levels[d] // 2, the integer positions, padded with the row's last one
        width = max(self.levels)
        k = torch.arange(width).expand(self.num_latents, width)
        last = torch.tensor(self.levels)[:, None] - 1
        grid = torch.minimum(k, last) - torch.tensor(self.levels)[:, None] // 2
        self.register_buffer("_grid", grid.to(torch.int32), persistent=False)

    @property
    def codebook_size(self) -> int:
        """``prod(levels)``, the number of codes (never enumerated)."""
        return self._radix.size

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """(..., L) -> (..., L) real positions within about +-levels / 2: vqp's ``tanh(z + shift) * half_l - offset``."""
        half_l = (self._levels - 1) * (1 + _EPS) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes and per-latent level indices of (..., L) latents (float32 or float64).

        Returns:
            codes: (..., L) in [-1, 1], ``round(bound(z)) / (levels // 2)`` with the straight-through gradient.
            level_indices: (..., L) int64 in [0, levels[d]).
        """
        bounded = self.bound(z)
        rounded, level_indices = scalar_quantize(bounded, self._grid.to(bounded.dtype), check_finite=False)
        codes = (bounded + (rounded - bounded).detach()) / (self._levels // 2)
        return codes, level_indices

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize.

        Args:
            z: (B, dim), (B, N, dim) or (..., dim) channel last; (B, dim, H, W) or (B, dim, T, H, W) channel first.

        Returns:
            codes: z's shape and dtype (projected out when ``dim != L``), straight-through gradient to z.
            indices: z's shape without the channel dim, int64 flat codes
                ``sum_d level_index[d] * prod(levels[:d])`` in [0, codebook_size).
        """
        zl, cf = channel_last_input("FSQ", z, self.channel_first, self.dim)
        if self.check_finite and zl.numel() and not bool(torch.isfinite(zl).all()):
            raise ValueError("FSQ: input contains NaN or Inf (pass check_finite=False to skip this check)")
        zp = self.project_in(zl)
        dtype = zp.dtype
        codes, level_indices = self.quantize(zp if dtype in (torch.float32, torch.float64) else zp.float())
        out = self.project_out(codes.to(dtype))
        return from_channel_last(out, cf), self._radix.to_flat(level_indices)

    def indices_to_level_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) flat codes -> (..., L) int64 level indices."""
        return self._radix.from_flat(indices)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., L) codes on the grid (before ``project_out``) -> (...) int64 flat codes."""
        if codes.shape[-1] != self.num_latents:
            raise ValueError(
                f"FSQ.codes_to_indices: expected (..., {self.num_latents}) codes, got {tuple(codes.shape)}"
            )
        half = (self._levels // 2).to(codes.device)
        return self._radix.to_flat((codes * half + half).round().long())

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Flat codes (B, ...) -> ``forward``'s first output: (B, ..., dim), channel first (B, dim, ...) when the
        indices have 3+ dims (as vqp) or with ``channel_first=True``."""
        half = self._levels // 2
        codes = (self._radix.from_flat(indices) - half.to(indices.device)) / half.to(indices.device)
        out = self.project_out(codes.to(self._dtype()))
        cf = flat_indices_channel_first(indices.dim(), self.channel_first)
        return from_channel_last(out, cf)

    def _dtype(self) -> torch.dtype:
        weight = getattr(self.project_out, "weight", None)
        return torch.float32 if weight is None else weight.dtype

    def extra_repr(self) -> str:
        return f"levels={self.levels}, dim={self.dim}"
