"""The schema is documented once, readers are read-only, and rewrites are atomic."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workbench import db

SCHEMA_MD = Path(__file__).resolve().parents[2] / "docs" / "schema.md"


def _features(con, n: int) -> None:
    con.execute(f"INSERT INTO features SELECT range, 0, 0.0, 1.0 FROM range({n})")


def test_docs_reference_section_is_generated_from_the_code():
    text = SCHEMA_MD.read_text()
    section = text.split("<!-- schema:begin -->\n", 1)[1].split("<!-- schema:end -->", 1)[0]
    assert section == db.markdown(), "docs/schema.md is stale: regenerate with --markdown"


def test_every_table_and_column_is_documented():
    text = SCHEMA_MD.read_text()
    for table in db.TABLES:
        assert f"### `{table.name}`" in text
        assert table.doc
        for col in table.columns:
            assert col.doc, f"{table.name}.{col.name} has no description"
            assert re.search(rf"\| `{re.escape(col.name)}` \| {re.escape(col.type)} \|", text)
    design_names = {
        "studies",
        "tokens",
        "features",
        "feature_stats",
        "feature_histograms",
        "feature_examples",
        "feature_concepts",
        "feature_labels",
        "feature_scores",
        "steering_results",
        "runs",
    }
    assert design_names <= set(db.TABLE)


def test_schema_comments_are_visible_to_notebooks(tmp_path):
    with db.rewrite(tmp_path, fresh=True):
        pass
    con = db.connect(tmp_path)
    got = dict(
        con.execute(
            "SELECT column_name, comment FROM duckdb_columns() WHERE table_name = 'feature_stats'"
        ).fetchall()
    )
    assert got["frequency"] == db.TABLE["feature_stats"].columns[2].doc
    assert set(r[0] for r in con.execute("SHOW TABLES").fetchall()) >= set(db.TABLE)


def test_connect_is_read_only_and_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="features.duckdb"):
        db.connect(tmp_path)
    with db.rewrite(tmp_path, fresh=True) as con:
        _features(con, 3)
    with pytest.raises(ValueError, match="rewrite"):
        db.connect(tmp_path, read_only=False)
    con = db.connect(tmp_path)
    assert con.execute("SELECT count(*) FROM features").fetchone()[0] == 3
    with pytest.raises(duckdb.Error):
        con.execute("DELETE FROM features")


def test_reader_open_during_rewrite_keeps_its_snapshot(tmp_path):
    with db.rewrite(tmp_path, fresh=True) as con:
        _features(con, 3)
    reader = db.connect(tmp_path)
    with db.rewrite(tmp_path, fresh=True) as con:
        _features(con, 5)
        # mid-rewrite: the live file is untouched, the reader still works
        assert reader.execute("SELECT count(*) FROM features").fetchone()[0] == 3
        assert db.connect(tmp_path).execute("SELECT count(*) FROM features").fetchone()[0] == 3
    assert reader.execute("SELECT count(*) FROM features").fetchone()[0] == 3
    fresh = db.connect(tmp_path)  # same process: not served from DuckDB's instance cache
    assert fresh.execute("SELECT count(*) FROM features").fetchone()[0] == 5


def test_failed_rewrite_leaves_the_database_untouched(tmp_path):
    with db.rewrite(tmp_path, fresh=True) as con:
        _features(con, 3)
    with pytest.raises(RuntimeError, match="boom"), db.rewrite(tmp_path) as con:
        con.execute("DELETE FROM features")
        raise RuntimeError("boom")
    assert not (tmp_path / "features.duckdb.tmp").exists()
    assert db.connect(tmp_path).execute("SELECT count(*) FROM features").fetchone()[0] == 3


def test_append_rewrite_keeps_existing_rows(tmp_path):
    with db.rewrite(tmp_path, fresh=True) as con:
        _features(con, 2)
    with db.rewrite(tmp_path) as con:  # e.g. the label stage adding rows
        con.execute(
            "INSERT INTO feature_labels VALUES (0, 'llm', 'pacemaker', 0.9, 'm', '{}', "
            "now()::TIMESTAMP)"
        )
    con = db.connect(tmp_path)
    assert con.execute("SELECT count(*) FROM features").fetchone()[0] == 2
    assert con.execute("SELECT label FROM feature_labels").fetchall() == [("pacemaker",)]


def test_feature_acts_view_reads_the_parquet_beside_the_database(tmp_path):
    from workbench import generations

    pq.write_table(
        pa.table({"row": [0, 1], "feature": [3, 3], "value": [0.5, 1.5]}),
        generations.acts_file(tmp_path, "g1"),
    )
    with db.rewrite(
        tmp_path, fresh=True, on_replaced=lambda: generations.publish(tmp_path, "g1")
    ) as con:
        con.execute("INSERT INTO runs (run_id, stage) VALUES ('g1', 'analyse')")
    assert pq.read_table(tmp_path / db.ACTS_NAME).num_rows == 2  # the documented name
    con = db.connect(tmp_path / "features.duckdb")  # a path to the file works too
    assert con.execute("SELECT sum(value) FROM feature_acts WHERE feature = 3").fetchone()[0] == 2.0


def test_indexes_on_feature(tmp_path):
    with db.rewrite(tmp_path, fresh=True) as con:
        db.create_indexes(con)
    con = db.connect(tmp_path)
    names = {r[0] for r in con.execute("SELECT table_name FROM duckdb_indexes()").fetchall()}
    assert {"feature_stats", "feature_examples", "feature_concepts"} <= names


def test_markdown_cli(capsys):
    assert db.main(["--markdown"]) == 0
    assert "### `feature_examples`" in capsys.readouterr().out
    assert db.main([]) == 2


def test_table_specs_parse_into_the_columns_other_stages_insert():
    # label and steer insert positionally: their column counts are a contract
    assert [c.name for c in db.TABLE["feature_labels"].columns] == [
        "feature",
        "method",
        "label",
        "score",
        "model",
        "details",
        "created_at",
    ]
    assert len(db.TABLE["feature_scores"].columns) == 7
    assert len(db.TABLE["steering_results"].columns) == 25
    assert len(db.TABLE["runs"].columns) == 13
    runs = db.TABLE["runs"]
    assert runs.stage == "every stage" and runs.index == ()
    fp = next(c for c in runs.columns if c.name == "sae_fingerprint")
    assert fp.doc.endswith("only while it matches.")  # continuation lines are joined
    assert db.TABLE["feature_stats"].index == ("feature",)
