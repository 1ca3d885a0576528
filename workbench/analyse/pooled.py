"""Each feature scored with the probe's poolings: the fair side of the probe-ceiling ratio.

The probe (:mod:`workbench.analyse.probes`) reads a study through four poolings of the
residual stream: the max and the mean over its image tokens and over its report tokens
(kinds ``report`` and ``generated``). Comparing it with a feature's study maximum over *all*
tokens would compare different inputs: that maximum never averages, and it also reads the
prompt (indication, prior report), which the probe does not see. So for the ratio each
feature is scored with the same four poolings, a feature's activation (0 where silent) taking
the place of the residual stream, and the best (feature, pooling) by AUROC is the concept's
best single feature. A pooling with no token in any probed study is left out, as the probe
leaves it out.

The pooled values come from one grouped scan of the sparse activations (only the non-zeros:
a mean is the sum over the study's non-zero entries divided by its token count of the kind)
and are scored block by block with :func:`workbench.stats.auroc_sparse`, like
``feature_concepts``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa

from workbench.analyse.concepts import MAX_BLOCK_ENTRIES, feature_blocks
from workbench.stats import auroc_sparse

POOL_KINDS: dict[str, tuple[str, ...]] = {"image": ("image",), "report": ("report", "generated")}
STATS: tuple[str, ...] = ("max", "mean")  # per token group; names such as 'image max'


class Shortlist(NamedTuple):
    """Per concept the ``M`` best features by AUROC, each under its best pooling, best first,
    and their pooled values."""

    auroc: np.ndarray  # [C, M] (-inf past the last candidate)
    feature: np.ndarray  # int64 [C, M] (-1 past the last candidate)
    pooling: np.ndarray  # int64 [C, M]: index into the pooling names
    values: np.ndarray  # float32 [S, C, M]: each candidate's pooled value per study (0: silent)


class BestFeature(NamedTuple):
    """Per concept: the best feature under the probe's poolings (NaN / -1 where none)."""

    auroc: np.ndarray  # [C]
    feature: np.ndarray  # int64 [C]
    pooling: list[str | None]  # [C]
    shortlist: Shortlist | None = None  # with ``top`` > 0


