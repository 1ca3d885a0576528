"""The SSN head, sampler and loss, and the paper's toy problem (Monteiro et al. 2020)."""

import math

import pytest
import torch
import torch.nn.functional as F

from segmentation.ssn import (
    SSNConfig,
    SSNHead,
    SSNOutput,
    StochasticSegmentationNetwork,
    mc_log_likelihood,
    mc_loss,
    sample_logits,
    to_torch_distribution,
)
from segmentation.unet import UNetConfig

pytestmark = pytest.mark.usefixtures("single_threaded")  # tiny tensors: one thread is fastest


def random_output(B=2, R=3, C=2, H=2, W=3, seed=0, diagonal=False):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(B, C, H, W, generator=g)
    factor = None if diagonal else torch.randn(B, R, C, H, W, generator=g)
    diag = torch.rand(B, C, H, W, generator=g) + 0.1
    return SSNOutput(mean, factor, diag)


def test_head_shapes_and_positive_diagonal():
    head = SSNHead(8, 3, SSNConfig(rank=4))
    out = head(torch.randn(2, 8, 5, 6))
    assert out.mean.shape == (2, 3, 5, 6)
    assert out.cov_factor.shape == (2, 4, 3, 5, 6)
    assert (out.cov_diag > 0).all()
    diag = SSNHead(8, 3, SSNConfig(diagonal=True))(torch.randn(2, 8, 5, 6))
    assert diag.cov_factor is None


def test_roi_masks_the_covariance_not_the_mean():
    torch.manual_seed(0)
    head = SSNHead(4, 2, SSNConfig(rank=2, epsilon=1e-5))
    feats = torch.randn(1, 4, 3, 3)
    roi = torch.zeros(1, 3, 3)
    roi[0, 1, 1] = 1
    full, masked = head(feats), head(feats, roi)
    torch.testing.assert_close(full.mean, masked.mean)
    outside = roi[:, None].expand_as(masked.cov_diag) == 0
    assert torch.allclose(masked.cov_diag[outside], torch.tensor(1e-5))
    assert (masked.cov_factor[:, :, :, 0, 0] == 0).all()
    torch.testing.assert_close(masked.cov_factor[..., 1, 1], full.cov_factor[..., 1, 1])
    # samples outside the ROI stay (almost) at the mean
    s = sample_logits(masked, 50)
    assert (s[:, 0, :, 0, 0] - masked.mean[0, :, 0, 0]).abs().max() < 0.05


@pytest.mark.parametrize("C", [2, 3])
def test_sampler_covariance_is_low_rank_plus_diagonal(C):
    # C = 3: one law over pixel x class logits, classes correlated through the factor
    out = random_output(B=1, R=2, C=C, H=1, W=3)
    s_SE = sample_logits(out, 40000, generator=torch.Generator().manual_seed(1)).reshape(40000, -1)
    P = out.cov_factor.reshape(2, -1).T  # E x R, class-major flattening
    expected = P @ P.T + torch.diag(out.cov_diag.reshape(-1))
    torch.testing.assert_close(torch.cov(s_SE.T), expected, atol=0.15, rtol=0.05)
    torch.testing.assert_close(s_SE.mean(0), out.mean.reshape(-1), atol=0.05, rtol=0)
    # and it is the law torch.distributions builds from the same parameters
    torch.testing.assert_close(to_torch_distribution(out).covariance_matrix[0], expected)


def test_antithetic_pairs_mirror_about_the_mean():
    out = random_output()
    s = sample_logits(out, 6, antithetic=True)
    torch.testing.assert_close((s[:3] + s[3:]) / 2, out.mean.expand(3, -1, -1, -1, -1))
    with pytest.raises(ValueError, match="even"):
        sample_logits(out, 5, antithetic=True)


def test_temperature_zero_gives_the_mean():
    out = random_output()
    s = sample_logits(out, 3, temperature=0.0)
    torch.testing.assert_close(s, out.mean.expand(3, -1, -1, -1, -1))


def test_mc_log_likelihood_by_hand():
    # two samples, one pixel per image: logsumexp of per-sample log-likelihood minus log 2
    logits = torch.tensor([[[[[2.0]], [[0.0]]]], [[[[0.0]], [[1.0]]]]])  # S=2,B=1,C=2,1,1
    target = torch.tensor([[[1]]])
    lp = [-math.log1p(math.exp(2.0)), -math.log1p(math.exp(-1.0))]
    expected = math.log(math.exp(lp[0]) + math.exp(lp[1])) - math.log(2)
    assert mc_log_likelihood(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_one_sample_loss_is_pixel_summed_cross_entropy():
    out = random_output(diagonal=True)
    out = out._replace(cov_diag=torch.full_like(out.cov_diag, 1e-12))
    target = torch.randint(0, 2, (2, 2, 3))
    ce = F.cross_entropy(out.mean, target, reduction="none").sum((1, 2)).mean()
    assert mc_loss(out, target, num_samples=1, antithetic=False).item() == pytest.approx(
        ce.item(), rel=1e-4
    )


def test_full_model_backpropagates_into_every_head():
    model = StochasticSegmentationNetwork(UNetConfig(channels=(4, 8)), 2, SSNConfig(rank=2))
    x, y = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))
    model.loss(x, y).backward()
    for name in ("mean", "log_cov_diag", "cov_factor"):
        assert getattr(model.head, name).weight.grad.abs().sum() > 0, name
    assert model.sample(x, 4).shape == (4, 2, 8, 8)


