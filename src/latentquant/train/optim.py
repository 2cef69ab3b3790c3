"""The paper's optimizer set-up: AdamW with decoupled weight decay and element-wise gradient clipping on every
parameter except biases and codebooks, which get plain Adam (neither decay nor clipping).

As the authors' ``AE.construct_optimizer`` (kylehkhsu/latent_quantization): an optax ``multi_transform`` whose
"regularized" label (``clip`` then ``adamw``) covers every leaf of the model except the leaves named ``bias``
and the latent layer's (the codebooks). Normalization scales, the decoder's learned constant input and every
weight are therefore decayed and clipped; a normalization layer's shift is a ``bias`` and is exempt.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _codebook_parameter_ids(model: nn.Module) -> set[int]:
    ids: set[int] = set()
    for module in model.modules():
        codebook_parameters = getattr(module, "codebook_parameters", None)
        if callable(codebook_parameters):
            ids.update(id(p) for p in codebook_parameters())
    return ids


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups as in the paper.

    Args:
        model: any module; submodules with a ``codebook_parameters()`` method (the quantizer layers) name
            their codebooks.
        weight_decay: decoupled weight decay of the decayed group.

    Returns:
        Two groups (empty ones dropped): ``{"name": "decay", "params": [...], "weight_decay": weight_decay,
        "clip": True}`` with every trainable parameter that is neither a bias (a parameter named ``bias``,
        normalization shifts included) nor a codebook parameter — weights, normalization scales, learned
        constants — and ``{"name": "no_decay", "params": [...], "weight_decay": 0.0, "clip": False}`` with the
        biases and codebooks. Optimizers keep the extra keys; :func:`clip_gradients` reads ``"clip"``.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    codebooks = _codebook_parameter_ids(model)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in codebooks or name.rsplit(".", 1)[-1] == "bias":
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": float(weight_decay), "clip": True},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "clip": False},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (betas 0.9/0.999, eps 1e-8, as optax's adamw the paper used)."""
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999), eps=1e-8)


def clip_gradients(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Clamp every gradient of the groups marked ``"clip": True`` to ``[-value, value]`` element-wise."""
    if value <= 0:
        return
    grads = [
        p.grad
        for g in optimizer.param_groups
        if g.get("clip", False)
        for p in g["params"]
        if p.grad is not None
    ]
    if grads:
        torch._foreach_clamp_min_(grads, -value)
        torch._foreach_clamp_max_(grads, value)
