"""Convolutional image encoders: the paper's 12-layer network and smaller variants, selected by name.

An encoder maps images ``(B, C, H, W)`` in [0, 1] to features ``(B, out_features)``: conv blocks
(convolution, instance norm, LeakyReLU 0.2), flatten, dense blocks (linear, ReLU), then a linear head.

As the authors' network (kylehkhsu/latent_quantization ``Conv2DBlock``): the convolutions have no bias (the
instance norm that follows would cancel it), the instance norms have a per-channel scale and shift and eps 1e-6.
Convolutions and linear layers keep PyTorch's default initialization, U(±1/sqrt(fan_in)) for weights and
biases, which is the authors' (equinox) initialization.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        reduction = 1
        for stride in spec.strides:
            reduction *= stride
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


def build_encoder(name: str, image_shape: tuple[int, int, int], out_features: int) -> ConvEncoder:
    """Build the encoder called ``name`` (one of :data:`ENCODERS`)."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
    return ConvEncoder(ENCODERS[name], image_shape, out_features)
