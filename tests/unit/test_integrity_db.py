"""Issue 15, database writers: a writer killed mid-rewrite must leave nothing behind.

Found by the fault-injection loop (``tests/integration/test_faults.py``): DuckDB keeps the
changes of an unfinished rewrite in ``features.duckdb.tmp.wal``. When the writer is killed
before its checkpoint, that WAL stayed, and the next rewrite opened it together with its
fresh copy: DuckDB replayed the dead writer's rows into it (steering rows doubled), or
refused the file ("WAL does not match database file") so that every later write failed.
"""

from __future__ import annotations

import os

import duckdb
import pytest

from workbench import db


def _killed_writer(run, fresh: bool) -> None:
    """A child process that starts a rewrite, inserts a row and dies before its checkpoint."""
    pid = os.fork()
    if pid == 0:  # the child: no cleanup of any kind runs after os._exit
        try:
            tmp = db.db_path(run).with_name(db.DB_NAME + ".tmp")
            if not fresh:
                tmp.write_bytes(db.db_path(run).read_bytes())
            con = duckdb.connect(str(tmp))
            db.create_schema(con)
            con.execute("INSERT INTO feature_labels VALUES (0, 'llm', 'stale', 1, 'm', '{}', NULL)")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _labels(run) -> list[tuple]:
    con = db.connect(run)
    try:
        return con.execute("SELECT feature, label FROM feature_labels ORDER BY 1").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("fresh", [False, True], ids=["append", "fresh"])
def test_a_killed_rewrite_leaves_no_rows_and_no_blockage(tmp_path, fresh):
    with db.rewrite(tmp_path, fresh=True):
        pass
    _killed_writer(tmp_path, fresh)
    assert (tmp_path / (db.DB_NAME + ".tmp.wal")).exists()  # what the dead writer left
    with db.rewrite(tmp_path) as con:
        con.execute("INSERT INTO feature_labels VALUES (1, 'llm', 'fresh', 1, 'm', '{}', NULL)")
    assert _labels(tmp_path) == [(1, "fresh")]
    assert not (tmp_path / (db.DB_NAME + ".tmp.wal")).exists()


def test_segmentation_results_are_written_while_a_reader_holds_the_database(tmp_path):
    """Before the fix ``seg-evaluate --db`` wrote in place and failed with DuckDB's file lock
    ("Could not set lock on file") whenever the app or a notebook had the run open."""
    from segmentation.results_db import ResultRow, read_results, write_results

    with db.rewrite(tmp_path, fresh=True):
        pass
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the reader: another process, as the app is
        try:
            con = db.connect(tmp_path)
            con.execute("SELECT count(*) FROM features").fetchall()
            os.write(ready_w, b"1")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.read(ready_r, 1)
    try:
        write_results(tmp_path / db.DB_NAME, "unet", "phantom", [ResultRow("all", "dice", 0.9, 3)])
    finally:
        os.write(done_w, b"1")
        os.waitpid(pid, 0)
    assert [r["value"] for r in read_results(tmp_path / db.DB_NAME)] == [0.9]


def test_label_journal_of_another_sae_is_retired_not_applied(tmp_path, caplog):
    """A label run killed with work in its journal, then analyse rerun with another SAE:
    before the fix the next flush wrote the old SAE's labels onto the new SAE's features."""
    import logging

    from workbench.label.journal import Journal, done_features

    def analysed(fingerprint: str) -> None:
        with db.rewrite(tmp_path, fresh=True) as con:
            con.execute(
                "INSERT INTO runs (run_id, stage, finished_at, sae_fingerprint) "
                "VALUES (?, 'analyse', now()::TIMESTAMP, ?)",
                [fingerprint, fingerprint],
            )

    analysed("sae-a")
    record = {"type": "label", "feature": 3, "method": "llm:m", "label": "old meaning",
              "score": 0.9, "model": "m", "details": {}}  # fmt: skip
    Journal(tmp_path / "journal.jsonl", tmp_path).append([record])  # then the kill
    analysed("sae-b")
    journal = Journal(tmp_path / "journal.jsonl", tmp_path)  # the rerun of label
    con = db.connect(tmp_path)
    assert done_features(con, journal, "llm:m", None) == set()  # feature 3 is still to do
    con.close()
    with caplog.at_level(logging.WARNING, logger="workbench.label"):
        journal.flush()
    con = db.connect(tmp_path)
    assert con.execute("SELECT count(*) FROM feature_labels").fetchone()[0] == 0
    assert con.execute(
        "SELECT feature, label, sae_fingerprint FROM retired_feature_labels"
    ).fetchall() == [(3, "old meaning", "sae-a")]
    con.close()
    assert "SAE sae-a" in caplog.text and "moved to the retired_* tables" in caplog.text


def test_a_database_without_a_runs_table_has_no_generation(tmp_path):
    import duckdb

    from workbench.generations import analyse_run_id

    con = duckdb.connect(str(tmp_path / "bare.duckdb"))
    con.execute("CREATE TABLE other (x INTEGER)")
    assert analyse_run_id(con) is None  # not a Python variable read as the table
    con.close()
