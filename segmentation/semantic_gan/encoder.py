"""A small pSp-style feature-pyramid encoder from an image to W+ (official ``FPNEncoder``).

Bottom-up: a stride-2 7x7 stem and 3x3 max-pool (1/4 resolution), then four stages of
residual blocks (stride 1, 2, 2, 2). Top-down: lateral 1x1 convs and bilinear upsampling give
three pyramid levels p4 (1/16), p3 (1/8) and p2 (1/4) with ``feature_dim`` channels, each
smoothed by a 3x3 conv. W+ entries 0-2 (coarse styles) are read from p4, 3-6 (medium) from
p3, the rest (fine) from p2; each by its own head of stride-2 3x3 convs with leaky ReLU down
to 1x1 and an equalised linear layer. The official encoder is a ResNet-50 (bottleneck blocks
3, 4, 6, 3, 512-channel pyramid); here basic blocks and widths come from the config, for CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segmentation.semantic_gan.layers import EqualLinear

COARSE, MEDIUM = 3, 4
"""W+ entries read from p4 and from p3 (official split for 256 px: 3 / 4 / 7)."""


@dataclass
class EncoderConfig:
    """Shape of the W+ encoder."""

    width: int = 16
    """Channels of the first residual stage; doubled at each later stage (official 64)."""
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    """Residual blocks per stage (official ResNet-50: 3, 4, 6, 3)."""
    feature_dim: int = 64
    """Channels of the pyramid levels (official 512)."""

    def validate(self) -> None:
        if len(self.blocks) != 4 or min(self.blocks) < 1:
            raise ValueError(f"EncoderConfig.blocks needs four counts >= 1, got {self.blocks}")
        if self.width < 1 or self.feature_dim < 1:
            raise ValueError("EncoderConfig.width and feature_dim must be >= 1")


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a (projected) identity shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class StyleHead(nn.Module):
    """Stride-2 3x3 convs + leaky ReLU from a ``side`` x ``side`` map to 1x1, then linear."""

    def __init__(self, c_in: int, side: int, latent_dim: int):
        super().__init__()
        n = max(int(math.log2(side)), 0)
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [nn.Conv2d(c_in if i == 0 else latent_dim, latent_dim, 3, 2, 1)]
            layers += [nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.c_last = latent_dim if n else c_in
        self.linear = EqualLinear(self.c_last, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))


class FPNEncoder(nn.Module):
    """Image ``[B, C, S, S]`` in [-1, 1] -> W+ ``[B, n_latent, latent_dim]``."""

    def __init__(self, cfg: EncoderConfig, size: int, in_channels: int, n_latent: int, dim):
        super().__init__()
        cfg.validate()
        if size < 32 or n_latent <= COARSE + MEDIUM:
            raise ValueError(f"FPNEncoder needs size >= 32 (n_latent > 7), got {size}")
        w = cfg.width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU()
        )
        widths = [w, 2 * w, 4 * w, 8 * w]
        stages, c_in = [], w
        for i, (c, n) in enumerate(zip(widths, cfg.blocks, strict=True)):
            blocks = [BasicBlock(c_in, c, 1 if i == 0 else 2)]
            blocks += [BasicBlock(c, c, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c
        self.stages = nn.ModuleList(stages)
        f = cfg.feature_dim
        self.top = nn.Conv2d(widths[3], f, 1)
        self.lateral = nn.ModuleList(nn.Conv2d(c, f, 1) for c in widths[2::-1])
        self.smooth = nn.ModuleList(nn.Conv2d(f, f, 3, 1, 1) for _ in range(3))
        sides = (size // 16, size // 8, size // 4)  # p4, p3, p2
        counts = (COARSE, MEDIUM, n_latent - COARSE - MEDIUM)
        self.heads = nn.ModuleList(
            StyleHead(f, side, dim) for side, n in zip(sides, counts, strict=True) for _ in range(n)
        )
        self.level_of_head = [lvl for lvl, n in enumerate(counts) for _ in range(n)]
        self.n_latent = n_latent

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[p4, p3, p2]: the three smoothed pyramid levels (coarse to fine)."""
        c = F.max_pool2d(self.stem(x), 3, 2, 1)
        feats = []
        for stage in self.stages:
            c = stage(c)
            feats.append(c)
        p = self.top(feats[3])
        levels = []
        for lateral, skip in zip(self.lateral, feats[2::-1], strict=True):
            p = F.interpolate(p, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            p = p + lateral(skip)
            levels.append(p)
        return [smooth(p) for smooth, p in zip(self.smooth, levels, strict=True)]

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        levels = self.pyramid(x_BCHW)
        styles = [head(levels[lvl]) for head, lvl in zip(self.heads, self.level_of_head)]
        return torch.stack(styles, dim=1)
