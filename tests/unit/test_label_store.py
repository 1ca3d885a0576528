"""The label journal: finished work survives a crash and is applied exactly once."""

from __future__ import annotations

from datetime import datetime

from workbench import db
from workbench.db import RunRow
from workbench.label.journal import Journal, done_features, statistical_labels


def label(feature: int, text: str) -> dict:
    return {
        "type": "label",
        "feature": feature,
        "method": "llm:m",
        "label": text,
        "score": 0.75,
        "model": "m",
        "details": {"answer": "x"},
    }


def score(feature: int, f1: float) -> dict:
    return {
        "type": "score",
        "feature": feature,
        "method": "llm:m",
        "scorer": "detection:llm:m",
        "n": 8,
        "metrics": {"f1": f1, "recall": 1.0},
    }


def table(run, sql):
    con = db.connect(run)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_journal_survives_a_crash_and_applies_once(tmp_path):
    with db.rewrite(tmp_path) as con:  # an analysed database with one statistical label
        con.execute(
            "INSERT INTO feature_labels VALUES (1, 'statistical', 'pacemaker', 0.9, NULL, '{}', "
            "now()::TIMESTAMP), (2, 'statistical', 'dead', 0.5, NULL, '{}', now()::TIMESTAMP)"
        )
    path = tmp_path / "label" / "journal.jsonl"
    Journal(path, tmp_path).append([label(1, "old"), score(1, 0.5)])
    with open(path, "a") as fh:
        fh.write('{"type": "label", "feat')  # torn line of a killed process
    journal = Journal(path, tmp_path)  # the rerun
    assert [r["type"] for r in journal.records()] == ["label", "score"]
    con = db.connect(tmp_path)
    assert done_features(con, journal, "llm:m", None) == {1}  # pending work counts as done
    assert done_features(con, journal, "llm:m", "detection:llm:m") == {1}
    assert done_features(con, journal, "statistical", "detection:llm:m") == set()
    assert statistical_labels(con) == {1: "pacemaker"}  # dead features are not scored
    con.close()
    assert journal.flush() == 2 and journal.records() == []
    journal.append([label(1, "new"), score(1, 0.8)])
    journal.flush(runs=RunRow("r1", "label", datetime(2026, 1, 1), "{}", ["note"]))
    assert table(tmp_path, "SELECT feature, label FROM feature_labels WHERE method = 'llm:m'") == [
        (1, "new")
    ]
    assert sorted(table(tmp_path, "SELECT metric, value FROM feature_scores")) == [
        ("f1", 0.8),
        ("recall", 1.0),
    ]
    assert table(tmp_path, "SELECT stage, notes FROM runs") == [("label", '["note"]')]
    assert journal.flush() == 0


def test_missing_tables_are_a_clear_error(tmp_path, capsys):
    import duckdb

    from workbench.label.run import main

    duckdb.connect(str(tmp_path / "features.duckdb")).execute("CREATE TABLE runs (x INT)").close()
    assert main(["--run", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "features.duckdb lacks feature_stats" in out and "workbench.analyse" in out


def test_a_record_appended_after_a_torn_line_is_kept(tmp_path):
    path = tmp_path / "label" / "journal.jsonl"
    Journal(path, tmp_path).append([label(1, "first")])
    with open(path, "a") as fh:
        fh.write('{"type": "score", "feature": 1, "met')  # killed mid-write
    rerun = Journal(path, tmp_path)
    rerun.append([label(2, "after the crash")])  # the next run goes on appending
    assert [(r["feature"], r["label"]) for r in rerun.records()] == [
        (1, "first"),
        (2, "after the crash"),
    ]
    lines = path.read_text().splitlines()
    assert lines[1].endswith('"met') and lines[2].startswith('{"type": "label"')
    assert rerun.flush() == 2
    assert table(tmp_path, "SELECT feature, label FROM feature_labels ORDER BY feature") == [
        (1, "first"),
        (2, "after the crash"),
    ]


def test_the_reader_recovers_a_record_glued_to_a_torn_line(tmp_path):
    import json

    path = tmp_path / "label" / "journal.jsonl"
    path.parent.mkdir(parents=True)
    # what an older writer left: the torn fragment and the next record on one line
    path.write_text('{"type": "label", "feat' + json.dumps(label(3, "glued")) + "\n{broken\n")
    assert [r["label"] for r in Journal(path, tmp_path).records()] == ["glued"]
