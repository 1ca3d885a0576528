"""The ``segmentation_results`` DuckDB table: evaluation results beside the feature tables.

One row per (model, dataset, subgroup, metric). ``segmentation.evaluate --db`` replaces all
rows of its model+dataset in one atomic rewrite of the database (:func:`workbench.db.rewrite`),
so reruns never duplicate, other models' rows are untouched, and readers never block it.
Documented in ``docs/segmentation.md``; the notebooks and the app read it
with ``duckdb.connect(path, read_only=True)`` like every other table.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import NamedTuple

import duckdb

from workbench import db as workbench_db

TABLE = "segmentation_results"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    model       VARCHAR NOT NULL,   -- model name (default: the kind, unet | ssn | ssn-diag)
    dataset     VARCHAR NOT NULL,   -- dataset name, e.g. phantom-nodules, jsrt, lidc
    subgroup    VARCHAR NOT NULL,   -- 'all', 'sex=F', 'sex=M', 'age=40-59', ...
    metric      VARCHAR NOT NULL,   -- dice, iou, ged, sample_diversity, hm_iou, ece, ...
    value       DOUBLE,             -- mean over the subgroup's images
    n_images    INTEGER NOT NULL,   -- images in the subgroup
    split       VARCHAR,            -- dataset split evaluated (test, validate, ...)
    num_samples INTEGER,            -- model samples per image behind distribution metrics
    checkpoint  VARCHAR,            -- path of the evaluated model.pt
    created_at  TIMESTAMP NOT NULL  -- when the evaluation ran (UTC)
)
"""


class ResultRow(NamedTuple):
    subgroup: str
    metric: str
    value: float
    n_images: int


def write_results(
    db_path: Path,
    model: str,
    dataset: str,
    rows: list[ResultRow],
    split: str | None = None,
    num_samples: int | None = None,
    checkpoint: str | None = None,
) -> int:
    """Replace the rows of ``model`` + ``dataset`` with ``rows``; return the number written."""
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    # a rewrite of a copy, swapped in atomically (workbench.db): works while the app or a
    # notebook holds the database open, and under the writers' lock, so a concurrent analyse
    # or label cannot drop these rows by replacing the file after its own copy
    with workbench_db.rewrite(db_path) as con:
        con.execute(SCHEMA)
        con.execute(f"DELETE FROM {TABLE} WHERE model = ? AND dataset = ?", [model, dataset])
        con.executemany(
            f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                [model, dataset, r.subgroup, r.metric, r.value, r.n_images, split,
                 num_samples, checkpoint, now]
                for r in rows
            ],
        )  # fmt: skip
    return len(rows)


def read_results(db_path: Path, model: str | None = None, dataset: str | None = None):
    """All (or one model's / dataset's) rows as a list of dicts, for tests and reports."""
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        where, params = [], []
        for col, val in (("model", model), ("dataset", dataset)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        sql = f"SELECT * FROM {TABLE}" + (" WHERE " + " AND ".join(where) if where else "")
        cur = con.execute(sql + " ORDER BY model, dataset, subgroup, metric", params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()
