"""Steering evaluation logic with a scripted adapter: labels, rates, concepts, rows."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from workbench import db
from workbench.models.hooks import resid_post_name
from workbench.sae import MatryoshkaSAE
from workbench.steer.evaluate import (
    StudyCase,
    concept_value,
    evaluate_feature,
    summarise,
    target_concept,
)
from workbench.steer.intervene import SteeringError


class ScriptedAdapter:
    """Writes a pacemaker into the report when the steering hook adds anything."""

    name, d_model, n_layers = "scripted", 4, 2

    def __init__(self):
        self.calls = 0

    def hook_name(self, layer: int) -> str:
        return resid_post_name(layer)

    def prepare(self, study):
        return SimpleNamespace(prompt_length=3, study=study)

    def generate(self, inp, max_new_tokens=10, interventions=None):
        self.calls += 1
        if not interventions:
            return inp.study["baseline"]
        (hook,) = interventions.values()
        moved = hook(torch.zeros(1, 3, 4))
        changed = moved is not None and bool(moved.abs().sum() > 0)
        return "Left chest wall pacemaker." if changed else inp.study["baseline"]


def cfg(**kw):
    base = {"mode": "add", "unit": "raw", "positions": "all", "max_new_tokens": 5}
    return SimpleNamespace(**(base | kw))


def cases():
    return [
        StudyCase(1, {"baseline": "No pacemaker is seen. Lungs are clear."}),
        StudyCase(2, {"baseline": "Heart size is normal."}),
        StudyCase(3, {"baseline": "Small left pleural effusion."}),
    ]


def test_concept_values_from_the_labeller():
    assert concept_value("Left chest wall pacemaker.", "pacemaker") == 1
    assert concept_value("No pacemaker.", "pacemaker") == 0
    assert concept_value("Heart size is normal.", "pacemaker") is None
    assert concept_value("Small left pleural effusion.", "Pleural Effusion") == 1


def test_evaluation_rows_and_rates():
    adapter, sae = ScriptedAdapter(), MatryoshkaSAE(4, 6, k=2, hook_name=resid_post_name(1))
    baselines: dict[int, str] = {}
    rows = evaluate_feature(adapter, sae, cfg(), 2, 3.0, "pacemaker", cases(), {}, baselines, set())
    assert [r["study_id"] for r in rows] == [1, 2, 3]
    assert [r["baseline_mentions"] for r in rows] == [True, False, False]
    assert all(r["steered_mentions"] for r in rows)
    details = json.loads(rows[0]["details"])
    assert details["baseline_label"] == 0 and details["steered_label"] == 1
    assert details["mode"] == "add" and details["raw_scale"] == 3.0
    s = summarise(2, 3.0, "pacemaker", rows)
    assert s["n"] == 3 and s["base_mention"] == pytest.approx(1 / 3)
    assert s["base_pos"] == 0.0 and s["steer_pos"] == 1.0 and s["changed"] == 1.0
    # baselines are cached across scales; finished keys are skipped
    calls = adapter.calls
    zero = evaluate_feature(
        adapter,
        sae,
        cfg(),
        2,
        0.0,
        "pacemaker",
        cases(),
        {},
        baselines,
        {(2, 0.0, 1, "pacemaker", "add", "raw", "all")},
    )
    assert [r["study_id"] for r in zero] == [2, 3]
    assert adapter.calls == calls + 2  # steered only; baselines came from the cache
    assert summarise(2, 0.0, "pacemaker", zero)["steer_pos"] == 0.0
    assert summarise(2, 0.0, "pacemaker", [])["base_pos"] is None


def test_max_act_units_scale_the_direction():
    sae = MatryoshkaSAE(4, 6, k=2, hook_name=resid_post_name(1))
    rows = evaluate_feature(
        ScriptedAdapter(),
        sae,
        cfg(unit="max_act"),
        1,
        2.0,
        "pacemaker",
        cases()[:1],
        {1: 0.5},
        {},
        set(),
    )
    assert json.loads(rows[0]["details"])["raw_scale"] == 1.0


def test_target_concept(tmp_path):
    with db.rewrite(tmp_path) as con:
        con.execute(
            "INSERT INTO feature_concepts VALUES (0, 'change_new', 'phantom', 0.99, 1), "
            "(0, 'pacemaker', 'phantom', 0.9, 2), (1, 'change_new', 'phantom', 0.9, 1)"
        )
    con = db.connect(tmp_path)
    assert target_concept(con, 0, None) == "pacemaker"  # change_* cannot be read from text
    assert target_concept(con, 1, "Pleural Effusion") == "Pleural Effusion"
    with pytest.raises(SteeringError, match="feature 1: no best concept"):
        target_concept(con, 1, None)
    with pytest.raises(SteeringError, match="cannot be read from report text"):
        target_concept(con, 1, "change_new")
    con.close()


def test_steer_preset_loads():
    from pathlib import Path

    from workbench.config import load_config
    from workbench.steer.run import SteerConfig

    cfg = load_config(SteerConfig, Path(__file__).resolve().parents[2] / "configs" / "steer.toml")
    assert cfg.scale == (0.0, 1.0, 2.0, 4.0, 8.0) and cfg.unit == "max_act"
