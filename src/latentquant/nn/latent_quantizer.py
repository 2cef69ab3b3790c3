"""Latent quantization layers (QLAE): a small learnable scalar codebook per latent dimension.

``LatentQuantizer`` gives each latent its own values (ragged sizes allowed); ``GlobalLatentQuantizer``
shares one set of values across all latents (the paper's ablation). Both run the fused
``latentquant.ops.latent_quantize`` kernel: one pass forward, one pass backward, never the product codebook.

Indices are *ranks*: index k of latent d is its k-th smallest value, whatever order the learned values
drift into, so indices are ordinal (useful as discrete latents for metrics and for traversals) and
``indices_to_values`` always agrees with the forward pass.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
from torch import nn

from latentquant.nn._layout import from_channel_last, to_channel_last
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
        channel_first: bool,
        check_finite: bool,
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
        self.channel_first = channel_first
        self.check_finite = check_finite

    @abc.abstractmethod
    def codebook(self) -> torch.Tensor:
        """The effective (L, K) codebook the kernel sees (ragged rows padded with their last value)."""

    def _sort_keys(self, codebook: torch.Tensor) -> torch.Tensor:
        """Keys that order each latent's values ascending, padding (if any) last."""
        return codebook

    def codebook_parameters(self) -> list[nn.Parameter]:
        """Codebook parameters: keep them out of weight decay and gradient clipping."""
        return [p for p in self.parameters() if p.requires_grad]

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
            z: (..., L) latents, or (B, L, *spatial) with ``channel_first=True``.

        Returns:
            z_hat: same shape as z, quantized values with the straight-through gradient.
            indices: same shape as z, int64 ranks (0 = smallest value of that latent).
            aux_loss: () ``qw * mean((sg(z) - z_q)^2) + cw * mean((z - sg(z_q))^2)``.
        """
        zl = to_channel_last(z, self.channel_first)
        if zl.shape[-1] != self.num_latents:
            raise ValueError(
                f"{type(self).__name__}: expected {self.num_latents} latents in the "
                f"{'channel (dim 1)' if self.channel_first else 'last'} dimension, got input of shape {tuple(z.shape)}"
            )
        codebook = self.codebook()
        z_hat, raw, aux_loss = latent_quantize(
            zl, codebook, self.quantization_weight, self.commitment_weight, check_finite=self.check_finite
        )
        num_values = codebook.shape[1]
        flat = raw + torch.arange(self.num_latents, device=raw.device) * num_values
        indices = self._ranks(codebook).flatten()[flat]
        return (
            from_channel_last(z_hat, self.channel_first),
            from_channel_last(indices, self.channel_first),
            aux_loss,
        )

    def indices_to_values(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode rank indices (..., L) (or (B, L, *spatial) with ``channel_first``) to values."""
        return from_channel_last(
            self._decode(to_channel_last(indices, self.channel_first)), self.channel_first
        )

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
        return (
            f"num_latents={self.num_latents}, num_values={self.num_values}, "
            f"quantization_weight={self.quantization_weight}, commitment_weight={self.commitment_weight}"
        )


class LatentQuantizer(_ScalarCodebookQuantizer):
    """Per-latent scalar codebooks (QLAE).

    Args:
        num_latents: L, the number of latent dimensions.
        num_values: values per latent: an int for all, or a list of L ints (ragged codebooks).
        optimize_values: learn the values (through the quantization loss only); else fixed.
        quantization_weight: qw, weight of ``mean((sg(z) - z_q)^2)``.
        commitment_weight: cw, weight of ``mean((z - sg(z_q))^2)``.
        channel_first: input is (B, L, *spatial) instead of (..., L).
        check_finite: raise ``ValueError`` on NaN/Inf latents.

    Values start at ``linspace(-0.5, 0.5, n)`` per latent. Stored as an (L, max n) parameter; a shorter
    row's unused tail is ignored (the kernel sees the row padded with its last value, which never wins a tie,
    and the tail receives no gradient).
    """

    def __init__(
        self,
        num_latents: int,
        num_values: int | Sequence[int] = 10,
        optimize_values: bool = True,
        quantization_weight: float = 0.01,
        commitment_weight: float = 0.01,
        channel_first: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__(num_latents, quantization_weight, commitment_weight, channel_first, check_finite)
        sizes = [num_values] * num_latents if isinstance(num_values, int) else [int(n) for n in num_values]
        if len(sizes) != num_latents:
            raise ValueError(
                f"LatentQuantizer: num_values has {len(sizes)} entries for {num_latents} latents"
            )
        if any(n < 1 for n in sizes):
            raise ValueError(
                f"LatentQuantizer: every latent needs at least one value, got num_values={sizes}"
            )
        self.num_values = sizes
        width = max(sizes)
        init = torch.stack(
            [torch.cat([_initial_values(n), _initial_values(n)[-1:].expand(width - n)]) for n in sizes]
        )
        self.values = nn.Parameter(init, requires_grad=optimize_values)
        ragged = any(n != width for n in sizes)
        # pad_index[d, k] = min(k, n_d - 1): gathers each row padded with its last value.
        pad = torch.minimum(torch.arange(width).expand(num_latents, width), torch.tensor(sizes)[:, None] - 1)
        self.register_buffer("_pad_index", pad if ragged else None, persistent=False)
        self.register_buffer("_num_values", torch.tensor(sizes), persistent=False)

    def codebook(self) -> torch.Tensor:
        if self._pad_index is None:
            return self.values
        return self.values.gather(1, self._pad_index)

    def _sort_keys(self, codebook: torch.Tensor) -> torch.Tensor:
        if self._pad_index is None:
            return codebook
        valid = torch.arange(codebook.shape[1], device=codebook.device) < self._num_values[:, None]
        return codebook.masked_fill(~valid, float("inf"))


class GlobalLatentQuantizer(_ScalarCodebookQuantizer):
    """One scalar codebook shared by all latents (the paper's "global codebook" ablation).

    Args: as :class:`LatentQuantizer`, with ``num_values`` an int.
    """

    def __init__(
        self,
        num_latents: int,
        num_values: int = 10,
        optimize_values: bool = True,
        quantization_weight: float = 0.01,
        commitment_weight: float = 0.01,
        channel_first: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__(num_latents, quantization_weight, commitment_weight, channel_first, check_finite)
        if not isinstance(num_values, int) or num_values < 1:
            raise ValueError(f"GlobalLatentQuantizer: num_values must be a positive int, got {num_values!r}")
        self.num_values = [num_values] * num_latents
        self.values = nn.Parameter(_initial_values(num_values), requires_grad=optimize_values)

    def codebook(self) -> torch.Tensor:
        return self.values.unsqueeze(0).expand(self.num_latents, -1)
