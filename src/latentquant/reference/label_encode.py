"""Oracle of ``latentquant::label_encode``: each column label-encoded with ``torch.unique``."""

from __future__ import annotations

import torch


def label_encode_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (N, C) int64, the rank of each value among its column's sorted distinct values, and the distinct
    counts (C,) int64 (``torch.unique(x[:, c], return_inverse=True)`` column by column).

    Shapes:
        x (N, C) real or bool, without NaN.
    """
    codes = torch.empty(x.shape, dtype=torch.int64, device=x.device)
    counts = torch.zeros(x.shape[1], dtype=torch.int64, device=x.device)
    for c in range(x.shape[1]):
        values, inverse = torch.unique(x[:, c], return_inverse=True)
        codes[:, c] = inverse
        counts[c] = values.numel()
    return codes, counts
