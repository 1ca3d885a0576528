"""Rerunning analyse: atomic replacement, readers keep working, other stages' rows survive."""

from __future__ import annotations

import json
import logging

import torch

from tests.fixtures.analyse_world import make_run, planted_sae
from workbench import db
from workbench.analyse.run import AnalyseConfig, analyse
from workbench.sae import save_sae


def _add_llm_label(run) -> None:
    with db.rewrite(run) as con:  # what the label stage does
        con.execute(
            "INSERT INTO feature_labels VALUES (0, 'llm', 'pacemaker generator', 0.9, "
            "'offline', '{}', now()::TIMESTAMP)"
        )
        con.execute(
            "INSERT INTO feature_scores VALUES (0, 'llm', 'detection', 'accuracy', 0.9, "
            "10, now()::TIMESTAMP)"
        )


def test_rerun_replaces_tables_while_a_reader_keeps_working(tmp_path):
    run = make_run(tmp_path)
    analyse(AnalyseConfig(run=run))
    _add_llm_label(run)
    reader = db.connect(run)
    before = reader.execute("SELECT count(*) FROM feature_examples").fetchone()[0]
    analyse(AnalyseConfig(run=run, top_k=2, n_quantiles=2))
    # the open reader still answers, from the database as it was
    assert reader.execute("SELECT count(*) FROM feature_examples").fetchone()[0] == before
    new = db.connect(run)
    assert new.execute("SELECT count(*) FROM feature_examples").fetchone()[0] < before
    assert new.execute("SELECT count(*) FROM runs WHERE stage = 'analyse'").fetchone()[0] == 1
    # same SAE: the LLM label and its score are carried over, statistical labels rebuilt
    assert new.execute("SELECT label FROM feature_labels WHERE method = 'llm'").fetchall() == [
        ("pacemaker generator",)
    ]
    assert new.execute("SELECT count(*) FROM feature_scores").fetchone()[0] == 1
    assert (
        new.execute("SELECT count(*) FROM feature_labels WHERE method = 'statistical'").fetchone()[
            0
        ]
        == 16
    )
    assert not list(run.glob("*.tmp"))


def test_rerun_with_another_sae_retires_its_rows_loudly_and_restores_them(tmp_path, caplog):
    run = make_run(tmp_path)
    analyse(AnalyseConfig(run=run))
    _add_llm_label(run)
    first = db.connect(run).execute("SELECT sae_fingerprint FROM runs").fetchone()[0]
    sae = planted_sae()
    with torch.no_grad():
        sae.b_enc_F.fill_(0.01)
    save_sae(sae, run / "sae")
    with caplog.at_level(logging.WARNING, logger="workbench.analyse"):
        analyse(AnalyseConfig(run=run))
    con = db.connect(run)
    assert (
        con.execute("SELECT count(*) FROM feature_labels WHERE method = 'llm'").fetchone()[0] == 0
    )
    # not dropped: moved aside under the old SAE's fingerprint, with a WARNING and counts
    assert con.execute(
        "SELECT feature, label, sae_fingerprint FROM retired_feature_labels"
    ).fetchall() == [(0, "pacemaker generator", first)]
    assert con.execute("SELECT count(*) FROM retired_feature_scores").fetchone()[0] == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 rows of the previous SAE" in w and "1 feature_labels" in w for w in warned)
    notes = json.loads(con.execute("SELECT notes FROM runs").fetchone()[0])
    assert any("moved to the retired_* tables (1 feature_labels, 1 feature_scores)" in n
               for n in notes)  # fmt: skip
    # analysing the first SAE again brings them back
    save_sae(planted_sae(), run / "sae")
    analyse(AnalyseConfig(run=run))
    con = db.connect(run)
    assert con.execute("SELECT label FROM feature_labels WHERE method = 'llm'").fetchall() == [
        ("pacemaker generator",)
    ]
    assert con.execute("SELECT count(*) FROM feature_scores").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM retired_feature_labels").fetchone()[0] == 0


def test_reuse_keeps_the_existing_database(tmp_path):
    run = make_run(tmp_path)
    path = analyse(AnalyseConfig(run=run))
    stamp = path.stat().st_mtime_ns
    assert analyse(AnalyseConfig(run=run, reuse=True)) == path
    assert path.stat().st_mtime_ns == stamp


def test_tables_of_other_stages_survive_a_rerun(tmp_path):
    run = make_run(tmp_path)
    analyse(AnalyseConfig(run=run))
    with db.rewrite(run) as con:  # e.g. segmentation results written into the same database
        con.execute("CREATE TABLE segmentation_results (model VARCHAR, dice DOUBLE)")
        con.execute("INSERT INTO segmentation_results VALUES ('unet', 0.9)")
    sae = planted_sae()
    with torch.no_grad():
        sae.b_enc_F.fill_(0.01)
    save_sae(sae, run / "sae")  # even with another SAE: these rows do not depend on it
    analyse(AnalyseConfig(run=run))
    con = db.connect(run)
    assert con.execute("SELECT * FROM segmentation_results").fetchall() == [("unet", 0.9)]
    notes = json.loads(con.execute("SELECT notes FROM runs").fetchone()[0])
    assert "table segmentation_results kept from the previous database" in notes


def test_unreadable_previous_database_is_noted_not_fatal(tmp_path):
    run = make_run(tmp_path)
    (run / "features.duckdb").write_bytes(b"not a database at all" * 100)
    analyse(AnalyseConfig(run=run))
    con = db.connect(run)
    notes = json.loads(con.execute("SELECT notes FROM runs").fetchone()[0])
    assert any(n.startswith("previous features.duckdb unreadable") for n in notes)
    assert con.execute("SELECT count(*) FROM feature_stats").fetchone()[0] == 16
