"""Exports, SQL results with links, and the Runs tab's facts, on the planted UI run."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import pytest

from tests.fixtures import ui_run
from workbench.ui import export, handlers, handlers_export, runinfo


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return ui_run.build(tmp_path_factory.mktemp("uiexport") / "run")


@pytest.fixture(scope="module")
def files(ctx):
    return {name.split(".", 1)[1]: text for name, _, text in handlers_export.export_files(
        ctx, [0, 1, 5], "x")}  # fmt: skip


def test_json_export_holds_label_scores_histogram_examples(ctx, files):
    doc = json.loads(files["json"])
    assert doc["format"] == export.FORMAT and doc["version"] == 1 and doc["run"] == "run"
    assert doc["layer"] == 1 and doc["hook_name"] == "blocks.1.hook_resid_post"
    f0, f1 = doc["features"][:2]
    assert f0["feature"] == 0 and f0["label"]["method"] == "statistical"
    assert {"test": "concept", "metric": "auroc", "value": 1.0, "n": None} in f0["label"]["scores"]
    assert [x["method"] for x in f0["labels"]] == ["statistical", "offline"]
    assert f1["label"]["label"] == ui_run.LLM_1 and f1["label"]["rank_score"] == 0.9
    n_fires = ctx.rows("SELECT n_fires FROM feature_stats WHERE feature = 0")[0]["n_fires"]
    assert sum(h["count"] for h in f0["histogram"]) == n_fires == f0["stats"]["n_fires"]
    stored = ctx.rows("SELECT count(*) AS n FROM feature_examples WHERE feature = 0")[0]["n"]
    assert len(f0["examples"]) == stored and f0["examples"][0]["example_group"] == "top"
    assert f0["concepts"][0]["auroc"] == 1.0 and len(f0["neighbors"]) == 10


def test_csv_export_one_row_per_feature(files):
    rows = list(csv.DictReader(io.StringIO(files["csv"])))
    assert [r["feature"] for r in rows] == ["0", "1", "5"]
    assert tuple(rows[0]) == export.CSV_COLUMNS
    assert (
        rows[1]["label"] == ui_run.LLM_1 and "fuzzing balanced_accuracy" in rows[1]["label_scores"]
    )
    assert rows[2]["label"] == ui_run.OFFLINE_5 and rows[2]["label_score"] == ""
    assert json.loads(rows[0]["histogram"])[0][2] > 0 and "study " in rows[0]["top_examples"]


def test_neuronpedia_batch_follows_saedashboard(ctx, files):
    batch = json.loads(files["neuronpedia.json"])
    assert set(batch) == {"model_id", "layer", "sae_set", "features"}
    assert batch["model_id"] == "tiny" and batch["layer"] == 1
    f0 = batch["features"][0]
    assert f0["feature_index"] == 0 and f0["neuron_alignment_indices"] == []
    assert f0["frac_nonzero"] == pytest.approx(
        ctx.rows("SELECT frequency FROM feature_stats WHERE feature = 0")[0]["frequency"]
    )
    assert len(f0["freq_hist_data_bar_values"]) == len(f0["freq_hist_data_bar_heights"])
    top = [a for a in f0["activations"] if a["bin_min"] == -1]
    assert top and all(a["bin_contains"] == -1 for a in top)
    assert all(len(a["tokens"]) == len(a["values"]) for a in f0["activations"])
    quant = [a for a in f0["activations"] if a["bin_min"] != -1]
    # bin_contains: the share of the feature's firing tokens in that quantile interval, as
    # analyse assigns quantiles (q = floor(n * value / max_act), the top one closed)
    a = quant[0]
    q = round(a["bin_min"] / f0["activations"][0]["bin_max"] * 10)
    n_in = ctx.rows(
        "SELECT count(*) AS n FROM feature_acts a JOIN feature_stats s USING (feature) "
        "WHERE feature = 0 AND least(9, floor(10 * a.value / s.max_act)) = ?",
        [q],
    )[0]["n"]
    n_all = ctx.rows("SELECT n_fires FROM feature_stats WHERE feature = 0")[0]["n_fires"]
    assert 0 < a["bin_contains"] == pytest.approx(n_in / n_all, abs=1e-6)
    values = [r["activation"] for r in f0_examples(ctx) if r["quantile"] == q]
    assert all(a["bin_min"] - 1e-3 <= v <= a["bin_max"] + 1e-3 for v in values)


def f0_examples(ctx) -> list[dict]:
    return ctx.rows("SELECT quantile, activation FROM feature_examples WHERE feature = 0")


def test_download_links_and_table_export(ctx):
    html = handlers_export.export_feature(ctx, 1)
    names = re.findall(r'download="([^"]+)"', html)
    assert names == ["run-feature-1.json", "run-feature-1.csv", "run-feature-1.neuronpedia.json"]
    uri = re.search(r'href="data:application/json;charset=utf-8;base64,([^"]+)"', html).group(1)
    assert json.loads(base64.b64decode(uri))["features"][0]["feature"] == 1
    assert "feature 99999: this SAE has features 0-15" in handlers_export.export_feature(ctx, 99999)
    listed = handlers_export.export_table(
        ctx, "pneumothorax", None, "any", "any", "frequency", True
    )
    assert "run-2-features.json" in listed and "2 features, in the order of the table" in listed


def test_sql_results_link_feature_and_study_ids(ctx):
    res = runinfo.run_sql(
        ctx, "SELECT feature, study_id, max_act, repeat('x', 300) AS wide FROM study_features "
        "ORDER BY max_act DESC LIMIT 3",
    )  # fmt: skip
    html = runinfo.sql_html(res)
    assert html.startswith('<div class="wb-sqlwrap">') and html.count('class="wb-cell"') == 12
    assert html.count("data-feature=") == 3 and html.count("data-study=") == 3
    assert runinfo.sql_html(runinfo.run_sql(ctx, "DROP TABLE x")) == ""


def test_runs_dead_count_agrees_with_features_tab(ctx):
    facts = runinfo.runs_view(ctx).facts
    assert "dead features (analysis)</i><b>8 of 16 (50%)</b>" in facts
    assert "· 8 dead" in handlers.density_chart(ctx)
    notes = runinfo.notes_html('["first <note>", "second"]')
    assert "<details" in notes and "2 notes" in notes and "first &lt;note&gt;" in notes
    assert runinfo.notes_html("[]") == "" and "plain" in runinfo.notes_html("plain")
