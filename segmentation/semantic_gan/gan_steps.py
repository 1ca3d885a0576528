"""One SemanticGAN iteration in the official order (``train_seg_gan.py``).

1. ``D_img`` step: unlabelled real images vs generated images, logistic loss.
2. ``D_seg`` step: labelled real (image, mask) pairs vs generated pairs, hinge loss.
3. Lazy R1 (every ``d_reg_every`` iterations): on ``D_img`` with the unlabelled reals and on
   ``D_seg`` with the labelled real pairs (sum of the scales' mean logits).
4. ``G`` step: non-saturating loss through ``D_img`` + hinge and feature matching through
   ``D_seg``, where the generated IMAGE enters ``D_seg`` detached, so ``D_seg``'s gradient
   reaches the generator only through the mask (ToSEG) path, never through the image output.
5. Lazy path-length regularisation (every ``g_reg_every`` iterations), then the EMA update.

Each step turns ``requires_grad`` on for the network it trains only, as the official code.
Adam learning rates and betas are scaled by ``every / (every + 1)`` for lazy regularisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from segmentation.semantic_gan import losses as L
from segmentation.semantic_gan.discriminators import (
    ImageDiscriminator,
    MultiscalePatchDiscriminator,
)
from segmentation.semantic_gan.generator import SegGenerator


@dataclass
class GAN:
    """The networks and optimisers of the GAN phase."""

    g: SegGenerator
    g_ema: SegGenerator
    d_img: ImageDiscriminator
    d_seg: MultiscalePatchDiscriminator
    g_opt: torch.optim.Optimizer
    d_img_opt: torch.optim.Optimizer
    d_seg_opt: torch.optim.Optimizer
    mean_path_length: float = 0.0

    def modules(self) -> dict[str, nn.Module]:
        return {"g": self.g, "g_ema": self.g_ema, "d_img": self.d_img, "d_seg": self.d_seg}

    def optimisers(self) -> dict[str, torch.optim.Optimizer]:
        return {"g_opt": self.g_opt, "d_img_opt": self.d_img_opt, "d_seg_opt": self.d_seg_opt}


def _adam(params, lr: float, every: int) -> torch.optim.Adam:
    ratio = every / (every + 1) if every > 0 else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=(0.0, 0.99**ratio))


def build_gan(cfg) -> GAN:
    """G, its EMA copy, both discriminators and their Adam optimisers from a config."""
    spec = cfg.spec()
    g, g_ema = SegGenerator(spec.generator), SegGenerator(spec.generator)
    g_ema.load_state_dict(g.state_dict())
    g_ema.eval().requires_grad_(False)
    d_img = ImageDiscriminator(cfg.image_size, 1, cfg.channel_base, cfg.channel_max)
    d_seg = MultiscalePatchDiscriminator(
        1 + cfg.seg_dim, cfg.dseg_ndf, cfg.dseg_layers, cfg.dseg_scales
    )
    return GAN(
        g,
        g_ema,
        d_img,
        d_seg,
        _adam(g.parameters(), cfg.lr, cfg.g_reg_every),
        _adam(d_img.parameters(), cfg.lr, cfg.d_reg_every),
        _adam(d_seg.parameters(), cfg.lr, cfg.d_reg_every),
    )


def train_only(gan: GAN, which: nn.Module | None) -> None:
    """``requires_grad`` on for ``which`` and off for the other trained networks."""
    for m in (gan.g, gan.d_img, gan.d_seg):
        m.requires_grad_(m is which)


@torch.no_grad()
def accumulate(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for every parameter."""
    ema_params = dict(ema.named_parameters())
    for name, p in model.named_parameters():
        ema_params[name].mul_(decay).add_(p.detach(), alpha=1 - decay)


def latents(batch: int, dim: int, mixing: float, n_latent: int, rng: np.random.Generator):
    """(list of z, inject index): two z with probability ``mixing`` (style mixing)."""
    if mixing > 0 and rng.random() < mixing:
        return [torch.randn(batch, dim), torch.randn(batch, dim)], int(rng.integers(1, n_latent))
    return [torch.randn(batch, dim)], None


