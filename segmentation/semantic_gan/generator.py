"""The SemanticGAN generator: StyleGAN2 with a ToSEG branch beside ToRGB at every resolution.

``z -> mapping MLP -> w``; W+ holds one w per style input (``n_latent = 2 log2(size) - 2``).
Synthesis starts from a learned 4x4 constant; per resolution two modulated 3x3 convs (the
first upsamples) with noise inputs, then ToRGB and ToSEG, both 1x1 modulated convs without
demodulation whose outputs are summed with the upsampled outputs of the previous resolution.
So one latent gives an image and its mask from the same features (official
``GeneratorSeg``). The image is in [-1, 1] (tanh-free, as in StyleGAN2); the mask is raw
logits: ``seg_dim = 1`` for a binary task (read with a sigmoid), else one channel per class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from segmentation.semantic_gan.layers import EqualLinear, PixelNorm, StyledConv, ToOutput


@dataclass
class GeneratorConfig:
    """Shape of the generator (official: latent 512, 8 MLP layers, 512 channels up to 32 px)."""

    size: int = 64
    """Output side in px (a power of two >= 32)."""
    img_channels: int = 1
    """Image channels (1 for radiographs)."""
    seg_dim: int = 1
    """Mask channels: 1 for a binary task (sigmoid), else the number of classes (softmax)."""
    latent_dim: int = 64
    """Dimension of z, w and of each W+ entry (official 512)."""
    n_mlp: int = 4
    """Layers of the mapping MLP (official 8)."""
    lr_mlp: float = 0.01
    """Learning-rate multiplier of the mapping MLP (official 0.01)."""
    channel_base: int = 2048
    """Channels at resolution r are min(channel_max, channel_base // r) (StyleGAN2-ADA form)."""
    channel_max: int = 64
    """Upper bound on channels per resolution (official 512)."""

    def validate(self) -> None:
        if self.size < 32 or self.size & (self.size - 1):
            raise ValueError(f"GeneratorConfig.size must be a power of two >= 32, got {self.size}")
        if min(self.latent_dim, self.n_mlp, self.channel_max, self.img_channels) < 1:
            raise ValueError("GeneratorConfig: latent_dim, n_mlp, channel_max must be >= 1")
        if self.seg_dim < 1 or self.channels(self.size) < 1:
            raise ValueError("GeneratorConfig: seg_dim >= 1 and channel_base >= size required")

    def channels(self, res: int) -> int:
        return min(self.channel_max, self.channel_base // res)

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        """Number of W+ entries: two per resolution above 4 px, plus two at 4 px."""
        return 2 * self.log_size - 2


class GenOutput(NamedTuple):
    image: torch.Tensor
    """[B, img_channels, S, S] in roughly [-1, 1]."""
    seg: torch.Tensor
    """[B, seg_dim, S, S] mask logits."""
    latent: torch.Tensor
    """[B, n_latent, latent_dim] the W+ code that produced them."""


class SegGenerator(nn.Module):
    """Mapping network + synthesis network with ToRGB and ToSEG branches."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        D = cfg.latent_dim
        mlp: list[nn.Module] = [PixelNorm()]
        mlp += [EqualLinear(D, D, lr_mul=cfg.lr_mlp, act=True) for _ in range(cfg.n_mlp)]
        self.style = nn.Sequential(*mlp)
        c4 = cfg.channels(4)
        self.input = nn.Parameter(torch.randn(1, c4, 4, 4))
        self.conv1 = StyledConv(c4, c4, D)
        self.to_rgb1 = ToOutput(c4, cfg.img_channels, D, upsample=False)
        self.to_seg1 = ToOutput(c4, cfg.seg_dim, D, upsample=False)
        self.convs, self.to_rgbs, self.to_segs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        c_in = c4
        for i in range(3, cfg.log_size + 1):
            c_out = cfg.channels(2**i)
            self.convs.append(StyledConv(c_in, c_out, D, upsample=True))
            self.convs.append(StyledConv(c_out, c_out, D))
            self.to_rgbs.append(ToOutput(c_out, cfg.img_channels, D))
            self.to_segs.append(ToOutput(c_out, cfg.seg_dim, D))
            c_in = c_out
        self.n_latent = cfg.n_latent
        self.num_noise = 2 * (cfg.log_size - 2) + 1

    def noise_shapes(self) -> list[int]:
        """Side of each noise input: 4, then two per resolution 8 .. size."""
        return [4] + [2**i for i in range(3, self.cfg.log_size + 1) for _ in range(2)]

    def make_noise(self, batch: int, generator: torch.Generator | None = None) -> list:
        """Fresh per-sample noise maps ``[B, 1, r, r]`` for every noise input."""
        dev = self.input.device
        return [
            torch.randn(batch, 1, r, r, device=dev, generator=generator)
            for r in self.noise_shapes()
        ]

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None):
        """Mean w over ``n`` random z: ``[1, latent_dim]`` (truncation centre)."""
        z = torch.randn(n, self.cfg.latent_dim, device=self.input.device, generator=generator)
        return self.style(z).mean(0, keepdim=True)

    def w_plus(self, zs: list[torch.Tensor], inject_index: int | None = None) -> torch.Tensor:
        """W+ ``[B, n_latent, D]`` from one z, or two z with style mixing at ``inject_index``."""
        ws = [self.style(z) for z in zs]
        if len(ws) == 1:
            return ws[0].unsqueeze(1).repeat(1, self.n_latent, 1)
        if inject_index is None or not 1 <= inject_index < self.n_latent:
            raise ValueError(f"style mixing needs 1 <= inject_index < {self.n_latent}")
        first = ws[0].unsqueeze(1).repeat(1, inject_index, 1)
        second = ws[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)
        return torch.cat([first, second], dim=1)

    def synthesis(self, latent_BLD: torch.Tensor, noise: list | None = None):
        """Image and mask logits from a W+ code; ``noise`` None draws fresh noise."""
        if latent_BLD.shape[1:] != (self.n_latent, self.cfg.latent_dim):
            raise ValueError(
                f"W+ must be [B, {self.n_latent}, {self.cfg.latent_dim}], "
                f"got {tuple(latent_BLD.shape)}"
            )
        noise = noise if noise is not None else [None] * self.num_noise
        B = latent_BLD.shape[0]
        out = self.conv1(self.input.repeat(B, 1, 1, 1), latent_BLD[:, 0], noise[0])
        rgb = self.to_rgb1(out, latent_BLD[:, 1])
        seg = self.to_seg1(out, latent_BLD[:, 1])
        i = 1
        for j in range(len(self.to_rgbs)):
            out = self.convs[2 * j](out, latent_BLD[:, i], noise[2 * j + 1])
            out = self.convs[2 * j + 1](out, latent_BLD[:, i + 1], noise[2 * j + 2])
            rgb = self.to_rgbs[j](out, latent_BLD[:, i + 2], rgb)
            seg = self.to_segs[j](out, latent_BLD[:, i + 2], seg)
            i += 2
        return rgb, seg

    def forward(
        self,
        zs: list[torch.Tensor],
        inject_index: int | None = None,
        noise: list | None = None,
        truncation: float = 1.0,
        truncation_latent: torch.Tensor | None = None,
    ) -> GenOutput:
        """Sample from z (a list of one or two ``[B, D]`` tensors, two = style mixing)."""
        latent = self.w_plus(zs, inject_index)
        if truncation < 1.0:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (see mean_latent)")
            latent = truncation_latent.unsqueeze(1) + truncation * (
                latent - truncation_latent.unsqueeze(1)
            )
        image, seg = self.synthesis(latent, noise)
        return GenOutput(image, seg, latent)


def seg_to_class_logits(seg_BSHW: torch.Tensor) -> torch.Tensor:
    """ToSEG logits -> class logits ``[B, C, H, W]``: a binary logit l becomes (0, l), so
    softmax gives (1 - sigmoid(l), sigmoid(l)) and argmax is ``sigmoid(l) > 0.5``."""
    if seg_BSHW.shape[1] == 1:
        return torch.cat([torch.zeros_like(seg_BSHW), seg_BSHW], dim=1)
    return seg_BSHW


def labels_to_seg_target(labels_BHW: torch.Tensor, seg_dim: int) -> torch.Tensor:
    """Integer labels -> the real-mask input of the image+mask discriminator, in {-1, 1}
    (official dataloader: one-hot scaled by (m - 0.5) / 0.5; binary: the foreground map)."""
    if seg_dim == 1:
        return (labels_BHW > 0).float().unsqueeze(1) * 2 - 1
    onehot = torch.nn.functional.one_hot(labels_BHW.long(), seg_dim).permute(0, 3, 1, 2)
    return onehot.float() * 2 - 1
