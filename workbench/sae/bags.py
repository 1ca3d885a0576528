"""The sparse products of a training step: weighted sums of table rows over bags.

Every sparse product of :mod:`workbench.sae.step` has one form: for each output row ``r``,
``out[r] = sum_{e in bag r} w_e table[i_e]``, with the bag's entries ``e`` listed contiguously
(a CSR row pointer ``ptr``). The decoder's forward (bags = (group, token), table = ``W_dec``)
and both weight gradients (bags = latents, tables = the residuals and ``[x - b_dec | 1]``) are
such sums. :func:`bag_sum_` runs them with ``embedding_bag``, whose fbgemm kernels are 2.5-4x
faster on CPU than torch's CSR @ dense (measured at d_in 576 / d_sae 4608 / k 32 / batch 4096,
one thread: 5 ms against 12-20 ms per product).

``embedding_bag`` has no ``out=``; a fresh output the size of a whole product (tens of MB) is
handed back to the kernel by the allocator when freed, and the next step faults every page in
again (:mod:`workbench.sae.workspace`). Run in chunks of rows of ~2 MB, which the allocator keeps,
each chunk is copied into a reused buffer while it is still in cache, transposed on the way
when the caller wants the transpose (the encoder's gradient, ``[d_in, d_sae]``; transposing a
~2 MB chunk with ``.T.contiguous()`` and copying its rows was 1.3x faster than column blocks
of strided copies, and faster than one transpose of the whole matrix at 16384 x 1024).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

_CHUNK_ELEMS = 1 << 19  # output elements per embedding_bag call on CPU (2 MB in fp32)


def csr(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape) -> torch.Tensor:
    """A sparse CSR tensor from trusted parts (no invariant check, no beta warning)."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


class ColumnOrder(NamedTuple):
    """How to list a code's entries latent by latent: the CSR of its transpose, shared by
    every transposed product over the same entries (one stable argsort per step)."""

    order: torch.Tensor  # [N] entry positions, stably sorted by latent
    crow: torch.Tensor  # [d_sae + 1] row pointer of the transpose
    counts: torch.Tensor  # [d_sae] entries per latent (also: times each latent fired)


def column_order(cols: torch.Tensor, n_feat: int) -> ColumnOrder:
    """Stable order of the entries by latent (int32 keys: half the radix passes of int64)."""
    keys = cols.int() if n_feat < 2**31 else cols
    order = torch.argsort(keys, stable=True)
    counts = torch.bincount(cols, minlength=n_feat)
    crow = torch.zeros(n_feat + 1, dtype=torch.long, device=cols.device)
    crow[1:] = counts.cumsum(0)
    return ColumnOrder(order, crow, counts)


def bag_sum_(
    out: torch.Tensor,
    table: torch.Tensor,
    idx: torch.Tensor,
    weights: torch.Tensor,
    ptr: torch.Tensor,
    transposed: bool = False,
    chunk_elems: int = _CHUNK_ELEMS,
) -> torch.Tensor:
    """``out[r] = sum_{e = ptr[r]}^{ptr[r + 1] - 1} weights[e] * table[idx[e]]`` for every row
    ``r`` (empty bags give zeros); with ``transposed``, ``out`` is ``[width, rows]`` and gets
    the transpose. Returns ``out``."""
    n_rows, width = ptr.numel() - 1, table.shape[1]
    want = (width, n_rows) if transposed else (n_rows, width)
    if tuple(out.shape) != want:
        raise ValueError(f"bag_sum_: out has shape {tuple(out.shape)}, expected {want}")
    step = max(1, chunk_elems // width) if out.device.type == "cpu" else max(1, n_rows)
    starts = list(range(0, n_rows, step))
    bounds = ptr[[*starts, n_rows]].tolist()
    for j, r0 in enumerate(starts):
        r1, lo, hi = min(r0 + step, n_rows), bounds[j], bounds[j + 1]
        part = F.embedding_bag(
            idx[lo:hi], table, ptr[r0:r1] - lo, mode="sum", per_sample_weights=weights[lo:hi]
        )
        if transposed:  # torch's blocked transpose of a contiguous matrix, then row copies
            out[:, r0:r1].copy_(part.T.contiguous())
        else:
            out[r0:r1].copy_(part)
    return out
