"""The Matryoshka BatchTopK sparse autoencoder (Bussmann et al. 2025, arXiv 2503.17547).

The module holds the weights in the layout of dictionary_learning's ``MatryoshkaBatchTopKSAE``
(``W_enc`` [d_in, d_sae], ``W_dec`` [d_sae, d_in], unit-norm decoder rows) and implements the
*inference* encoder: ``f = ReLU(pre) * (pre > threshold)`` with
``pre = (x - b_dec) W_enc + b_enc``, so one token's code never depends on the rest of its batch.

Training (BatchTopK over the whole batch, nested prefix losses, aux-k) lives in
:mod:`workbench.sae.step`, which computes forward and backward by hand with sparse operations;
:func:`reference_losses` below is the same objective written densely with autograd, kept as the
executable specification that the fast step is tested against.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn


class SAEShapeError(ValueError):
    """Inconsistent SAE hyper-parameters (group sizes, k, widths)."""


def check_group_sizes(d_sae: int, group_sizes: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Validate Matryoshka group sizes: positive integers summing to ``d_sae``."""
    sizes = tuple(int(g) for g in group_sizes)
    if not sizes or any(g <= 0 for g in sizes):
        raise SAEShapeError(f"group_sizes must be positive integers, got {list(sizes)}")
    if sum(sizes) != d_sae:
        raise SAEShapeError(f"group_sizes {list(sizes)} sum to {sum(sizes)}, not d_sae={d_sae}")
    return sizes


def group_sizes_from_fractions(d_sae: int, fractions: tuple[float, ...] | list[float]) -> tuple:
    """Group sizes from fractions of ``d_sae``; the last group takes the remainder.

    Same rule as dictionary_learning's ``group_fractions`` (paper Sec. 3: prefixes m_1<...<m_n).
    """
    if not fractions or any(f <= 0 for f in fractions) or sum(fractions) > 1 + 1e-6:
        raise SAEShapeError(f"group fractions must be positive and sum to <= 1, got {fractions}")
    sizes = [max(1, int(math.floor(f * d_sae))) for f in fractions[:-1]]
    sizes.append(d_sae - sum(sizes))
    return check_group_sizes(d_sae, sizes)


class Losses(NamedTuple):
    """Training objective terms for one batch (normalised activation units)."""

    total: torch.Tensor
    prefix_mse: torch.Tensor  # [n_groups] mean over tokens of ||x - x_hat_i||^2
    aux: torch.Tensor
    latents: torch.Tensor  # [B, F] BatchTopK code


