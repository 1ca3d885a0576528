"""The probe ceiling: how much of a concept the residual stream itself carries, vs the SAE.

For each concept, a logistic-regression probe reads the raw residual stream of the store
(same layer) pooled per study: the max and the mean over image tokens and over report tokens
(a kind missing from the store is left out), standardised over the probed studies. Its
AUROC, out of fold with folds split by subject (no patient in both), is the ceiling a single
SAE feature is compared with, that feature read through the same four poolings
(:mod:`workbench.analyse.pooled`): ``ratio`` = the best (feature, pooling) AUROC / probe
AUROC. The best study maximum over all tokens (``feature_concepts``) is stored beside it for
reference only: it reads the prompt too, which the probe does not.

All concepts are fitted jointly (independent weights, one L-BFGS problem per fold) in the
row space of the pooled matrix: with an L2 penalty the optimal weights are combinations of
the training rows, so projecting onto the SVD of all probed studies changes no prediction
and makes a 16k-wide MAIRA-2 pooling as cheap as its number of studies. The L2 strength is
the best of a small grid by out-of-fold AUROC (a slightly optimistic ceiling, as a ceiling
should be). At most ``max_studies`` studies are pooled (a seeded sample) to bound memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from workbench.analyse.concepts import LabelMatrix
from workbench.analyse.pooled import POOL_KINDS, best_pooled_features
from workbench.stats import auroc_columns

if TYPE_CHECKING:
    from workbench.analyse.config import AnalyseConfig

L2_GRID = (1e-3, 1e-2, 1e-1)
MIN_CLASS = 5  # studies of each class below which a concept is not probed (NULL)
_POOLS = tuple(POOL_KINDS.items())  # the token groups, shared with the features' scoring


def pool_store(store, study_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """[S, P * d_model] max and mean over image and report tokens of the given studies.

    One pass over the shards (shards holding none of the studies are not read); a pool with
    no token in any study is dropped. Returns the matrix and the names of its pools.
    """
    S, D = len(study_ids), store.d_model
    order = np.argsort(study_ids)
    sorted_ids = study_ids[order]
    maxes = torch.full((len(_POOLS), S, D), -torch.inf)
    sums = torch.zeros((len(_POOLS), S, D), dtype=torch.float64)
    counts = torch.zeros((len(_POOLS), S), dtype=torch.float64)
    for i in range(store.num_shards):
        meta = store.metadata(i)
        sid = meta.column("study_id").to_numpy()
        pos = np.searchsorted(sorted_ids, sid).clip(0, max(S - 1, 0))
        hit = sorted_ids[pos] == sid if S else np.zeros(len(sid), bool)
        if not hit.any():
            continue
        acts = store.shard(i).float()
        kinds = np.asarray(meta.column("kind").to_pylist(), object)
        for p, (_, names) in enumerate(_POOLS):
            keep = np.flatnonzero(hit & np.isin(kinds, names))
            if not keep.size:
                continue
            idx = torch.from_numpy(order[pos[keep]])
            x = acts[torch.from_numpy(keep)]
            maxes[p].scatter_reduce_(0, idx[:, None].expand(-1, D), x, "amax")
            sums[p].index_add_(0, idx, x.double())
            counts[p].index_add_(0, idx, torch.ones(len(keep), dtype=torch.float64))
    blocks, names = [], []
    for p, (name, _) in enumerate(_POOLS):
        if counts[p].sum() == 0:
            continue
        seen = (counts[p] > 0)[:, None]
        blocks += [torch.where(seen, maxes[p], 0.0), (sums[p] / counts[p].clamp(min=1)[:, None])]
        names += [f"{name} max", f"{name} mean"]
    if not blocks:
        return np.zeros((S, 0), np.float32), []
    return torch.cat([b.float() for b in blocks], 1).numpy(), names


def row_space(x: np.ndarray) -> np.ndarray:
    """Standardised ``x`` expressed in its own row space (exact for L2-penalised linear fits)."""
    t = torch.from_numpy(x).double()
    t = (t - t.mean(0)) / t.std(0).clamp(min=1e-6)
    if t.shape[1] <= t.shape[0]:
        return t.numpy()
    u, s, _ = torch.linalg.svd(t, full_matrices=False)
    keep = s > s.max() * 1e-8
    return (u[:, keep] * s[keep]).numpy()


def subject_folds(subjects: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold 0..k-1 of each study; all studies of a subject share one fold."""
    uniq = np.unique(subjects)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = dict(zip(uniq[perm].tolist(), (np.arange(len(uniq)) % k).tolist()))
    return np.array([fold_of[s] for s in subjects.tolist()], np.int64)


