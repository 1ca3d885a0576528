"""Synthetic activations in superposition: sparse combinations of many feature directions.

Used by tests and ``benchmarks/bench_sae.py``: more ground-truth features than dimensions,
each token mixing ``active`` of them drawn with Zipf-like frequencies (frequent features
first, as the Matryoshka prefixes expect), plus a little dense noise and a mean offset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.sae.matryoshka import MatryoshkaSAE


class Superposition:
    """A fixed set of feature directions in superposition; :meth:`sample` draws tokens.

    More ground-truth features than dimensions (``n_features``, default 4 d_in), Zipf-like
    frequencies, ``active`` draws per token with magnitudes in [0.5, 2], dense noise and a
    mean offset. One object serves any number of tokens, so a benchmark can stream millions.
    """

    def __init__(
        self,
        d_in: int,
        n_features: int | None = None,
        active: int = 8,
        noise: float = 0.02,
        seed: int = 0,
    ):
        self.generator = torch.Generator().manual_seed(seed)
        g = self.generator
        self.n_features, self.active, self.noise = n_features or 4 * d_in, active, noise
        self.dirs_FD = torch.randn(self.n_features, d_in, generator=g)
        self.dirs_FD /= self.dirs_FD.norm(dim=1, keepdim=True)
        freq_F = 1.0 / torch.arange(1, self.n_features + 1, dtype=torch.float32) ** 0.7
        self.offset_D = torch.randn(d_in, generator=g) * 0.5
        self.cdf_F = (freq_F / freq_F.sum()).cumsum(0)

    def sample(self, n_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n_tokens, d_in]`` float32 tokens (``generator``: the draws' source; default the
        one seeded at construction, continued)."""
        g = generator or self.generator
        a, n_f = self.active, self.n_features
        # per token: `active` draws from the frequency distribution (sparse; no dense mask)
        u = torch.rand(n_tokens * a, generator=g) * self.cdf_F[-1]
        idx_NA = torch.searchsorted(self.cdf_F, u).clamp_(max=n_f - 1)
        mag = torch.rand(n_tokens * a, generator=g) * 1.5 + 0.5
        offsets = torch.arange(0, n_tokens * a, a)
        out = F.embedding_bag(idx_NA, self.dirs_FD, offsets, mode="sum", per_sample_weights=mag)
        out += (
            self.noise * torch.randn(n_tokens, self.dirs_FD.shape[1], generator=g) + self.offset_D
        )
        return out


def superposition(
    n_tokens: int,
    d_in: int,
    n_features: int | None = None,
    active: int = 8,
    noise: float = 0.02,
    seed: int = 0,
) -> torch.Tensor:
    """``[n_tokens, d_in]`` float32 activations; ``active`` feature draws per token."""
    return Superposition(d_in, n_features, active, noise, seed).sample(n_tokens)


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
