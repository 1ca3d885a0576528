"""Streaming per-feature statistics over the sparse SAE activations of a store.

:class:`FeatureAccumulator` sees each batch once, as the non-zero entries of the latents
(``rows``, ``feats``, ``vals`` plus each entry's token-kind code) and keeps only arrays
sized by the number of features: counts, sums per token kind, maxima, a log-spaced
histogram and the top-k (value, row) pairs. Its memory is ``d_sae * (kinds + bins + 2k)``
numbers whatever the number of tokens, which is what lets analysis run on a laptop.

The histogram bins are fixed in advance on a log2 grid (``bins_per_octave`` bins per
doubling, from 2^min_octave to 2^max_octave; values outside are clamped into the end bins),
so that streaming never needs to know a feature's range; SAEDashboard's per-feature
50-bin histogram (its ``feature_tables``/``acts_histogram`` component) can be re-binned from it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch

# Token kinds of the store's ``kind`` column, in the order of the accumulator's columns.
KINDS: tuple[str, ...] = ("image", "prompt", "report", "generated", "latent")
KIND_CODE: dict[str, int] = {k: i for i, k in enumerate(KINDS)}


class SparseBatch(NamedTuple):
    """Non-zero entries of a batch of latents, in row-major order."""

    rows: torch.Tensor  # int64 global token rows
    feats: torch.Tensor  # int64 feature indices
    vals: torch.Tensor  # float32 activations (> 0)


def sparsify(latents_BF: torch.Tensor, row0: int) -> SparseBatch:
    """Non-zero entries of a dense latent batch whose first token has global row ``row0``."""
    flat = latents_BF.detach().reshape(-1)
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        # numpy's flatnonzero over a bool mask is ~3x faster than torch's nonzero here
        idx = torch.from_numpy(np.flatnonzero(flat.numpy() != 0))
    else:
        idx = flat.nonzero().squeeze(1)
    F = latents_BF.shape[1]  # indices are row-major, so rows come out sorted
    return SparseBatch(idx // F + row0, idx % F, flat[idx].float())


class FeatureSummary(NamedTuple):
    """Final statistics, numpy arrays indexed by feature (histogram: [F, n_bins])."""

    n_tokens: int
    n_fires: np.ndarray
    sum_act: np.ndarray
    sum_by_kind: np.ndarray  # [F, len(KINDS)]
    max_act: np.ndarray
    hist: np.ndarray  # [F, n_bins] counts
    bin_edges: np.ndarray  # [n_bins + 1]
    min_bin: int  # global index of histogram column 0: bin b covers [2^(b/r), 2^((b+1)/r))
    top_vals: np.ndarray  # [F, k] descending; -inf where fewer than k firings
    top_rows: np.ndarray  # [F, k]; -1 where empty


class FeatureAccumulator:
    """Accumulate frequency, mass per token kind, max, histogram and top-k per feature."""

    def __init__(
        self,
        d_sae: int,
        top_k: int = 20,
        bins_per_octave: int = 4,
        min_octave: int = -20,
        max_octave: int = 20,
        device: str | torch.device = "cpu",
    ) -> None:
        if d_sae <= 0 or top_k <= 0 or bins_per_octave <= 0 or max_octave <= min_octave:
            raise ValueError("d_sae, top_k, bins_per_octave must be > 0, max_octave > min_octave")
        self.d_sae, self.top_k, self.r = d_sae, top_k, bins_per_octave
        self.min_bin = min_octave * bins_per_octave
        self.n_bins = (max_octave - min_octave) * bins_per_octave
        self.n_tokens = 0
        F, K, dev = d_sae, len(KINDS), torch.device(device)
        self.n_fires = torch.zeros(F, dtype=torch.int64, device=dev)
        self.sum_by_kind = torch.zeros(F * K, dtype=torch.float64, device=dev)
        self.max_act = torch.zeros(F, dtype=torch.float32, device=dev)
        self.hist = torch.zeros(F * self.n_bins, dtype=torch.int64, device=dev)
        self.top_vals = torch.full((F, top_k), -float("inf"), device=dev)
        self.top_rows = torch.full((F, top_k), -1, dtype=torch.int64, device=dev)

    def bin_of(self, vals: torch.Tensor) -> torch.Tensor:
        """Histogram bin (0-based, clamped) of positive activations."""
        b = torch.floor(torch.log2(vals.double()) * self.r).long() - self.min_bin
        return b.clamp_(0, self.n_bins - 1)

    def update(self, batch: SparseBatch, kind_codes: torch.Tensor, n_tokens: int) -> None:
        """Add one batch: its non-zero entries and the kind code of each entry's token."""
        self.n_tokens += n_tokens
        if batch.vals.numel() == 0:
            return
        if bool((batch.vals < 0).any()) or not bool(torch.isfinite(batch.vals).all()):
            raise ValueError("SAE latents must be finite and non-negative (got NaN/inf/negative)")
        F, K = self.d_sae, len(KINDS)
        f = batch.feats
        self.n_fires += torch.bincount(f, minlength=F)
        self.sum_by_kind += torch.bincount(f * K + kind_codes, batch.vals.double(), F * K)
        self.max_act.scatter_reduce_(0, f, batch.vals, reduce="amax")
        self.hist += torch.bincount(
            f * self.n_bins + self.bin_of(batch.vals), minlength=F * self.n_bins
        )
        self._merge_top(batch)

    def _merge_top(self, batch: SparseBatch) -> None:
        """Merge the batch's best ``top_k`` entries per feature into the running top-k."""
        k = self.top_k
        # only entries above their feature's current k-th best can enter (few, once warm)
        live = batch.vals > self.top_vals[batch.feats, -1]
        f, v, r = batch.feats[live], batch.vals[live], batch.rows[live]
        if f.numel() == 0:
            return
        # sort entries by (feature asc, value desc); rank = position within its feature run
        order = torch.argsort(v, descending=True, stable=True)
        order = order[torch.argsort(f[order], stable=True)]
        f, v, r = f[order], v[order], r[order]
        starts = torch.searchsorted(f, f, right=False)
        rank = torch.arange(f.numel(), device=f.device) - starts
        keep = rank < k
        touched, slot = torch.unique(f[keep], return_inverse=True)
        cand_v = torch.full((touched.numel(), k), -float("inf"), device=v.device)
        cand_r = torch.full((touched.numel(), k), -1, dtype=torch.int64, device=v.device)
        cand_v[slot, rank[keep]] = v[keep]
        cand_r[slot, rank[keep]] = r[keep]
        all_v = torch.cat([self.top_vals[touched], cand_v], dim=1)
        all_r = torch.cat([self.top_rows[touched], cand_r], dim=1)
        # stable sort: on ties the earlier row wins, whatever the batching (old rows come first)
        best_v, idx = torch.sort(all_v, dim=1, descending=True, stable=True)
        best_v, idx = best_v[:, :k], idx[:, :k]
        self.top_vals[touched] = best_v
        self.top_rows[touched] = torch.gather(all_r, 1, idx)

    def bin_edges(self) -> np.ndarray:
        """Edges of the histogram bins: 2^((min_bin + i) / r), i = 0..n_bins."""
        return np.exp2((self.min_bin + np.arange(self.n_bins + 1)) / self.r)

    def summary(self) -> FeatureSummary:
        """The accumulated statistics as numpy arrays."""
        sbk = self.sum_by_kind.view(self.d_sae, len(KINDS)).cpu().numpy()
        return FeatureSummary(
            n_tokens=self.n_tokens,
            n_fires=self.n_fires.cpu().numpy(),
            sum_act=sbk.sum(axis=1),
            sum_by_kind=sbk,
            max_act=self.max_act.cpu().numpy().astype(np.float64),
            hist=self.hist.view(self.d_sae, self.n_bins).cpu().numpy(),
            bin_edges=self.bin_edges(),
            min_bin=self.min_bin,
            top_vals=self.top_vals.cpu().numpy(),
            top_rows=self.top_rows.cpu().numpy(),
        )


