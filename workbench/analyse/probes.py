"""The probe ceiling: how much of a concept the residual stream itself carries, vs the SAE.

For each concept, a logistic-regression probe reads the raw residual stream of the store
(same layer) pooled per study: the max and the mean over image tokens and over report tokens
(a kind missing from the store is left out), standardised over the probed studies. Its
AUROC, out of fold with folds split by subject (no patient in both), is the ceiling a single
SAE feature is compared with, that feature read through the same four poolings
(:mod:`workbench.analyse.pooled`): ``ratio`` = the best (feature, pooling) AUROC / probe
AUROC. The best study maximum over all tokens (``feature_concepts``) is stored beside it for
reference only: it reads the prompt too, which the probe does not. Between the two, the
k-sparse probes (:mod:`workbench.analyse.sparse_probe`, ``concept_sparse_probes``) read each
concept's 1, 2 and 5 best features, from the shortlist the same scan of the features returns.

All concepts are fitted jointly (independent weights, one L-BFGS problem per fold;
:mod:`workbench.analyse.logistic`) in the row space of the pooled matrix: with an L2 penalty
the optimal weights are combinations of the training rows, so projecting onto the SVD of all
probed studies changes no prediction and makes a 16k-wide MAIRA-2 pooling as cheap as its
number of studies. The L2 strength is the best of a small grid by out-of-fold AUROC (a
slightly optimistic ceiling, as a ceiling should be). At most ``max_studies`` studies are
pooled (a seeded sample) to bound memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from workbench.analyse.concepts import LabelMatrix
from workbench.analyse.logistic import probe_aurocs, row_space, subject_folds
from workbench.analyse.pooled import POOL_KINDS, best_pooled_features
from workbench.analyse.sparse_probe import SHORTLIST, write_sparse_probes

if TYPE_CHECKING:
    from workbench.analyse.config import AnalyseConfig

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
    best = best_pooled_features(con, acts, ids, y, d_sae, pools, cfg.block, top=SHORTLIST)
    write_sparse_probes(con, best.shortlist, y, fold, probed, labels, auc, pools)
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
