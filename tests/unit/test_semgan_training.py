"""SemanticGAN training steps: gradient routing, update order, EMA, encoder and TTO inversion."""

from pathlib import Path

import numpy as np
import pytest
import torch

from segmentation.semantic_gan import gan_steps as S
from segmentation.semantic_gan.config import SemanticGANConfig
from segmentation.semantic_gan.encoder_steps import build_encoder_phase, encoder_iteration
from segmentation.semantic_gan.generator import labels_to_seg_target
from segmentation.semantic_gan.inference import SemanticGANSegmenter, tto_lr

pytestmark = pytest.mark.usefixtures("single_threaded")

TINY = dict(
    image_size=32,
    latent_dim=16,
    n_mlp=2,
    channel_base=256,
    channel_max=16,
    dseg_ndf=8,
    enc_width=8,
    enc_feature_dim=16,
    batch_size=4,
)


def _cfg(**kw) -> SemanticGANConfig:
    return SemanticGANConfig(data=Path("."), out=Path("."), **{**TINY, **kw})


def _batch():
    torch.manual_seed(0)
    img = torch.rand(4, 1, 32, 32) * 2 - 1
    labels = torch.zeros(4, 32, 32, dtype=torch.long)
    labels[:, 8:24, 6:14] = 1
    return img, labels, labels_to_seg_target(labels, 1)


def _snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(module, before) -> bool:
    return any(not torch.equal(p, b) for p, b in zip(module.parameters(), before, strict=True))


def test_mask_discriminator_gradient_never_reaches_the_image_branch():
    torch.manual_seed(1)
    gan = S.build_gan(_cfg())
    img, _, mask = _batch()
    S.train_only(gan, gan.g)
    parts = S.generator_losses(gan, img, mask, ([torch.randn(4, 16)], None), 2.0)
    parts["out"].image.retain_grad()
    (parts["g_seg_adv"] + parts["g_seg_feat"]).backward()
    to_rgb = [gan.g.to_rgb1, *gan.g.to_rgbs]
    assert all(p.grad is None or not p.grad.any() for m in to_rgb for p in m.parameters())
    assert parts["out"].image.grad is None  # the image entered D_seg detached
    to_seg = [gan.g.to_seg1, *gan.g.to_segs]
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for m in to_seg for p in m.parameters()
    )
    trunk = gan.g.convs[-1].conv.weight  # shared synthesis features do learn from D_seg
    assert trunk.grad is not None and trunk.grad.abs().sum() > 0


def test_image_discriminator_loss_does_train_the_image_branch():
    torch.manual_seed(2)
    gan = S.build_gan(_cfg())
    img, _, mask = _batch()
    S.train_only(gan, gan.g)
    parts = S.generator_losses(gan, img, mask, ([torch.randn(4, 16)], None), 2.0)
    parts["g_img"].backward()
    assert gan.g.to_rgbs[-1].conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in gan.g.to_segs[-1].parameters())


def test_each_step_updates_only_its_own_network():
    torch.manual_seed(3)
    gan = S.build_gan(_cfg())
    img, _, mask = _batch()
    rng = np.random.default_rng(0)
    z = S.latents(4, 16, 0.9, gan.g.n_latent, rng)
    for step, owner in (
        (lambda: S.d_img_step(gan, img, z), gan.d_img),
        (lambda: S.d_seg_step(gan, img, mask, z), gan.d_seg),
        (lambda: S.g_step(gan, img, mask, z, 2.0), gan.g),
        (lambda: S.g_reg_step(gan, z, 2.0, 4), gan.g),
    ):
        before = {m: _snapshot(m) for m in (gan.g, gan.d_img, gan.d_seg)}
        row = step()
        assert all(np.isfinite(v) for v in row.values())
        for m, snap in before.items():
            assert _changed(m, snap) == (m is owner)


