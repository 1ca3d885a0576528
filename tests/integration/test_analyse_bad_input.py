"""Inputs that do not fit together fail loudly, naming the file; none write a database."""

from __future__ import annotations

import pytest

from tests.fixtures.analyse_world import HOOK, make_run, planted_sae
from workbench.analyse.run import AnalyseConfig, AnalyseError, analyse, main
from workbench.sae import save_sae
from workbench.store import StoreWriter


def _fails(run, match: str, **kw) -> None:
    with pytest.raises(AnalyseError, match=match):
        analyse(AnalyseConfig(run=run, **kw))
    assert not (run / "features.duckdb").exists()


def test_sae_width_differs_from_store(tmp_path):
    run = make_run(tmp_path)
    save_sae(planted_sae(d=6), run / "sae")
    _fails(run, r"SAE d_in=6 but the store .* d_model=8")


def test_sae_from_another_hook(tmp_path):
    run = make_run(tmp_path)
    save_sae(planted_sae(hook="blocks.0.hook_resid_post"), run / "sae")
    _fails(run, rf"trained on blocks.0.hook_resid_post but the store .* holds {HOOK}")


def test_empty_store(tmp_path):
    run = make_run(tmp_path)
    empty = tmp_path / "empty"
    StoreWriter(empty, model="tiny", layer=1, hook_name=HOOK, d_model=8).close()
    _fails(run, r"empty \(0 tokens\)", store=empty)


def test_missing_store_and_sae(tmp_path):
    run = make_run(tmp_path)
    _fails(run, "not an activation store", store=tmp_path / "nowhere")
    _fails(run, "no SAE here", sae=tmp_path / "nowhere")
    _fails(run, "dataset root not found", data=tmp_path / "nowhere")


def test_cli_reports_the_error_and_fails(tmp_path, caplog):
    run = make_run(tmp_path)
    save_sae(planted_sae(d=6), run / "sae")
    assert main(["--run", str(run)]) == 1
    assert "d_in=6" in caplog.text


def test_bad_config_values():
    with pytest.raises(ValueError, match="top_k must be positive"):
        AnalyseConfig(top_k=0).validate()


def test_no_labels_at_all_leaves_concepts_empty_and_says_so(tmp_path):
    import json
    import shutil

    from workbench import db
    from workbench.analyse.run import recovery_report

    run = make_run(tmp_path)
    shutil.rmtree(run / "phantom")
    analyse(AnalyseConfig(run=run))
    con = db.connect(run)
    assert con.execute("SELECT count(*) FROM feature_concepts").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM feature_stats").fetchone()[0] == 16
    notes = json.loads(con.execute("SELECT notes FROM runs").fetchone()[0])
    assert "no dataset root: no labels, concept AUROCs not computed" in notes
    assert con.execute("SELECT label FROM feature_labels WHERE feature = 0").fetchone() == (
        "mostly image tokens",
    )
    assert "recovery not computed" in recovery_report(run)


def test_dataset_defaults_to_the_one_the_store_was_recorded_from(tmp_path):
    import json
    import shutil

    from workbench import db

    run = make_run(tmp_path)
    elsewhere = tmp_path / "mimic"
    shutil.move(run / "phantom", elsewhere)
    manifest = json.loads((run / "activations" / "manifest.json").read_text())
    manifest["extra"]["data"] = str(elsewhere)  # what record writes
    (run / "activations" / "manifest.json").write_text(json.dumps(manifest))
    analyse(AnalyseConfig(run=run))
    con = db.connect(run)
    assert con.execute(
        "SELECT best_feature FROM concept_recovery WHERE concept = 'pacemaker'"
    ).fetchone() == (0,)
