"""Steering evaluation with a scripted adapter: arms, rows, resume keys, candidates, peers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import duckdb
import pytest
import torch

from workbench import db
from workbench.models.hooks import resid_post_name
from workbench.sae import MatryoshkaSAE
from workbench.steer import candidates as cand
from workbench.steer.evaluate import (
    Arm,
    Case,
    Evaluator,
    existing_keys,
    pick_cases,
    truth,
    write_rows,
)
from workbench.steer.intervene import SteeringError
from workbench.steer.metrics import judge_many
from workbench.steer.peers import Direction, dim_direction, study_means
from workbench.store import StoreWriter

PACED = "Left chest wall pacemaker."


class ScriptedAdapter:
    """Writes a pacemaker when the hook moves the residual or the indication asks for one."""

    name, d_model, n_layers = "scripted", 4, 2

    def __init__(self):
        self.calls = 0

    def hook_name(self, layer: int) -> str:
        return resid_post_name(layer)

    def prepare(self, study, findings=None):
        tokens = [{"kind": "image"}, {"kind": "prompt"}, {"kind": "prompt"}]
        return SimpleNamespace(prompt_length=3, study=study, tokens=tokens)

    def generate_batch(self, inps, max_new_tokens=10, interventions=None):
        self.calls += len(inps)
        moved_B = torch.zeros(len(inps), dtype=torch.bool)
        for hook in (interventions or {}).values():
            out = hook(torch.zeros(len(inps), 3, 4))
            if out is not None:
                moved_B |= out.abs().sum(dim=(1, 2)) > 0
        return [
            PACED
            if "pacemaker" in (inp.study.get("indication") or "") or moved
            else inp.study["baseline"]
            for inp, moved in zip(inps, moved_B.tolist(), strict=True)
        ]


def no_ppl(adapter, study, texts):
    return judge_many(None, study, texts)


def cases():
    return [
        Case(1, {"baseline": "No pacemaker is seen. Lungs are clear.", "indication": "Cough"}),
        Case(2, {"baseline": "Heart size is normal.", "indication": None}),
        Case(3, {"baseline": "Small left pleural effusion.", "indication": "Fall"}),
    ]


def arm(method, strength=2.0, **kw) -> Arm:
    base = Arm(method, "pacemaker", "add", (2,) if method == "sae" else (), strength,
               "raw", "add", "all", "max_new_tokens=5")  # fmt: skip
    return base._replace(**kw)


def evaluator(adapter) -> Evaluator:
    sae = MatryoshkaSAE(4, 6, k=2, hook_name=resid_post_name(1))
    dim = {"pacemaker": Direction(torch.ones(4), 3, 5)}
    return Evaluator(adapter, sae, 5, {2: 1.5}, dim, judge=no_ppl)


def test_rows_of_every_method():
    adapter = ScriptedAdapter()
    ev = evaluator(adapter)
    for method in ("sae", "dim", "prompt"):
        rows = ev.run_arm(arm(method), cases(), done=set())
        assert [r["study_id"] for r in rows] == [1, 2, 3]
        assert [r["baseline_value"] for r in rows] == [0, None, None]
        assert all(r["steered_value"] == 1 and r["success"] and r["eligible"] for r in rows)
        assert [r["side_effects"] for r in rows] == [[], [], ["pleural_effusion"]]
        assert rows[0]["method"] == method and rows[0]["repeat_rate"] == 0.0
    details = json.loads(rows[0]["details"])
    assert details["indication"] == "Patient with pacemaker, evaluate lead position"
    assert (
        details["variant"] == "max_new_tokens=5" and details["baseline_readings"]["pacemaker"] == 0
    )
    assert len(ev.baselines) == 3 and adapter.calls == 3 + 9  # baselines made once
    zero = ev.run_arm(arm("sae", 0.0), cases(), done=set())
    assert not any(r["success"] for r in zero)
    done = {arm("sae").key(1), arm("sae").key(3)}
    assert [r["study_id"] for r in ev.run_arm(arm("sae"), cases(), done)] == [2]


def test_units_and_missing_directions():
    ev = evaluator(ScriptedAdapter())
    (row, *_) = ev.run_arm(arm("sae", unit="max_act"), cases(), set())
    assert json.loads(row["details"])["raw_strengths"] == {"2": 3.0}
    with pytest.raises(SteeringError, match="no difference-of-means direction for nodule"):
        ev.run_arm(arm("dim", concept="nodule"), cases(), set())


def test_cases_come_from_ground_truth():
    rec = [SimpleNamespace(study_id=i, labels={}, findings="Lungs are clear.") for i in range(6)]
    phantom = {i: {"pacemaker": int(i % 3 == 0)} for i in range(6)}
    assert [c.study_id for c in pick_cases(rec, "pacemaker", "add", 3, phantom)] == [1, 2, 4]
    assert [c.study_id for c in pick_cases(rec, "pacemaker", "remove", 5, phantom)] == [0, 3]
    chex = SimpleNamespace(study_id=9, labels={"Cardiomegaly": 1.0}, findings="")
    assert truth(chex, "Cardiomegaly", None) == 1
    read = SimpleNamespace(study_id=9, labels={}, findings="No pneumothorax.")
    assert truth(read, "pneumothorax", None) == 0


def test_rows_are_stored_resumed_and_replaced(tmp_path):
    rows = evaluator(ScriptedAdapter()).run_arm(arm("sae"), cases(), set())
    write_rows(tmp_path, rows, replace=False)
    con = db.connect(tmp_path)
    assert existing_keys(con) == {arm("sae").key(s) for s in (1, 2, 3)}
    con.close()
    write_rows(tmp_path, rows[:1], replace=True)
    con = db.connect(tmp_path)
    n, feats = con.execute("SELECT count(*), any_value(features) FROM steering_results").fetchone()
    con.close()
    assert n == 3 and feats == [2]


def test_an_older_table_gains_the_new_columns(tmp_path):
    path = db.db_path(tmp_path)
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE steering_results (feature INTEGER, strength DOUBLE, study_id BIGINT, "
        "concept VARCHAR, baseline_text VARCHAR, steered_text VARCHAR, baseline_mentions "
        "BOOLEAN, steered_mentions BOOLEAN, details VARCHAR, created_at TIMESTAMP)"
    )
    con.execute("INSERT INTO steering_results VALUES (1, 4, 7, 'x', 'a', 'b', 0, 0, '{}', NULL)")
    db.create_schema(con, ("runs",))
    con.close()
    con = db.connect(tmp_path)
    assert existing_keys(con) == set()  # old rows have no arm
    con.close()
    write_rows(tmp_path, evaluator(ScriptedAdapter()).run_arm(arm("sae"), cases(), set()), False)
    con = db.connect(tmp_path)
    got = con.execute("SELECT count(*), count(method) FROM steering_results").fetchone()
    con.close()
    assert got == (4, 3)


def candidate_db(tmp_path, meaning: bool) -> duckdb.DuckDBPyConnection:
    with db.rewrite(tmp_path, fresh=True) as con:
        con.execute(
            "INSERT INTO feature_stats (feature, max_act, dead) VALUES "
            "(0, 2.0, false), (1, 1.0, false), (2, 0.0, true), (3, 3.0, false)"
        )
        con.execute(
            "INSERT INTO feature_concepts (feature, concept, auroc) VALUES "
            "(0, 'pacemaker', 0.99), (1, 'pacemaker', 0.93), (2, 'pacemaker', 1.0), "
            "(3, 'pacemaker', 0.6), (3, 'nodule', 0.9)"
        )
        con.execute(
            "INSERT INTO concepts (concept, source, n_pos, n_neg) VALUES "
            "('pacemaker', 'phantom', 5, 5), ('nodule', 'phantom', 2, 8), "
            "('change_new', 'phantom', 3, 3), ('Cardiomegaly', 'chexpert', 4, 4)"
        )
        if meaning:  # analyse's meaning tables (feature_mentions, feature_localisation)
            con.execute("INSERT INTO feature_mentions (feature, concept, selectivity) VALUES "
                        "(0, 'pacemaker', 0.5), (1, 'pacemaker', 0.95)")  # fmt: skip
            con.execute("INSERT INTO feature_localisation (feature, concept, pointing_game) "
                        "VALUES (3, 'nodule', 0.9)")  # fmt: skip
    return db.connect(tmp_path)


def test_candidates_follow_the_rule(tmp_path):
    con = candidate_db(tmp_path / "a", meaning=False)
    assert cand.default_concepts(con) == ["nodule", "pacemaker"]
    chosen, notes = cand.choose(con, ["pacemaker", "nodule", "edema", "change_new"], n=2)
    assert [(c.concept, c.features, c.means_it) for c in chosen] == [
        ("pacemaker", (0, 1), False),  # dead feature 2 and AUROC 0.6 left out
        ("nodule", (3,), False),
    ]
    assert notes == [
        "edema: no live feature with AUROC >= 0.75; skipped",
        "change_new: the report labeller cannot read it from text; skipped",
    ]
    con.close()
    con = candidate_db(tmp_path / "b", meaning=True)
    pace, nodule = cand.choose(con, ["pacemaker", "nodule"])[0]
    assert pace.features == (1,) and pace.means_it and pace.selectivity == 0.95
    assert nodule.features == (3,) and nodule.means_it and nodule.pointing == 0.9
    assert "means it" in cand.describe([pace])
    con.close()


def test_the_exclusive_rule_keeps_features_that_score_best_on_their_concept(tmp_path):
    candidate_db(tmp_path, meaning=False).close()
    with db.rewrite(tmp_path) as con:
        con.execute("INSERT INTO feature_concepts (feature, concept, auroc) VALUES (1, 'nodule', "
                    "0.95), (0, 'change_new', 1.0), (0, 'Cardiomegaly', 1.0)")  # fmt: skip
    con = db.connect(tmp_path)
    chosen, _ = cand.choose(con, ["pacemaker", "nodule"], n=3)
    assert [c.features for c in chosen] == [(0, 1), (1, 3)]  # feature 1 is in both
    chosen, notes = cand.choose(con, ["pacemaker", "nodule", "edema"], n=3, exclusive=True)
    # feature 1 scores best on nodule; 0 stays pacemaker's (concepts not judged don't count)
    assert [(c.concept, c.features) for c in chosen] == [("pacemaker", (0,)), ("nodule", (1, 3))]
    assert notes == ["edema: no live feature of its own with AUROC >= 0.75; skipped"]
    con.close()


def test_difference_of_means_from_the_store(tmp_path):
    writer = StoreWriter(tmp_path, model="m", layer=1, hook_name=resid_post_name(1), d_model=3,
                         shard_tokens=4)  # fmt: skip
    kinds = ["image", "report", "report"]
    for sid, level in ((1, 1.0), (2, 3.0), (3, 0.0), (4, 10.0)):
        acts = torch.tensor([[level, 0.0, 1.0], [level, 2.0, 1.0], [level, 4.0, 1.0]])
        meta = [{"subject_id": 9, "position": i, "token_id": 0, "token": "t", "kind": k,
                 "section": None, "patch_row": None, "patch_col": None}
                for i, k in enumerate(kinds)]  # fmt: skip
        writer.add(sid, acts, meta)
    writer.close()
    means = study_means(tmp_path)
    assert means.study_ids.tolist() == [1, 2, 3, 4] and means.hook_name == resid_post_name(1)
    torch.testing.assert_close(means.means[0], torch.tensor([1.0, 2.0, 1.0]))
    image = study_means(tmp_path, ["image"])
    torch.testing.assert_close(image.means[:, 1], torch.zeros(4))
    d = dim_direction(means, {1: 1, 2: 1, 3: 0, 4: 0}, exclude={4})
    torch.testing.assert_close(d.vector, torch.tensor([2.0, 0.0, 0.0]))
    assert (d.n_pos, d.n_neg) == (2, 1)
    with pytest.raises(SteeringError, match="0 without"):
        dim_direction(means, {1: 1, 2: 1, 3: 0}, exclude={3}, concept="nodule")
    with pytest.raises(SteeringError, match=r"token kinds \['words'\] unknown"):
        study_means(tmp_path, ["words"])


def test_the_preset_loads():
    from pathlib import Path

    from workbench.config import load_config
    from workbench.steer.config import SteerConfig

    cfg = load_config(SteerConfig, Path(__file__).parents[2] / "configs" / "steer.toml")
    assert cfg.methods == ("sae", "dim", "prompt", "counterfactual", "random")
    assert cfg.n_studies == 20
    assert cfg.site == "image" and cfg.site_run == Path("runs/demo/image-tokens")
    assert "site=vision.hook_projector_out" in cfg.variant
