"""VQ-VAE vector quantization layer on the ``latentquant.ops.vector_quantize`` kernel.

Codebook (K, C) initialized U(-sqrt(3/C), sqrt(3/C)) (unit total variance per code). Two ways to learn it:
by gradient through the quantization loss (default), or by exponential moving averages of the assigned
vectors (``ema=True``, van den Oord et al. 2017, appendix). Optional dead-code restarts replace codes whose
moving-average usage falls below ``dead_code_threshold`` with vectors from the current batch.

Under ``torch.distributed`` with several ranks (DDP), the assignment counts and the EMA sums are all-reduced
and restarted codes are drawn on rank 0 and broadcast: every rank keeps the same codebook, the one a single
process would learn from the global batch (usage then counts assignments per global batch).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
from torch import nn

from latentquant.nn._layout import from_channel_last, is_channel_first, to_channel_last
from latentquant.ops import vector_quantize


class VectorQuantizer(nn.Module):
    """Nearest-code quantization with the straight-through estimator.

    Args:
        dim: C, the size of each vector.
        codebook_size: K, the number of codes.
        quantization_weight: qw, weight of ``mean((z_q - sg(z))^2)`` (moves the codes; unused with ``ema``).
        commitment_weight: cw, weight of ``mean((z - sg(z_q))^2)`` (moves the encoder).
        ema: learn codes by exponential moving averages instead of gradients.
        decay: EMA decay in (0, 1), default 0.99: of the codes with ``ema``, and of the usage counts that
            dead-code restarts read. Given with neither ``ema`` nor ``dead_code_threshold`` it does nothing: warns.
        eps: Laplace smoothing of the EMA cluster sizes, > 0.
        dead_code_threshold: restart codes whose EMA usage (assignments per batch) falls below this; 0 disables.
        channel_first: None (auto: 4+ dims are (B, C, ...) images/videos, as vqp), True or False.
        check_finite: raise ``ValueError`` on NaN/Inf input.

    Call: ``z_hat, indices, aux_loss = layer(z)`` with z (..., C) -> z_hat (..., C), indices (...) int64.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int = 512,
        quantization_weight: float = 1.0,
        commitment_weight: float = 0.25,
        ema: bool = False,
        decay: float | None = None,
        eps: float = 1e-5,
        dead_code_threshold: float = 0.0,
        channel_first: bool | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if dim < 1 or codebook_size < 1:
            raise ValueError(
                f"VectorQuantizer: dim and codebook_size must be >= 1, got {dim} and {codebook_size}"
            )
        if decay is not None and not ema and not dead_code_threshold > 0:
            warnings.warn(
                f"VectorQuantizer: decay={decay} has no effect without ema=True or dead_code_threshold > 0; "
                "the codebook learns by gradient",
                stacklevel=2,
            )
        decay = 0.99 if decay is None else decay
        if not 0.0 < decay < 1.0:
            raise ValueError(f"VectorQuantizer: decay must be in (0, 1), got {decay}")
        if not eps > 0:
            raise ValueError(f"VectorQuantizer: eps (the EMA smoothing) must be > 0, got {eps}")
        if quantization_weight < 0 or commitment_weight < 0 or dead_code_threshold < 0:
            raise ValueError(
                "VectorQuantizer: quantization_weight, commitment_weight and dead_code_threshold must be >= 0, got "
                f"{quantization_weight}, {commitment_weight}, {dead_code_threshold}"
            )
        self.dim, self.codebook_size = dim, codebook_size
        self.quantization_weight, self.commitment_weight = (
            float(quantization_weight),
            float(commitment_weight),
        )
        self.ema, self.decay, self.eps = ema, decay, eps
        self.dead_code_threshold = dead_code_threshold
        self.channel_first, self.check_finite = channel_first, check_finite
        bound = math.sqrt(3.0 / dim)
        self.codebook = nn.Parameter(
            torch.empty(codebook_size, dim).uniform_(-bound, bound), requires_grad=not ema
        )
        self.register_buffer("usage", torch.ones(codebook_size))
        if ema:
            self.register_buffer("ema_cluster_size", torch.ones(codebook_size))
            self.register_buffer("ema_embed_sum", self.codebook.detach().clone())

    def codebook_parameters(self) -> list[nn.Parameter]:
        """Codebook parameters: keep them out of weight decay and gradient clipping."""
        return [self.codebook] if self.codebook.requires_grad else []

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize to the nearest code.

        Args:
            z: (..., C) channel last, or (B, C, *spatial) channel first (auto for 4+ dims).

        Returns:
            z_hat: z's shape and dtype (with ``ema`` too), the straight-through gradient to z.
            indices: int64, z's shape without the channel dim.
            aux_loss: () ``cw * mean((z - sg(z_q))^2)`` (+ ``qw * mean((z_q - sg(z))^2)`` without ``ema``).
        """
        cf = is_channel_first(z.dim(), self.channel_first)
        zl = to_channel_last(z, cf)
        if zl.shape[-1] != self.dim:
            raise ValueError(
                f"VectorQuantizer: expected vectors of size {self.dim}, got input of shape {tuple(z.shape)}"
            )
        z_q, indices = vector_quantize(zl, self.codebook, check_finite=self.check_finite)
        if self.training and zl.numel():
            self._update(zl.detach().reshape(-1, self.dim), indices.reshape(-1))
            if self.ema:  # the codes moved: re-read the assignment's values, in the kernel's output dtype
                z_q = self.codebook[indices].to(z_q.dtype)
        if zl.numel() == 0:
            aux_loss = zl.sum() * 0.0
        else:
            zf, zqf = zl.float(), z_q.float()
            aux_loss = self.commitment_weight * ((zf - zqf.detach()) ** 2).mean()
            if not self.ema:
                aux_loss = aux_loss + self.quantization_weight * ((zqf - zf.detach()) ** 2).mean()
        z_hat = z_q.detach() + (zl - zl.detach())  # exactly z_q in every dtype; d z_hat / d z = I
        # indices have no channel dim: (...) for channel-last input, (B, *spatial) for channel-first.
        return from_channel_last(z_hat, cf), indices, aux_loss

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        # Under torch.distributed (DDP), the counts and sums are all-reduced and restarts are drawn on rank 0
        # and broadcast, so every rank keeps the same codebook: that of one process on the global batch.
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        counts = torch.bincount(indices, minlength=self.codebook_size).to(self.usage.dtype)
        if distributed:
            dist.all_reduce(counts)
        self.usage.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.ema:
            sums = torch.zeros_like(self.ema_embed_sum).index_add_(
                0, indices, flat.to(self.ema_embed_sum.dtype)
            )
            if distributed:
                dist.all_reduce(sums)
            self.ema_cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.ema_cluster_size.sum()
            smoothed = (self.ema_cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
            self.codebook.copy_(self.ema_embed_sum / smoothed[:, None])
        if self.dead_code_threshold > 0:
            dead = (self.usage < self.dead_code_threshold).nonzero().flatten()
            if dead.numel():
                pick = torch.randint(flat.shape[0], (dead.numel(),), device=flat.device)
                fresh = flat[pick].to(self.codebook.dtype)
                if distributed:
                    dist.broadcast(fresh, src=0)
                self.codebook[dead] = fresh
                self.usage[dead] = self.dead_code_threshold
                if self.ema:
                    self.ema_cluster_size[dead] = 1.0
                    self.ema_embed_sum[dead] = self.codebook[dead]

    def indices_to_values(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode code indices (...) to vectors (..., C); channel first (B, C, *spatial) for indices of 3+ dims
        (what an image gives, vqp's rule) with ``channel_first=None``, or always with ``True``."""
        if indices.is_floating_point():
            raise ValueError(
                f"VectorQuantizer.indices_to_values: indices must be integers, got {indices.dtype}"
            )
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(
                f"VectorQuantizer.indices_to_values: indices must be in [0, {self.codebook_size})"
            )
        cf = indices.dim() >= 3 if self.channel_first is None else self.channel_first and indices.dim() >= 1
        return from_channel_last(self.codebook[indices.long()], cf)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_size={self.codebook_size}, ema={self.ema}"
