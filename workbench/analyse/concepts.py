"""Concept association: AUROC of each feature's study-level maximum against study labels.

For feature f and concept c the score is the AUROC of ``max_act[study, f]`` (0 where f never
fires in the study) as a classifier of the study's label, i.e. the Mann-Whitney U statistic
``P(x_pos > x_neg) + 0.5 P(x_pos = x_neg)`` over labelled studies. Studies whose label is
missing or uncertain (CheXpert -1) are left out of that concept's AUROC and counted; a
concept without both a positive and a negative study gets NULL, never a made-up 0.5.

The study-by-feature matrix is sparse (a feature fires in few studies), so
:func:`workbench.stats.auroc_sparse` works on the non-zero entries only: every silent study
shares the lowest rank, and each positive that fires beats all silent negatives. Cost is
O(nnz * concepts) per block.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from workbench.stats import auroc_sparse

log = logging.getLogger(__name__)


class LabelMatrix(NamedTuple):
    """Labels of the stored studies: ``values[i, j]`` for study ``study_ids[i]``, concept j.

    1 = positive, 0 = negative, -1 = uncertain, NaN = missing.
    """

    study_ids: np.ndarray  # int64 [S]
    concepts: tuple[str, ...]
    sources: tuple[str, ...]  # per concept: 'chexpert' | 'phantom'
    values: np.ndarray  # float64 [S, C]

    def counts(self) -> dict[str, np.ndarray]:
        """Per concept: positives, negatives, uncertain and missing among the studies."""
        v = self.values
        return {
            "n_pos": (v == 1).sum(0),
            "n_neg": (v == 0).sum(0),
            "n_uncertain": (v == -1).sum(0),
            "n_missing": np.isnan(v).sum(0),
        }


def _read_csv_labels(path: Path, names: tuple[str, ...] | None) -> tuple[dict, list[str]]:
    """study_id -> {column: value} from a MIMIC-style label CSV (empty cell = missing).

    Returns the table and the columns read: ``names`` that the file has (none is an error).
    """
    out: dict[int, dict[str, float]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [c for c in (reader.fieldnames or []) if c not in ("subject_id", "study_id")]
        if "study_id" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no study_id column")
        if names is not None:
            fields = [n for n in names if n in fields]
            if not fields:
                raise ValueError(f"{path}: none of the label columns {list(names)}")
        for line, rec in enumerate(reader, start=2):
            try:
                sid = int(rec["study_id"])
                out[sid] = {
                    c: float(rec[c]) if rec[c] not in ("", None) else np.nan for c in fields
                }
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: bad label value: {exc}") from None
    return out, fields


def load_labels(
    study_ids: np.ndarray,
    chexpert: dict[int, dict[str, float | None]] | None,
    phantom_csv: Path | None,
    notes: list[str] | None = None,
) -> LabelMatrix:
    """CheXpert labels and, if given, phantom ground truth for the stored studies.

    ``chexpert`` is the study -> {label: 1/0/-1/None} table of
    :func:`workbench.cxr.mimic.read_labels` (None: no CheXpert concepts);
    ``phantom_csv`` is ``phantom-labels.csv`` with one 0/1 column per
    :func:`workbench.cxr.findings.concept_names`. A study absent from a table gets NaN; a
    concept column the CSV lacks (a dataset older than the vocabulary) is left out and noted.
    """
    from workbench.cxr.findings import CHEXPERT_LABELS, concept_names

    study_ids = np.asarray(study_ids, np.int64)
    tables: list[tuple[str, tuple[str, ...], dict]] = []
    if chexpert is not None:
        tables.append(("chexpert", CHEXPERT_LABELS, chexpert))
    if phantom_csv is not None:
        table, found = _read_csv_labels(phantom_csv, concept_names())
        absent = [n for n in concept_names() if n not in found]
        if absent and notes is not None:
            notes.append(f"{phantom_csv.name} lacks {absent}: not scored")
        tables.append(("phantom", tuple(found), table))
    cols, concepts, sources = [], [], []
    for source, names, table in tables:
        for name in names:
            col = [(table.get(int(s)) or {}).get(name) for s in study_ids]
            cols.append(np.array([np.nan if v is None else v for v in col], np.float64))
            concepts.append(name)
            sources.append(source)
    values = np.stack(cols, axis=1) if cols else np.zeros((len(study_ids), 0))
    return LabelMatrix(study_ids, tuple(concepts), tuple(sources), values)


def concept_category(concept: str) -> str:
    """'finding', 'device' or 'change' for a phantom concept name."""
    from workbench.cxr.findings import DEVICES, FINDINGS

    if concept in FINDINGS:
        return "finding"
    if concept in DEVICES:
        return "device"
    return "change"


# Most (study, feature) entries per AUROC block: bounds the [entries, concepts] arrays.
MAX_BLOCK_ENTRIES = 2_000_000


def feature_blocks(con, d_sae: int, block: int, max_entries: int) -> list[tuple[int, int]]:
    """(first feature, count) blocks of at most ``block`` features and ``max_entries`` rows.

    A dense feature fires in every study, so a block's size in rows is the sum of its
    features' ``study_features`` counts; one feature is never split.
    """
    counts = np.zeros(d_sae, np.int64)
    got = con.execute("SELECT feature, count(*) FROM study_features GROUP BY 1").fetchnumpy()
    counts[np.asarray(got["feature"], np.int64)] = got["count_star()"]
    out, f0 = [], 0
    while f0 < d_sae:
        cum = np.cumsum(counts[f0 : f0 + block])
        n = max(1, int(np.searchsorted(cum, max_entries, side="right")))
        out.append((f0, n))
        f0 += n
    return out


def write_feature_concepts(con, labels: LabelMatrix, d_sae: int, block: int, notes: list) -> None:
    """``feature_concepts``: AUROC of every (feature, concept), ranked within each feature.

    Ties rank ground truth (phantom) before CheXpert labels, then by name.
    """
    import pyarrow as pa

    C = len(labels.concepts)
    if C == 0:
        notes.append("no labels found: feature_concepts is empty")
        return
    order = np.argsort(labels.study_ids)
    sorted_ids = labels.study_ids[order]
    con.execute(
        "CREATE TEMP TABLE _fc (feature INTEGER, concept VARCHAR, source VARCHAR, auroc DOUBLE)"
    )
    for f0, n in feature_blocks(con, d_sae, block, MAX_BLOCK_ENTRIES):
        got = con.execute(
            "SELECT feature, study_id, max_act FROM study_features "
            "WHERE feature >= ? AND feature < ?",
            [f0, f0 + n],
        ).fetchnumpy()
        s_idx = order[np.searchsorted(sorted_ids, np.asarray(got["study_id"]))]
        auc = auroc_sparse(got["feature"], s_idx, got["max_act"], labels.values, f0, n)
        con.register(
            "_blk",
            pa.table(
                {
                    "feature": np.repeat(np.arange(f0, f0 + n, dtype=np.int32), C),
                    "concept": np.tile(np.asarray(labels.concepts, object), n),
                    "source": np.tile(np.asarray(labels.sources, object), n),
                    "auroc": pa.array(auc.reshape(-1), from_pandas=True),
                }
            ),
        )
        con.execute("INSERT INTO _fc SELECT * FROM _blk")
        con.unregister("_blk")
    con.execute(
        "INSERT INTO feature_concepts SELECT *, row_number() OVER (PARTITION BY feature "
        "ORDER BY auroc DESC NULLS LAST, source = 'phantom' DESC, concept)::INTEGER "
        "FROM _fc ORDER BY feature, 5"
    )
    con.execute("DROP TABLE _fc")


def write_recovery(con, threshold: float) -> None:
    """``concept_recovery``: for each phantom concept, the feature with the highest AUROC."""
    import pyarrow as pa

    names = [
        r[0]
        for r in con.execute("SELECT concept FROM concepts WHERE source = 'phantom'").fetchall()
    ]
    if not names:
        return
    con.register(
        "_cat", pa.table({"concept": names, "category": [concept_category(c) for c in names]})
    )
    con.execute(
        f"""INSERT INTO concept_recovery
        WITH best AS (
            SELECT concept, arg_max(feature, auroc) AS f, max(auroc) AS a
            FROM feature_concepts WHERE source = 'phantom' AND auroc IS NOT NULL GROUP BY 1
        )
        SELECT c.concept, k.category, c.n_pos,
               row_number() OVER (PARTITION BY k.category ORDER BY c.n_pos DESC, c.concept),
               best.f, best.a, coalesce(best.a >= {threshold}, false), {threshold}
        FROM concepts c JOIN _cat k USING (concept) LEFT JOIN best USING (concept)
        WHERE c.source = 'phantom' ORDER BY k.category, 4"""
    )
    con.unregister("_cat")


def recovery_report(run: Path) -> str:
    """The phantom recovery table as text, with the verdict on the most common findings."""
    from workbench import db

    con = db.connect(run)
    try:
        rows = con.execute(
            "SELECT concept, category, n_pos, prevalence_rank, best_feature, auroc, recovered,"
            " threshold FROM concept_recovery ORDER BY category DESC, prevalence_rank"
        ).fetchall()
    finally:
        con.close()
    if not rows:
        return "no phantom ground truth in this run: recovery not computed"
    lines = [f"{'concept':<22} {'category':<8} {'n_pos':>6} {'feature':>8} {'AUROC':>6}  ok"]
    for concept, cat, n_pos, _, feat, auc, ok, _ in rows:
        feat_s = "-" if feat is None else str(feat)
        auc_s = "-" if auc is None else f"{auc:.3f}"
        ok_s = "-" if auc is None else "yes" if ok else "no"
        lines.append(f"{concept:<22} {cat:<8} {n_pos:>6} {feat_s:>8} {auc_s:>6}  {ok_s}")
    thr = rows[0][7]
    top = [r for r in rows if r[1] == "finding" and r[3] <= 8 and r[2] > 0]
    hits = sum(1 for r in top if r[6])
    lines.append(f"findings recovered (AUROC >= {thr:g}): {hits} of the {len(top)} most common")
    return "\n".join(lines)
