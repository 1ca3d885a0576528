"""The encoder phase (official ``train_enc.py``): W+ encoder trained with G frozen.

Each iteration has two steps with their own optimisers (as the official code), both with
random noise in G:

1. unlabelled images: ``lambda_mse * MSE(G(E(x)), x) + lambda_percept * perceptual``, grad
   clip 2;
2. labelled images: the same reconstruction terms plus ``lambda_ce * CE + lambda_dice * Dice``
   of G's ToSEG output against the mask (binary: soft BCE and Dice at tau 0.3; multi-class:
   softmax CE at tau 0.1 and Dice over the foreground classes), grad clip 5.

The learning rate is constant, then follows a cosine from ``enc_lr`` to ``enc_lr_min``
starting at ``enc_decay_start`` of the run (official: 30k to 100k iterations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segmentation.semantic_gan import losses as L
from segmentation.semantic_gan.encoder import FPNEncoder
from segmentation.semantic_gan.generator import SegGenerator

BINARY_TAU, MULTI_TAU = 0.3, 0.1


@dataclass
class EncoderPhase:
    """The encoder, the frozen EMA generator and the two optimisers."""

    encoder: FPNEncoder
    generator: SegGenerator
    label_opt: torch.optim.Optimizer
    unlabel_opt: torch.optim.Optimizer


def build_encoder_phase(encoder: FPNEncoder, generator: SegGenerator, lr: float) -> EncoderPhase:
    generator.eval().requires_grad_(False)
    return EncoderPhase(
        encoder,
        generator,
        torch.optim.Adam(encoder.parameters(), lr=lr),
        torch.optim.Adam(encoder.parameters(), lr=lr),
    )


def cosine_lr(step: int, total: int, lr: float, lr_min: float, start_frac: float) -> float:
    """Constant ``lr`` until ``start_frac * total``, then cosine down to ``lr_min``."""
    start = int(start_frac * total)
    if step < start or total <= start:
        return lr
    t = min(1.0, (step - start) / (total - start))
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(t * math.pi))


def reconstruction_losses(phase: EncoderPhase, x: torch.Tensor, cfg):
    """(image, seg, mse, percept) for images ``x`` in [-1, 1] through ``G(E(x))``."""
    image, seg = phase.generator.synthesis(phase.encoder(x))
    mse = F.mse_loss(image, x)
    percept = L.perceptual_distance(image, x).mean()
    return image, seg, mse, percept


def mask_losses(seg: torch.Tensor, labels_BHW: torch.Tensor, seg_dim: int):
    """(CE, Dice) of ToSEG logits against integer labels, with the official temperatures."""
    if seg_dim == 1:
        target = (labels_BHW > 0).float().unsqueeze(1)
        return L.soft_bce(seg, target, BINARY_TAU), L.dice_loss(seg, target, BINARY_TAU, True)
    onehot = F.one_hot(labels_BHW.long(), seg_dim).permute(0, 3, 1, 2).float()
    return L.soft_ce(seg, labels_BHW, MULTI_TAU), L.dice_loss(seg, onehot, BINARY_TAU, False)


def _step(opt, encoder, loss: torch.Tensor, clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(encoder.parameters(), clip)
    opt.step()


def encoder_iteration(phase: EncoderPhase, cfg, unl_x, lab_x, lab_y, step: int) -> dict:
    """One unlabelled and one labelled encoder step; returns the losses for the log."""
    phase.encoder.train()
    for opt in (phase.label_opt, phase.unlabel_opt):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(
                step, cfg.enc_steps, cfg.enc_lr, cfg.enc_lr_min, cfg.enc_decay_start
            )
    _, _, mse_u, per_u = reconstruction_losses(phase, unl_x, cfg)
    loss_u = cfg.lambda_mse * mse_u + cfg.lambda_percept * per_u
    _step(phase.unlabel_opt, phase.encoder, loss_u, cfg.unlabel_grad_clip)
    _, seg, mse_l, per_l = reconstruction_losses(phase, lab_x, cfg)
    ce, dice = mask_losses(seg, lab_y, cfg.seg_dim)
    loss_l = (
        cfg.lambda_label_ce * ce
        + cfg.lambda_label_dice * dice
        + cfg.lambda_mse * mse_l
        + cfg.lambda_percept * per_l
    )
    _step(phase.label_opt, phase.encoder, loss_l, cfg.label_grad_clip)
    return {
        "e_unlabel": loss_u.item(),
        "e_unlabel_mse": mse_u.item(),
        "e_unlabel_percept": per_u.item(),
        "e_label": loss_l.item(),
        "e_label_ce": ce.item(),
        "e_label_dice": dice.item(),
        "e_label_mse": mse_l.item(),
    }
