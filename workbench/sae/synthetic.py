"""Synthetic activations in superposition: sparse combinations of many feature directions.

Used by tests and ``benchmarks/bench_sae.py``: more ground-truth features than dimensions,
each token mixing a few of them with Zipf-like frequencies (frequent features first, as the
Matryoshka prefixes expect), plus a little dense noise and a mean offset.
"""

from __future__ import annotations

import torch


def superposition(
    n_tokens: int,
    d_in: int,
    n_features: int | None = None,
    active: int = 8,
    noise: float = 0.02,
    seed: int = 0,
) -> torch.Tensor:
    """``[n_tokens, d_in]`` float32 activations; ``active`` features per token on average."""
    g = torch.Generator().manual_seed(seed)
    n_features = n_features or 4 * d_in
    dirs_FD = torch.randn(n_features, d_in, generator=g)
    dirs_FD /= dirs_FD.norm(dim=1, keepdim=True)
    freq_F = 1.0 / torch.arange(1, n_features + 1, dtype=torch.float32) ** 0.7
    freq_F *= active / freq_F.sum()
    freq_F.clamp_(max=0.9)
    offset_D = torch.randn(d_in, generator=g) * 0.5
    out = torch.empty(n_tokens, d_in)
    for start in range(0, n_tokens, 8192):  # chunks keep the dense mask small
        n = min(8192, n_tokens - start)
        on_NF = torch.rand(n, n_features, generator=g) < freq_F
        mag_NF = torch.rand(n, n_features, generator=g) * 1.5 + 0.5
        out[start : start + n] = (on_NF * mag_NF) @ dirs_FD
    out += noise * torch.randn(n_tokens, d_in, generator=g) + offset_D
    return out
