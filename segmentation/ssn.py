"""Stochastic Segmentation Networks (Monteiro et al., NeurIPS 2020) for 2-D images.

The logits of a whole image are one random vector eta in R^{C*H*W} with a low-rank multivariate
normal law (paper Sec. 3.1, eq. 4)::

    eta ~ N(mu, Sigma),   Sigma = P P^T + D,   P in R^{(C*H*W) x R},  D diagonal

mu, log D and P come from three 1x1 convolutions on the backbone's features. Samples are
drawn by reparameterisation, ``mu + P eps_R + sqrt(D) eps`` (never a Cholesky factor, which
is what makes the official code fail on large uniform regions, issue #4), and the model is
trained with the Monte-Carlo estimate of the marginal log-likelihood (Sec. 3.2, eq. 8)::

    log p(y|x) ~= logsumexp_m sum_pixels log softmax(eta^(m))_y  -  log M

Flattening is class-major, the event index is ``c*H*W + h*W + w``; the factor is split as
(R, C) like the official PyTorch code. ``diagonal=True`` is the paper's diagonal ablation
(P = 0). A region-of-interest mask zeroes P and D outside it (``cov_diag = D*roi + eps``),
the official remedy for covariance blowing up in uniform background.

Read top to bottom: config -> output tuple -> head -> sampling -> loss -> full model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from segmentation.unet import UNet, UNetConfig


@dataclass
class SSNConfig:
    """The SSN distribution head and its Monte-Carlo loss."""

    rank: int = 10
    """Rank R of the covariance factor P (paper default 10)."""
    epsilon: float = 1e-5
    """Added to exp(log-diagonal) so the covariance stays positive definite."""
    diagonal: bool = False
    """The diagonal-only ablation: no factor, independent pixel logits."""
    mc_samples: int = 20
    """Monte-Carlo samples M per image in the loss (paper: 20)."""
    antithetic: bool = True
    """Draw M/2 samples and use their mirror images about the mean too (official PyTorch)."""
    factor_init_scale: float = 1.0
    """Multiplies the covariance-factor convolution's initial weights and bias. Below 1 the
    model starts near the deterministic U-Net and grows covariance only where the loss asks."""

    def validate(self) -> None:
        if self.rank < 1 and not self.diagonal:
            raise ValueError(f"SSNConfig.rank must be >= 1, got {self.rank}")
        if self.mc_samples < 1 or (self.antithetic and self.mc_samples % 2):
            raise ValueError(
                f"SSNConfig.mc_samples must be >=1 (even if antithetic), got {self.mc_samples}"
            )
        if self.epsilon <= 0:
            raise ValueError("SSNConfig.epsilon must be > 0")
        if self.factor_init_scale < 0:
            raise ValueError("SSNConfig.factor_init_scale must be >= 0")


class SSNOutput(NamedTuple):
    """Parameters of the low-rank normal over one logit map per image."""

    mean: torch.Tensor
    """[B, C, H, W] logit mean mu; ``argmax`` over C is the point prediction."""
    cov_factor: torch.Tensor | None
    """[B, R, C, H, W] covariance factor P; None for the diagonal model."""
    cov_diag: torch.Tensor
    """[B, C, H, W] diagonal D = exp(log-diagonal) + epsilon (ROI-masked when given)."""


class SSNHead(nn.Module):
    """Three 1x1 convolutions: logit mean, log-diagonal and rank-R factor (Sec. 3.1)."""

    def __init__(self, in_channels: int, num_classes: int, cfg: SSNConfig):
        super().__init__()
        cfg.validate()
        if num_classes < 2:
            raise ValueError("SSN needs num_classes >= 2 (softmax likelihood, no implied bg)")
        self.cfg, self.num_classes = cfg, num_classes
        self.mean = nn.Conv2d(in_channels, num_classes, 1)
        self.log_cov_diag = nn.Conv2d(in_channels, num_classes, 1)
        self.cov_factor = (
            None if cfg.diagonal else nn.Conv2d(in_channels, num_classes * cfg.rank, 1)
        )
        if self.cov_factor is not None and cfg.factor_init_scale != 1.0:
            with torch.no_grad():
                self.cov_factor.weight.mul_(cfg.factor_init_scale)
                self.cov_factor.bias.mul_(cfg.factor_init_scale)

    def forward(self, feats_BFHW: torch.Tensor, roi_BHW: torch.Tensor | None = None) -> SSNOutput:
        B, _, H, W = feats_BFHW.shape
        mean = self.mean(feats_BFHW)
        cov_diag = self.log_cov_diag(feats_BFHW).exp()
        factor = None
        if self.cov_factor is not None:
            factor = self.cov_factor(feats_BFHW).view(B, self.cfg.rank, self.num_classes, H, W)
        if roi_BHW is not None:
            roi = roi_BHW.to(mean.dtype)[:, None]  # B,1,H,W
            cov_diag = cov_diag * roi
            factor = None if factor is None else factor * roi[:, None]
        return SSNOutput(mean, factor, cov_diag + self.cfg.epsilon)


def sample_logits(
    out: SSNOutput,
    num_samples: int,
    antithetic: bool = False,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw logit maps ``[S, B, C, H, W]`` by reparameterisation: mu + P eps_R + sqrt(D) eps.

    ``antithetic`` draws S/2 deviations d and returns mu + d and mu - d (the official
    "fixed re-parametrisation trick"): the sample mean is exact and the estimate less noisy.
    ``temperature`` scales the noise, as the official evaluation sampler does.
    """
    mean = out.mean
    B = mean.shape[0]
    n = num_samples // 2 if antithetic else num_samples
    if antithetic and num_samples % 2:
        raise ValueError(f"antithetic sampling needs an even sample count, got {num_samples}")
    mean_BE = mean.reshape(B, -1)
    kw = {"device": mean.device, "dtype": mean.dtype, "generator": generator}
    dev_SBE = out.cov_diag.reshape(B, -1).sqrt() * torch.randn(n, *mean_BE.shape, **kw)
    if out.cov_factor is not None:
        factor_BRE = out.cov_factor.reshape(B, out.cov_factor.shape[1], -1)
        eps_SBR = torch.randn(n, B, factor_BRE.shape[1], **kw)
        dev_SBE = dev_SBE + torch.einsum("sbr,bre->sbe", eps_SBR, factor_BRE)
    if temperature != 1.0:
        dev_SBE = dev_SBE * temperature
    if antithetic:
        dev_SBE = torch.cat([dev_SBE, -dev_SBE], dim=0)
    return (mean_BE + dev_SBE).view(num_samples, *mean.shape)