def pair(image: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """The image+mask discriminator's input: channel concatenation."""
    return torch.cat([image, seg], dim=1)


def d_img_step(gan: GAN, real: torch.Tensor, z) -> dict:
    """Step 1: logistic loss of D_img on unlabelled reals vs fakes (G gets no gradient)."""
    train_only(gan, gan.d_img)
    with torch.no_grad():
        fake = gan.g(*z).image
    fake_pred, real_pred = gan.d_img(fake), gan.d_img(real)
    loss = L.d_logistic_loss(real_pred, fake_pred)
    gan.d_img_opt.zero_grad(set_to_none=True)
    loss.backward()
    gan.d_img_opt.step()
    return {"d_img": loss.item(), "d_img_real": real_pred.mean().item(),
            "d_img_fake": fake_pred.mean().item()}  # fmt: skip


def d_seg_step(gan: GAN, seg_img: torch.Tensor, seg_mask: torch.Tensor, z) -> dict:
    """Step 2: hinge loss of D_seg on labelled real pairs vs generated pairs."""
    train_only(gan, gan.d_seg)
    with torch.no_grad():
        out = gan.g(*z)
    fake_pred = gan.d_seg(pair(out.image, out.seg))
    real_pred = gan.d_seg(pair(seg_img, seg_mask))
    loss = (L.hinge_d_loss(fake_pred, real=False) + L.hinge_d_loss(real_pred, real=True)) / 2
    gan.d_seg_opt.zero_grad(set_to_none=True)
    loss.backward()
    gan.d_seg_opt.step()
    return {"d_seg": loss.item(), "d_seg_real": np.mean([p[-1].mean().item() for p in real_pred]),
            "d_seg_fake": np.mean([p[-1].mean().item() for p in fake_pred])}  # fmt: skip


def d_reg_step(gan: GAN, real, seg_img, seg_mask, r1: float, every: int) -> dict:
    """Step 3: lazy R1 on both discriminators' real inputs, weight ``r1 / 2 * every``."""
    train_only(gan, gan.d_img)
    real = real.detach().requires_grad_(True)
    r1_img = L.r1_penalty(gan.d_img(real).sum(), real)
    gan.d_img_opt.zero_grad(set_to_none=True)
    (r1 / 2 * r1_img * every).backward()
    gan.d_img_opt.step()
    train_only(gan, gan.d_seg)
    real_pair = pair(seg_img, seg_mask).detach().requires_grad_(True)
    preds = gan.d_seg(real_pair)
    r1_seg = L.r1_penalty(sum(p[-1].mean() for p in preds), real_pair)
    gan.d_seg_opt.zero_grad(set_to_none=True)
    (r1 / 2 * r1_seg * every).backward()
    gan.d_seg_opt.step()
    return {"r1_img": r1_img.item(), "r1_seg": r1_seg.item()}


def generator_losses(gan: GAN, seg_img, seg_mask, z, lambda_feat: float) -> dict:
    """Step 4's losses (with graph): D_img non-saturating, D_seg hinge, feature matching.

    The generated image is detached before D_seg: D_seg trains the mask branch only.
    """
    out = gan.g(*z)
    g_img = L.g_nonsaturating_loss(gan.d_img(out.image))
    fake_pred = gan.d_seg(pair(out.image.detach(), out.seg))
    with torch.no_grad():
        real_pred = gan.d_seg(pair(seg_img, seg_mask))
    g_adv = L.hinge_g_loss(fake_pred)
    g_feat = L.feature_matching_loss(fake_pred, real_pred, lambda_feat)
    return {"g_img": g_img, "g_seg_adv": g_adv, "g_seg_feat": g_feat, "out": out}


def g_step(gan: GAN, seg_img, seg_mask, z, lambda_feat: float) -> dict:
    """Step 4: update G on the sum of its three losses."""
    train_only(gan, gan.g)
    parts = generator_losses(gan, seg_img, seg_mask, z, lambda_feat)
    loss = parts["g_img"] + parts["g_seg_adv"] + parts["g_seg_feat"]
    gan.g_opt.zero_grad(set_to_none=True)
    loss.backward()
    gan.g_opt.step()
    return {"g": loss.item(), **{k: v.item() for k, v in parts.items() if k != "out"}}


def g_reg_step(gan: GAN, z, weight: float, every: int) -> dict:
    """Step 5: lazy path-length regularisation of G on a (shrunk) generated batch."""
    train_only(gan, gan.g)
    out = gan.g(*z)
    penalty, gan.mean_path_length, lengths = L.path_length_penalty(
        out.image, out.latent, gan.mean_path_length
    )
    gan.g_opt.zero_grad(set_to_none=True)
    (weight * every * penalty + 0 * out.image[0, 0, 0, 0]).backward()
    gan.g_opt.step()
    return {"path": penalty.item(), "path_length": lengths.mean().item()}
