"""What a feature's decoder direction does: logit effects and nearest features.

Both are products of the decoder matrix with something wide (the unembedding, or the
decoder itself), so they run in blocks of features and keep only the top few per row:
memory is ``block x max(V, d_sae)`` whatever the SAE's size.

Logit effects follow SAEDashboard's logit table (reference sae.md section 4): the effect of
feature f on token t is ``W_dec[f] . W_U[:, t]``, with the final norm's scale folded into
``W_U`` when the model has one (TransformerLens' ``fold_ln``), ignoring the norm's
data-dependent denominator.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch


class Unembedding(NamedTuple):
    """A model's unembedding: ``W_U_DV`` (final-norm scale folded in) and token strings."""

    W_U_DV: torch.Tensor
    tokens: list[str]


@torch.no_grad()
def logit_effects(
    W_dec_FD: torch.Tensor, unembed: Unembedding, n: int, block: int = 1024
) -> Iterator[pa.Table]:
    """Blocks of ``feature_logits`` rows: the ``n`` most promoted and suppressed tokens."""
    W_U = unembed.W_U_DV.float()
    if W_U.shape[0] != W_dec_FD.shape[1]:
        raise ValueError(
            f"unembedding has d_model {W_U.shape[0]} but the SAE decodes to {W_dec_FD.shape[1]}"
        )
    n = min(n, W_U.shape[1])
    tokens = np.asarray(unembed.tokens, dtype=object)
    for f0 in range(0, W_dec_FD.shape[0], block):
        eff_BV = W_dec_FD[f0 : f0 + block].float() @ W_U
        parts = []
        for direction, sign in (("promote", 1.0), ("suppress", -1.0)):
            vals, idx = torch.topk(sign * eff_BV, n, dim=1)
            b = eff_BV.shape[0]
            parts.append(
                {
                    "feature": np.repeat(np.arange(f0, f0 + b, dtype=np.int32), n),
                    "direction": np.full(b * n, direction, dtype=object),
                    "rank": np.tile(np.arange(1, n + 1, dtype=np.int32), b),
                    "token_id": idx.flatten().numpy().astype(np.int32),
                    "token": tokens[idx.flatten().numpy()],
                    "effect": (sign * vals).flatten().numpy().astype(np.float32),
                }
            )
        yield pa.table({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


@torch.no_grad()
def nearest_neighbors(W_dec_FD: torch.Tensor, n: int, block: int = 1024) -> Iterator[pa.Table]:
    """Blocks of ``feature_neighbors`` rows: the ``n`` features with the most similar decoder.

    The cosine matrix is symmetric, so only blocks on and above the diagonal are multiplied
    (half the F^2 D work) and each product updates the running top-n of both its row block
    and its column block. Row block i is final once the outer loop has passed it.
    """
    F = W_dec_FD.shape[0]
    n = min(n, F - 1)
    if n <= 0:
        return
    W = W_dec_FD.float()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best_v = torch.full((F, n), -float("inf"))
    best_i = torch.zeros((F, n), dtype=torch.int64)
    starts = list(range(0, F, block))
    for i0 in starts:
        rows = slice(i0, min(i0 + block, F))
        for j0 in starts[starts.index(i0) :]:
            cols = slice(j0, min(j0 + block, F))
            sims = W[rows] @ W[cols].T
            if i0 == j0:
                sims.fill_diagonal_(-float("inf"))  # a feature is not its own neighbour
            _merge(best_v, best_i, rows, sims, j0, n)
            if j0 != i0:
                _merge(best_v, best_i, cols, sims.T, i0, n)
        b = rows.stop - rows.start
        yield pa.table(
            {
                "feature": np.repeat(np.arange(rows.start, rows.stop, dtype=np.int32), n),
                "rank": np.tile(np.arange(1, n + 1, dtype=np.int32), b),
                "neighbor": best_i[rows].flatten().numpy().astype(np.int32),
                "cosine": best_v[rows].flatten().numpy().astype(np.float32),
            }
        )


def _merge(best_v, best_i, rows: slice, sims: torch.Tensor, col0: int, n: int) -> None:
    """Fold the top-n of ``sims`` (columns offset by ``col0``) into the running top-n."""
    k = min(n, sims.shape[1])
    v, i = torch.topk(sims, k, dim=1)
    all_v = torch.cat([best_v[rows], v], dim=1)
    all_i = torch.cat([best_i[rows], i + col0], dim=1)
    top_v, idx = torch.topk(all_v, n, dim=1)
    best_v[rows] = top_v
    best_i[rows] = torch.gather(all_i, 1, idx)


def matryoshka_groups(group_sizes: tuple[int, ...], d_sae: int) -> np.ndarray:
    """Index of the Matryoshka group each feature belongs to (first prefix containing it)."""
    ends = np.cumsum(group_sizes)
    return np.searchsorted(ends, np.arange(d_sae), side="right").astype(np.int32)