def mc_log_likelihood(logits_SBCHW: torch.Tensor, target_BHW: torch.Tensor) -> torch.Tensor:
    """Per-image MC log-likelihood ``[B]``: logsumexp over samples of the pixel-SUMMED
    categorical log-likelihood, minus log S (Sec. 3.2, eq. 8; official ``losses.py``).
    """
    S, B, C, H, W = logits_SBCHW.shape
    target_SBHW = target_BHW.long().unsqueeze(0).expand(S, B, H, W)
    logp_SBHW = -F.cross_entropy(
        logits_SBCHW.reshape(S * B, C, H, W), target_SBHW.reshape(S * B, H, W), reduction="none"
    ).view(S, B, H, W)
    return torch.logsumexp(logp_SBHW.sum(dim=(2, 3)), dim=0) - math.log(S)


def mc_loss(
    out: SSNOutput,
    target_BHW: torch.Tensor,
    num_samples: int = 20,
    antithetic: bool = True,
) -> torch.Tensor:
    """Negative MC log-likelihood, averaged over the batch (the SSN training objective)."""
    logits = sample_logits(out, num_samples, antithetic=antithetic)
    return -mc_log_likelihood(logits, target_BHW).mean()


def to_torch_distribution(out: SSNOutput) -> torch.distributions.Distribution:
    """The same law as a ``torch.distributions`` object over flattened logits ``[B, C*H*W]``.

    For comparison and log-densities only; it factorises the R x R capacitance matrix, which
    can fail where ``sample_logits`` cannot. The diagonal model gives an Independent Normal.
    """
    B = out.mean.shape[0]
    loc, diag = out.mean.reshape(B, -1), out.cov_diag.reshape(B, -1)
    if out.cov_factor is None:
        return torch.distributions.Independent(torch.distributions.Normal(loc, diag.sqrt()), 1)
    R = out.cov_factor.shape[1]
    factor_BER = out.cov_factor.reshape(B, R, -1).transpose(1, 2)
    return torch.distributions.LowRankMultivariateNormal(loc, factor_BER, diag)


class StochasticSegmentationNetwork(nn.Module):
    """U-Net backbone + SSN head. ``forward`` gives :class:`SSNOutput`."""

    def __init__(self, unet_cfg: UNetConfig, num_classes: int, cfg: SSNConfig):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.backbone = UNet(unet_cfg)
        self.head = SSNHead(self.backbone.out_channels, num_classes, cfg)

    def forward(self, x_BCHW: torch.Tensor, roi_BHW: torch.Tensor | None = None) -> SSNOutput:
        return self.head(self.backbone(x_BCHW).features, roi_BHW)

    def loss(
        self, x_BCHW: torch.Tensor, target_BHW: torch.Tensor, roi_BHW: torch.Tensor | None = None
    ) -> torch.Tensor:
        return mc_loss(self(x_BCHW, roi_BHW), target_BHW, self.cfg.mc_samples, self.cfg.antithetic)

    @torch.no_grad()
    def sample(
        self,
        x_BCHW: torch.Tensor,
        num_samples: int,
        roi_BHW: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Label-map samples ``[S, B, H, W]`` (argmax of each logit sample)."""
        logits = sample_logits(self(x_BCHW, roi_BHW), num_samples, generator=generator)
        return logits.argmax(dim=2)
