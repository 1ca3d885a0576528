"""How ``label`` and ``steer`` write into ``features.duckdb`` without losing finished work.

A database write is a rewrite of a copy (:func:`workbench.db.rewrite`, atomic for readers),
which costs a file copy, so results are first appended to a JSON-lines journal (one line per
finished record, flushed and fsynced) and moved into the database in batches. Applying a
journal is idempotent: each record first deletes the rows it replaces. After a successful
move the journal is emptied; a crash in between only means the next flush re-applies it.

Each record carries the fingerprint of the SAE whose features it describes. Records left
over from before a rerun of analyse with another SAE are not applied to the new features:
they go to the ``retired_*`` tables under their own fingerprint, with a WARNING.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from workbench import db
from workbench.io import write_text

log = logging.getLogger("workbench.label")


class Journal:
    """Append-only record of finished label/score results, moved into the database by flush."""

    def __init__(self, path: Path, run: Path, sync_seconds: float = 1.0):
        self.path = Path(path)
        self.run = Path(run)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sync_seconds = sync_seconds
        self._synced = 0.0
        self.sae = _analysed_sae(self.run)  # stamped on every record appended

    def records(self) -> list[dict]:
        """Records written and not yet moved (a torn line from a crash is skipped, and a
        whole record glued to its end is still read)."""
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        return [rec for rec in map(_parse_line, lines) if rec is not None]

    def _torn(self) -> bool:
        """True when the journal ends inside a line (a crash mid-write)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() == 0:
                    return False
                fh.seek(-1, os.SEEK_END)
                return fh.read(1) != b"\n"
        except FileNotFoundError:
            return False

    def pending(self) -> list[dict]:
        """Records not yet moved that describe the current SAE's features."""
        return [r for r in self.records() if r.get("sae") in (None, self.sae)]

    def append(self, records: list[dict]) -> None:
        """Append ``records``, one JSON line each; after a torn last line, start a new line
        first so the torn fragment cannot swallow the first record."""
        if not records:
            return
        if self.sae is not None:  # after the record's own keys: a record starts '{"type"'
            records = [{**r, "sae": self.sae} for r in records]
        lead = "\n" if self._torn() else ""
        with open(self.path, "a") as fh:
            fh.write(lead + "".join(json.dumps(r) + "\n" for r in records))
            fh.flush()  # in the OS now: survives the process being killed
            if time.monotonic() - self._synced >= self.sync_seconds:  # and a power cut
                os.fsync(fh.fileno())
                self._synced = time.monotonic()

    def flush(self, runs: db.RunRow | None = None) -> int:
        """Move the journal (and a ``runs`` row) into the database; returns records moved."""
        records = self.records()
        if not records and runs is None:
            return 0
        with db.rewrite(self.run) as con:
            con.execute("BEGIN TRANSACTION")
            current = _analysed_sae(con)
            stale = [r for r in records if r.get("sae") not in (None, current)]
            _apply_all(con, [r for r in records if r.get("sae") in (None, current)])
            _retire(con, stale, current)
            if runs is not None:
                db.insert_run_row(con, runs)
            con.execute("COMMIT")
        write_text(self.path, "")
        return len(records)


def _analysed_sae(where: Path | duckdb.DuckDBPyConnection) -> str | None:
    """Fingerprint of the SAE of the latest analyse (a run directory or a connection)."""
    sql = (
        "SELECT sae_fingerprint FROM runs WHERE stage = 'analyse' ORDER BY finished_at DESC LIMIT 1"
    )
    if isinstance(where, duckdb.DuckDBPyConnection):
        rows = where.execute(sql).fetchall()  # fetchall: leaves no result open in a transaction
        return rows[0][0] if rows else None
    if not db.db_path(where).exists():
        return None
    con = db.connect(where)
    try:
        row = con.execute(sql).fetchone()
    except (duckdb.CatalogException, duckdb.BinderException):  # no (or a foreign) runs table
        row = None
    finally:
        con.close()
    return None if row is None else row[0]


def _retire(con: duckdb.DuckDBPyConnection, stale: list[dict], current: str | None) -> None:
    """Journal records of another SAE into the ``retired_*`` tables, under their fingerprint."""
    if not stale:
        return
    now = db.utc_now()
    for sae in sorted({r["sae"] for r in stale}):
        labels, scores = _latest([r for r in stale if r["sae"] == sae])
        con.register("old_labels", _label_table(labels))
        con.register("old_scores", _score_tables(scores)[0])
        try:
            con.execute(
                "INSERT INTO retired_feature_labels SELECT feature, method, label, score, model, "
                "details, ?, ?, ? FROM old_labels",
                [now, sae, now],
            )
            con.execute(
                "INSERT INTO retired_feature_scores SELECT feature, method, scorer, metric, "
                "value, n_examples, ?, ?, ? FROM old_scores",
                [now, sae, now],
            )
        finally:
            con.unregister("old_labels")
            con.unregister("old_scores")
        log.warning(
            "%d journal records (%d labels, %d scores) describe the features of SAE %s, but "
            "features.duckdb now holds SAE %s (analyse was rerun): moved to the retired_* "
            "tables, not applied",
            len(labels) + len(scores), len(labels), len(scores), sae, current,
        )  # fmt: skip


