"""Token-level concepts: SAE features scored against the ground truth stored with each token.

Image-model stores (segmentation latents, the vision tower; :mod:`workbench.record.tokens`)
carry, per token, ``concept_<name>`` values in [0, 1] (the share of the token's cell a mask
covers, or a study attribute) and ``target_<name>`` continuous values (an SSN's per-pixel
sample variance). For every feature:

- **AUROC** against each concept over tokens: positive where the value is >= 0.5, negative
  below, unknown (NaN) left out. The feature's activation on a token is 0 where it is silent,
  so :func:`workbench.stats.auroc_sparse` scores it from the non-zero entries
  alone, exactly as the study-level AUROC does with studies;
- **Spearman correlation** with each target over the tokens where it is known, also from the
  sparse entries: the silent tokens share one average rank, so the rank sums need only the
  firing tokens' ranks (``O(nnz)`` per feature).

Results go to ``feature_token_concepts``; :func:`token_concept_report` prints, for each concept,
the best feature by AUROC and, for each target, the features that correlate most.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from scipy.stats import rankdata

from workbench.record.tokens import (
    CONCEPT_PREFIX,
    POSITIVE_COVER,
    TARGET_PREFIX,
    concept_columns,
    concept_group,
)
from workbench.stats import auroc_sparse
from workbench.store import ActivationStore

ENTRY_BUDGET = 4_000_000  # (entries x concepts) per AUROC block: bounds the [C, nnz] arrays


class TokenTruth:
    """The concepts (binarised) and targets of every stored token, in row order."""

    def __init__(self, store: ActivationStore):
        meta = store.metadata_all()
        concepts, targets = concept_columns(meta.column_names)
        groups = store.manifest.get("extra", {}).get("concept_groups") or {}
        self.n_tokens = meta.num_rows
        self.concepts = [c[len(CONCEPT_PREFIX) :] for c in concepts]
        self.targets = [t[len(TARGET_PREFIX) :] for t in targets]
        self.groups = {n: groups.get(n, concept_group(n)) for n in self.concepts + self.targets}
        raw = _matrix(meta, concepts)
        self.labels = np.where(np.isnan(raw), np.nan, (raw >= POSITIVE_COVER).astype(np.float64))
        self.target_values = _matrix(meta, targets)

    @property
    def empty(self) -> bool:
        return not self.concepts and not self.targets


def _matrix(meta: pa.Table, columns: list[str]) -> np.ndarray:
    """``[n_tokens, len(columns)]`` float64, NULL -> NaN."""
    out = np.full((meta.num_rows, len(columns)), np.nan)
    for j, c in enumerate(columns):
        out[:, j] = meta.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
    return out


def spearman_sparse(rows: np.ndarray, vals: np.ndarray, target: np.ndarray) -> float:
    """Spearman correlation of a sparse activation vector (zero off ``rows``) with ``target``.

    Tokens where ``target`` is NaN are left out; NaN when either side is constant.
    """
    known = ~np.isnan(target)
    n = int(known.sum())
    keep = known[rows]
    rows, vals = rows[keep], vals[keep]
    if n < 3 or rows.size == 0:
        return float("nan")
    index = np.cumsum(known) - 1  # token row -> position among the known tokens
    rt = rankdata(target[known])
    n0 = n - rows.size
    ra_nz = rankdata(vals) + n0  # silent tokens take ranks 1..n0
    r0 = (n0 + 1) / 2
    mean = (n + 1) / 2
    rt_nz = rt[index[rows]]
    cross = r0 * (rt.sum() - rt_nz.sum()) + (ra_nz * rt_nz).sum()
    var_a = (n0 * r0**2 + (ra_nz**2).sum()) / n - mean**2
    var_t = (rt**2).sum() / n - mean**2
    if var_a <= 1e-12 or var_t <= 1e-12:
        return float("nan")
    return float((cross / n - mean**2) / np.sqrt(var_a * var_t))


def _blocks(con, acts: str, d_sae: int, n_concepts: int) -> list[tuple[int, int]]:
    """(first feature, count) blocks whose entries x concepts stay under the budget."""
    got = con.execute(f"SELECT feature, count(*) AS n FROM {acts} GROUP BY 1").fetchnumpy()
    counts = np.zeros(d_sae, np.int64)
    counts[np.asarray(got["feature"], np.int64)] = got["n"]
    budget = max(1, ENTRY_BUDGET // max(1, n_concepts))
    out, f0 = [], 0
    while f0 < d_sae:
        cum = np.cumsum(counts[f0:])
        n = max(1, int(np.searchsorted(cum, budget, side="right")))
        out.append((f0, n))
        f0 += n
    return out


def _block_rows(truth: TokenTruth, got: dict, f0: int, n: int) -> pa.Table:
    """The table rows of features f0..f0+n-1 from their sparse entries ``got``."""
    feats, rows, vals = (np.asarray(got[k]) for k in ("feature", "row", "value"))
    cols: dict[str, list] = {k: [] for k in ("feature", "concept", "metric", "value")}
    if truth.concepts:
        auc = auroc_sparse(feats, rows, vals, truth.labels, f0, n)  # [n, C]
        cols["feature"] += np.repeat(np.arange(f0, f0 + n), len(truth.concepts)).tolist()
        cols["concept"] += truth.concepts * n
        cols["metric"] += ["auroc"] * (n * len(truth.concepts))
        cols["value"] += auc.reshape(-1).tolist()
    if truth.targets:
        order = np.argsort(feats, kind="stable")
        feats, rows, vals = feats[order], rows[order], vals[order]
        bounds = np.searchsorted(feats, np.arange(f0, f0 + n + 1))
        for i in range(n):
            lo, hi = bounds[i], bounds[i + 1]
            for j, name in enumerate(truth.targets):
                rho = spearman_sparse(rows[lo:hi], vals[lo:hi], truth.target_values[:, j])
                cols["feature"].append(f0 + i)
                cols["concept"].append(name)
                cols["metric"].append("spearman")
                cols["value"].append(rho)
    cols["concept_group"] = [truth.groups[c] for c in cols["concept"]]
    value = pa.array(cols.pop("value"), pa.float64(), from_pandas=True)
    return pa.table({**{k: pa.array(v) for k, v in cols.items()}, "value": value})


def write_token_concepts(con, store: ActivationStore, acts_path, d_sae: int, notes: list) -> None:
    """``feature_token_concepts`` for a store whose tokens carry concepts (else nothing)."""
    truth = TokenTruth(store)
    if truth.empty:
        return
    acts = "read_parquet('" + str(acts_path).replace("'", "''") + "')"
    n_pos = np.nansum(truth.labels, axis=0).astype(int)
    n_known = (~np.isnan(truth.labels)).sum(0)
    one_class = [c for c, p, k in zip(truth.concepts, n_pos, n_known, strict=True) if p in (0, k)]
    if one_class:
        notes.append(f"token concepts with one class only (AUROC NULL): {', '.join(one_class)}")
    for f0, n in _blocks(con, acts, d_sae, len(truth.concepts) + len(truth.targets)):
        got = con.execute(
            f"SELECT feature, row, value FROM {acts} WHERE feature >= ? AND feature < ?",
            [f0, f0 + n],
        ).fetchnumpy()
        con.register("_tc", _block_rows(truth, got, f0, n))
        con.execute(
            "INSERT INTO feature_token_concepts SELECT feature::INTEGER, concept, concept_group, "
            "metric, value FROM _tc"
        )
        con.unregister("_tc")


def token_concept_report(con, n_targets: int = 3) -> str:
    """Best feature per token concept (AUROC) and the top features per target (Spearman)."""
    best = con.execute(
        """SELECT concept, concept_group, arg_max(feature, value), max(value)
           FROM feature_token_concepts WHERE metric = 'auroc' AND value IS NOT NULL
           GROUP BY 1, 2 ORDER BY 2, 4 DESC"""
    ).fetchall()
    top = con.execute(
        """SELECT concept, feature, value FROM (
             SELECT *, row_number() OVER (PARTITION BY concept ORDER BY value DESC) AS r
             FROM feature_token_concepts WHERE metric = 'spearman' AND value IS NOT NULL)
           WHERE r <= ? ORDER BY concept, r""",
        [n_targets],
    ).fetchall()
    if not best and not top:
        return ""
    lines = ["token-level concepts (AUROC over tokens: which feature aligns with what)",
             f"{'concept':<26} {'group':<11} {'feature':>8} {'AUROC':>6}"]  # fmt: skip
    lines += [f"{c:<26} {g:<11} {f:>8} {a:>6.3f}" for c, g, f, a in best]
    if top:
        lines.append("features that carry each target (Spearman over tokens)")
        lines += [f"{c:<26} feature {f:>6}  rho {v:+.3f}" for c, f, v in top]
    return "\n".join(lines)