def test_three_class_model_samples_and_loss():
    # background / lung field / nodule: the demo's SSN on a tiny input
    torch.manual_seed(0)
    model = StochasticSegmentationNetwork(UNetConfig(channels=(4, 8)), 3, SSNConfig(rank=2))
    x = torch.randn(2, 1, 8, 8)
    y = torch.randint(0, 3, (2, 8, 8))
    out = model(x)
    assert out.mean.shape == (2, 3, 8, 8) and out.cov_diag.shape == (2, 3, 8, 8)
    assert out.cov_factor.shape == (2, 2, 3, 8, 8)
    assert sample_logits(out, 4).shape == (4, 2, 3, 8, 8)
    labels = model.sample(x, 64, generator=torch.Generator().manual_seed(0))
    assert labels.shape == (64, 2, 8, 8) and set(labels.unique().tolist()) == {0, 1, 2}
    loss = model.loss(x, y)
    loss.backward()
    assert torch.isfinite(loss) and model.head.cov_factor.weight.grad.abs().sum() > 0
    # with no noise the loss is the pixel-summed 3-class cross-entropy of the mean
    quiet = out._replace(cov_factor=torch.zeros_like(out.cov_factor),
                         cov_diag=torch.full_like(out.cov_diag, 1e-12))  # fmt: skip
    ce = F.cross_entropy(out.mean, y, reduction="none").sum((1, 2)).mean()
    assert mc_loss(quiet, y, 4).item() == pytest.approx(ce.item(), rel=1e-4)


def test_head_refuses_binary_with_implied_background():
    with pytest.raises(ValueError, match="num_classes"):
        SSNHead(4, 1, SSNConfig())


def _train_toy(diagonal: bool, length=21, steps=150, seed=0):
    """Sec. 4 toy problem: 1-D targets, first third 1, middle third all-0 or all-1, last 0.

    One-hot position features make the 1x1 convolutions of the real head free per-position
    parameters, as in the official ``toy_problem.py``.
    """
    torch.manual_seed(seed)
    k = length // 3
    head = SSNHead(length, 2, SSNConfig(rank=2, diagonal=diagonal))
    feats = torch.eye(length).reshape(1, length, 1, length)
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(steps):
        middle = (torch.rand(16) < 0.5).long()
        target = torch.zeros(16, 1, length, dtype=torch.long)
        target[:, :, :k] = 1
        target[:, :, k : 2 * k] = middle[:, None, None]
        loss = mc_loss(head(feats.expand(16, -1, -1, -1)), target, 20, antithetic=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        s = sample_logits(head(feats), 2000).argmax(2)[:, 0, 0].float()  # S, L
    block = s[:, k : 2 * k]
    p_all0 = (block.sum(1) == 0).float().mean().item()
    p_all1 = (block.sum(1) == k).float().mean().item()
    corr = torch.corrcoef(block.T)[~torch.eye(k, dtype=torch.bool)].nan_to_num(0).mean().item()
    fixed_ok = (s[:, :k] == 1).float().mean().item() > 0.95 and bool((s[:, 2 * k :] == 0).all())
    return p_all0, p_all1, corr, fixed_ok


def test_toy_problem_low_rank_samples_the_joint_modes():
    p0, p1, corr, fixed_ok = _train_toy(diagonal=False)
    assert fixed_ok
    assert corr > 0.9  # the middle block moves as one
    assert min(p0, p1) > 0.3 and p0 + p1 > 0.9  # both modes, about equally often


def test_toy_problem_diagonal_model_cannot():
    p0, p1, corr, fixed_ok = _train_toy(diagonal=True)
    assert fixed_ok
    assert corr < 0.2  # pixels are independent given the input
    assert min(p0, p1) < 0.1  # never a coherent bimodal block


def test_mean_warmup_trains_only_the_mean():
    from segmentation.models import training_loss

    model = StochasticSegmentationNetwork(UNetConfig(channels=(4, 8)), 2, SSNConfig(rank=2))
    x, y = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))
    loss = training_loss(model, x, y, mean_only=True)
    expected = F.cross_entropy(model(x).mean, y)  # train-mode batch-norm: same batch, same value
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert model.head.cov_factor.weight.grad is None and model.head.log_cov_diag.weight.grad is None
    assert model.head.mean.weight.grad.abs().sum() > 0


def test_factor_init_scale_shrinks_only_the_factor_conv():
    torch.manual_seed(0)
    full = SSNHead(8, 2, SSNConfig(rank=3))
    torch.manual_seed(0)
    small = SSNHead(8, 2, SSNConfig(rank=3, factor_init_scale=0.1))
    assert torch.allclose(small.cov_factor.weight, 0.1 * full.cov_factor.weight)
    assert torch.allclose(small.cov_factor.bias, 0.1 * full.cov_factor.bias)
    assert torch.equal(small.mean.weight, full.mean.weight)
    feats = torch.randn(1, 8, 4, 4)
    assert torch.allclose(small(feats).cov_factor, 0.1 * full(feats).cov_factor, atol=1e-6)
    with pytest.raises(ValueError, match="factor_init_scale"):
        SSNConfig(factor_init_scale=-1.0).validate()
