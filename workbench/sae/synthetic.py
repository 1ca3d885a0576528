"""Synthetic activations in superposition: sparse combinations of many feature directions.

Used by tests and ``benchmarks/bench_sae.py``: more ground-truth features than dimensions,
each token mixing ``active`` of them drawn with Zipf-like frequencies (frequent features
first, as the Matryoshka prefixes expect), plus a little dense noise and a mean offset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.sae.matryoshka import MatryoshkaSAE


def superposition(
    n_tokens: int,
    d_in: int,
    n_features: int | None = None,
    active: int = 8,
    noise: float = 0.02,
    seed: int = 0,
) -> torch.Tensor:
    """``[n_tokens, d_in]`` float32 activations; ``active`` feature draws per token."""
    g = torch.Generator().manual_seed(seed)
    n_features = n_features or 4 * d_in
    dirs_FD = torch.randn(n_features, d_in, generator=g)
    dirs_FD /= dirs_FD.norm(dim=1, keepdim=True)
    freq_F = 1.0 / torch.arange(1, n_features + 1, dtype=torch.float32) ** 0.7
    offset_D = torch.randn(d_in, generator=g) * 0.5
    # per token: `active` draws from the frequency distribution (sparse; no dense mask)
    cdf_F = (freq_F / freq_F.sum()).cumsum(0)
    u = torch.rand(n_tokens * active, generator=g) * cdf_F[-1]
    idx_NA = torch.searchsorted(cdf_F, u).clamp_(max=n_features - 1)
    mag = torch.rand(n_tokens * active, generator=g) * 1.5 + 0.5
    offsets = torch.arange(0, n_tokens * active, active)
    out = F.embedding_bag(idx_NA, dirs_FD, offsets, mode="sum", per_sample_weights=mag)
    out += noise * torch.randn(n_tokens, d_in, generator=g) + offset_D
    return out


def signed_identity_sae(d: int, k: int, hook_name: str | None = None) -> MatryoshkaSAE:
    """An SAE with known answers: feature f < d reads +x[f], feature d + f reads -x[f].

    Encoder and decoder are [I, -I], biases zero, inference threshold 0.5, groups of d/2 and
    3d/2 latents. Tests and the app's tiny run plant activations and know which feature fires.
    """
    sae = MatryoshkaSAE(d, 2 * d, k=k, group_sizes=(d // 2, d + d // 2), hook_name=hook_name)
    with torch.no_grad():
        eye_DD = torch.eye(d)
        sae.W_enc_DF.copy_(torch.cat([eye_DD, -eye_DD], dim=1))
        sae.W_dec_FD.copy_(torch.cat([eye_DD, -eye_DD], dim=0))
        sae.b_enc_F.zero_()
        sae.b_dec_D.zero_()
        sae.threshold.fill_(0.5)
    return sae
