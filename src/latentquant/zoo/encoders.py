"""Convolutional image encoders: the paper's 12-layer network and smaller variants, selected by name and
optionally resized (:func:`encoder_spec`: the ``encoder.widths``, ``encoder.dense_widths`` and ``encoder.depth``
settings).

An encoder maps images ``(B, C, H, W)`` in [0, 1] to features ``(B, out_features)``: conv blocks
(convolution, instance norm, LeakyReLU 0.2), flatten, dense blocks (linear, ReLU), then a linear head.

As the authors' network (kylehkhsu/latent_quantization ``Conv2DBlock``): the convolutions have no bias (the
instance norm that follows would cancel it), the instance norms have a per-channel scale and shift and eps 1e-6.
Convolutions and linear layers keep PyTorch's default initialization, U(±1/sqrt(fan_in)) for weights and
biases, which is the authors' (equinox) initialization.

Resizing a named network (:func:`encoder_spec`, shared with the decoders through :func:`resize_blocks`):
``widths`` gives each conv block's channels and so the number of blocks; ``depth`` alone gives the number of
blocks and keeps the named widths; both together must agree. A network of d blocks is the named network's first
d blocks: block i has the named kernel size and stride of block ``i mod n`` (n: the named number of blocks), so
past the named end the kernel/stride pattern repeats and the last named width is kept. E.g. ``tiny`` (4 blocks,
kernel 4, stride 2) at depth 3 has total stride 8; ``paper`` (pattern kernel 3, 3, 4 / stride 1, 1, 2) at depth
6 has widths 32, 32, 32, 64, 64, 64 and total stride 4. The image size must be divisible by the total stride.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

NORM_EPS = 1e-6
"""Epsilon of every instance norm in the zoo's networks (the authors' ``GroupNorm(eps=1e-6)``; PyTorch's default
is 1e-5)."""


@dataclass(frozen=True)
class EncoderSpec:
    """Shape of a conv encoder: one entry per conv block, then the widths of the dense blocks."""

    widths: tuple[int, ...]
    kernel_sizes: tuple[int, ...]
    strides: tuple[int, ...]
    dense_widths: tuple[int, ...]

    @property
    def total_stride(self) -> int:
        """The product of the strides: image height and width must be divisible by it."""
        return math.prod(self.strides)


ENCODERS: dict[str, EncoderSpec] = {
    # The paper's encoder (Hsu et al. 2023, appendix): 12 conv blocks, channels 32 -> 256, dense 256, 256.
    "paper": EncoderSpec(
        widths=(32, 32, 32, 64, 64, 64, 128, 128, 128, 256, 256, 256),
        kernel_sizes=(3, 3, 4) * 4,
        strides=(1, 1, 2) * 4,
        dense_widths=(256, 256),
    ),
    # The authors' "small" encoder: four stride-2 blocks, 64 -> 512 channels, dense 512.
    "small": EncoderSpec(
        widths=(64, 128, 256, 512), kernel_sizes=(4,) * 4, strides=(2,) * 4, dense_widths=(512,)
    ),
    # Sized for a 2-core CPU: trains a useful shapes3d model in minutes.
    "cpu": EncoderSpec(widths=(32, 32, 64, 64), kernel_sizes=(4,) * 4, strides=(2,) * 4, dense_widths=(256,)),
    # For tests: a few thousand parameters.
    "tiny": EncoderSpec(widths=(8, 8, 8, 8), kernel_sizes=(4,) * 4, strides=(2,) * 4, dense_widths=(32,)),
}


def _padding(kernel_size: int, stride: int) -> int:
    """Padding that maps H to H / stride for kernel 3 / stride 1 and kernel 4 / stride 2."""
    return 1 if (kernel_size, stride) in ((3, 1), (4, 2)) else (kernel_size - stride) // 2


class ConvEncoder(nn.Module):
    """Conv blocks (conv without bias, instance norm with eps 1e-6, LeakyReLU 0.2) -> dense blocks (linear, ReLU)
    -> linear head.

    Args:
        spec: the block layout (see :data:`ENCODERS`).
        image_shape: ``(C, H, W)`` of the input images; H and W divisible by the product of the strides.
        out_features: size of the output.

    Shapes:
        ``forward(x)``: x ``(B, C, H, W)`` -> ``(B, out_features)``.
    """

    def __init__(self, spec: EncoderSpec, image_shape: tuple[int, int, int], out_features: int) -> None:
        super().__init__()
        if not (len(spec.widths) == len(spec.kernel_sizes) == len(spec.strides)):
            raise ValueError(f"encoder spec has mismatched block lists: {spec}")
        channels, height, width = image_shape
        reduction = spec.total_stride
        if height % reduction or width % reduction:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the encoder's total stride {reduction}"
            )
        layers: list[nn.Module] = []
        in_channels = channels
        for width_out, kernel, stride in zip(spec.widths, spec.kernel_sizes, spec.strides):
            layers += [
                nn.Conv2d(in_channels, width_out, kernel, stride, _padding(kernel, stride), bias=False),
                nn.InstanceNorm2d(width_out, affine=True, eps=NORM_EPS),
                nn.LeakyReLU(0.2),
            ]
            in_channels = width_out
        self.conv = nn.Sequential(*layers)
        self.transition_shape = (in_channels, height // reduction, width // reduction)
        dense: list[nn.Module] = [nn.Flatten()]
        in_features = in_channels * (height // reduction) * (width // reduction)
        for width_out in spec.dense_widths:
            dense += [nn.Linear(in_features, width_out), nn.ReLU()]
            in_features = width_out
        dense.append(nn.Linear(in_features, out_features))
        self.dense = nn.Sequential(*dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.conv(x))


def check_sizes(setting: str, values: Sequence[int], allow_empty: bool) -> tuple[int, ...]:
    """``values`` as a tuple of integers >= 1 (non-empty unless ``allow_empty``); errors name ``setting``."""
    values = tuple(values)
    if not values and not allow_empty:
        raise ValueError(
            f"{setting} must not be empty (at least one conv block); null keeps the named network's"
        )
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise ValueError(f"{setting} must hold integers >= 1, got {list(values)}")
    return values


def resize_blocks(
    group: str,
    widths: Sequence[int],
    kernel_sizes: Sequence[int],
    strides: Sequence[int],
    new_widths: Sequence[int] | None = None,
    depth: int | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The conv blocks ``(widths, kernel_sizes, strides)`` of a named layout resized by the ``<group>.widths`` and
    ``<group>.depth`` settings (``group``: ``"encoder"`` or ``"decoder"``, for the messages).

    The number of blocks is ``len(new_widths)`` if given, else ``depth`` if given, else the named layout's n.
    Block i takes the named layout's kernel size and stride of block ``i mod n``: the first blocks of the named
    network, its kernel/stride pattern repeated past its end. Its width is ``new_widths[i]`` if given, else the
    named width of block ``min(i, n - 1)`` (past the end, the last width is kept).

    Raises:
        ValueError: an empty ``new_widths``, a width or ``depth`` below 1, or ``depth != len(new_widths)``.
    """
    n = len(widths)
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ValueError(f"{group}.depth must be an integer >= 1 (conv blocks), got {depth!r}")
    if new_widths is not None:
        new_widths = check_sizes(f"{group}.widths", new_widths, allow_empty=False)
        if depth is not None and depth != len(new_widths):
            raise ValueError(
                f"{group}.depth={depth} but {group}.widths={list(new_widths)} has {len(new_widths)} blocks; "
                f"give one of them, or both with depth = len(widths)"
            )
        blocks = len(new_widths)
    else:
        blocks = n if depth is None else depth
        new_widths = tuple(widths[min(i, n - 1)] for i in range(blocks))
    return (
        tuple(new_widths),
        tuple(kernel_sizes[i % n] for i in range(blocks)),
        tuple(strides[i % n] for i in range(blocks)),
    )


