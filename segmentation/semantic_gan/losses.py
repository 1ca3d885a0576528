"""SemanticGAN's losses and regularisers, as in the official training scripts.

GAN (``train_seg_gan.py``):

- image discriminator: non-saturating logistic loss, ``softplus(-D(x)) + softplus(D(G(z)))``;
  generator: ``softplus(-D(G(z)))``;
- image+mask discriminator: hinge loss averaged over scales, ``relu(1 - D(real)) +
  relu(1 + D(fake))`` (the two halves averaged); generator: ``-D(fake)``; plus L1 feature
  matching between the fake and real pairs' intermediate features, weight 1/num_D each;
- lazy R1: ``||grad_x D(x)||^2`` on real inputs, applied every ``d_reg_every`` steps with
  weight ``r1 / 2 * d_reg_every``;
- path-length regularisation of the generator (StyleGAN2).

Encoder (``train_enc.py``) and inference: soft BCE / softmax CE with a temperature, Dice with a
sigmoid temperature (V-Net denominator), and the noise-map regulariser. LPIPS needs pretrained
VGG weights that cannot be fetched offline; :func:`perceptual_distance` uses ``1 - SSIM``
instead (documented in ``docs/segmentation.md``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def d_logistic_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    """Non-saturating discriminator loss; small when real scores high and fake scores low."""
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def g_nonsaturating_loss(fake_pred: torch.Tensor) -> torch.Tensor:
    """Generator loss against the image discriminator: ``softplus(-D(G(z)))``."""
    return F.softplus(-fake_pred).mean()


def hinge_d_loss(preds: list[list[torch.Tensor]], real: bool) -> torch.Tensor:
    """Hinge loss of one side (real or fake) of a multi-scale discriminator, mean over scales.

    Uses the last output of each scale (the patch logits), as the official ``GANLoss``.
    """
    sign = -1.0 if real else 1.0
    return torch.stack([F.relu(1.0 + sign * p[-1]).mean() for p in preds]).mean()


def hinge_g_loss(preds: list[list[torch.Tensor]]) -> torch.Tensor:
    """Generator hinge loss: ``-D(fake)``, mean over patches and scales."""
    return torch.stack([-p[-1].mean() for p in preds]).mean()


def feature_matching_loss(
    fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]], weight: float
) -> torch.Tensor:
    """``weight / num_D * sum_scales sum_layers L1(fake, real.detach())`` over every layer
    except the logits (pix2pixHD; official ``lambda_dseg_feat`` = 2)."""
    total = fake[0][0].new_zeros(())
    for f_scale, r_scale in zip(fake, real, strict=True):
        for f, r in zip(f_scale[:-1], r_scale[:-1], strict=True):
            total = total + F.l1_loss(f, r.detach())
    return total * weight / len(fake)


def r1_penalty(pred_sum: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """R1: the batch mean of the squared gradient norm of ``pred_sum`` w.r.t. ``inputs``."""
    (grad,) = torch.autograd.grad(pred_sum, inputs, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def path_length_penalty(
    image: torch.Tensor, latent: torch.Tensor, mean_path_length: float, decay: float = 0.01
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """StyleGAN2 path-length regulariser: ``(|J_w^T y| - a)^2`` for random image-space ``y``.

    Returns the penalty, the updated running mean ``a`` and the per-sample lengths.
    """
    noise = torch.randn_like(image) / math.sqrt(image.shape[2] * image.shape[3])
    (grad,) = torch.autograd.grad((image * noise).sum(), latent, create_graph=True)
    lengths = grad.pow(2).sum(2).mean(1).sqrt()
    new_mean = mean_path_length + decay * (lengths.mean().item() - mean_path_length)
    return (lengths - new_mean).pow(2).mean(), new_mean, lengths.detach()


def soft_bce(logits: torch.Tensor, target01: torch.Tensor, tau: float) -> torch.Tensor:
    """Binary cross-entropy of ``sigmoid(logits / tau)`` (official tau = 0.3 for binary)."""
    return F.binary_cross_entropy_with_logits(logits / tau, target01)


def soft_ce(logits: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Softmax cross-entropy of ``logits / tau`` (official tau = 0.1 for multi-class)."""
    return F.cross_entropy(logits / tau, labels.long())


def dice_loss(
    logits: torch.Tensor, target01: torch.Tensor, tau: float = 0.3, include_bg: bool = True
) -> torch.Tensor:
    """``1 - mean_c Dice_c`` with ``p = sigmoid(logits / tau)`` and the V-Net denominator
    ``sum p^2 + sum t^2``, per channel over the whole batch (official ``DiceLoss``).

    ``include_bg`` keeps channel 0 (the only channel of a binary mask)."""
    p = torch.sigmoid(logits / tau).transpose(0, 1).reshape(logits.shape[1], -1)
    t = target01.float().transpose(0, 1).reshape(logits.shape[1], -1)
    dice = 2 * (p * t).sum(-1) / ((p * p).sum(-1) + (t * t).sum(-1)).clamp(min=1e-6)
    if not include_bg:
        dice = dice[1:]
    return 1.0 - dice.mean()


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor):
    ax = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Per-image structural similarity ``[B]`` of images in [0, 1] (Wang et al. 2004,
    Gaussian window, C1 = 0.01^2, C2 = 0.03^2, reflect padding so borders count)."""
    C = x.shape[1]
    w = _gaussian_window(window, sigma, C, x)
    pad = window // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad,) * 4, mode="reflect"), w, groups=C)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def perceptual_distance(fake_pm1: torch.Tensor, real_pm1: torch.Tensor) -> torch.Tensor:
    """The LPIPS substitute: ``1 - SSIM`` per image ``[B]`` for images in [-1, 1]."""
    to01 = (fake_pm1.clamp(-1, 1) + 1) / 2, (real_pm1.clamp(-1, 1) + 1) / 2
    return 1.0 - ssim(*to01)


def noise_regularize(noises: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample ``[B]`` penalty on spatial autocorrelation of optimised noise maps at every
    octave (StyleGAN2 projector): squared mean products with the map shifted by one pixel,
    down to 8x8. Per sample, so a batch of images is optimised exactly as one at a time."""
    B = noises[0].shape[0]
    loss = noises[0].new_zeros(B)
    for noise in noises:
        size = noise.shape[2]
        while True:
            loss = loss + (noise * torch.roll(noise, 1, dims=3)).mean(dim=(1, 2, 3)).pow(2)
            loss = loss + (noise * torch.roll(noise, 1, dims=2)).mean(dim=(1, 2, 3)).pow(2)
            if size <= 8:
                break
            noise = noise.reshape(B, 1, size // 2, 2, size // 2, 2).mean(dim=(3, 5))
            size //= 2
    return loss


@torch.no_grad()
def noise_normalize_(noises: list[torch.Tensor]) -> None:
    """Re-standardise each sample's noise map to zero mean, unit std, in place."""
    for noise in noises:
        flat = noise.flatten(1)
        mean, std = flat.mean(1), flat.std(1).clamp(min=1e-8)
        noise.sub_(mean.view(-1, 1, 1, 1)).div_(std.view(-1, 1, 1, 1))