class MatryoshkaSAE(nn.Module):
    """A Matryoshka BatchTopK SAE with a scalar (or per-latent) inference threshold.

    Attributes follow the project contract: ``W_enc_DF``, ``b_enc_F``, ``W_dec_FD`` (unit-norm
    rows), ``b_dec_D``, ``threshold`` (buffer), ``d_in``, ``d_sae``, ``k``, ``group_sizes``,
    ``hook_name``.
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        k: int | None,
        group_sizes: tuple[int, ...] | None = None,
        hook_name: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if d_in <= 0 or d_sae <= 0:
            raise SAEShapeError(f"d_in and d_sae must be positive, got {d_in}, {d_sae}")
        if k is not None and not 0 < k <= d_sae:
            raise SAEShapeError(f"k={k} must be in 1..d_sae={d_sae}")
        self.d_in, self.d_sae, self.k = int(d_in), int(d_sae), None if k is None else int(k)
        self.group_sizes = check_group_sizes(d_sae, group_sizes or (d_sae,))
        self.hook_name = hook_name
        kw = {"dtype": dtype, "device": device}
        self.W_enc_DF = nn.Parameter(torch.empty(d_in, d_sae, **kw))
        self.b_enc_F = nn.Parameter(torch.zeros(d_sae, **kw))
        self.W_dec_FD = nn.Parameter(torch.empty(d_sae, d_in, **kw))
        self.b_dec_D = nn.Parameter(torch.zeros(d_in, **kw))
        # -1 = "not estimated yet": inference then reduces to a plain ReLU (dictionary_learning).
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float32, device=device))
        self.reset_parameters()

    @property
    def group_ends(self) -> tuple[int, ...]:
        """Prefix widths m_1 < ... < m_n (cumulative group sizes)."""
        out, acc = [], 0
        for g in self.group_sizes:
            acc += g
            out.append(acc)
        return tuple(out)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Unit-norm random decoder rows and ``W_enc = W_dec^T`` (dictionary_learning init)."""
        w = torch.randn(self.d_sae, self.d_in, generator=generator, dtype=torch.float32)
        w /= w.norm(dim=1, keepdim=True)
        self.W_dec_FD.copy_(w)
        self.W_enc_DF.copy_(w.T)
        self.b_enc_F.zero_()
        self.b_dec_D.zero_()
        self.threshold.fill_(-1.0)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Renormalise decoder rows to unit norm (after each optimiser step)."""
        self.W_dec_FD.div_(self.W_dec_FD.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def pre_acts(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``(x - b_dec) W_enc + b_enc`` (any leading dimensions)."""
        x_ND = x_BD.reshape(-1, self.d_in).to(self.W_enc_DF.dtype)
        pre_NF = torch.addmm(self.b_enc_F, x_ND - self.b_dec_D, self.W_enc_DF)
        return pre_NF.view(*x_BD.shape[:-1], self.d_sae)

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Inference code: ReLU, then zero every activation not above the learned threshold."""
        pre_BF = self.pre_acts(x_BD)
        return pre_BF.relu() * (pre_BF > self.threshold.to(pre_BF.dtype))

    def encode_batch_topk(self, x_BD: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Training code: keep the ``k * B`` largest ReLU activations of the whole batch."""
        k = k or self.k
        if k is None:
            raise SAEShapeError("this SAE has no k; BatchTopK needs one")
        acts_BF = self.pre_acts(x_BD).relu()
        flat = acts_BF.flatten()
        top = flat.topk(min(k * (flat.numel() // self.d_sae), flat.numel()), sorted=False)
        return torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(acts_BF)

    def decode(self, latents_BF: torch.Tensor, n_groups: int | None = None) -> torch.Tensor:
        """Reconstruction from the first ``n_groups`` Matryoshka groups (all by default)."""
        width = self.d_sae if n_groups is None else self.group_ends[n_groups - 1]
        lat = latents_BF[..., :width].to(self.W_dec_FD.dtype)
        return lat @ self.W_dec_FD[:width] + self.b_dec_D

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Inference reconstruction ``decode(encode(x))``."""
        return self.decode(self.encode(x_BD))

    @torch.no_grad()
    def scaled(self, factor: float) -> MatryoshkaSAE:
        """A copy that takes activations multiplied by ``factor`` (normalisation folded in).

        An SAE trained on ``x / s`` becomes one on raw ``x`` with ``scaled(s)``: biases and the
        threshold scale by ``s``, weights stay (dictionary_learning ``scale_biases``); latents
        and reconstructions then come out in raw units.
        """
        out = MatryoshkaSAE(
            self.d_in,
            self.d_sae,
            self.k,
            self.group_sizes,
            self.hook_name,
            dtype=self.W_enc_DF.dtype,
            device=self.W_enc_DF.device,
        )
        out.load_state_dict(self.state_dict())
        out.b_enc_F.mul_(factor)
        out.b_dec_D.mul_(factor)
        out.threshold = torch.where(out.threshold >= 0, out.threshold * factor, out.threshold)
        return out


def reference_losses(
    sae: MatryoshkaSAE,
    x_BD: torch.Tensor,
    dead_F: torch.Tensor | None = None,
    k_aux: int = 0,
    aux_alpha: float = 1 / 32,
) -> Losses:
    """Dense autograd form of the training objective (the specification of ``step.py``).

    loss = sum_i mean_b ||x_b - x_hat_i,b||^2 + aux_alpha * aux, where x_hat_i decodes the
    BatchTopK code through the first i groups (paper Sec. 3, Eq. 3) and aux is the top-``k_aux``
    dead-latent fit to the detached residual, divided by the residual variance (Gao et al. 2024,
    Appendix A.2; dictionary_learning ``get_auxiliary_loss``).
    """
    latents_BF = sae.encode_batch_topk(x_BD)
    mses = []
    for i in range(len(sae.group_sizes)):
        mses.append((x_BD - sae.decode(latents_BF, i + 1)).pow(2).sum(-1).mean())
    prefix = torch.stack(mses)
    aux = x_BD.new_zeros(())
    if dead_F is not None and k_aux > 0 and bool(dead_F.any()):
        residual_BD = (x_BD - sae.decode(latents_BF)).detach()
        acts_BF = sae.pre_acts(x_BD).relu()
        masked = torch.where(dead_F[None], acts_BF, torch.full_like(acts_BF, -math.inf))
        top = masked.topk(min(k_aux, int(dead_F.sum())), dim=-1)
        aux_BF = torch.zeros_like(acts_BF).scatter(-1, top.indices, top.values.clamp_min(0))
        recon = aux_BF @ sae.W_dec_FD
        var = (residual_BD - residual_BD.mean(0)).pow(2).sum(-1).mean()
        aux = ((residual_BD - recon).pow(2).sum(-1).mean() / var).nan_to_num(0.0)
    return Losses(prefix.sum() + aux_alpha * aux, prefix.detach(), aux.detach(), latents_BF)
