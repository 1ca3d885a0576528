"""SemanticGAN building blocks: modulated convolution, FIR resampling, generator, discriminators."""

import math

import pytest
import torch
import torch.nn.functional as F

from segmentation.semantic_gan.discriminators import (
    ImageDiscriminator,
    MultiscalePatchDiscriminator,
    _stddev_group,
)
from segmentation.semantic_gan.generator import (
    GeneratorConfig,
    SegGenerator,
    labels_to_seg_target,
    seg_to_class_logits,
)
from segmentation.semantic_gan.layers import (
    Blur,
    EqualLinear,
    ModulatedConv2d,
    Upsample,
    make_kernel,
    upfirdn2d,
)

pytestmark = pytest.mark.usefixtures("single_threaded")
TINY = GeneratorConfig(size=32, latent_dim=16, n_mlp=2, channel_base=256, channel_max=16)


def test_demodulated_weights_have_unit_norm_per_output_channel():
    torch.manual_seed(0)
    conv = ModulatedConv2d(8, 6, 3, style_dim=5)
    w = conv.modulated_weight(torch.randn(4, 5) * 3)
    assert w.shape == (4, 6, 8, 3, 3)
    norms = w.pow(2).sum(dim=(2, 3, 4))
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    plain = ModulatedConv2d(8, 6, 3, style_dim=5, demodulate=False)
    plain.load_state_dict(conv.state_dict())
    s = torch.randn(4, 5) * 3
    ratio = conv.modulated_weight(s) / plain.modulated_weight(s)
    # demodulation rescales each (sample, output channel) by one factor: 1 / ||w'||
    expect = plain.modulated_weight(s).pow(2).sum(dim=(2, 3, 4)).rsqrt()
    assert torch.allclose(ratio, expect[..., None, None, None].expand_as(ratio), rtol=1e-4)


def test_grouped_convolution_equals_a_per_sample_loop():
    torch.manual_seed(1)
    conv = ModulatedConv2d(4, 3, 3, style_dim=6)
    x, s = torch.randn(5, 4, 9, 9), torch.randn(5, 6)
    w = conv.modulated_weight(s)
    loop = torch.cat([F.conv2d(x[b : b + 1], w[b], padding=1) for b in range(5)])
    assert torch.allclose(conv(x, s), loop, atol=1e-5)


def test_demodulated_output_keeps_unit_variance():
    torch.manual_seed(2)
    conv = ModulatedConv2d(64, 64, 3, style_dim=16)
    out = conv(torch.randn(8, 64, 16, 16), torch.randn(8, 16) * 5)
    inner = out[:, :, 1:-1, 1:-1]  # zero padding lowers the border variance
    assert 0.85 < inner.std().item() < 1.15


def test_upsampling_conv_doubles_the_side():
    conv = ModulatedConv2d(4, 3, 3, style_dim=6, upsample=True)
    assert conv(torch.randn(2, 4, 8, 8), torch.randn(2, 6)).shape == (2, 3, 16, 16)


def test_fir_filters_preserve_a_constant_image():
    x = torch.full((2, 3, 12, 12), 0.7)
    up = Upsample()(x)
    assert up.shape == (2, 3, 24, 24)
    assert torch.allclose(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 0.7))
    blurred = Blur((1, 2))(x)
    assert blurred.shape == x.shape
    assert torch.allclose(blurred[..., 2:-2, 2:-2], torch.full((2, 3, 8, 8), 0.7))
    assert make_kernel((1, 3, 3, 1)).sum().item() == pytest.approx(1.0)


def test_upfirdn_impulse_response_is_the_kernel():
    x = torch.zeros(1, 1, 7, 7)
    x[0, 0, 3, 3] = 1.0
    k = make_kernel((1, 3, 3, 1))
    out = upfirdn2d(x, k, pad=(2, 1))
    assert out.shape == (1, 1, 7, 7)
    assert torch.allclose(out[0, 0, 2:6, 2:6], torch.flip(torch.flip(k, (0,)), (1,)))


