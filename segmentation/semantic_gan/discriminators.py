"""SemanticGAN's two discriminators.

- :class:`ImageDiscriminator` (``D_img``): the StyleGAN2 residual discriminator on images:
  1x1 fromRGB, residual blocks halving the resolution down to 4x4, minibatch standard
  deviation, a 3x3 conv and two equalised linear layers to one logit per image. It sees all
  (unlabelled) real images.
- :class:`MultiscalePatchDiscriminator` (``D_seg``): pix2pixHD's multi-scale PatchGAN on
  ``cat(image, mask)``. ``num_d`` copies of an ``n_layers`` PatchGAN see the pair at full,
  1/2, 1/4 ... resolution (3x3 average pooling, stride 2, padding excluded from the mean);
  every layer's output is returned, the last being the patch logits, so the generator can be
  trained with feature matching. Convolutions after the first are spectrally normalised and
  followed by instance norm ("spectralinstance", the official setting). It sees labelled
  pairs only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from segmentation.semantic_gan.layers import ConvLayer, EqualLinear, ResBlock


def _stddev_group(batch: int, group: int) -> int:
    """The largest divisor of ``batch`` that is <= ``group`` (StyleGAN2 needs divisibility)."""
    return max(g for g in range(1, min(batch, group) + 1) if batch % g == 0)


class ImageDiscriminator(nn.Module):
    """StyleGAN2 discriminator: one realness logit ``[B, 1]`` per image."""

    def __init__(self, size: int, in_channels: int, channel_base: int, channel_max: int):
        super().__init__()

        def ch(r: int) -> int:
            return min(channel_max, channel_base // r)

        layers: list[nn.Module] = [ConvLayer(in_channels, ch(size), 1)]
        c_in = ch(size)
        for i in range(int(math.log2(size)), 2, -1):
            layers.append(ResBlock(c_in, ch(2 ** (i - 1))))
            c_in = ch(2 ** (i - 1))
        self.convs = nn.Sequential(*layers)
        self.stddev_group = 4
        self.final_conv = ConvLayer(c_in + 1, ch(4), 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch(4) * 16, ch(4), act=True), EqualLinear(ch(4), 1)
        )

    def minibatch_stddev(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """Append one channel: the mean over features of the std across a sample group."""
        B, C, H, W = x_BCHW.shape
        g = _stddev_group(B, self.stddev_group)
        y = x_BCHW.view(g, -1, 1, C, H, W)
        y = torch.sqrt(y.var(0, unbiased=False) + 1e-8).mean(dim=(2, 3, 4), keepdim=True)
        y = y.squeeze(2).repeat(g, 1, H, W)
        return torch.cat([x_BCHW, y], dim=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        out = self.final_conv(self.minibatch_stddev(self.convs(x_BCHW)))
        return self.final_linear(out.flatten(1))


class PatchDiscriminator(nn.Module):
    """pix2pixHD ``NLayerDiscriminator`` (4x4 kernels, pad 2) returning every layer's output."""

    def __init__(self, in_channels: int, ndf: int, n_layers: int):
        super().__init__()
        kw, pad = 4, 2

        def normed(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            conv = spectral_norm(nn.Conv2d(c_in, c_out, kw, stride, pad, bias=False))
            return nn.Sequential(conv, nn.InstanceNorm2d(c_out), nn.LeakyReLU(0.2))

        blocks = [nn.Sequential(nn.Conv2d(in_channels, ndf, kw, 2, pad), nn.LeakyReLU(0.2))]
        nf = ndf
        for _ in range(1, n_layers):
            blocks.append(normed(nf, min(nf * 2, 512), 2))
            nf = min(nf * 2, 512)
        blocks.append(normed(nf, min(nf * 2, 512), 1))
        nf = min(nf * 2, 512)
        blocks.append(nn.Sequential(nn.Conv2d(nf, 1, kw, 1, pad)))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x_BCHW: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for block in self.blocks:
            x_BCHW = block(x_BCHW)
            feats.append(x_BCHW)
        return feats


class MultiscalePatchDiscriminator(nn.Module):
    """``num_d`` PatchGANs on an image pyramid; ``forward`` gives ``[scale][layer]`` outputs,
    the last layer of each scale being its patch logits."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, num_d: int = 3):
        super().__init__()
        self.discs = nn.ModuleList(
            PatchDiscriminator(in_channels, ndf, n_layers) for _ in range(num_d)
        )

    def forward(self, x_BCHW: torch.Tensor) -> list[list[torch.Tensor]]:
        out = []
        for i, disc in enumerate(self.discs):
            if i:
                x_BCHW = F.avg_pool2d(x_BCHW, 3, stride=2, padding=1, count_include_pad=False)
            out.append(disc(x_BCHW))
        return out
