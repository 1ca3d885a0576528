"""SemanticGAN losses: signs, R1 against autograd, Dice/SSIM anchors, noise regulariser."""

import pytest
import torch

from segmentation.semantic_gan import losses as L
from segmentation.semantic_gan.discriminators import ImageDiscriminator


def test_logistic_losses_reward_the_right_direction():
    lo, hi = torch.full((4, 1), -3.0), torch.full((4, 1), 3.0)
    # D: real scored high and fake low is better than the reverse
    assert L.d_logistic_loss(hi, lo) < L.d_logistic_loss(lo, hi)
    assert L.d_logistic_loss(hi, lo).item() == pytest.approx(
        2 * torch.nn.functional.softplus(torch.tensor(-3.0)).item()
    )
    # G: fakes scored high is better
    assert L.g_nonsaturating_loss(hi) < L.g_nonsaturating_loss(lo)


def _preds(value: float) -> list[list[torch.Tensor]]:
    """Two scales, one hidden feature and patch logits each."""
    return [[torch.zeros(1, 2, 3, 3), torch.full((1, 1, 3, 3), value)] for _ in range(2)]


def test_hinge_losses():
    assert L.hinge_d_loss(_preds(1.5), real=True).item() == 0.0  # real beyond the margin
    assert L.hinge_d_loss(_preds(-1.5), real=False).item() == 0.0
    assert L.hinge_d_loss(_preds(0.0), real=True).item() == pytest.approx(1.0)
    assert L.hinge_d_loss(_preds(0.5), real=False).item() == pytest.approx(1.5)
    assert L.hinge_g_loss(_preds(0.25)).item() == pytest.approx(-0.25)


def test_feature_matching_is_zero_on_equal_features_and_ignores_the_logits():
    fake = [[torch.ones(1, 2, 3, 3), torch.full((1, 1, 3, 3), 5.0)]] * 2
    real = [[torch.ones(1, 2, 3, 3), torch.full((1, 1, 3, 3), -5.0)]] * 2
    assert L.feature_matching_loss(fake, real, 2.0).item() == 0.0
    shifted = [[torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 3)]] * 2
    assert L.feature_matching_loss(fake, shifted, 2.0).item() == pytest.approx(2.0)  # 2/2 * 2


def test_r1_matches_the_analytic_gradient():
    a = torch.randn(3, 1, 4, 4)
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    pred_sum = (a * x.pow(2)).sum()  # d/dx = 2 a x
    expect = (2 * a * x).pow(2).flatten(1).sum(1).mean()
    assert L.r1_penalty(pred_sum, x).item() == pytest.approx(expect.item(), rel=1e-5)


def test_r1_matches_autograd_on_the_image_discriminator_and_is_differentiable():
    torch.manual_seed(0)
    d = ImageDiscriminator(32, 1, 256, 16)
    x = torch.randn(4, 1, 32, 32, requires_grad=True)
    penalty = L.r1_penalty(d(x).sum(), x)
    (grad,) = torch.autograd.grad(d(x).sum(), x)
    assert penalty.item() == pytest.approx(grad.pow(2).sum().item() / 4, rel=1e-4)
    penalty.backward()  # create_graph=True: the penalty trains D
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters())


def test_path_length_penalty_updates_its_running_mean():
    w = torch.randn(2, 4, 3, requires_grad=True)
    image = w.sum(dim=(1, 2))[:, None, None, None] * torch.ones(2, 1, 8, 8)
    penalty, mean, lengths = L.path_length_penalty(image, w, 0.0)
    assert penalty.item() >= 0 and lengths.shape == (2,)
    assert mean == pytest.approx(0.01 * lengths.mean().item())


def test_dice_and_bce_anchors():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    good, bad = (target * 2 - 1) * 20, (1 - 2 * target) * 20
    assert L.dice_loss(good, target).item() < 1e-3
    assert L.dice_loss(bad, target).item() > 0.99
    assert L.soft_bce(good, target, 0.3) < L.soft_bce(good / 10, target, 0.3)
    labels = target[:, 0].long()
    logits = torch.cat([-good, good], dim=1)
    assert L.soft_ce(logits, labels, 0.1).item() < 1e-3


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    torch.manual_seed(1)
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(L.ssim(x, x), torch.ones(2), atol=1e-5)
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert (L.ssim(x, noisy) < 0.9).all()
    d = L.perceptual_distance(x * 2 - 1, noisy * 2 - 1)
    assert d.shape == (2,) and (d > 0.1).all()


def test_noise_regulariser_penalises_smooth_maps_per_sample():
    torch.manual_seed(2)
    white = torch.randn(1, 1, 16, 16)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(1, 1, 20, 20), 5, 1) * 3
    reg = L.noise_regularize([torch.cat([white, smooth])])
    assert reg.shape == (2,) and reg[1] > 10 * reg[0]
    maps = [torch.randn(3, 1, 8, 8) * 4 + 2]
    L.noise_normalize_(maps)
    assert torch.allclose(maps[0].flatten(1).mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(maps[0].flatten(1).std(1), torch.ones(3), atol=1e-5)