def _parse_line(line: str) -> dict | None:
    """One journal line; a torn fragment followed by a whole record (an append after a crash
    by a writer that did not start a new line) yields the record; garbage yields None."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        pass
    start = line.find('{"type"', 1)
    while start != -1:
        try:
            return json.loads(line[start:])
        except json.JSONDecodeError:
            start = line.find('{"type"', start + 1)
    return None


def _latest(records: list[dict]) -> tuple[dict, dict]:
    """The last label per (feature, method) and last score per (feature, method, scorer)."""
    labels, scores = {}, {}
    for rec in records:
        if rec["type"] == "label":
            labels[(rec["feature"], rec["method"])] = rec
        elif rec["type"] == "score":
            scores[(rec["feature"], rec["method"], rec["scorer"])] = rec
        else:
            raise ValueError(f"journal record of unknown type {rec['type']!r}")
    return labels, scores


def _label_table(labels: dict) -> pa.Table:
    return pa.table(
        {
            "feature": pa.array([k[0] for k in labels], pa.int32()),
            "method": pa.array([k[1] for k in labels], pa.string()),
            "label": pa.array([r["label"] for r in labels.values()], pa.string()),
            "score": pa.array([r["score"] for r in labels.values()], pa.float64()),
            "model": pa.array([r["model"] for r in labels.values()], pa.string()),
            "details": pa.array([json.dumps(r["details"]) for r in labels.values()], pa.string()),
        }
    )


def _score_tables(scores: dict) -> tuple[pa.Table, pa.Table]:
    """One row per (feature, method, scorer, metric), and the keys being replaced."""
    rows = [(k, m, v) for k, r in scores.items() for m, v in r["metrics"].items()]
    values = pa.table(
        {
            "feature": pa.array([k[0] for k, _, _ in rows], pa.int32()),
            "method": pa.array([k[1] for k, _, _ in rows], pa.string()),
            "scorer": pa.array([k[2] for k, _, _ in rows], pa.string()),
            "metric": pa.array([m for _, m, _ in rows], pa.string()),
            "value": pa.array([v for _, _, v in rows], pa.float64()),
            "n_examples": pa.array([scores[k]["n"] for k, _, _ in rows], pa.int32()),
        }
    )
    keys = pa.table(
        {
            "feature": pa.array([k[0] for k in scores], pa.int32()),
            "method": pa.array([k[1] for k in scores], pa.string()),
            "scorer": pa.array([k[2] for k in scores], pa.string()),
        }
    )
    return values, keys


def _apply_all(con: duckdb.DuckDBPyConnection, records: list[dict]) -> None:
    """Replace the rows of every record: two bulk deletes and two bulk inserts."""
    now = db.utc_now()
    labels, scores = _latest(records)
    score_values, score_keys = _score_tables(scores)
    con.register("new_labels", _label_table(labels))
    con.register("new_scores", score_values)
    con.register("score_keys", score_keys)
    try:
        con.execute(
            "DELETE FROM feature_labels USING new_labels n "
            "WHERE feature_labels.feature = n.feature AND feature_labels.method = n.method"
        )
        con.execute(
            "DELETE FROM feature_scores USING score_keys k WHERE feature_scores.feature = k.feature"
            " AND feature_scores.method = k.method AND feature_scores.scorer = k.scorer"
        )
        con.execute(
            "INSERT INTO feature_labels SELECT feature, method, label, score, model, details, ? "
            "FROM new_labels",
            [now],
        )
        con.execute(
            "INSERT INTO feature_scores SELECT feature, method, scorer, metric, value, "
            "n_examples, ? FROM new_scores",
            [now],
        )
    finally:
        for name in ("new_labels", "new_scores", "score_keys"):
            con.unregister(name)


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
            for r in journal.pending()
            if r["type"] == "label" and r["method"] == method
        }
    else:
        rows = con.execute(
            "SELECT DISTINCT feature FROM feature_scores WHERE method = ? AND scorer = ?",
            [method, scorer],
        ).fetchall()
        pending = {
            r["feature"]
            for r in journal.pending()
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
