"""Style-modulated image decoders: the paper's network and smaller variants, selected by name and optionally
resized (:func:`decoder_spec`: the ``decoder.widths``, ``decoder.dense_widths``, ``decoder.depth`` and
``decoder.input_channels`` settings).

The latent ``z`` goes through dense blocks (linear, ReLU) to a style vector ``w``. A learned constant
``(input_channels, h, w)`` (initialized to 0.1) is upsampled by transposed-conv blocks; each block applies
LeakyReLU 0.2, then instance norm without affine parameters, then a per-channel scale and bias
``ReLU(Linear(w))``. A 3x3 convolution gives the output logits.

As the authors' network (kylehkhsu/latent_quantization ``StyleImageDecoder``): the transposed convolutions and
the output convolution have no bias, the instance norms use eps 1e-6, and the transposed convolutions are
initialized U(±1/sqrt(in_channels · k²)) as equinox (and flax) do. PyTorch's ``ConvTranspose2d`` default computes
its fan-in from the output channels, a bound sqrt(2) larger in the blocks that halve the channels.

Resizing follows the encoders' rule (:func:`latentquant.zoo.encoders.resize_blocks`): a decoder of d blocks is
the named decoder's first d blocks, its kernel/stride pattern repeated (and its last width kept) past its end;
the learned constant's resolution is the image size divided by the total stride. E.g. ``tiny`` at depth 3
starts from an 8x8 constant for 64x64 images; ``paper`` at depth 6 has widths 256, 256, 256, 128, 128, 128.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from latentquant.zoo.encoders import NORM_EPS, check_sizes, resize_blocks


@dataclass(frozen=True)
class DecoderSpec:
    """Shape of a style decoder: mapping widths, constant-input channels, then one entry per block."""

    dense_widths: tuple[int, ...]
    input_channels: int
    widths: tuple[int, ...]
    kernel_sizes: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def total_stride(self) -> int:
        """The product of the strides (the upsampling): image height and width must be divisible by it."""
        return math.prod(self.strides)


DECODERS: dict[str, DecoderSpec] = {
    # The paper's decoder: mapping 256, 256; constant 256x4x4; 12 blocks 256 -> 32 channels.
    "paper": DecoderSpec(
        dense_widths=(256, 256),
        input_channels=256,
        widths=(256, 256, 256, 128, 128, 128, 64, 64, 64, 32, 32, 32),
        kernel_sizes=(3, 3, 4) * 4,
        strides=(1, 1, 2) * 4,
    ),
    # The authors' "small" decoder: four stride-2 blocks 512 -> 64 channels.
    "small": DecoderSpec(
        dense_widths=(512,),
        input_channels=512,
        widths=(512, 256, 128, 64),
        kernel_sizes=(4,) * 4,
        strides=(2,) * 4,
    ),
    # Sized for a 2-core CPU.
    "cpu": DecoderSpec(
        dense_widths=(256,),
        input_channels=64,
        widths=(64, 64, 32, 16),
        kernel_sizes=(4,) * 4,
        strides=(2,) * 4,
    ),
    # For tests.
    "tiny": DecoderSpec(
        dense_widths=(32,), input_channels=8, widths=(8, 8, 8, 8), kernel_sizes=(4,) * 4, strides=(2,) * 4
    ),
}


def init_transposed_conv(conv: nn.ConvTranspose2d) -> None:
    """Re-initialize ``conv``'s weight (and bias, if any) U(±1/sqrt(in_channels · kh · kw)), the authors' bound."""
    kernel_h, kernel_w = conv.kernel_size
    bound = 1.0 / math.sqrt(conv.in_channels // conv.groups * kernel_h * kernel_w)
    with torch.no_grad():
        conv.weight.uniform_(-bound, bound)
        if conv.bias is not None:
            conv.bias.uniform_(-bound, bound)


class StyleBlock(nn.Module):
    """Transposed conv (no bias) -> LeakyReLU 0.2 -> instance norm (no affine, eps 1e-6) -> ``x * scale + bias``,
    (scale, bias) = ReLU(Linear(w)).

    Shapes:
        ``forward(x, w)``: x ``(B, C_in, H, W)``, w ``(B, style_features)`` -> ``(B, C_out, H', W')``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, style_features: int
    ):
        super().__init__()
        padding = 1 if (kernel_size, stride) in ((3, 1), (4, 2)) else (kernel_size - stride) // 2
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        init_transposed_conv(self.conv)
        self.activation = nn.LeakyReLU(0.2)
        self.norm = nn.InstanceNorm2d(out_channels, affine=False, eps=NORM_EPS)
        self.style = nn.Linear(style_features, 2 * out_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        scale, bias = torch.relu(self.style(w)).chunk(2, dim=1)
        x = self.norm(self.activation(self.conv(x)))
        return x * scale[:, :, None, None] + bias[:, :, None, None]


class StyleDecoder(nn.Module):
    """The style-modulated decoder (see the module docstring).

    Args:
        spec: the block layout (see :data:`DECODERS`).
        in_features: size of the latent input.
        image_shape: ``(C, H, W)`` of the images to produce; H and W divisible by the product of the strides.

    Shapes:
        ``forward(z)``: z ``(B, in_features)`` -> logits ``(B, C, H, W)``.
    """

    def __init__(self, spec: DecoderSpec, in_features: int, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        if not (len(spec.widths) == len(spec.kernel_sizes) == len(spec.strides)):
            raise ValueError(f"decoder spec has mismatched block lists: {spec}")
        channels, height, width = image_shape
        upsampling = spec.total_stride
        if height % upsampling or width % upsampling:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the decoder's upsampling {upsampling}"
            )
        mapping: list[nn.Module] = []
        features = in_features
        for width_out in spec.dense_widths:
            mapping += [nn.Linear(features, width_out), nn.ReLU()]
            features = width_out
        self.mapping = nn.Sequential(*mapping)
        self.input_map = nn.Parameter(
            torch.full((spec.input_channels, height // upsampling, width // upsampling), 0.1)
        )
        blocks = []
        in_channels = spec.input_channels
        for width_out, kernel, stride in zip(spec.widths, spec.kernel_sizes, spec.strides):
            blocks.append(StyleBlock(in_channels, width_out, kernel, stride, features))
            in_channels = width_out
        self.blocks = nn.ModuleList(blocks)
        self.output = nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.mapping(z)
        x = self.input_map.unsqueeze(0).expand(z.shape[0], -1, -1, -1)
        for block in self.blocks:
            x = block(x, w)
        return self.output(x)


def decoder_spec(
    name: str,
    widths: Sequence[int] | None = None,
    dense_widths: Sequence[int] | None = None,
    depth: int | None = None,
    input_channels: int | None = None,
) -> DecoderSpec:
    """The layout of decoder ``name`` (one of :data:`DECODERS`), resized; ``None`` keeps the named network's.

    Args:
        widths: output channels of each transposed-conv block (``decoder.widths``); their number is the
            number of blocks.
        dense_widths: widths of the mapping network's dense blocks (``decoder.dense_widths``); empty: none,
            the latent itself is the style vector.
        depth: number of blocks (``decoder.depth``); with ``widths``, it must equal ``len(widths)``.
        input_channels: channels of the learned constant input (``decoder.input_channels``).

    Raises:
        ValueError: an unknown name, or invalid sizes (the message names the setting).
    """
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; choose one of {sorted(DECODERS)}")
    spec = DECODERS[name]
    if widths is None and dense_widths is None and depth is None and input_channels is None:
        return spec
    new_widths, kernel_sizes, strides = resize_blocks(
        "decoder", spec.widths, spec.kernel_sizes, spec.strides, widths, depth
    )
    dense = spec.dense_widths
    if dense_widths is not None:
        dense = check_sizes("decoder.dense_widths", dense_widths, allow_empty=True)
    channels = spec.input_channels
    if input_channels is not None:
        if isinstance(input_channels, bool) or not isinstance(input_channels, int) or input_channels < 1:
            raise ValueError(f"decoder.input_channels must be an integer >= 1, got {input_channels!r}")
        channels = input_channels
    return replace(
        spec,
        dense_widths=dense,
        input_channels=channels,
        widths=new_widths,
        kernel_sizes=kernel_sizes,
        strides=strides,
    )


def build_decoder(
    name: str | DecoderSpec, in_features: int, image_shape: tuple[int, int, int]
) -> StyleDecoder:
    """Build the decoder called ``name`` (one of :data:`DECODERS`), or of layout ``name`` (a
    :class:`DecoderSpec`, e.g. from :func:`decoder_spec`)."""
    spec = name if isinstance(name, DecoderSpec) else decoder_spec(name)
    return StyleDecoder(spec, in_features, image_shape)