def encoder_spec(
    name: str,
    widths: Sequence[int] | None = None,
    dense_widths: Sequence[int] | None = None,
    depth: int | None = None,
) -> EncoderSpec:
    """The layout of encoder ``name`` (one of :data:`ENCODERS`), resized; ``None`` keeps the named network's.

    Args:
        widths: channels of each conv block (``encoder.widths``); their number is the number of blocks.
        dense_widths: widths of the dense blocks (``encoder.dense_widths``); empty: none, the head reads the
            flattened conv features.
        depth: number of conv blocks (``encoder.depth``); with ``widths``, it must equal ``len(widths)``.

    How blocks are added or removed: :func:`resize_blocks`. Without any of them the named spec is returned as
    it is (the same network and parameters as before these settings existed).

    Raises:
        ValueError: an unknown name, or invalid sizes (the message names the setting).
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
    spec = ENCODERS[name]
    if widths is None and dense_widths is None and depth is None:
        return spec
    new_widths, kernel_sizes, strides = resize_blocks(
        "encoder", spec.widths, spec.kernel_sizes, spec.strides, widths, depth
    )
    dense = spec.dense_widths
    if dense_widths is not None:
        dense = check_sizes("encoder.dense_widths", dense_widths, allow_empty=True)
    return replace(spec, widths=new_widths, kernel_sizes=kernel_sizes, strides=strides, dense_widths=dense)


def build_encoder(
    name: str | EncoderSpec, image_shape: tuple[int, int, int], out_features: int
) -> ConvEncoder:
    """Build the encoder called ``name`` (one of :data:`ENCODERS`), or of layout ``name`` (an
    :class:`EncoderSpec`, e.g. from :func:`encoder_spec`)."""
    spec = name if isinstance(name, EncoderSpec) else encoder_spec(name)
    return ConvEncoder(spec, image_shape, out_features)
