"""Issue 15, ``analyse``: its two outputs switch as a unit, "already done?" checks verify the
pair, and a poisoned store is named instead of crashing with a traceback.

Each test failed before its fix: a crash between the Parquet and the database swap left a new
Parquet beside the old database (and the demo then skipped analyse because the database
existed); a NaN in a shard raised from inside the encoder with no shard named.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch
from safetensors.torch import save_file

from tests.fixtures.analyse_world import make_run, planted_sae
from workbench import db, generations
from workbench.analyse.run import AnalyseConfig, AnalyseError, analyse, main
from workbench.sae import save_sae
from workbench.store import ActivationStore


def _other_sae(run) -> None:
    """Replace the run's SAE by one that fires on every token (other activations)."""
    sae = planted_sae()
    with torch.no_grad():
        sae.b_enc_F.fill_(0.6)
    save_sae(sae, run / "sae")


def _pair_agrees(run) -> bool:
    """Every feature's n_fires in feature_stats equals its row count in feature_acts."""
    con = db.connect(run)
    bad = con.execute(
        "SELECT count(*) FROM feature_stats s LEFT JOIN "
        "(SELECT feature, count(*) AS n FROM feature_acts GROUP BY 1) a USING (feature) "
        "WHERE s.n_fires <> coalesce(a.n, 0)"
    ).fetchone()[0]
    return bad == 0


class Killed(BaseException):
    """Stands for SIGKILL at the point it is raised (nothing below it runs)."""


def test_a_crash_between_the_two_outputs_keeps_the_old_pair(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    analyse(AnalyseConfig(run=run))
    before = db.connect(run).execute("SELECT sum(n_fires) FROM feature_stats").fetchone()[0]
    _other_sae(run)
    real = os.replace

    def dies_at_the_database_switch(src, dst):
        if str(dst).endswith(db.DB_NAME):
            raise Killed
        return real(src, dst)

    monkeypatch.setattr(os, "replace", dies_at_the_database_switch)
    with pytest.raises(Killed):
        analyse(AnalyseConfig(run=run))
    monkeypatch.setattr(os, "replace", real)
    # old and complete: the database, its Parquet and the documented name agree
    assert generations.incomplete(run) is None
    assert _pair_agrees(run)
    con = db.connect(run)
    assert con.execute("SELECT sum(n_fires) FROM feature_stats").fetchone()[0] == before
    assert con.execute("SELECT count(*) FROM feature_acts").fetchone()[0] == before
    analyse(AnalyseConfig(run=run))  # the rerun finishes: new and complete
    assert generations.incomplete(run) is None and _pair_agrees(run)
    assert db.connect(run).execute("SELECT sum(n_fires) FROM feature_stats").fetchone()[0] > before
    assert len(list(run.glob("feature_acts-*.parquet"))) == 1  # no orphan generation left


def test_a_reader_never_pairs_an_old_database_with_a_new_parquet(tmp_path):
    run = make_run(tmp_path)
    analyse(AnalyseConfig(run=run))
    reader = db.connect(run)  # opened before the rerun
    _other_sae(run)
    analyse(AnalyseConfig(run=run))
    # the old reader's Parquet is gone with its generation: an error, not silently new rows
    with pytest.raises(Exception, match="No files found|does not exist|feature_acts-"):
        reader.execute("SELECT count(*) FROM feature_acts").fetchall()
    assert _pair_agrees(run)


def test_missing_parquet_is_refused_by_name_and_other_tables_stay_readable(tmp_path, caplog):
    run = make_run(tmp_path)
    analyse(AnalyseConfig(run=run))
    for f in run.glob("feature_acts-*.parquet"):
        f.unlink()
    with caplog.at_level(logging.WARNING):
        con = db.connect(run)
    assert con.execute("SELECT count(*) FROM feature_stats").fetchone()[0] == 16
    with pytest.raises(Exception, match="rerun `python -m workbench analyse"):
        con.execute("SELECT * FROM feature_acts").fetchall()
    assert "is missing" in generations.incomplete(run)


def test_demo_reruns_analyse_when_the_pair_is_incomplete(tmp_path):
    from workbench.demo import DemoConfig, step_analyse

    run = make_run(tmp_path)
    analyse(AnalyseConfig(run=run))
    for f in run.glob("feature_acts-*.parquet"):
        f.unlink()  # e.g. a crash, or a copy of the run without it
    step_analyse(DemoConfig(run=run))
    assert generations.incomplete(run) is None and _pair_agrees(run)


def test_reuse_recomputes_an_incomplete_pair(tmp_path):
    run = make_run(tmp_path)
    analyse(AnalyseConfig(run=run))
    (run / db.ACTS_NAME).unlink()
    analyse(AnalyseConfig(run=run, reuse=True))
    assert generations.incomplete(run) is None


def test_non_finite_activation_names_shard_row_and_study(tmp_path, caplog):
    run = make_run(tmp_path)
    store = ActivationStore(run / "activations")
    poisoned = store.shard(1).clone()
    poisoned[3, 2] = float("nan")
    save_file({"acts": poisoned}, str(run / "activations" / "shard_00001.safetensors"))
    row = store.shard_sizes()[0] + 3
    study = store.metadata(1).column("study_id")[3].as_py()
    with pytest.raises(AnalyseError) as err:
        analyse(AnalyseConfig(run=run))
    msg = str(err.value)
    assert "shard_00001.safetensors" in msg and f"at row {row}" in msg and f"study {study}" in msg
    assert not (run / db.DB_NAME).exists()
    assert main(["--run", str(run)]) == 1  # the CLI: one error line, no traceback
    assert "shard_00001.safetensors" in caplog.text and "Traceback" not in caplog.text


def test_train_sae_gives_the_same_message(tmp_path):
    from workbench.sae.data import DataError, StoreSource, scan_source

    run = make_run(tmp_path)
    store = ActivationStore(run / "activations")
    poisoned = store.shard(2).clone()
    poisoned[0, 0] = float("inf")
    save_file({"acts": poisoned}, str(run / "activations" / "shard_00002.safetensors"))
    with pytest.raises(DataError, match=r"shard_00002.safetensors: non-finite .* shard 2 at row"):
        scan_source(StoreSource(run / "activations"))
