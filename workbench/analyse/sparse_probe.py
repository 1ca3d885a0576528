"""How many SAE features a concept takes: k-sparse probes on the features' pooled values.

Between the probe ceiling (:mod:`workbench.analyse.probes`: the whole residual stream) and the
best single feature (:mod:`workbench.analyse.pooled`) sits the *k-sparse probe* of Gurnee et
al. (2023, "Finding Neurons in a Haystack"), the sparse probing of SAEBench (Karvonen et al.,
2025): a logistic regression on the k features that separate the concept best, each read
through its best pooling. A concept the SAE splits over several latents (on the demo: nodule,
written with many sizes, lobes and changes) shows as a low k = 1 and a k = 2 or 5 near the
probe; a concept it lacks (on the demo: the union Support Devices) stays low at every k.

Out of fold, with the probe's folds and L2 grid (the best out-of-fold AUROC, as the probe's):
on each training fold the k features are the best by AUROC there, among a shortlist of the
``SHORTLIST`` best on all probed studies (it bounds the work to that many values per study and
concept; a feature outside it would have to top a training fold while ranking below 32 others
on all studies). SAEBench ranks by the difference of class means; AUROC is the score the rest
of the analysis ranks features by.
"""

from __future__ import annotations

import numpy as np

from workbench.analyse.concepts import LabelMatrix
from workbench.analyse.logistic import L2_GRID, fit_logistic
from workbench.analyse.pooled import Shortlist
from workbench.stats import auroc_columns

SPARSE_K = (1, 2, 5)  # features per probe
SHORTLIST = 32  # candidates per concept they are chosen among


def _ranked(values_SCM: np.ndarray, y_SC: np.ndarray, valid_CM: np.ndarray | None = None):
    """[C, M] candidate indices per concept, best AUROC on these studies first; NaN and the
    shortlist's padding (``valid_CM`` false) last."""
    M = values_SCM.shape[2]
    auc = np.stack([auroc_columns(values_SCM[:, :, j], y_SC) for j in range(M)], 1)
    auc = np.nan_to_num(auc, nan=-np.inf)
    if valid_CM is not None:
        auc = np.where(valid_CM, auc, -np.inf)
    return np.argsort(-auc, axis=1, kind="stable")


def _standardised(z_SCK: np.ndarray, train: np.ndarray) -> np.ndarray:
    mu, sd = z_SCK[train].mean(0), z_SCK[train].std(0)
    return (z_SCK - mu) / np.where(sd > 1e-6, sd, 1.0)


def sparse_aurocs(
    values_SCM: np.ndarray, y_SC: np.ndarray, folds: np.ndarray, ks=SPARSE_K, valid_CM=None
) -> np.ndarray:
    """Out-of-fold AUROC [len(ks), C] of a logistic probe on each concept's k best candidates
    (chosen on the training folds; ``valid_CM`` false: padding, never chosen before a real
    candidate), the best over :data:`L2_GRID` per (k, concept)."""
    C = y_SC.shape[1]
    best = np.full((len(ks), C), np.nan)
    ranks = {
        f: _ranked(values_SCM[folds != f], y_SC[folds != f], valid_CM) for f in np.unique(folds)
    }
    for l2 in L2_GRID:
        scores = np.zeros((len(ks), *y_SC.shape))
        for f, rank in ranks.items():
            train = folds != f
            for i, k in enumerate(ks):
                z = _standardised(np.take_along_axis(values_SCM, rank[None, :, :k], 2), train)
                W, b = fit_logistic(z[train], y_SC[train], l2)
                scores[i, ~train] = np.einsum("sck,kc->sc", z[~train], W) + b
        for i in range(len(ks)):
            auc = auroc_columns(scores[i], y_SC)
            better = np.nan_to_num(auc, nan=-1) > np.nan_to_num(best[i], nan=-1)
            best[i, better] = auc[better]
    return best


def chosen(short: Shortlist, c: int, k: int, names: list[str]) -> tuple[list[int], list[str]]:
    """The k features (and poolings) of concept ``c`` best on all probed studies."""
    j = [j for j in range(min(k, short.feature.shape[1])) if short.feature[c, j] >= 0]
    return [int(short.feature[c, i]) for i in j], [names[short.pooling[c, i]] for i in j]


def write_sparse_probes(
    con, short: Shortlist | None, y, fold, probed, labels: LabelMatrix, probe_auc, pools: list[str]
) -> None:
    """``concept_sparse_probes``: the k-sparse probes of every probed concept (``probed`` [C]
    bool; ``y`` [S, C] 1 / 0 / NaN, ``fold`` [S] and ``probe_auc`` [C] as the probe's)."""
    cs = np.flatnonzero(probed)
    if short is None or not len(cs):
        return
    auc = sparse_aurocs(short.values[:, cs], y[:, cs], fold, SPARSE_K, short.feature[cs] >= 0)
    rows = []
    for i, k in enumerate(SPARSE_K):
        for n, c in enumerate(cs):
            feats, pooling = chosen(short, c, k, pools)
            a = None if np.isnan(auc[i, n]) else float(auc[i, n])
            ratio = None if a is None or not probe_auc[c] > 0 else a / float(probe_auc[c])
            rows.append((labels.concepts[c], labels.sources[c], k, a, ratio, feats, pooling))
    con.executemany("INSERT INTO concept_sparse_probes VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
