"""The whole ``label`` loop on a tiny analysed run: offline backend, fake LLM, resume, errors."""

from __future__ import annotations

import shutil

import pytest

from tests.fixtures.fake_llm import FakeLLM
from workbench import db
from workbench.label.backends import LabelError, PrivacyError
from workbench.label.run import LabelConfig, main, run_label

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from tests.fixtures import planted_run

    return planted_run.build(tmp_path_factory.mktemp("label") / "run", n_studies=12)


@pytest.fixture
def run(base_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


@pytest.fixture
def fake():
    server = FakeLLM()
    yield server
    server.close()


def rows(run, sql, params=()):
    con = db.connect(run)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def scores(run, method):
    return dict(
        rows(
            run,
            "SELECT feature || ':' || metric, value FROM feature_scores "
            "WHERE method = ? AND scorer LIKE 'detection:%'",
            [method],
        )
    )


def test_offline_loop_labels_scores_and_resumes(run):
    summary = run_label(LabelConfig(run=run, features=(0, 1, 4)))
    # 3 features x (new, statistical label) x (detection, fuzz, simulation); this run has no
    # negated mentions, so no hard negatives (noted)
    assert summary.labelled == 3 and summary.scored == 18
    assert (summary.done, summary.failed, summary.cached) == (3, 0, 0)
    assert "feature 0: no hard negatives (silent examples with its words)" in summary.notes
    labels = dict(rows(run, "SELECT feature, label FROM feature_labels WHERE method = 'offline'"))
    assert set(labels) == {0, 1, 4}
    assert "pacemaker" in labels[0] and "effusion" in labels[1]
    offline, statistical = scores(run, "offline"), scores(run, "statistical")
    # planted features: the pacemaker/effusion labels detect their held-out examples exactly
    assert offline["0:f1"] == 1.0 and offline["1:balanced_accuracy"] == 1.0
    assert statistical["0:recall"] == 1.0
    scorers = {r[0] for r in rows(run, "SELECT DISTINCT scorer FROM feature_scores")}
    assert scorers == {"detection:offline", "fuzz:offline", "simulation:offline"}
    fuzz = dict(
        rows(
            run,
            "SELECT feature, value FROM feature_scores WHERE scorer = 'fuzz:offline' "
            "AND method = 'offline' AND metric = 'balanced_accuracy'",
        )
    )
    assert fuzz[0] == fuzz[1] == 1.0  # marks on "pacemaker"/"effusion" vs misplaced marks
    assert rows(run, "SELECT count(*) FROM runs WHERE stage = 'label'") == [(1,)]
    again = run_label(LabelConfig(run=run, features=(0, 1, 4)))
    assert again.labelled == again.scored == 0 and again.cached == 3 and again.done == 0
    redo = run_label(LabelConfig(run=run, features=(0,), overwrite=True))
    assert redo.labelled == 1
    assert rows(run, "SELECT count(*) FROM feature_labels WHERE method = 'offline'") == [(3,)]


def test_openai_backend_end_to_end(run, fake):
    cfg = LabelConfig(run=run, backend="openai", base_url=fake.base_url, model="fake-model")
    cfg.features, cfg.score_statistical = (0, 1), False
    summary = run_label(cfg)
    assert summary.labelled == 2
    labels = dict(
        rows(run, "SELECT feature, label FROM feature_labels WHERE method = ?", ["llm:fake-model"])
    )
    assert labels == {0: "pacemaker", 1: "pleural effusion"}
    model = rows(run, "SELECT DISTINCT model FROM feature_labels WHERE method = 'llm:fake-model'")
    assert model == [("fake-model",)]
    explain = [r for r in fake.requests if "[EXPLANATION]" in r["messages"][0]["content"]]
    assert len(explain) == 2
    assert "Report findings: " in explain[0]["messages"][1]["content"]
    assert scores(run, "llm:fake-model")["0:f1"] == 1.0
    fuzz = [r for r in fake.requests if "Excerpts:" in r["messages"][-1]["content"]]
    assert fuzz and all("<<" in r["messages"][-1]["content"] for r in fuzz)
    n = len(fake.requests)
    assert run_label(cfg).labelled == 0 and len(fake.requests) == n  # resumed: no requests


def test_a_failed_feature_is_recorded_and_the_run_goes_on(run, fake):
    cfg = LabelConfig(run=run, backend="openai", base_url=fake.base_url, model="fake-model")
    cfg.features, cfg.retries, cfg.backoff, cfg.flush_seconds = (0, 4, 1), 1, 0.0, 0.0
    fake.fail_if = lambda body: "Feature 4." in body["messages"][-1]["content"]
    summary = run_label(cfg)
    assert (summary.done, summary.failed) == (2, 1)
    (note,) = [n for n in summary.notes if ": failed: " in n]
    assert note.startswith("feature 4: failed: feature 4: explanation: failed after 2 attempts")
    done = rows(run, "SELECT feature FROM feature_labels WHERE method = 'llm:fake-model'")
    assert sorted(done) == [(0,), (1,)]
    (stored,) = rows(run, "SELECT notes FROM runs WHERE stage = 'label'")
    assert "feature 4: failed" in stored[0]
    fake.fail_if, fake.requests = None, []
    again = run_label(cfg)
    assert (again.labelled, again.cached, again.failed) == (1, 2, 0)
    asked = " ".join(r["messages"][-1]["content"] for r in fake.requests)
    assert "Feature 4." in asked and "Feature 1." not in asked and "Feature 0." not in asked


def test_a_dead_server_stops_the_run_after_a_streak(run, fake):
    cfg = LabelConfig(run=run, backend="openai", base_url=fake.base_url, model="fake-model")
    cfg.features, cfg.retries, cfg.backoff, cfg.max_consecutive_failures = (0, 1, 4), 0, 0.0, 2
    fake.fail_if = lambda body: True
    with pytest.raises(LabelError, match="2 features failed in a row, stopping"):
        run_label(cfg)
    assert len(fake.requests) == 2  # the third feature was never asked
    (notes,) = rows(run, "SELECT notes FROM runs WHERE stage = 'label'")[0]
    assert "feature 0: failed" in notes and "feature 1: failed" in notes


def test_a_non_json_reply_fails_one_feature_not_the_run(run, fake):
    from tests.fixtures.fake_llm import Raw

    cfg = LabelConfig(run=run, backend="openai", base_url=fake.base_url, model="fake-model")
    cfg.features, cfg.retries, cfg.backoff, cfg.score_statistical = (0, 1), 1, 0.0, False
    fake.script = [Raw(200, b"<html>gateway</html>")] * 2
    summary = run_label(cfg)
    assert (summary.done, summary.failed, summary.labelled) == (1, 1, 1)
    (note,) = [n for n in summary.notes if ": failed: " in n]
    assert "feature 0: explanation: failed after 2 attempts" in note
    assert "JSONDecodeError" in note


def test_remote_endpoint_refused_by_the_cli(run, capsys):
    before = rows(run, "SELECT count(*) FROM feature_labels")
    argv = ["--run", str(run), "--backend", "openai", "--model", "m"]
    assert main(argv + ["--base-url", "https://llm.example.org/v1"]) == 1
    assert "refusing to send study text to llm.example.org" in capsys.readouterr().out
    assert rows(run, "SELECT count(*) FROM feature_labels") == before
    with pytest.raises(PrivacyError):
        run_label(LabelConfig(run=run, backend="openai", model="m", base_url="http://8.8.8.8/v1"))


def test_cli_selection_by_concept(run, capsys):
    assert main(["--run", str(run), "--concept", "pacemaker", "--top-n", "1"]) == 0
    assert "1 labels" in capsys.readouterr().out
    assert rows(run, "SELECT feature FROM feature_labels WHERE method = 'offline'") == [(0,)]


def test_documented_queries_run(run):
    import re
    from pathlib import Path

    run_label(LabelConfig(run=run, features=(0, 1)))
    doc = (Path(__file__).resolve().parents[2] / "docs" / "labelling.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", doc, re.S)
    assert len(blocks) == 4  # the steering queries live in docs/steering.md (test_steer.py)
    results = [rows(run, sql) for sql in blocks]
    assert any(r[1] == "offline" for r in results[0])  # labels of feature 0 with their F1
    methods = {r[0] for r in results[1]}
    assert methods == {"offline", "statistical"}


def test_demo_step_labels_every_live_feature(run):
    from workbench.label.run import demo_step

    text = demo_step(run)
    live = rows(run, "SELECT count(*) FROM feature_stats WHERE NOT dead")[0][0]
    assert text.startswith(f"{live} new labels")
    assert "offline labels, detection:offline" in text and "statistical labels, detection" in text
