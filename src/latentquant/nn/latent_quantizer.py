"""Latent quantization layers (QLAE): a small learnable scalar codebook per latent dimension.

``LatentQuantizer`` gives each latent its own values (ragged sizes allowed); ``GlobalLatentQuantizer``
shares one set of values across all latents (the paper's ablation). Both run the fused
``latentquant.ops.latent_quantize`` kernel: one pass forward, one pass backward, never the product codebook.

Indices are *ranks*: index k of latent d is its k-th smallest value, whatever order the learned values
drift into, so indices are ordinal (useful as discrete latents for metrics and for traversals) and
``indices_to_values`` always agrees with the forward pass.

vector-quantize-pytorch compatibility: ``LatentQuantizer(levels=[5, 5, 8], dim=16)`` builds the layer the way
vqp's ``LatentQuantize`` is built (learned ``Linear`` projections in and out when ``dim != len(levels)``, one flat
mixed-radix code index per position, ``indices_to_codes``, ``codebook_size``), with vqp's input layouts
(see :func:`latentquant.nn._layout.is_channel_first`).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
from torch import nn

from latentquant.nn._layout import (
    MixedRadix,
    channel_last_input,
    check_levels,
    flat_indices_channel_first,
    from_channel_last,
    is_channel_first,
    projections,
    to_channel_last,
)
from latentquant.ops import latent_quantize


def _initial_values(n: int) -> torch.Tensor:
    """``linspace(-0.5, 0.5, n)``; a single value sits at 0."""
    if n == 1:
        return torch.zeros(1)
    return torch.linspace(-0.5, 0.5, n)


class _ScalarCodebookQuantizer(nn.Module, abc.ABC):
    """Shared machinery: the effective (L, K) codebook, rank indices, sampling, decoding."""

    num_latents: int
    num_values: list[int]

    def __init__(
        self,
        num_latents: int,
        quantization_weight: float,
        commitment_weight: float,
        channel_first: bool | None,
        check_finite: bool,
        dim: int | None = None,
        flat_indices: bool = False,
        projection_has_bias: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(num_latents, int) or num_latents < 1:
            raise ValueError(
                f"{type(self).__name__}: num_latents must be a positive int, got {num_latents!r}"
            )
        self.num_latents = num_latents
        for name, w in (
            ("quantization_weight", quantization_weight),
            ("commitment_weight", commitment_weight),
        ):
            if not w >= 0:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 0, got {w}")
        self.quantization_weight = float(quantization_weight)
        self.commitment_weight = float(commitment_weight)
        if channel_first not in (None, True, False):
            raise ValueError(
                f"{type(self).__name__}: channel_first must be None, True or False, got {channel_first!r}"
            )
        self.channel_first = channel_first
        self.check_finite = check_finite
        if dim is not None and (not isinstance(dim, int) or dim < 1):
            raise ValueError(f"{type(self).__name__}: dim must be a positive int or None, got {dim!r}")
        self.dim = num_latents if dim is None else dim
        self.project_in, self.project_out = projections(self.dim, num_latents, projection_has_bias)
        self.flat_indices = bool(flat_indices)

    def _init_radix(self) -> None:
        self._radix = MixedRadix(type(self).__name__, self.num_values)
        if self.flat_indices:
            self._radix.check_fits()

    @property
    def codebook_size(self) -> int:
        """Size of the (never enumerated) product codebook: ``prod(num_values)``, an exact Python int."""
        return self._radix.size

    @abc.abstractmethod
    def codebook(self) -> torch.Tensor:
        """The effective (L, K) codebook the kernel sees (ragged rows padded with their last value)."""

    def _sort_keys(self, codebook: torch.Tensor) -> torch.Tensor:
        """Keys that order each latent's values ascending, padding (if any) last."""
        return codebook

    def codebook_parameters(self) -> list[nn.Parameter]:
        """Codebook parameters: keep them out of weight decay and gradient clipping."""
        return [self.values] if self.values.requires_grad else []

    def _order(self, codebook: torch.Tensor) -> torch.Tensor:
        return self._sort_keys(codebook.detach()).argsort(dim=1, stable=True)

    def sorted_codebook(self) -> torch.Tensor:
        """(L, K) values in ascending order per latent: ``sorted_codebook()[d, k]`` is what index k decodes to
        (for k < num_values[d])."""
        codebook = self.codebook()
        return codebook.gather(1, self._order(codebook))

    def _ranks(self, codebook: torch.Tensor) -> torch.Tensor:
        # rank[d, k]: position of codebook[d, k] in latent d's ascending order (stable: ties keep order).
        order = self._order(codebook)
        positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
        return torch.empty_like(order).scatter_(1, order, positions)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize each latent to its nearest value.

        Args:
            z: (B, dim), (B, N, dim) or (..., dim) channel last; (B, dim, H, W) or (B, dim, T, H, W) channel first.
                With ``channel_first=None`` 4+ dims mean channel first (vector-quantize-pytorch's rule);
                ``True`` / ``False`` force the layout.

        Returns:
            z_hat: same shape as z, quantized values with the straight-through gradient (through ``project_out``
                when ``dim != num_latents``).
            indices: int64. Per latent (``flat_indices=False``): z's shape with L channels, ranks (0 = smallest
                value of that latent). Flat: z's shape without the channel dim, one mixed-radix code per position.
            aux_loss: () ``qw * mean((sg(z) - z_q)^2) + cw * mean((z - sg(z_q))^2)`` in latent space (after
                ``project_in``).
        """
        zl, cf = channel_last_input(type(self).__name__, z, self.channel_first, self.dim)
        zp = self.project_in(zl)
        codebook = self.codebook()
        z_hat, raw, aux_loss = latent_quantize(
            zp, codebook, self.quantization_weight, self.commitment_weight, check_finite=self.check_finite
        )
        num_values = codebook.shape[1]
        flat = raw + torch.arange(self.num_latents, device=raw.device) * num_values
        indices = self._ranks(codebook).flatten()[flat]
        z_hat = self.project_out(z_hat)
        if self.flat_indices:
            return from_channel_last(z_hat, cf), self._radix.to_flat(indices), aux_loss
        return from_channel_last(z_hat, cf), from_channel_last(indices, cf), aux_loss

    def indices_to_values(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode per-latent rank indices to latent values (before ``project_out``).

        Args:
            indices: (..., L) integers, or (B, L, *spatial) channel first (same layout rule as ``forward``).

        Returns:
            float tensor of indices' shape.
        """
        cf = is_channel_first(indices.dim(), self.channel_first)
        return from_channel_last(self._decode(to_channel_last(indices, cf)), cf)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode what ``forward`` returns as indices to what it returns as ``z_hat`` (vqp's ``indices_to_codes``).

        Args:
            indices: flat (B, ...) codes when ``flat_indices`` (channel first output when they have 3+ dims, as in
                vqp, or with ``channel_first=True``), else per-latent ranks laid out like ``forward``'s input.

        Returns:
            codes of ``forward``'s ``z_hat`` layout with ``dim`` features (through ``project_out``).
        """
        if self.flat_indices:
            cf = flat_indices_channel_first(indices.dim(), self.channel_first)
            values = self._decode(self._radix.from_flat(indices))
        else:
            cf = is_channel_first(indices.dim(), self.channel_first)
            values = self._decode(to_channel_last(indices, cf))
        return from_channel_last(self.project_out(values), cf)

    def indices_to_flat(self, indices: torch.Tensor) -> torch.Tensor:
        """(..., L) per-latent indices (channel last) -> (...) int64 flat mixed-radix codes
        ``sum_d indices[..., d] * prod(num_values[:d])``."""
        return self._radix.to_flat(indices)

    def flat_to_indices(self, flat: torch.Tensor) -> torch.Tensor:
        """(...) flat codes -> (..., L) int64 per-latent indices (inverse of :meth:`indices_to_flat`)."""
        return self._radix.from_flat(flat)

    def _decode(self, il: torch.Tensor) -> torch.Tensor:
        if il.shape[-1] != self.num_latents:
            raise ValueError(
                f"{type(self).__name__}.indices_to_values: expected {self.num_latents} latents, got indices of shape "
                f"{tuple(il.shape)}"
            )
        if il.is_floating_point() or il.is_complex() or il.dtype == torch.bool:
            raise ValueError(
                f"{type(self).__name__}.indices_to_values: indices must be integers, got {il.dtype}"
            )
        sizes = torch.tensor(self.num_values, device=il.device)
        if il.numel() and (bool((il < 0).any()) or bool((il >= sizes).any())):
            raise ValueError(
                f"{type(self).__name__}.indices_to_values: indices out of range; latent d takes 0..num_values[d]-1 "
                f"with num_values = {self.num_values}"
            )
        cb = self.sorted_codebook()
        flat = il.long() + torch.arange(self.num_latents, device=il.device) * cb.shape[1]
        return cb.flatten()[flat]

    def sample(
        self, n: int, generator: torch.Generator | None = None, differentiable: bool = False
    ) -> torch.Tensor:
        """Draw latents uniformly and independently from each latent's values (the GAN prior).

        Args:
            n: number of draws.
            generator: a CPU ``torch.Generator`` for the draw (the indices are drawn on the CPU, then moved).
            differentiable: keep the autograd graph to the values: the draw is a gather from ``values``, so a
                loss on the sample sends gradient to exactly the drawn entries (summed over repeats) and to no
                other; QLInfoWGAN-GP trains its codebook through the generator's losses this way. With
                ``False`` the sample is detached. The same generator state draws the same indices either way.

        Returns:
            (n, L) tensor on the values' device and dtype.
        """
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{type(self).__name__}.sample: n must be an int >= 0, got {n!r}")
        sizes = torch.tensor(self.num_values, dtype=torch.float64)
        u = torch.rand(n, self.num_latents, generator=generator, dtype=torch.float64)
        idx = (u * sizes).long().clamp_max(sizes.long() - 1)
        drawn = self._decode(idx.to(self.values.device))
        return drawn if differentiable else drawn.detach()

    def extra_repr(self) -> str:
        extra = f", dim={self.dim}" if self.dim != self.num_latents else ""
        extra += ", flat_indices=True" if self.flat_indices else ""
        return (
            f"num_latents={self.num_latents}, num_values={self.num_values}, "
            f"quantization_weight={self.quantization_weight}, commitment_weight={self.commitment_weight}{extra}"
        )


class LatentQuantizer(_ScalarCodebookQuantizer):
    """Per-latent scalar codebooks (QLAE).

    Args:
        num_latents: L, the number of latent dimensions (optional when ``levels`` is a list).
        num_values: values per latent: an int for all, or a list of L ints (ragged codebooks). Default 10.
        optimize_values: learn the values (through the quantization loss only); else fixed.
        quantization_weight: qw, weight of ``mean((sg(z) - z_q)^2)``. Default 0.01 (the paper's).
        commitment_weight: cw, weight of ``mean((z - sg(z_q))^2)``. Default 0.01.
        channel_first: None (auto: 4+ dims are (B, C, ...) images/videos), True or False.
        check_finite: raise ``ValueError`` on NaN/Inf latents.
        levels: vector-quantize-pytorch's name for ``num_values`` (a list, or an int with ``num_latents``).
        dim: input/output feature size; learned ``Linear(dim, L)`` / ``Linear(L, dim)`` projections when it differs
            from L. Default L (no projection).
        flat_indices: return one flat mixed-radix code per position instead of per-latent indices. Default: True
            when built vqp-style with ``levels``, else False.
        projection_has_bias: the projections have biases.
        quantization_loss_weight, commitment_loss_weight: vqp's names for the two weights (vqp's defaults are
            0.1; ours stay the paper's 0.01 unless given).

    Values start at ``linspace(-0.5, 0.5, n)`` per latent (vqp starts an even n at ``arange(n) / n - 0.5``).
    Stored as an (L, max n) parameter; a shorter row's unused tail is ignored (the kernel sees the row padded
    with its last value, which never wins a tie, and the tail receives no gradient). The per-latent sizes are
    stored in the state_dict (``num_values_per_latent``) and checked on load: a [5, 5, 8] state does not load
    into a [8, 5, 5] layer. Unlike vqp's layer, the values are trained (vqp's never get gradient), decoding
    uses the learned values, and the product codebook is never enumerated.
    """

    def __init__(
        self,
        num_latents: int | None = None,
        num_values: int | Sequence[int] | None = None,
        optimize_values: bool = True,
        quantization_weight: float | None = None,
        commitment_weight: float | None = None,
        channel_first: bool | None = None,
        check_finite: bool = True,
        *,
        levels: int | Sequence[int] | None = None,
        dim: int | None = None,
        flat_indices: bool | None = None,
        projection_has_bias: bool = True,
        quantization_loss_weight: float | None = None,
        commitment_loss_weight: float | None = None,
    ) -> None:
        if levels is not None and num_values is not None:
            raise ValueError("LatentQuantizer: pass num_values or levels (its vqp name), not both")
        vqp_style = levels is not None
        num_values = levels if vqp_style else (10 if num_values is None else num_values)
        if num_latents is None:
            if isinstance(num_values, int):
                raise ValueError(
                    f"LatentQuantizer: num_latents is needed when the number of values is one int ({num_values}); "
                    "pass num_latents, or levels as a list with one entry per latent"
                )
            num_latents = len(num_values)
        weights = []
        for name, ours, vqp in (
            ("quantization_weight", quantization_weight, quantization_loss_weight),
            ("commitment_weight", commitment_weight, commitment_loss_weight),
        ):
            if ours is not None and vqp is not None:
                raise ValueError(f"LatentQuantizer: pass {name} or its vqp name, not both")
            weights.append(0.01 if ours is None and vqp is None else (ours if vqp is None else vqp))
        super().__init__(
            num_latents,
            weights[0],
            weights[1],
            channel_first,
            check_finite,
            dim=dim,
            flat_indices=vqp_style if flat_indices is None else flat_indices,
            projection_has_bias=projection_has_bias,
        )
        name = "levels" if vqp_style else "num_values"
        if isinstance(num_values, int):
            sizes = check_levels("LatentQuantizer", [num_values] * num_latents, name)
        else:
            sizes = check_levels("LatentQuantizer", num_values, name)
        if len(sizes) != num_latents:
            raise ValueError(f"LatentQuantizer: {name} has {len(sizes)} entries for {num_latents} latents")
        self.num_values = sizes
        self._init_radix()
        width = max(sizes)
        init = torch.stack(
            [torch.cat([_initial_values(n), _initial_values(n)[-1:].expand(width - n)]) for n in sizes]
        )
        self.values = nn.Parameter(init, requires_grad=optimize_values)
        ragged = any(n != width for n in sizes)
        # pad_index[d, k] = min(k, n_d - 1): gathers each row padded with its last value.
        pad = torch.minimum(torch.arange(width).expand(num_latents, width), torch.tensor(sizes)[:, None] - 1)
        self.register_buffer("_pad_index", pad if ragged else None, persistent=False)
        self.register_buffer("num_values_per_latent", torch.tensor(sizes))

    def codebook(self) -> torch.Tensor:
        if self._pad_index is None:
            return self.values
        return self.values.gather(1, self._pad_index)

    def _sort_keys(self, codebook: torch.Tensor) -> torch.Tensor:
        if self._pad_index is None:
            return codebook
        valid = torch.arange(codebook.shape[1], device=codebook.device) < self.num_values_per_latent[:, None]
        return codebook.masked_fill(~valid, float("inf"))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        key = prefix + "num_values_per_latent"
        if key not in state_dict:
            # a state saved before the sizes were stored: the values' shape is all torch can check
            state_dict[key] = self.num_values_per_latent.clone()
        elif state_dict[key].tolist() != self.num_values:
            error_msgs.append(
                f"LatentQuantizer: the state has num_values={state_dict[key].tolist()} but this layer was built with "
                f"num_values={self.num_values}; build the layer with the saved sizes"
            )
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class GlobalLatentQuantizer(_ScalarCodebookQuantizer):
    """One scalar codebook shared by all latents (the paper's "global codebook" ablation).

    Args: as :class:`LatentQuantizer`, with ``num_values`` an int (and no vqp aliases).
    """

    def __init__(
        self,
        num_latents: int,
        num_values: int = 10,
        optimize_values: bool = True,
        quantization_weight: float = 0.01,
        commitment_weight: float = 0.01,
        channel_first: bool | None = None,
        check_finite: bool = True,
        *,
        dim: int | None = None,
        flat_indices: bool = False,
        projection_has_bias: bool = True,
    ) -> None:
        super().__init__(
            num_latents,
            quantization_weight,
            commitment_weight,
            channel_first,
            check_finite,
            dim=dim,
            flat_indices=flat_indices,
            projection_has_bias=projection_has_bias,
        )
        if not isinstance(num_values, int) or num_values < 1:
            raise ValueError(f"GlobalLatentQuantizer: num_values must be a positive int, got {num_values!r}")
        self.num_values = [num_values] * num_latents
        self._init_radix()
        self.values = nn.Parameter(_initial_values(num_values), requires_grad=optimize_values)

    def codebook(self) -> torch.Tensor:
        return self.values.unsqueeze(0).expand(self.num_latents, -1)
