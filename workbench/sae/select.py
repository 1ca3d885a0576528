"""BatchTopK selection without materialising or sorting the dense pre-activations.

BatchTopK (Bussmann et al. 2024, arXiv 2412.06410) keeps the ``k B`` largest ReLU activations
of a batch. A full ``topk`` over ``B x d_sae`` values costs more than the encoder product
itself on a CPU, so the encoder runs in row chunks that stay in cache and each chunk only
yields the entries above a *cut*, a lower bound of the k B-th value (from the previous step, or
a strided sample). ``topk`` then runs on those few candidates. The result is exact: if fewer
than ``k B`` entries pass the cut, the batch is recomputed densely with no cut.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from workbench.io import torch_threads

_SAMPLE = 1 << 16  # elements sampled to bound the cut
_CHUNK_ELEMS = 1 << 22  # pre-activations per chunk (16 MB in fp32: stays in the L3 cache)


class Selection(NamedTuple):
    """Kept entries of the batch code, and what else one pass over ``pre`` measured."""

    idx: torch.Tensor  # [N] flat indices into [B, d_sae], ascending (token-major)
    vals: torch.Tensor  # [N] kept activations (> 0)
    pre_dead: torch.Tensor | None  # [B, n_dead] pre-activations of dead latents (aux-k)
    n_above: int  # entries above the inference threshold (-1: not asked)


def _coprime_stride(n: int, m: int, width: int) -> int:
    stride = max(1, n // m)
    while math.gcd(stride, width) != 1:
        stride += 1
    return stride


def sample_cut(flat: torch.Tensor, n_target: float, width: int, margin: float = 1.5) -> float:
    """A value that about ``margin * n_target`` entries of ``flat`` exceed (>= 0).

    The sample strides with a step coprime with the row width, so every column is visited.
    """
    n = flat.numel()
    if n <= 4 * _SAMPLE:
        return 0.0
    sample = flat[:: _coprime_stride(n, _SAMPLE, width)]
    expect = n_target * sample.numel() / n
    rank = int(margin * expect + 6 * math.sqrt(expect) + 16)
    if rank >= sample.numel():
        return 0.0
    return max(0.0, float(sample.topk(rank, sorted=False).values.min()))


def _above(flat: torch.Tensor, cut: float, stripes: int = 16):
    """Indices (unordered) and values of the entries above ``cut``, pruned by stripe maxima.

    Viewing the chunk as ``stripes`` contiguous stripes, the element-wise maximum across them
    (one vectorised pass) rules out most positions, so ``nonzero`` scans a sixteenth of the
    entries plus the few surviving columns.
    """
    if flat.numel() % stripes:
        hit = (flat > cut).nonzero().squeeze(1)
        return hit, flat[hit]
    width = flat.numel() // stripes
    view = flat.view(stripes, width)
    live = (view.amax(0) > cut).nonzero().squeeze(1)
    sub = view.index_select(1, live)
    where = (sub > cut).nonzero()
    return where[:, 0] * width + live[where[:, 1]], sub[where[:, 0], where[:, 1]]


def top_candidates(idx: torch.Tensor, vals: torch.Tensor, n_keep: int):
    """The ``n_keep`` largest of the candidates, sorted by flat index."""
    if idx.numel() > n_keep:
        top = vals.topk(n_keep, sorted=False)
        idx, vals = idx[top.indices], top.values
    idx, order = idx.sort()
    return idx, vals[order]


def batch_topk(pre_BF: torch.Tensor, n_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices (ascending) and values of the ``n_keep`` largest positive entries (exact)."""
    flat = pre_BF.reshape(-1)
    n_keep = min(n_keep, flat.numel())
    cut = sample_cut(flat, n_keep, pre_BF.shape[-1], margin=1.3)
    idx = (flat > cut).nonzero().squeeze(1)
    if idx.numel() < n_keep and cut > 0:
        idx = (flat > 0).nonzero().squeeze(1)
    return top_candidates(idx, flat[idx], n_keep)


def _mm(a: torch.Tensor, b: torch.Tensor, threads: int | None) -> torch.Tensor:
    """``a @ b``, on ``threads`` CPU threads if given (restored afterwards)."""
    if threads is None or a.device.type != "cpu":
        return torch.mm(a, b)
    with torch_threads(threads):
        return torch.mm(a, b)


def _dense(x_aug, W_aug, n_keep, dead_idx, threshold, out_dtype, threads) -> Selection:
    pre_BF = _mm(x_aug, W_aug, threads).to(out_dtype)
    idx, vals = batch_topk(pre_BF, n_keep)
    pre_dead = pre_BF.index_select(1, dead_idx) if dead_idx is not None else None
    n_above = int((pre_BF > threshold).sum()) if threshold is not None else -1
    return Selection(idx, vals, pre_dead, n_above)


@torch.no_grad()
def encode_select(
    xc_BD: torch.Tensor,
    W_enc_DF: torch.Tensor,
    b_enc_F: torch.Tensor,
    n_keep: int,
    cut_hint: float | None = None,
    dead_idx: torch.Tensor | None = None,
    threshold: float | None = None,
    compute_dtype: torch.dtype | None = None,
    chunk_elems: int = _CHUNK_ELEMS,
    dense_threads: int | None = None,
) -> Selection:
    """Encode ``xc = x - b_dec`` chunk by chunk and keep the batch's top ``n_keep`` entries.

    ``cut_hint`` should be below the k B-th value (e.g. a fraction of the previous step's
    smallest kept activation); a bad hint costs time, never exactness. ``dense_threads`` is
    the CPU thread count for the encoder product when the caller runs the rest with fewer.
    """
    B, F = xc_BD.shape[0], W_enc_DF.shape[1]
    out_dtype = W_enc_DF.dtype
    cd = compute_dtype or out_dtype
    # the bias rides in the product as an extra input column: no separate pass over pre
    W_aug = torch.cat([W_enc_DF, b_enc_F[None]]).to(cd)
    x_aug = torch.cat([xc_BD, xc_BD.new_ones(B, 1)], dim=1).to(cd)
    n_keep = min(n_keep, B * F)
    rows = max(1, chunk_elems // F)
    cut = None if cut_hint is None else max(0.0, cut_hint)
    idx_parts, val_parts, dead_parts, n_above = [], [], [], 0
    for start in range(0, B, rows):
        pre = _mm(x_aug[start : start + rows], W_aug, dense_threads).to(out_dtype)
        flat = pre.view(-1)
        if cut is None:
            cut = sample_cut(flat, n_keep * pre.shape[0] / B, F, margin=2.0)
        hit, vals = _above(flat, cut)
        val_parts.append(vals)
        idx_parts.append(hit + start * F)
        if dead_idx is not None:
            dead_parts.append(pre.index_select(1, dead_idx))
        if threshold is not None:
            n_above += int((pre > threshold).sum())
    idx, vals = torch.cat(idx_parts), torch.cat(val_parts)
    if idx.numel() < n_keep and cut:  # the cut was too high: redo without one
        return _dense(x_aug, W_aug, n_keep, dead_idx, threshold, out_dtype, dense_threads)
    idx, vals = top_candidates(idx, vals, n_keep)
    pre_dead = torch.cat(dead_parts) if dead_idx is not None else None
    return Selection(idx, vals, pre_dead, n_above if threshold is not None else -1)
