"""The app's handlers on a tiny run built by the real pipeline, without a browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench import db
from workbench.testing.tiny_run import build, coverage, positives, studies
from workbench.ui import (
    charts,
    handlers,
    handlers_feature,
    handlers_study,
    launch_line,
    pictures,
    runinfo,
)
from workbench.ui.context import open_context


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("ui") / "run")


def test_context_of_a_complete_run(ctx):
    assert ctx.status.problems == () and ctx.status.sae_state == "trained"
    assert ctx.has("features", "feature_examples", "feature_acts")


def test_feature_table_filters(ctx):
    assert len(handlers.feature_table(ctx).rows) == 16
    hits = handlers.feature_table(ctx, search="PNEUMOTHORAX", sort="AUROC").rows
    assert hits[0][0] == 0 and all("pneumothorax" in r[1].lower() for r in hits)
    assert [r[0] for r in handlers.feature_table(ctx, search="3").rows] == [3]
    by_concept = handlers.feature_table(ctx, concept="pleural_effusion", sort="AUROC").rows
    assert by_concept[0][0] == 1 and by_concept[0][5:7] == ["pleural effusion · ground truth", 1.0]
    dead = handlers.feature_table(ctx, density="dead").rows
    assert sorted(r[0] for r in dead) == list(range(8, 16))
    assert all(r[9] == 1 for r in handlers.feature_table(ctx, group="1").rows)
    ascending = handlers.feature_table(ctx, sort="feature", descending=False, limit=5)
    assert [r[0] for r in ascending.rows] == [
        0,
        1,
        2,
        3,
        4,
    ] and "showing 5 of 16" in ascending.summary


def test_density_chart_counts_live_and_dead(ctx):
    html = handlers.density_chart(ctx)
    assert "8 live features by firing frequency · 8 dead" in html
    assert html.count('class="wb-bar"') >= 2 and "features</title>" in html


def test_concept_chips_open_the_best_feature(ctx):
    html = handlers.concept_chips(ctx)
    assert 'data-feature="0"' in html and "pneumothorax · ground truth → #0 · 1.00" in html
    aurocs = [float(a) for a in re.findall(r"· ([\d.]+)</a>", html)]
    assert len(aurocs) > 5 and aurocs == sorted(aurocs, reverse=True)  # best concepts first


def test_search_text_is_a_parameter_not_sql(ctx):
    view = handlers.feature_table(ctx, search="'; DROP TABLE features; --")
    assert view.rows == [] and "0 matching" in view.summary


def test_feature_page(ctx):
    view = handlers_feature.feature_view(ctx, 0)
    assert "pneumothorax" in view.title and "feature 0" in view.title
    assert view.histogram.count('class="wb-bar"') >= 2
    assert "data:image/jpeg;base64," in view.image
    assert 'class="wb-patch"' in view.examples and "wb-center" in view.examples
    assert ">pneumothorax<" in view.concepts  # the concept bar chart names it
    assert "Not computed" in view.logits  # the tiny run has no model to unembed with
    assert view.neighbors.count("data-feature=") == 10


def test_feature_page_messages(ctx):
    assert (
        "feature 999: this SAE has features 0-15" in handlers_feature.feature_view(ctx, 999).title
    )
    assert "Click a row" in handlers_feature.feature_view(ctx, None).title
    assert "Click a row" in handlers_feature.feature_view(ctx, "abc").title  # typed nonsense
    assert "“x1” is not a study id" in handlers_study.study_view(ctx, "x1").header
    assert "never fires" in handlers_feature.feature_view(ctx, 8).title
    assert "Never fires on an image token" in handlers_feature.feature_view(ctx, 2).image


def _decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_heatmap_lands_on_the_finding(ctx):
    root = ctx.run_dir / "phantom"
    rec = next(r for r in studies(root) if r.study_id in positives(root, "pneumothorax"))
    cover_RC = coverage(root, rec, "pneumothorax", 4)
    img_HW3 = _decode(pictures.study_overlay_uri(ctx, rec.study_id, 0, vmax=3.0)).astype(int)
    h, w, _ = img_HW3.shape
    warmth_HW = img_HW3[..., 0] - img_HW3[..., 2]
    hot = np.unravel_index(cover_RC.argmax(), cover_RC.shape)
    covered = np.argwhere(cover_RC > 0)
    far = max(
        (tuple(p) for p in np.argwhere(cover_RC == 0)),
        key=lambda p: np.abs(covered - p).sum(1).min(),
    )
    centre = lambda rc: (int((rc[0] + 0.5) * h / 4), int((rc[1] + 0.5) * w / 4))  # noqa: E731
    assert warmth_HW[centre(hot)] > 60  # the mask's patch glows
    assert warmth_HW[centre(far)] < 10  # far from the finding: the plain radiograph


def test_image_outside_the_run_is_not_read(ctx, tmp_path):
    outside = tmp_path / "x.jpg"
    Image.new("L", (8, 8)).save(outside)
    assert pictures.resolve_image(ctx, str(outside)) is None
    assert pictures.resolve_image(ctx, "phantom/../../x.jpg") is None
    inside = next((ctx.run_dir / "phantom" / "files").rglob("*.jpg"))
    assert pictures.resolve_image(ctx, str(inside)) == inside.resolve()
    written_elsewhere = Path("some/cwd/run") / inside.relative_to(ctx.run_dir)
    assert pictures.resolve_image(ctx, str(written_elsewhere)) == inside.resolve()


def test_study_view(ctx):
    root = ctx.run_dir / "phantom"
    sid = min(positives(root, "pneumothorax"))
    view = handlers_study.study_view(ctx, sid)
    assert f"study {sid}" in view.header and "pneumothorax (CheXpert, ground truth)" in view.header
    assert view.feature in [f for _, f in view.choices]
    assert len({f for _, f in view.choices}) == len(view.choices)
    coloured = handlers_study.study_view(ctx, sid, 0)
    assert re.search(r'title="1.2"> [^<]*pneumothorax', coloured.report, re.IGNORECASE)
    assert "data:image/jpeg" in coloured.image and "IMAGE" in coloured.sections.upper()
    with_lateral = next(r for r in studies(root) if r.lateral_path is not None)
    both = handlers_study.study_view(ctx, with_lateral.study_id).image
    assert both.count("<img") == 3 and with_lateral.lateral_path.name in both  # base, heat, lateral
    assert "not in this run" in handlers_study.study_view(ctx, 123).header


def test_sql(ctx):
    ok = runinfo.run_sql(ctx, "SELECT feature FROM features ORDER BY feature LIMIT 3")
    assert ok.columns == ["feature"] and ok.rows == [[0], [1], [2]] and "3 rows" in ok.message
    assert "Refused" in runinfo.run_sql(ctx, "DELETE FROM features").message
    assert "Query failed" in runinfo.run_sql(ctx, "SELECT * FROM no_such_table").message
    assert "Refused" not in runinfo.run_sql(ctx, "SELECT count(*) FROM feature_acts").message


def test_sql_examples_all_run(ctx):
    from workbench.ui.tabs.sql import EXAMPLES

    for name, sql in EXAMPLES.items():
        res = runinfo.run_sql(ctx, sql)
        assert res.columns and res.rows, (name, res.message)


def test_missing_run_gives_messages(tmp_path):
    c = open_context(tmp_path / "nope")
    assert not c.status.exists and "No run at" in c.status.problems[0]
    assert "No run at" in handlers.feature_table(c).summary
    assert "No run at" in handlers_feature.feature_view(c, 0).title
    assert "No run at" in handlers_study.study_view(c, 1).header
    assert "No run at" in runinfo.run_sql(c, "SELECT 1").message
    assert "No SAE training log" in runinfo.runs_view(c).curves


def test_run_without_labels(run, tmp_path):
    copy = tmp_path / "nolabels"
    shutil.copytree(run, copy)
    with db.rewrite(copy) as con:
        con.execute("DELETE FROM feature_labels")
    c = open_context(copy)
    try:
        assert not c.status.has_labels and "No labels yet" in " ".join(c.status.problems)
        view = handlers_feature.feature_view(c, 0)
        assert "not labelled yet" in view.title
        # frontal_path still names the original run: the copy's own image is found and shown
        assert "data:image/jpeg" in view.image
        assert "no labels yet" in handlers.feature_table(c).summary
    finally:
        c.close()


def test_llm_label_preferred_with_its_scores(run, tmp_path):
    copy = tmp_path / "labelled"
    shutil.copytree(run, copy)
    with db.rewrite(copy) as con:
        con.execute(
            "INSERT INTO feature_labels VALUES (0, 'llm', 'collapsed lung at the apex', 0.9,"
            " 'some-model', NULL, now())"
        )
        for rank, (direction, token, effect) in enumerate(
            [
                ("promote", "Ġpneumothorax", 2.5),
                ("promote", "Ġlung", 1.0),
                ("suppress", "<b>", -1.5),
            ]
        ):
            con.execute(
                "INSERT INTO feature_logits VALUES (0, ?, ?, 7, ?, ?)",
                [direction, rank + 1, token, effect],
            )
        for metric, value in (("accuracy", 0.875), ("balanced_accuracy", 0.875)):
            con.execute(
                "INSERT INTO feature_scores VALUES (0, 'llm', 'detection:llm', ?, ?, 40, now())",
                [metric, value],
            )
    c = open_context(copy)
    try:
        view = handlers_feature.feature_view(c, 0)
        title = view.title
        assert ">pneumothorax<" in view.logits and "&lt;b&gt;" in view.logits
        fills = re.findall(r'<rect[^>]*fill="(#[0-9a-f]+)"', view.logits)
        assert fills == [charts.GREEN, charts.GREEN, charts.RED]  # promoted, then suppressed
        # the concept label (AUROC 1.00) outscores the LLM label (detection 0.88): it leads
        assert title.index("pneumothorax (AUROC 1.00)") < title.index("collapsed lung")
        assert "statistical · concept AUROC 1.00" in title and "all 2 labels" in title
        assert "detection balanced accuracy 0.88" in title
        hit = handlers.feature_table(c, search="collapsed").rows[0]
        assert hit[0] == 0 and hit[2] == "another label (llm) names “collapsed”"
    finally:
        c.close()


def test_sae_still_training(tmp_path):
    from workbench.sae.trainer import LOG_FILE

    assert runinfo.TRAIN_LOG == LOG_FILE
    run = tmp_path / "training"
    (run / "sae").mkdir(parents=True)
    records = [
        {"step": s, "loss": 1.0 / s, "fvu": 0.9 / s, "fvu_prefix": [1.0, 0.9 / s], "l0": 32.0,
         "l0_inference": None, "dead_fraction": 0.1 / s, "lr": 1e-3}
        for s in (20, 40, 60)
    ]  # fmt: skip
    text = "\n".join(json.dumps(r) for r in records) + "\nnot json\n"
    (run / "sae" / LOG_FILE).write_text(text)
    c = open_context(run)
    assert c.status.sae_state == "training"
    assert any("still training" in p for p in c.status.problems)
    view = runinfo.runs_view(c)
    for key in ("fvu", "l0", "dead_fraction", "loss", "lr"):
        assert f'aria-label="{key}"' in view.curves, key
    assert "fvu_prefix" not in view.curves and "l0_inference" not in view.curves


def test_runs_tab_shows_sae_quality(ctx):
    facts = runinfo.runs_view(ctx).facts
    assert "FVU (stored)" in facts and "dead latents" in facts
    assert "stored studies (the SAE trained on them), from the store, no CE" in facts
    assert "<i>CE loss recovered</i>" not in facts  # no model in the tiny run: no CE tile
    rows = ctx.rows("SELECT n_groups, fvu, l0 FROM sae_quality ORDER BY n_groups")
    assert [r["n_groups"] for r in rows] == [1, 2] and rows[-1]["l0"] > 0


def test_curves_use_steps_and_skip_non_numbers():
    series = runinfo.curves([{"step": 5, "fvu": 0.5, "note": "x"}, {"fvu": 0.25, "dead": True}])
    assert series == {"fvu": [(5.0, 0.5), (1.0, 0.25)]}


def test_launch_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "my run").mkdir(parents=True)
    assert launch_line("runs/my run") == "python app.py --run 'runs/my run'"
    assert launch_line("/elsewhere/x") == "python app.py --run /elsewhere/x"