def _stage_pooled(con, acts: str, study_ids: np.ndarray) -> None:
    """``_pooled`` (pool, study_id, feature, mx, mean) over the given studies."""
    kinds = [(p, k) for p, ks in POOL_KINDS.items() for k in ks]
    groups = pa.table({"pool": [p for p, _ in kinds], "kind": [k for _, k in kinds]})
    con.register("_pool_kinds", groups)
    con.register("_pool_ids", pa.table({"study_id": np.asarray(study_ids, np.int64)}))
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _pooled AS
        WITH t AS (SELECT t.row, t.study_id, k.pool FROM tokens t
                   JOIN _pool_kinds k USING (kind) SEMI JOIN _pool_ids USING (study_id)),
        n AS (SELECT study_id, pool, count(*) AS n FROM t GROUP BY ALL)
        SELECT t.pool, t.study_id, a.feature, max(a.value) AS mx,
               sum(a.value) / any_value(n.n) AS mean
        FROM {acts} a JOIN t USING (row) JOIN n USING (study_id, pool) GROUP BY ALL"""
    )
    con.unregister("_pool_kinds")
    con.unregister("_pool_ids")


def best_pooled_features(con, acts: str, study_ids: np.ndarray, y: np.ndarray, d_sae: int,
                         names: list[str], block: int = 1024,
                         top: int = 0) -> BestFeature:  # fmt: skip
    """The best (feature, pooling) per concept by AUROC on ``study_ids`` (labels ``y`` [S, C],
    1 / 0, anything else left out) over the poolings ``names`` (the probe's, e.g.
    'report mean'). Ties go to the lower feature, then to the earlier pooling in ``names``.
    With ``top`` > 0 it also returns each concept's :class:`Shortlist` of ``top`` candidates
    and their pooled values (for the k-sparse probes), from the same scan."""
    bad = [n for n in names if len(n.split(" ")) != 2 or n.split(" ")[0] not in POOL_KINDS
           or n.split(" ")[1] not in STATS]  # fmt: skip
    if bad:
        raise ValueError(f"unknown pooling {bad}; expected e.g. 'image max', 'report mean'")
    C = y.shape[1]
    best = BestFeature(np.full(C, -np.inf), np.full(C, -1, np.int64), [None] * C)
    if not names or C == 0:
        return BestFeature(np.full(C, np.nan), best.feature, best.pooling)
    _stage_pooled(con, acts, study_ids)
    order = np.argsort(study_ids)
    sorted_ids = np.asarray(study_ids)[order]
    labels = np.where(np.isnan(y), -1.0, y)  # auroc_sparse leaves out all but 1 / 0
    empty = np.full((C, 0), -1, np.int64)
    ranks = (np.full((C, 0), -np.inf), empty, empty.copy())  # (auroc, feature, pooling) [C, M]
    try:
        # up to one row per token group for each (study, feature): half the block budget
        for f0, n in feature_blocks(con, d_sae, block, MAX_BLOCK_ENTRIES // len(POOL_KINDS)):
            got = con.execute(
                "SELECT pool, feature, study_id, mx, mean FROM _pooled "
                "WHERE feature >= ? AND feature < ?",
                [f0, f0 + n],
            ).fetchnumpy()
            pool = np.asarray(got["pool"], object)
            s_idx = order[np.searchsorted(sorted_ids, np.asarray(got["study_id"]))]
            for p_i, name in enumerate(names):
                p, stat = name.split(" ")
                m = pool == p
                vals = np.asarray(got["mx" if stat == "max" else "mean"])[m]
                feats = np.asarray(got["feature"])[m]
                auc = np.nan_to_num(auroc_sparse(feats, s_idx[m], vals, labels, f0, n), nan=-np.inf)
                _update(best, auc, f0, p_i, names)
                if top:  # a feature silent under this pooling is no candidate
                    silent = np.ones(n, bool)
                    silent[feats - f0] = False
                    ranks = _merge(ranks, np.where(silent[:, None], -np.inf, auc), f0, p_i, top)
        short = _shortlist(con, ranks, names, order, sorted_ids) if top else None
    finally:
        con.execute("DROP TABLE IF EXISTS _pooled")
    auroc = np.where(np.isfinite(best.auroc), best.auroc, np.nan)
    return BestFeature(auroc, best.feature, best.pooling, short)


def _update(best: BestFeature, auc: np.ndarray, f0: int, p_i: int, names: list[str]) -> None:
    """Fold one block x pooling of AUROCs [n, C] into the running best: a candidate wins on
    (higher AUROC, lower feature, earlier pooling)."""
    top = auc.argmax(0)  # first maximum: the lowest feature of the block
    val = auc[top, np.arange(auc.shape[1])]
    for c in np.flatnonzero(np.isfinite(val)):
        old = best.pooling[c]
        mine = (-val[c], f0 + int(top[c]), p_i)
        if old is None or mine < (-best.auroc[c], best.feature[c], names.index(old)):
            best.auroc[c], best.feature[c], best.pooling[c] = val[c], mine[1], names[p_i]


def _merge(ranks: tuple, auc: np.ndarray, f0: int, p_i: int, top: int) -> tuple:
    """The running ``top`` (auroc, feature, pooling) per concept with one block's AUROCs
    [n, C] under pooling ``p_i`` folded in: each feature once, under its best pooling; order:
    higher AUROC, lower feature, earlier pooling."""
    n, C = auc.shape
    a = np.concatenate([ranks[0], auc.T], 1)
    f = np.concatenate([ranks[1], np.broadcast_to(np.arange(f0, f0 + n), (C, n))], 1)
    p = np.concatenate([ranks[2], np.full((C, n), p_i, np.int64)], 1)
    keep = np.full((C, top), -1, np.int64)
    for c in range(C):
        order = np.lexsort((p[c], f[c], -a[c]))
        order = order[np.isfinite(a[c, order])]
        _, first = np.unique(f[c, order], return_index=True)  # a feature's best pooling
        best = order[np.sort(first)][:top]
        keep[c, : len(best)] = best
    pad = keep < 0
    take = np.where(pad, 0, keep)
    a, f, p = (np.take_along_axis(x, take, 1) for x in (a, f, p))
    return np.where(pad, -np.inf, a), np.where(pad, -1, f), np.where(pad, 0, p)


def _shortlist(con, ranks: tuple, names: list[str], order, sorted_ids) -> Shortlist:
    """The :class:`Shortlist` of ``ranks``: each candidate's pooled value per study, read from
    the staged ``_pooled`` table (0 where the feature is silent in the study)."""
    a, f, p = ranks
    C, M = f.shape
    values = np.zeros((len(order), C, M), np.float32)
    c_i, j_i = np.nonzero(f >= 0)
    if len(c_i):
        pool = [names[i].split(" ") for i in p[c_i, j_i]]
        con.register("_short", pa.table({
            "c": c_i, "j": j_i, "feature": f[c_i, j_i].astype(np.int32),
            "pool": [q for q, _ in pool], "stat": [st for _, st in pool],
        }))  # fmt: skip
        got = con.execute(
            "SELECT k.c, k.j, p.study_id, CASE WHEN k.stat = 'max' THEN p.mx ELSE p.mean END "
            "AS v FROM _pooled p JOIN _short k USING (feature, pool)"
        ).fetchnumpy()
        con.unregister("_short")
        s_idx = order[np.searchsorted(sorted_ids, np.asarray(got["study_id"]))]
        values[s_idx, np.asarray(got["c"]), np.asarray(got["j"])] = np.asarray(got["v"])
    return Shortlist(a, f, p, values)