def fit_logistic(z: np.ndarray, y: np.ndarray, l2: float, iters: int = 100) -> tuple:
    """Weights [k, C] and biases [C] of independent L2 logistic regressions (y NaN: unused)."""
    Z = torch.from_numpy(z).double()
    Y = torch.from_numpy(np.nan_to_num(y, nan=0.0)).double()
    M = torch.from_numpy(~np.isnan(y)).double()
    n = M.sum(0).clamp(min=1)
    W = torch.zeros(Z.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [W, b], max_iter=iters, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        logits = Z @ W + b
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, Y, reduction="none")
        loss = ((bce * M).sum(0) / n).sum() + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach().numpy(), b.detach().numpy()


def probe_aurocs(z: np.ndarray, y: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold AUROC per concept [C] (best over :data:`L2_GRID`) and the L2 chosen."""
    C = y.shape[1]
    best, chosen = np.full(C, np.nan), np.full(C, np.nan)
    for l2 in L2_GRID:
        scores = np.zeros_like(y)
        for k in np.unique(folds):
            train = folds != k
            W, b = fit_logistic(z[train], y[train], l2)
            scores[~train] = z[~train] @ W + b
        auc = auroc_columns(scores, y)
        better = np.nan_to_num(auc, nan=-1) > np.nan_to_num(best, nan=-1)
        best[better], chosen[better] = auc[better], l2
    return best, chosen


def write_probes(con, store, acts: str, d_sae: int, labels: LabelMatrix, cfg: AnalyseConfig,
                 notes: list[str]) -> None:  # fmt: skip
    """``concept_probes``: probe AUROC vs the best feature under the same poolings.

    ``acts`` is the SQL source of the sparse activations (``read_parquet(...)``); ``cfg``
    gives ``probe_folds``, ``probe_max_studies``, ``seed`` and ``block``.
    """
    folds = cfg.probe_folds
    if folds < 2 or not labels.concepts:
        notes.append("probe ceiling not computed (probe_folds < 2 or no labels)")
        return
    pick = np.arange(len(labels.study_ids))
    if len(pick) > cfg.probe_max_studies:
        rng = np.random.default_rng(cfg.seed)
        pick = np.sort(rng.choice(pick, cfg.probe_max_studies, replace=False))
        n_all = len(labels.study_ids)
        notes.append(f"probe ceiling on a sample of {cfg.probe_max_studies} of {n_all} studies")
    ids = labels.study_ids[pick]
    x, pools = pool_store(store, ids)
    if not pools:
        notes.append("no image or report tokens in the store: probe ceiling not computed")
        return
    y = np.where(np.isin(labels.values[pick], (0.0, 1.0)), labels.values[pick], np.nan)
    n_pos, n_neg = (y == 1).sum(0), (y == 0).sum(0)
    probed = (n_pos >= MIN_CLASS) & (n_neg >= MIN_CLASS)
    subjects = dict(con.execute("SELECT study_id, subject_id FROM studies").fetchall())
    fold = subject_folds(np.array([subjects[int(s)] for s in ids]), folds, cfg.seed)
    auc, l2 = np.full(len(labels.concepts), np.nan), np.full(len(labels.concepts), np.nan)
    if probed.any():
        auc[probed], l2[probed] = probe_aurocs(row_space(x), y[:, probed], fold)
    best = best_pooled_features(con, acts, ids, y, d_sae, pools, cfg.block)
    nan = {"from_pandas": True}
    table = pa.table({
        "concept": list(labels.concepts), "source": list(labels.sources),
        "n_pos": n_pos.astype(np.int32), "n_neg": n_neg.astype(np.int32),
        "probe_auroc": pa.array(auc, **nan), "l2": pa.array(l2, **nan),
        "feature": pa.array(np.where(best.feature >= 0, best.feature, None), pa.int32()),
        "pooling": pa.array(best.pooling, pa.string()),
        "feature_auroc": pa.array(best.auroc, **nan),
    })  # fmt: skip
    con.register("_pr", table)
    con.execute(
        f"""INSERT INTO concept_probes
        WITH study AS (
            SELECT concept, source, max(auroc) AS a
            FROM feature_concepts WHERE auroc IS NOT NULL GROUP BY ALL)
        SELECT p.concept, p.source, p.n_pos, p.n_neg, p.probe_auroc, p.l2, p.feature, p.pooling,
               p.feature_auroc, p.feature_auroc / p.probe_auroc, s.a, '{", ".join(pools)}',
               {int(folds)}
        FROM _pr p LEFT JOIN study s USING (concept, source) ORDER BY p.source, p.concept"""
    )
    con.unregister("_pr")
