"""Segmenting an image with a trained SemanticGAN: encode, optimise W+, read the ToSEG mask.

Official ``semanticGAN/inference.py``: W+ is initialised by the encoder and refined, together
with the noise maps, by Adam (lr 0.1, 5 % warm-up, cosine ramp-down over the last 25 %) on

    perceptual(G(w), x) + 1e2 * noise_reg + 0.1 * MSE(G(w), x)
        + 1e-3 * ||w - E(G(w))||^2 + lambda_init * ||w - E(x)||^2

after every step the noise maps are re-standardised. No label enters: the mask is read from
G's ToSEG branch at the optimised code (sigmoid > 0.5, or argmax). The perceptual term is
``1 - SSIM`` here (see ``losses.perceptual_distance``). Losses are computed per image and
summed, so a batch is optimised exactly as its images would be one at a time.

:class:`SemanticGANSegmenter` (EMA generator + encoder) is what ``model.pt`` holds for
``--model semantic-gan``; ``segmentation.models.predict`` calls :meth:`segment`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from segmentation.semantic_gan.encoder import EncoderConfig, FPNEncoder
from segmentation.semantic_gan.generator import GeneratorConfig, SegGenerator, seg_to_class_logits
from segmentation.semantic_gan.losses import (
    noise_normalize_,
    noise_regularize,
    perceptual_distance,
)

KIND = "semantic-gan"


@dataclass
class InferenceConfig:
    """Test-time optimisation of W+ (official defaults except the step count)."""

    steps: int = 100
    """Adam steps on W+ and the noise maps per image (official README: 200; 0 = encoder only)."""
    lr: float = 0.1
    """Peak learning rate."""
    rampup: float = 0.05
    """Fraction of the steps with a linear learning-rate warm-up."""
    rampdown: float = 0.25
    """Fraction of the steps with a cosine ramp-down to 0."""
    noise_regularize: float = 1e2
    """Weight of the noise-map autocorrelation penalty."""
    lambda_percept: float = 1.0
    """Weight of the perceptual (1 - SSIM) term."""
    lambda_mse: float = 0.1
    """Weight of the pixel MSE term."""
    lambda_encoder: float = 1e-3
    """Weight of ||w - E(G(w))||^2 (keeps w where the encoder maps images)."""
    lambda_encoder_init: float = 0.0
    """Weight of ||w - E(x)||^2 (official default 0)."""
    optimise_noise: bool = True
    """Optimise the noise maps too (official default; False = fresh fixed noise)."""

    def validate(self) -> None:
        if self.steps < 0 or self.lr <= 0 or not 0 <= self.rampup <= 1:
            raise ValueError("InferenceConfig: steps >= 0, lr > 0, 0 <= rampup <= 1 required")
        if not 0 < self.rampdown <= 1:
            raise ValueError("InferenceConfig.rampdown must be in (0, 1]")


def tto_lr(t: float, peak: float, rampdown: float, rampup: float) -> float:
    """Learning rate at progress ``t`` in [0, 1): warm-up, plateau, cosine ramp-down."""
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return peak * ramp * (min(1.0, t / rampup) if rampup > 0 else 1.0)


@dataclass
class SemanticGANSpec:
    """How to rebuild a saved SemanticGAN segmenter."""

    kind: str
    num_classes: int
    generator: GeneratorConfig
    encoder: EncoderConfig
    inference: InferenceConfig

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "num_classes": self.num_classes,
            "generator": dataclasses.asdict(self.generator),
            "encoder": dataclasses.asdict(self.encoder),
            "inference": dataclasses.asdict(self.inference),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SemanticGANSpec:
        enc = dict(d["encoder"])
        enc["blocks"] = tuple(enc["blocks"])
        return cls(
            d["kind"],
            int(d["num_classes"]),
            GeneratorConfig(**d["generator"]),
            EncoderConfig(**enc),
            InferenceConfig(**d["inference"]),
        )


class Inversion(NamedTuple):
    latent: torch.Tensor
    """[B, n_latent, D] the optimised W+."""
    image: torch.Tensor
    """[B, C, H, W] G's reconstruction in [-1, 1]."""
    seg: torch.Tensor
    """[B, seg_dim, H, W] ToSEG logits at the optimised code."""
    losses: list[float]
    """Total loss (summed over the batch) after each step; empty for 0 steps."""


