"""``SemanticGANConfig``: everything ``seg-train --model semantic-gan`` reads.

Defaults are the official hyper-parameters (``train_seg_gan.py``, ``train_enc.py``,
``inference.py``) wherever they do not decide the model's size or the run's length; those are
CPU-sized (64 px, latent 64, at most 64 channels, a few thousand iterations).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from segmentation.semantic_gan.encoder import EncoderConfig
from segmentation.semantic_gan.generator import GeneratorConfig
from segmentation.semantic_gan.inference import KIND, InferenceConfig, SemanticGANSpec
from segmentation.subsets import parse_subset
from workbench.config import ConfigError


@dataclass
class SemanticGANConfig:
    """Train SemanticGAN (GAN with image and image+mask discriminators, then a W+ encoder)."""

    model: Literal["semantic-gan"] = "semantic-gan"
    """Model kind (the other kinds use segmentation.train.TrainConfig)."""
    data: Path = Path("runs/demo/phantom")
    """Dataset root (phantom root, JSRT/Montgomery/Shenzhen folder)."""
    dataset: Literal["phantom-lungs", "phantom-nodules", "jsrt", "montgomery", "shenzhen"] = (
        "phantom-lungs"
    )
    """Dataset reader to use."""
    out: Path = Path("runs/seg/semantic-gan")
    """Run directory for cfg.json, log.jsonl, checkpoint.pt, model.pt and samples.png."""
    image_size: int = 64
    """Side of the generated and segmented images in px (a power of two >= 32)."""
    crop_size: int = 128
    """Phantom nodules: crop side in source px before resizing."""
    num_classes: int = 2
    """Classes including background (2: one sigmoid mask channel)."""
    labelled_fraction: float = 1.0
    """Share of the training images whose masks are used (the image+mask discriminator and
    the encoder's label step); every training image feeds the image discriminator."""
    train_subset: str | None = None
    """Restrict the training split first, ATTRIBUTE=VALUE:SHARE (e.g. 'sex=F:0.9')."""
    train_subset_size: int | None = None
    """Size of that restricted set (None: as large as the split allows)."""
    latent_dim: int = 64
    """Dimension of z, w and each W+ entry (official 512)."""
    n_mlp: int = 4
    """Mapping-network layers (official 8)."""
    lr_mlp: float = 0.01
    """Mapping-network learning-rate multiplier (official 0.01)."""
    channel_base: int = 2048
    """Generator / image-discriminator channels: min(channel_max, channel_base // res)."""
    channel_max: int = 64
    """Upper bound on channels per resolution (official 512)."""
    dseg_ndf: int = 16
    """Image+mask discriminator: channels of its first layer (official 64)."""
    dseg_layers: int = 3
    """Image+mask discriminator: stride-2 layers per scale (official 3)."""
    dseg_scales: int = 3
    """Image+mask discriminator: number of scales (official 3)."""
    steps: int = 3000
    """GAN iterations (official default 800k on a GPU)."""
    batch_size: int = 8
    """Images per GAN step, for each of the unlabelled and labelled batches (official 16)."""
    lr: float = 0.002
    """Adam learning rate of G and both D, scaled by the lazy-regularisation ratio."""
    r1: float = 10.0
    """R1 weight for both discriminators."""
    d_reg_every: int = 16
    """Lazy R1 interval (steps)."""
    g_reg_every: int = 4
    """Lazy path-length regularisation interval (steps); 0 disables it."""
    path_regularize: float = 2.0
    """Path-length regularisation weight."""
    path_batch_shrink: int = 2
    """Batch divisor for the path-length step."""
    mixing: float = 0.9
    """Probability of style mixing per generated batch."""
    lambda_dseg_feat: float = 2.0
    """Weight of the image+mask discriminator's feature-matching loss."""
    ema_decay: float = 0.5 ** (32 / 10000)
    """Per-step decay of the generator EMA used for inference (official 0.5^(32/10k))."""
    augment: bool = True
    """Random horizontal flips (as the official dataloader)."""
    enc_width: int = 16
    """Encoder: channels of the first residual stage (official ResNet-50: 64)."""
    enc_blocks: tuple[int, ...] = (1, 1, 1, 1)
    """Encoder: residual blocks per stage (official 3, 4, 6, 3)."""
    enc_feature_dim: int = 64
    """Encoder: pyramid channels (official 512)."""
    enc_steps: int = 1000
    """Encoder iterations, each one unlabelled and one labelled step (generator frozen)."""
    enc_lr: float = 1e-3
    """Encoder Adam learning rate (official: Ranger 1e-3; Adam is its other option)."""
    enc_lr_min: float = 1e-5
    """Learning rate at the end of the cosine decay."""
    enc_decay_start: float = 0.3
    """Fraction of enc_steps after which the cosine decay starts (official 30k of 100k)."""
    lambda_label_ce: float = 1.0
    """Encoder label step: weight of the soft cross-entropy (tau 0.3 binary, 0.1 multi)."""
    lambda_label_dice: float = 1.0
    """Encoder label step: weight of the Dice loss (sigmoid tau 0.3)."""
    lambda_mse: float = 1.0
    """Encoder (both steps): weight of the pixel MSE."""
    lambda_percept: float = 10.0
    """Encoder (both steps): weight of the perceptual term (1 - SSIM, replacing LPIPS)."""
    label_grad_clip: float = 5.0
    """Gradient-norm clip of the label step."""
    unlabel_grad_clip: float = 2.0
    """Gradient-norm clip of the unlabelled step."""
    tto_steps: int = 100
    """Inference: test-time optimisation steps per image (0 = encoder only)."""
    tto_lr: float = 0.1
    """Inference: peak learning rate of the test-time optimisation."""
    seed: int = 0
    """Seed for initialisation, batches, labelled subset and noise."""
    max_time_s: float | None = None
    """Stop the GAN phase after this many seconds (then the encoder phase runs)."""
    enc_max_time_s: float | None = None
    """Stop the encoder phase after this many seconds."""
    checkpoint_every: int = 200
    """Iterations between checkpoints."""
    log_every: int = 20
    """Iterations between log.jsonl lines."""
    resume: bool = True
    """Continue from out/checkpoint.pt if it exists."""
    threads: int | None = None
    """torch CPU threads (None: leave torch's default)."""
    progress: bool = True
    """Show a progress bar."""

    def validate(self) -> None:
        positive = ("steps", "enc_steps", "tto_steps")
        if any(getattr(self, f) < 0 for f in positive) or self.batch_size < 2:
            raise ConfigError("SemanticGANConfig: steps, enc_steps, tto_steps >= 0, batch >= 2")
        if not 0 < self.labelled_fraction <= 1:
            raise ConfigError("SemanticGANConfig.labelled_fraction must be in (0, 1]")
        if min(self.lr, self.enc_lr, self.r1 + 1e-12, self.d_reg_every) <= 0:
            raise ConfigError("SemanticGANConfig: lr, enc_lr, d_reg_every > 0, r1 >= 0 needed")
        if not 0 <= self.mixing <= 1 or not 0 < self.ema_decay < 1:
            raise ConfigError("SemanticGANConfig: 0 <= mixing <= 1 and 0 < ema_decay < 1")
        try:
            if self.train_subset:
                parse_subset(self.train_subset)
            spec = self.spec()
            spec.generator.validate()
            spec.encoder.validate()
            spec.inference.validate()
        except ValueError as exc:
            raise ConfigError(f"SemanticGANConfig: {exc}") from None

    @property
    def seg_dim(self) -> int:
        return 1 if self.num_classes == 2 else self.num_classes

    def spec(self) -> SemanticGANSpec:
        """The saved model's spec (generator, encoder and inference settings)."""
        gen = GeneratorConfig(
            self.image_size,
            1,
            self.seg_dim,
            self.latent_dim,
            self.n_mlp,
            self.lr_mlp,
            self.channel_base,
            self.channel_max,
        )
        enc = EncoderConfig(self.enc_width, tuple(self.enc_blocks), self.enc_feature_dim)
        inf = InferenceConfig(steps=self.tto_steps, lr=self.tto_lr)
        return SemanticGANSpec(KIND, self.num_classes, gen, enc, inf)
