"""AUROC, the one rank statistic every stage scores with: dense, per column, and sparse.

All three are the Mann-Whitney statistic ``P(x_pos > x_neg) + 0.5 P(x_pos = x_neg)``, from
rank sums with tied scores sharing their average rank, and all refuse to make up a number:
without both a positive and a negative the AUROC is ``None`` (one score) or NaN (arrays).

- :func:`auroc`: one score list against 0/1 truth (label scoring, the mini model's gate);
- :func:`auroc_columns`: each column of a dense score matrix against its own labels, NaN
  labels left out (the probe ceiling of analyse);
- :func:`auroc_sparse`: feature activations given as non-zero entries only, against the
  labels of the rows (study- and token-level concepts, mention selectivity, patch AUROC).

The module imports no other project module, so any stage may use it (models included)
without reaching into another stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing their average rank (scipy's 'average')."""
    x = np.asarray(x)
    n = x.size
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]]) if n else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], n]
    ranks = np.empty(n, np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def auroc(truth: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC-AUC as the Mann-Whitney statistic (ties count one half); None without both classes.

    ``truth`` is read as booleans (any non-zero is a positive).
    """
    if len(truth) != len(scores):
        raise ValueError(f"{len(truth)} truths but {len(scores)} scores")
    pos = np.asarray(truth, dtype=bool).reshape(-1)
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if not n_pos or not n_neg:
        return None
    rank_sum = float(average_ranks(np.asarray(scores, np.float64).reshape(-1))[pos].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc_columns(scores_NC: np.ndarray, labels_NC: np.ndarray) -> np.ndarray:
    """AUROC [C] of each score column against its 1/0 labels (NaN labels left out).

    A label other than 1 (and not NaN) counts as a negative; NaN where a column lacks one class.
    """
    out = np.full(labels_NC.shape[1], np.nan)
    for c in range(labels_NC.shape[1]):
        known = ~np.isnan(labels_NC[:, c])
        got = auroc(labels_NC[known, c] == 1, scores_NC[known, c])
        if got is not None:
            out[c] = got
    return out


def auroc_sparse(
    feats: np.ndarray,
    study_idx: np.ndarray,
    vals: np.ndarray,
    labels: np.ndarray,
    feature0: int,
    n_features: int,
) -> np.ndarray:
    """AUROC [n_features, C] for features feature0..feature0+n_features-1.

    ``feats``, ``study_idx``, ``vals``: the non-zero activations (any order) of these
    features, ``study_idx`` indexing the rows of ``labels`` ([S, C]: 1/0, anything else is
    left out). A row where a feature is silent has activation 0: every silent row shares the
    lowest rank and each positive that fires beats all silent negatives, so the cost is
    O(nnz * C). Returns NaN where a concept lacks positives or negatives.
    """
    # concept-major [C, ...] layout: every reduction below runs over contiguous memory
    pos_CS = (labels == 1).T.astype(np.float64)
    neg_CS = (labels == 0).T.astype(np.float64)
    P_C, N_C = pos_CS.sum(1), neg_CS.sum(1)
    C = labels.shape[1]
    f = np.asarray(feats, np.int64) - feature0
    if f.size and (f.min() < 0 or f.max() >= n_features):
        raise ValueError("auroc_sparse: feature index outside the block")
    nz_pos, nz_neg, U = (np.zeros((C, n_features)) for _ in range(3))
    if f.size:
        order = np.lexsort((vals, f))
        f, s, v = f[order], np.asarray(study_idx)[order], np.asarray(vals)[order]
        # tie groups: consecutive entries of the same feature with the same value
        new = np.ones(f.size, bool)
        new[1:] = (f[1:] != f[:-1]) | (v[1:] != v[:-1])
        starts = np.flatnonzero(new)
        gp, gn = pos_CS[:, s], neg_CS[:, s]  # [C, G] per tie group
        if starts.size < f.size:  # ties: sum each group (continuous values rarely tie)
            gp, gn = np.add.reduceat(gp, starts, axis=1), np.add.reduceat(gn, starts, axis=1)
        gf = f[starts]
        fstart = np.flatnonzero(np.r_[True, gf[1:] != gf[:-1]])  # first group of each feature
        fid = gf[fstart]
        # negatives strictly below a group within its feature: cumsum minus the feature's base
        cum = np.cumsum(gn, axis=1)
        first = np.repeat(fstart, np.diff(np.r_[fstart, gf.size]))
        base = np.where(first > 0, cum[:, first - 1], 0.0)
        below = cum - gn - base
        nz_pos[:, fid] = np.add.reduceat(gp, fstart, axis=1)
        nz_neg[:, fid] = np.add.reduceat(gn, fstart, axis=1)
        U[:, fid] = np.add.reduceat(gp * (below + 0.5 * gn), fstart, axis=1)
    zero_neg = N_C[:, None] - nz_neg  # silent negatives (activation 0)
    zero_pos = P_C[:, None] - nz_pos
    U += nz_pos * zero_neg + 0.5 * zero_pos * zero_neg
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (U / (P_C * N_C)[:, None]).T
    auc[:, (P_C == 0) | (N_C == 0)] = np.nan
    return auc