def kind_codes(kinds: list[str] | np.ndarray, source: str = "store metadata") -> torch.Tensor:
    """Map the store's ``kind`` strings to :data:`KIND_CODE` codes, refusing unknown kinds."""
    uniq, inv = np.unique(np.asarray(kinds, dtype=object).astype(str), return_inverse=True)
    unknown = [str(u) for u in uniq if u not in KIND_CODE]
    if unknown:
        raise ValueError(f"{source}: unknown token kind(s) {unknown}; expected one of {KINDS}")
    table = np.array([KIND_CODE[u] for u in uniq], dtype=np.int64)
    return torch.from_numpy(table[inv.reshape(-1)])


def stats_table(s: FeatureSummary) -> pa.Table:
    """``feature_stats`` columns up to ``frac_other`` (NULL mean and shares for dead features)."""
    fires = s.n_fires.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = s.sum_by_kind / s.sum_act[:, None]
        mean = np.where(fires > 0, s.sum_act / fires, np.nan)
    frac[fires == 0] = np.nan
    k = {name: i for i, name in enumerate(KINDS)}
    return pa.table(
        {
            "feature": np.arange(len(fires), dtype=np.int32),
            "n_fires": s.n_fires,
            "frequency": fires / max(s.n_tokens, 1),
            "mean_act": pa.array(mean, from_pandas=True),
            "max_act": s.max_act,
            "sum_act": s.sum_act,
            **{
                f"frac_{name}": pa.array(frac[:, k[name]], from_pandas=True)
                for name in ("image", "prompt", "report")
            },
            "frac_other": pa.array(
                frac[:, k["generated"]] + frac[:, k["latent"]], from_pandas=True
            ),
        }
    )


def histogram_table(s: FeatureSummary) -> pa.Table:
    """``feature_histograms``: the non-empty bins, with global bin index and edges."""
    f_idx, b_idx = np.nonzero(s.hist)
    return pa.table(
        {
            "feature": f_idx.astype(np.int32),
            "bin": (b_idx + s.min_bin).astype(np.int32),
            "bin_lo": s.bin_edges[b_idx],
            "bin_hi": s.bin_edges[b_idx + 1],
            "count": s.hist[f_idx, b_idx],
        }
    )