def test_equalised_linear_has_unit_gain_whatever_the_lr_multiplier():
    torch.manual_seed(3)
    x = torch.randn(4096, 64)
    for lr_mul in (1.0, 0.01):
        y = EqualLinear(64, 64, lr_mul=lr_mul)(x)
        assert 0.9 < y.std().item() < 1.1


def test_generator_gives_an_image_and_a_mask_from_one_latent():
    torch.manual_seed(4)
    g = SegGenerator(TINY)
    out = g([torch.randn(3, 16)])
    assert out.image.shape == (3, 1, 32, 32) and out.seg.shape == (3, 1, 32, 32)
    assert out.latent.shape == (3, TINY.n_latent, 16) and TINY.n_latent == 2 * 5 - 2
    assert len(g.to_segs) == len(g.to_rgbs) == 3  # ToSEG beside ToRGB at 8, 16 and 32 px
    logits = seg_to_class_logits(out.seg)
    probs = logits.softmax(1)
    assert torch.allclose(probs.sum(1), torch.ones(3, 32, 32))
    assert torch.equal(logits.argmax(1), (torch.sigmoid(out.seg[:, 0]) > 0.5).long())


def test_fixed_noise_makes_synthesis_deterministic_and_mixing_splits_styles():
    torch.manual_seed(5)
    g = SegGenerator(TINY)
    z1, z2 = torch.randn(2, 16), torch.randn(2, 16)
    noise = g.make_noise(2)
    a, b = g([z1], noise=noise), g([z1], noise=noise)
    assert torch.equal(a.image, b.image) and torch.equal(a.seg, b.seg)
    mixed = g([z1, z2], inject_index=3, noise=noise).latent
    assert torch.allclose(mixed[:, :3], g.style(z1)[:, None].expand(2, 3, 16))
    assert torch.allclose(mixed[:, 3:], g.style(z2)[:, None].expand(2, TINY.n_latent - 3, 16))
    with pytest.raises(ValueError, match="inject_index"):
        g([z1, z2], inject_index=TINY.n_latent)
    with pytest.raises(ValueError, match="W\\+ must be"):
        g.synthesis(torch.randn(2, 3, 16))


def test_generator_config_is_validated():
    with pytest.raises(ValueError, match="power of two"):
        SegGenerator(GeneratorConfig(size=48))


def test_real_masks_become_plus_minus_one_maps():
    y = torch.tensor([[[0, 1], [1, 0]]])
    assert torch.equal(labels_to_seg_target(y, 1), torch.tensor([[[[-1.0, 1], [1, -1]]]]))
    three = labels_to_seg_target(torch.tensor([[[0, 2]]]), 3)
    assert three.shape == (1, 3, 1, 2) and three[0, :, 0, 1].tolist() == [-1, -1, 1]


def test_image_discriminator_scores_each_image():
    torch.manual_seed(6)
    d = ImageDiscriminator(32, 1, 256, 16)
    assert d(torch.randn(6, 1, 32, 32)).shape == (6, 1)
    assert _stddev_group(6, 4) == 3 and _stddev_group(8, 4) == 4 and _stddev_group(1, 4) == 1


def test_multiscale_discriminator_returns_features_at_every_scale():
    d = MultiscalePatchDiscriminator(2, ndf=8, n_layers=3, num_d=3)
    out = d(torch.randn(2, 2, 32, 32))
    assert len(out) == 3 and all(len(scale) == 5 for scale in out)
    assert [scale[-1].shape[1] for scale in out] == [1, 1, 1]
    sides = [scale[0].shape[-1] for scale in out]
    assert sides[0] > sides[1] > sides[2]  # full, 1/2 and 1/4 resolution inputs
    assert math.isfinite(sum(s[-1].sum().item() for s in out))
