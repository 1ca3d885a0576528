"""StyleGAN2 building blocks without custom CUDA ops: equalised layers, FIR resampling,
modulated convolution, noise injection.

Everything follows the formulas of Karras et al. (StyleGAN2, CVPR 2020) as used by the
rosinality port that SemanticGAN builds on:

- **Equalised learning rate**: weights are stored ~N(0, 1/lr_mul) and multiplied at run time
  by ``lr_mul / sqrt(fan_in)``, so Adam's per-parameter steps are equal across layers; the
  mapping network uses ``lr_mul = 0.01``.
- **Fused leaky ReLU**: ``leaky_relu(x + b, 0.2) * sqrt(2)`` (the gain keeps unit variance).
- **FIR resampling** (``upfirdn``): zero-insertion upsampling, padding and a separable
  [1, 3, 3, 1] low-pass filter, written with ``F.pad`` and a depthwise ``conv2d``.
- **Modulated convolution**: the weight is scaled per input channel by an affine map of the
  style, ``w'_{oik} = s_i w_{oik}``, and (unless disabled, as in ToRGB/ToSEG) demodulated,
  ``w''_{oik} = w'_{oik} / sqrt(sum_{ik} w'^2_{oik} + 1e-8)``, so every output channel has
  unit expected variance for unit-variance inputs. One grouped convolution does the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BLUR_KERNEL = (1, 3, 3, 1)
"""The FIR low-pass filter of StyleGAN2 (outer product with itself, normalised)."""


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Normalised 2-D FIR kernel from 1-D taps (outer product), summing to 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(
    x_BCHW: torch.Tensor, kernel_KK: torch.Tensor, up: int = 1, down: int = 1, pad=(0, 0)
) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative = crop), FIR-filter, then subsample.

    ``pad = (p0, p1)`` pads p0 before and p1 after, on both axes, as in StyleGAN2's op.
    """
    B, C, H, W = x_BCHW.shape
    x = x_BCHW
    if up > 1:
        z = x.new_zeros(B, C, H * up, W * up)
        z[:, :, ::up, ::up] = x
        x = z
    p0, p1 = pad
    x = F.pad(x, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    h, w = x.shape[-2:]
    x = x[:, :, max(-p0, 0) : h - max(-p1, 0), max(-p0, 0) : w - max(-p1, 0)]
    k = torch.flip(kernel_KK, (0, 1)).to(x)
    x = F.conv2d(x, k.expand(C, 1, *k.shape).contiguous(), groups=C)  # depthwise: ~100x
    return x[:, :, ::down, ::down] if down > 1 else x  # faster than [B*C, 1, H, W] on CPU


class Blur(nn.Module):
    """FIR low-pass with padding; ``gain`` compensates zero insertion after upsampling."""

    def __init__(self, pad: tuple[int, int], gain: float = 1.0, taps=BLUR_KERNEL):
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * gain, persistent=False)
        self.pad = pad

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x_BCHW, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling (zero insertion + blur with gain 4): the skip path of ToRGB/ToSEG."""

    def __init__(self, taps=BLUR_KERNEL, factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(taps) * factor**2, persistent=False)
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x_BCHW, self.kernel, up=self.factor, pad=self.pad)


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None, slope: float = 0.2):
    """``leaky_relu(x + bias) * sqrt(2)``, bias broadcast over the channel axis (dim 1)."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.dim() - 2)))
    return F.leaky_relu(x, slope) * math.sqrt(2)


