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


class BestFeature(NamedTuple):
    """Per concept: the best feature under the probe's poolings (NaN / -1 where none)."""

    auroc: np.ndarray  # [C]
    feature: np.ndarray  # int64 [C]
    pooling: list[str | None]  # [C]


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
                         names: list[str], block: int = 1024) -> BestFeature:  # fmt: skip
    """The best (feature, pooling) per concept by AUROC on ``study_ids`` (labels ``y`` [S, C],
    1 / 0, anything else left out) over the poolings ``names`` (the probe's, e.g.
    'report mean'). Ties go to the lower feature, then to the earlier pooling in ``names``."""
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
                auc = auroc_sparse(np.asarray(got["feature"])[m], s_idx[m], vals, labels, f0, n)
                _update(best, np.nan_to_num(auc, nan=-np.inf), f0, p_i, names)
    finally:
        con.execute("DROP TABLE IF EXISTS _pooled")
    auroc = np.where(np.isfinite(best.auroc), best.auroc, np.nan)
    return BestFeature(auroc, best.feature, best.pooling)


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
