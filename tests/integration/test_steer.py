"""``steer`` end to end on a tiny run: tiny MAIRA-2 saved to disk, tiny SAE, phantom-style data."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from workbench import db
from workbench.steer.run import SteerConfig, main, run_steer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]
SAE_DIR = "sae-steer"


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from tests.fixtures import planted_run
    from workbench.models.hooks import resid_post_name
    from workbench.models.processor import Maira2Processor
    from workbench.models.tiny import single_thread, tiny_maira2, tiny_tokenizer
    from workbench.sae import MatryoshkaSAE, save_sae

    run = tmp_path_factory.mktemp("steer") / "run"
    with single_thread():
        planted_run.build(run, n_studies=6)  # dataset + features.duckdb (feature 0 = pacemaker)
        tokenizer = tiny_tokenizer()
        torch.manual_seed(0)
        model = tiny_maira2(tokenizer)
        model.save_pretrained(run / "model")
        Maira2Processor.for_model(model.config, tokenizer).save_pretrained(run / "model")
        torch.manual_seed(1)
        save_sae(MatryoshkaSAE(48, 16, k=4, hook_name=resid_post_name(1)), run / SAE_DIR)
    return run


@pytest.fixture
def run(base_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


def stored(run):
    con = db.connect(run)
    try:
        cur = con.execute("SELECT * FROM steering_results ORDER BY strength, study_id")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]
    finally:
        con.close()


def config(run, **kw):
    base = {"run": run, "sae": run / SAE_DIR, "feature": (0,), "scale": (0.0, 80.0)}
    base |= {"unit": "raw", "n_studies": 2, "max_new_tokens": 4}
    return SteerConfig(**(base | kw))


def test_evaluation_writes_rows_and_resumes(run):
    summaries = run_steer(config(run))
    rows = stored(run)
    assert len(rows) == 4 and {r["concept"] for r in rows} == {"pacemaker"}
    # 'absent': studies 0 and 3 of the tiny run have a pacemaker, so 1 and 2 are used
    assert sorted({r["study_id"] for r in rows}) == [50000001, 50000002]
    zero, big = rows[:2], rows[2:]
    assert all(r["baseline_text"] == r["steered_text"] for r in zero)
    assert all(r["baseline_text"] != r["steered_text"] for r in big)
    assert [r["baseline_text"] for r in zero] == [r["baseline_text"] for r in big]
    details = json.loads(big[0]["details"])
    assert details["mode"] == "add" and details["hook_name"] == "blocks.1.hook_resid_post"
    assert {"baseline_label", "steered_label"} <= set(details)
    assert [(s["scale"], s["n"], s["changed"]) for s in summaries] == [
        (0.0, 2, 0.0),
        (80.0, 2, 1.0),
    ]
    again = run_steer(config(run))  # resumed: nothing recomputed, same summary
    assert len(stored(run)) == 4 and again == summaries
    run_steer(config(run, overwrite=True))
    assert len(stored(run)) == 4
    con = db.connect(run)
    assert con.execute("SELECT count(*) FROM runs WHERE stage = 'steer'").fetchone()[0] == 3
    con.close()


def test_cli_in_max_act_units_and_errors(run, capsys):
    argv = ["--run", str(run), "--sae", str(run / SAE_DIR), "--n-studies", "1"]
    assert main(argv + ["--feature", "1", "--scale", "30", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "pleural_effusion" in out
    (row,) = stored(run)
    con = db.connect(run)
    max_act = con.execute("SELECT max_act FROM feature_stats WHERE feature = 1").fetchone()[0]
    con.close()
    assert json.loads(row["details"])["raw_scale"] == pytest.approx(30 * max_act)
    assert main(argv) == 1 and "no --feature" in capsys.readouterr().out
    assert main(argv + ["--feature", "1", "--concept", "change_new"]) == 1
    assert "cannot be read from report text" in capsys.readouterr().out


def test_documented_steering_query(run):
    import re
    from pathlib import Path

    run_steer(config(run))
    doc = (Path(__file__).resolve().parents[2] / "docs" / "labelling.md").read_text()
    sql = [b for b in re.findall(r"```sql\n(.*?)```", doc, re.S) if "steering_results" in b]
    con = db.connect(run)
    try:
        got = con.execute(sql[0]).fetchall()
    finally:
        con.close()
    assert [(r[0], r[1], r[3], r[6]) for r in got] == [(0, 0.0, 2, 0.0), (0, 80.0, 2, 1.0)]


def test_demo_step_steers_recovered_concepts(run):
    from workbench.steer.run import demo_step

    shutil.rmtree(run / "sae")
    shutil.copytree(run / SAE_DIR, run / "sae")
    table = demo_step(run, scales=(0.0, 60.0), n_studies=1, max_new_tokens=3).splitlines()
    assert table[0].split()[:3] == ["feature", "scale", "concept"]
    body = [line.split() for line in table[1:]]
    assert {(r[0], r[2]) for r in body} == {("0", "pacemaker"), ("1", "pleural_effusion")}
    assert {r[1] for r in body} == {"0.00", "60.00"}
    assert len(stored(run)) == 4
