"""RunLayout: the one spelling of a run's artefact paths; stages derive defaults from it."""

from pathlib import Path

from workbench import db
from workbench.config import parse_config
from workbench.record.run import RecordConfig
from workbench.run import RunLayout
from workbench.sae.config import TrainSAEConfig


def test_layout_names_every_artefact(tmp_path):
    run = RunLayout(tmp_path)
    assert run.activations == tmp_path / "activations"
    assert run.sae == tmp_path / "sae"
    assert run.database == db.db_path(tmp_path) == tmp_path / "features.duckdb"
    assert run.feature_acts.parent == run.database.parent
    assert RunLayout.cfg(run.steering) == tmp_path / "steering" / "cfg.json"


def test_data_falls_back_to_the_recorded_dataset_only_without_a_phantom(tmp_path):
    run = RunLayout(str(tmp_path))
    assert run.data_or_recorded("/elsewhere") == Path("/elsewhere")
    assert run.data_or_recorded(None) == run.phantom
    run.phantom.mkdir()
    assert run.data_or_recorded("/elsewhere") == run.phantom


def test_train_sae_and_record_take_run_and_flags_override(tmp_path):
    cfg = parse_config(TrainSAEConfig, ["--run", str(tmp_path)])
    assert cfg.default_out() == tmp_path / "sae"
    given = parse_config(TrainSAEConfig, ["--run", str(tmp_path), "--out", str(tmp_path / "x")])
    assert given.default_out() == tmp_path / "x"
    rec = parse_config(RecordConfig, ["--run", str(tmp_path)])
    assert rec.run == tmp_path and rec.data is None and rec.out is None  # resolved by record()