class FusedLeakyReLU(nn.Module):
    """A learned per-channel bias followed by the scaled leaky ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class PixelNorm(nn.Module):
    """Normalise each latent vector to unit root-mean-square (the mapping network's input)."""

    def forward(self, z_BD: torch.Tensor) -> torch.Tensor:
        return z_BD * torch.rsqrt(z_BD.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate and an optional fused leaky ReLU."""

    def __init__(
        self, d_in: int, d_out: int, bias_init: float = 0.0, lr_mul: float = 1.0, act=False
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((d_out,), float(bias_init)))
        self.scale, self.lr_mul, self.act = lr_mul / math.sqrt(d_in), lr_mul, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    """2-D convolution with equalised learning rate."""

    def __init__(self, c_in, c_out, k, stride=1, padding=0, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.scale, self.stride, self.padding = 1 / math.sqrt(c_in * k * k), stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding)


class ModulatedConv2d(nn.Module):
    """Style-modulated (and optionally demodulated) convolution, optionally 2x upsampling."""

    def __init__(self, c_in, c_out, k, style_dim, demodulate=True, upsample=False):
        super().__init__()
        self.c_in, self.c_out, self.k = c_in, c_out, k
        self.demodulate, self.upsample = demodulate, upsample
        self.weight = nn.Parameter(torch.randn(1, c_out, c_in, k, k))
        self.scale = 1 / math.sqrt(c_in * k * k)
        self.modulation = EqualLinear(style_dim, c_in, bias_init=1.0)
        if upsample:  # transposed conv (2x) then blur; pads from StyleGAN2
            p = (len(BLUR_KERNEL) - 2) - (k - 1)
            self.blur = Blur(((p + 1) // 2 + 1, p // 2 + 1), gain=4.0)

    def modulated_weight(self, style_BD: torch.Tensor) -> torch.Tensor:
        """Per-sample weights ``[B, out, in, k, k]`` after modulation and demodulation."""
        s = self.modulation(style_BD).view(-1, 1, self.c_in, 1, 1)
        w = self.scale * self.weight * s
        if self.demodulate:
            w = w * torch.rsqrt(w.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        return w

    def forward(self, x_BCHW: torch.Tensor, style_BD: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x_BCHW.shape
        w = self.modulated_weight(style_BD)
        x = x_BCHW.reshape(1, B * self.c_in, H, W)
        if self.upsample:
            w = w.transpose(1, 2).reshape(B * self.c_in, self.c_out, self.k, self.k)
            out = F.conv_transpose2d(x, w, stride=2, groups=B)
            return self.blur(out.view(B, self.c_out, out.shape[-2], out.shape[-1]))
        w = w.reshape(B * self.c_out, self.c_in, self.k, self.k)
        out = F.conv2d(x, w, padding=self.k // 2, groups=B)
        return out.view(B, self.c_out, H, W)


class NoiseInjection(nn.Module):
    """Adds per-pixel Gaussian noise scaled by a learned scalar (initialised at 0)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x_BCHW: torch.Tensor, noise_B1HW: torch.Tensor | None = None):
        if noise_B1HW is None:
            B, _, H, W = x_BCHW.shape
            noise_B1HW = x_BCHW.new_empty(B, 1, H, W).normal_()
        return x_BCHW + self.weight * noise_B1HW


class StyledConv(nn.Module):
    """Modulated 3x3 conv (optionally upsampling) + noise + biased scaled leaky ReLU."""

    def __init__(self, c_in, c_out, style_dim, upsample=False):
        super().__init__()
        self.conv = ModulatedConv2d(c_in, c_out, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.act = FusedLeakyReLU(c_out)

    def forward(self, x, style, noise=None):
        return self.act(self.noise(self.conv(x, style), noise))


class ToOutput(nn.Module):
    """ToRGB / ToSEG: a 1x1 modulated conv WITHOUT demodulation plus bias, summed with the
    2x-upsampled output of the previous resolution (the skip architecture)."""

    def __init__(self, c_in: int, c_out: int, style_dim: int, upsample: bool = True):
        super().__init__()
        self.conv = ModulatedConv2d(c_in, c_out, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, c_out, 1, 1))
        self.upsample = Upsample() if upsample else None

    def forward(self, x, style, skip=None):
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConvLayer(nn.Sequential):
    """Discriminator conv: optional blur + stride-2 downsampling, equalised conv, activation."""

    def __init__(self, c_in, c_out, k, downsample=False, bias=True, activate=True):
        layers: list[nn.Module] = []
        stride, padding = 1, k // 2
        if downsample:
            p = (len(BLUR_KERNEL) - 2) + (k - 1)
            layers.append(Blur(((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        layers.append(EqualConv2d(c_in, c_out, k, stride, padding, bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(c_out) if bias else _ScaledLeakyReLU())
        super().__init__(*layers)


class _ScaledLeakyReLU(nn.Module):
    def forward(self, x):
        return fused_leaky_relu(x, None)


class ResBlock(nn.Module):
    """Residual discriminator block that halves the resolution; output scaled by 1/sqrt(2)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = ConvLayer(c_in, c_in, 3)
        self.conv2 = ConvLayer(c_in, c_out, 3, downsample=True)
        self.skip = ConvLayer(c_in, c_out, 1, downsample=True, bias=False, activate=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)
