"""A configurable 2-D U-Net backbone and the deterministic U-Net segmenter built on it.

The backbone follows the U-Net that produced SSN's LIDC results (PHiSeg fork,
``likelihoods.py``): ``convs_per_level`` 3x3 convolutions with normalisation per resolution,
average-pool down, bilinear up, skip concatenation, then ``recomb_layers`` 1x1 "recombination"
convolutions. PHiSeg's LIDC preset is channels (32, 64, 128, 192, 192, 192, 192), three convs
per level, batch-norm, three 32-channel recomb layers; the defaults here are a CPU-sized
version. The backbone returns the full-resolution feature map (what the SSN head and the
deterministic head read) and the bottleneck (what ``segmentation.latents`` will record).

Read top to bottom: config -> building blocks -> backbone -> deterministic segmenter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    """Shape of the U-Net backbone."""

    in_channels: int = 1
    """Image channels (1 for chest X-rays and LIDC CT crops)."""
    channels: tuple[int, ...] = (16, 32, 64, 128)
    """Feature channels per resolution level, finest first; len(channels) levels."""
    convs_per_level: int = 2
    """3x3 convolutions per level on both the down and the up path (PHiSeg uses 3)."""
    norm: Literal["batch", "group", "none"] = "batch"
    """Normalisation after each 3x3 conv (PHiSeg uses batch-norm)."""
    recomb_layers: int = 2
    """1x1 convolutions after the last up level (PHiSeg uses 3)."""
    recomb_channels: int = 32
    """Width of the recombination convolutions = channels of the output feature map."""

    def validate(self) -> None:
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"UNetConfig.channels must be positive, got {self.channels}")
        if self.convs_per_level < 1:
            raise ValueError("UNetConfig.convs_per_level must be >= 1")
        if self.norm == "group" and any(c % 8 for c in self.channels):
            raise ValueError("UNetConfig.norm='group' needs channels divisible by 8")

    @property
    def downsample_factor(self) -> int:
        """Image sides must be divisible by this (one 2x pool per level below the first)."""
        return 2 ** (len(self.channels) - 1)


class UNetFeatures(NamedTuple):
    features: torch.Tensor
    """[B, F, H, W] full-resolution features after the recomb convs (F = recomb_channels)."""
    bottleneck: torch.Tensor
    """[B, C, H/k, W/k] coarsest features (C = channels[-1]): the latent to record."""


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(8, channels)
    return nn.Identity()


class ConvBlock(nn.Module):
    """``n`` x (3x3 conv -> norm -> ReLU), the unit of every level."""

    def __init__(self, c_in: int, c_out: int, n: int, norm: str):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [
                nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=norm == "none"),
                _norm(norm, c_out),
                nn.ReLU(inplace=True),
            ]
        self.net = nn.Sequential(*layers)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.net(x_BCHW)


class UNet(nn.Module):
    """Encoder-decoder with skip connections; returns :class:`UNetFeatures`."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        ch = cfg.channels
        self.down = nn.ModuleList()
        c_prev = cfg.in_channels
        for c in ch:
            self.down.append(ConvBlock(c_prev, c, cfg.convs_per_level, cfg.norm))
            c_prev = c
        # up level i merges the upsampled level i+1 with the skip from level i
        self.up = nn.ModuleList(
            ConvBlock(ch[i + 1] + ch[i], ch[i], cfg.convs_per_level, cfg.norm)
            for i in range(len(ch) - 1)
        )
        recomb: list[nn.Module] = []
        c_prev = ch[0]
        for _ in range(cfg.recomb_layers):
            recomb += [nn.Conv2d(c_prev, cfg.recomb_channels, 1), nn.ReLU(inplace=True)]
            c_prev = cfg.recomb_channels
        self.recomb = nn.Sequential(*recomb)
        self.out_channels = c_prev

    def forward(self, x_BCHW: torch.Tensor) -> UNetFeatures:
        H, W = x_BCHW.shape[-2:]
        k = self.cfg.downsample_factor
        if H % k or W % k:
            raise ValueError(f"U-Net input {H}x{W} must be divisible by {k} (levels - 1 pools)")
        skips = []
        h = x_BCHW
        for i, block in enumerate(self.down):
            if i > 0:
                h = F.avg_pool2d(h, 2)
            h = block(h)
            skips.append(h)
        bottleneck = h
        for i in reversed(range(len(self.up))):
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            h = self.up[i](torch.cat([h, skips[i]], dim=1))
        return UNetFeatures(self.recomb(h), bottleneck)


class UNetSegmenter(nn.Module):
    """The deterministic baseline: backbone -> 1x1 conv to class logits, trained with CE."""

    def __init__(self, cfg: UNetConfig, num_classes: int):
        super().__init__()
        self.backbone = UNet(cfg)
        self.num_classes = num_classes
        self.logits = nn.Conv2d(self.backbone.out_channels, num_classes, 1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes, H, W]`` (backbone features are already ReLU'd)."""
        return self.logits(self.backbone(x_BCHW).features)

    def loss(self, x_BCHW: torch.Tensor, target_BHW: torch.Tensor) -> torch.Tensor:
        """Pixel-mean cross-entropy (the usual deterministic objective)."""
        return F.cross_entropy(self(x_BCHW), target_BHW)