class SemanticGANSegmenter(nn.Module):
    """EMA generator + W+ encoder; ``forward``/``segment`` give class logits for images."""

    def __init__(self, spec: SemanticGANSpec):
        super().__init__()
        self.spec, self.inference = spec, dataclasses.replace(spec.inference)
        g = spec.generator
        self.generator = SegGenerator(g)
        self.encoder = FPNEncoder(spec.encoder, g.size, g.img_channels, g.n_latent, g.latent_dim)
        self.num_classes = spec.num_classes

    @staticmethod
    def to_model_range(x01: torch.Tensor) -> torch.Tensor:
        """Dataset images in [0, 1] -> the GAN's [-1, 1]."""
        return x01 * 2 - 1

    def invert(self, x01: torch.Tensor, generator: torch.Generator | None = None) -> Inversion:
        """Encoder initialisation + test-time optimisation against the image only."""
        cfg = self.inference
        cfg.validate()
        self.eval()
        flags = [p.requires_grad for p in self.parameters()]
        for p in self.parameters():
            p.requires_grad_(False)  # only W+ and the noise maps are optimised
        try:
            return self._optimise(self.to_model_range(x01), generator)
        finally:
            for p, flag in zip(self.parameters(), flags, strict=True):
                p.requires_grad_(flag)

    def _optimise(self, target: torch.Tensor, generator) -> Inversion:
        cfg = self.inference
        with torch.no_grad():
            w_init = self.encoder(target)
        latent = w_init.clone().requires_grad_(True)
        noises = self.generator.make_noise(target.shape[0], generator)
        params = [latent] + (noises if cfg.optimise_noise else [])
        for n in noises:
            n.requires_grad_(cfg.optimise_noise)
        opt = torch.optim.Adam(params, lr=cfg.lr)
        history = []
        with torch.enable_grad():
            for i in range(cfg.steps):
                opt.param_groups[0]["lr"] = tto_lr(i / cfg.steps, cfg.lr, cfg.rampdown, cfg.rampup)
                loss = self._tto_loss(latent, noises, target, w_init).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if cfg.optimise_noise:
                    noise_normalize_(noises)
                history.append(loss.item())
        with torch.no_grad():
            image, seg = self.generator.synthesis(latent, noises)
        return Inversion(latent.detach(), image, seg, history)

    def _tto_loss(self, latent, noises, target, w_init) -> torch.Tensor:
        """Per-image TTO objective ``[B]`` (module docstring)."""
        cfg = self.inference
        image, _ = self.generator.synthesis(latent, noises)
        loss = cfg.lambda_percept * perceptual_distance(image, target)
        loss = loss + cfg.lambda_mse * F.mse_loss(image, target, reduction="none").flatten(1).mean(
            1
        )
        if cfg.optimise_noise:
            loss = loss + cfg.noise_regularize * noise_regularize(noises)
        if cfg.lambda_encoder:
            w_back = self.encoder(image).detach()
            loss = loss + cfg.lambda_encoder * (latent - w_back).pow(2).flatten(1).mean(1)
        if cfg.lambda_encoder_init:
            loss = loss + cfg.lambda_encoder_init * (latent - w_init).pow(2).flatten(1).mean(1)
        return loss

    def segment(self, x01: torch.Tensor, generator: torch.Generator | None = None):
        """Class logits ``[B, num_classes, H, W]`` for images ``[B, C, H, W]`` in [0, 1]."""
        return seg_to_class_logits(self.invert(x01, generator).seg)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.segment(x01)


def build_segmenter(spec: SemanticGANSpec) -> SemanticGANSegmenter:
    """A fresh segmenter for ``spec`` (weights to be loaded from model.pt)."""
    return SemanticGANSegmenter(spec)