def test_lazy_r1_step_trains_both_discriminators():
    torch.manual_seed(4)
    gan = S.build_gan(_cfg())
    img, _, mask = _batch()
    before_img, before_seg, before_g = _snapshot(gan.d_img), _snapshot(gan.d_seg), _snapshot(gan.g)
    row = S.d_reg_step(gan, img, img, mask, 10.0, 16)
    assert row["r1_img"] >= 0 and row["r1_seg"] >= 0
    assert _changed(gan.d_img, before_img) and _changed(gan.d_seg, before_seg)
    assert not _changed(gan.g, before_g)


def test_ema_accumulates_towards_the_generator():
    torch.manual_seed(5)
    gan = S.build_gan(_cfg())
    with torch.no_grad():
        for p in gan.g.parameters():
            p.add_(1.0)
    old = _snapshot(gan.g_ema)
    S.accumulate(gan.g_ema, gan.g, 0.9)
    for e, o, g in zip(gan.g_ema.parameters(), old, gan.g.parameters(), strict=True):
        assert torch.allclose(e, 0.9 * o + 0.1 * g, atol=1e-6)


def test_lazy_regularisation_scales_adam():
    gan = S.build_gan(_cfg(lr=0.002, d_reg_every=16, g_reg_every=4))
    assert gan.d_img_opt.param_groups[0]["lr"] == pytest.approx(0.002 * 16 / 17)
    assert gan.g_opt.param_groups[0]["betas"] == pytest.approx((0.0, 0.99 ** (4 / 5)))


def test_encoder_training_lowers_reconstruction_of_fixed_images():
    torch.manual_seed(6)
    cfg = _cfg(enc_steps=40, enc_lr=3e-3)
    seg = SemanticGANSegmenter(cfg.spec())
    phase = build_encoder_phase(seg.encoder, seg.generator, cfg.enc_lr)
    with torch.no_grad():  # targets the frozen generator can produce exactly (up to noise)
        target = seg.generator([torch.randn(4, 16)]).image
    labels = (target[:, 0] > target.mean()).long()
    first = encoder_iteration(phase, cfg, target, target, labels, 0)
    for i in range(1, 40):
        last = encoder_iteration(phase, cfg, target, target, labels, i)
    assert last["e_unlabel_mse"] < 0.7 * first["e_unlabel_mse"]


def test_test_time_optimisation_lowers_the_reconstruction_error():
    torch.manual_seed(7)
    seg = SemanticGANSegmenter(_cfg(tto_steps=40).spec())
    with torch.no_grad():
        target = (seg.generator([torch.randn(2, 16)]).image.clamp(-1, 1) + 1) / 2
    seg.inference.steps = 0
    start = seg.invert(target, torch.Generator().manual_seed(0))
    seg.inference.steps = 40
    inv = seg.invert(target, torch.Generator().manual_seed(0))
    assert len(inv.losses) == 40 and inv.losses[-1] < inv.losses[0]
    err = lambda img: ((img.clamp(-1, 1) + 1) / 2 - target).pow(2).mean().item()  # noqa: E731
    assert err(inv.image) < err(start.image)
    assert all(p.requires_grad for p in seg.parameters())  # flags restored after inversion
    assert seg.segment(target).shape == (2, 2, 32, 32)


def test_tto_learning_rate_schedule():
    assert tto_lr(0.0, 0.1, 0.25, 0.05) == 0.0
    assert tto_lr(0.5, 0.1, 0.25, 0.05) == pytest.approx(0.1)
    assert tto_lr(0.875, 0.1, 0.25, 0.05) == pytest.approx(0.05)
    assert tto_lr(0.5, 0.1, 0.25, 0.0) == pytest.approx(0.1)


def test_config_errors_name_the_field():
    from workbench.config import ConfigError

    with pytest.raises(ConfigError, match="labelled_fraction"):
        _cfg(labelled_fraction=0.0).validate()
    with pytest.raises(ConfigError, match="power of two"):
        _cfg(image_size=48).validate()
    with pytest.raises(ConfigError, match="train_subset"):
        _cfg(train_subset="sex:F").validate()
