"""How ``label`` and ``steer`` write into ``features.duckdb`` without losing finished work.

A database write is a rewrite of a copy (:func:`workbench.db.rewrite`, atomic for readers),
which costs a file copy, so results are first appended to a JSON-lines journal (one line per
finished record, flushed and fsynced) and moved into the database in batches. Applying a
journal is idempotent: each record first deletes the rows it replaces. After a successful
move the journal is emptied; a crash in between only means the next flush re-applies it.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import duckdb

from workbench import db


class RunRow(NamedTuple):
    """The ``runs`` row of one execution of a stage."""

    run_id: str
    stage: str
    started_at: datetime
    config: str
    notes: list[str]


def insert_run_row(con: duckdb.DuckDBPyConnection, row: RunRow) -> None:
    """Insert ``row``, copying store/SAE provenance from the latest ``analyse`` row."""
    finished = datetime.now(UTC).replace(tzinfo=None)
    values = [row.run_id, row.stage, row.started_at, finished, row.config, json.dumps(row.notes)]
    con.execute(
        """INSERT INTO runs
           SELECT ?, ?, ?, ?, ?, a.store_path, a.sae_path, a.sae_fingerprint, a.hook_name,
                  a.n_tokens, a.n_studies, a.d_sae, ?
           FROM (SELECT 1) LEFT JOIN (
               SELECT * FROM runs WHERE stage = 'analyse' ORDER BY finished_at DESC LIMIT 1
           ) a ON true""",
        values,
    )


class Journal:
    """Append-only record of finished label/score results, moved into the database by flush."""

    def __init__(self, path: Path, run: Path):
        self.path = Path(path)
        self.run = Path(run)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def records(self) -> list[dict]:
        """Records written and not yet moved (a torn last line from a crash is ignored)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        with open(self.path, "a") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in records))
            fh.flush()
            os.fsync(fh.fileno())

    def flush(self, runs: RunRow | None = None) -> int:
        """Move the journal (and a ``runs`` row) into the database; returns records moved."""
        records = self.records()
        if not records and runs is None:
            return 0
        with db.rewrite(self.run) as con:
            con.execute("BEGIN TRANSACTION")
            for rec in records:
                _apply(con, rec)
            if runs is not None:
                insert_run_row(con, runs)
            con.execute("COMMIT")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("")
        os.replace(tmp, self.path)
        return len(records)


def _apply(con: duckdb.DuckDBPyConnection, rec: dict) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    f, method = rec["feature"], rec["method"]
    if rec["type"] == "label":
        con.execute("DELETE FROM feature_labels WHERE feature = ? AND method = ?", [f, method])
        con.execute(
            "INSERT INTO feature_labels VALUES (?, ?, ?, ?, ?, ?, ?)",
            [f, method, rec["label"], rec["score"], rec["model"], json.dumps(rec["details"]), now],
        )
    elif rec["type"] == "score":
        con.execute(
            "DELETE FROM feature_scores WHERE feature = ? AND method = ? AND scorer = ?",
            [f, method, rec["scorer"]],
        )
        for metric, value in rec["metrics"].items():
            con.execute(
                "INSERT INTO feature_scores VALUES (?, ?, ?, ?, ?, ?, ?)",
                [f, method, rec["scorer"], metric, value, rec["n"], now],
            )
    else:
        raise ValueError(f"journal record of unknown type {rec['type']!r}")


def done_features(
    con: duckdb.DuckDBPyConnection, journal: Journal, method: str, scorer: str | None
) -> set[int]:
    """Features with a label (``scorer`` None) or scores by ``scorer`` of ``method``."""
    if scorer is None:
        rows = con.execute(
            "SELECT DISTINCT feature FROM feature_labels WHERE method = ?", [method]
        ).fetchall()
        pending = {
            r["feature"]
            for r in journal.records()
            if r["type"] == "label" and r["method"] == method
        }
    else:
        rows = con.execute(
            "SELECT DISTINCT feature FROM feature_scores WHERE method = ? AND scorer = ?",
            [method, scorer],
        ).fetchall()
        pending = {
            r["feature"]
            for r in journal.records()
            if r["type"] == "score" and r["method"] == method and r["scorer"] == scorer
        }
    return {r[0] for r in rows} | pending


def statistical_labels(con: duckdb.DuckDBPyConnection) -> dict[int, str]:
    """The statistical label of every live feature (analyse writes one per feature)."""
    rows = con.execute(
        "SELECT feature, label FROM feature_labels WHERE method = 'statistical' "
        "AND label IS NOT NULL AND label <> 'dead'"
    ).fetchall()
    return dict(rows)
