"""The feature page tells the truth: image peak and scale, headline label, examples, links.

Runs the pure handlers on the planted UI run (tests/fixtures/ui_run.py), whose feature 5
fires weakly on images in a study its examples never show, and whose features carry labels
of several methods with scores.
"""

from __future__ import annotations

import base64
import io
import re
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures import ui_run
from workbench.ui import handlers, handlers_feature, handlers_study, heatmap, pictures, queries
from workbench.ui import queries_feature as qf


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return ui_run.build(tmp_path_factory.mktemp("uipage") / "run")


def _decode(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def _uris(html: str, cls: str) -> list[str]:
    return re.findall(rf'class="{cls}" src="(data:[^"]+)"', html)


def test_heatmap_shows_the_image_peak_on_its_own_scale(ctx, run):
    ids = ui_run.study_ids(run)
    peak, other = ids[ui_run.PEAK_AT], ids[ui_run.OTHER_AT]
    examples = queries.by_feature(ctx, "feature_examples", 5, "rank")
    shown = {r["study_id"] for r in examples if r["kind"] == "image"}
    assert shown == {other}  # the examples alone would point at the wrong study
    html = unescape(handlers_feature.feature_view(ctx, 5).image)
    assert f"study {peak} · colour scale 0 – 0.66 = this image's maximum" in html
    assert "its maximum on any token is 0.7" in html
    assert "Fires on 3.9% of image tokens (15 patches in 2 studies)" in html
    assert "Never fires" not in html
    assert 'class="wb-toggle" checked' in html and 'class="wb-opacity"' in html
    assert 'aria-label="colour scale 0 to 0.66"' in html
    layer = np.asarray(_decode(_uris(html, "wb-layer")[0]))
    alpha_RC = layer[..., 3].reshape(4, layer.shape[0] // 4, 4, layer.shape[1] // 4).max((1, 3))
    r, c = ui_run.PEAK_PATCH
    assert alpha_RC[r, c] == alpha_RC.max() >= 250  # full colour at this image's peak patch
    strip = re.findall(r'class="wb-thumb" data-study="(\d+)" data-feature="5"', html)
    assert [int(s) for s in strip] == [peak, other]  # best image study first
    assert "shared colour scale 0 – 0.66" in html


def test_text_only_and_dead_features_say_so(ctx):
    assert "Never fires on an image token" in handlers_feature.feature_view(ctx, 2).image
    assert "Dead: it never fires" in handlers_feature.feature_view(ctx, 8).image


def test_patch_examples_are_crops_of_the_radiograph(ctx):
    rows = queries.by_feature(ctx, "feature_examples", 0, handlers_feature.EXAMPLE_ORDER)
    first = next(r for r in rows if r["kind"] == "image")
    html = handlers_feature.feature_view(ctx, 0).examples
    crops = re.findall(r'class="wb-patch"[^>]*><img src="(data:[^"]+)"', html)
    assert len(crops) == sum(r["kind"] == "image" for r in rows)
    image = pictures.frontal(ctx, first["study_id"])
    expect = heatmap.patch_crop(image, (4, 4), first["patch_row"], first["patch_col"])
    got = np.asarray(_decode(crops[0]).convert("RGB")).astype(int)
    assert got.shape == np.asarray(expect).shape
    assert np.abs(got - np.asarray(expect).astype(int)).mean() < 6  # JPEG noise only
    assert got.std() > 10  # a radiograph, not a flat grey square


@pytest.mark.parametrize("feature", sorted(ui_run.EXPECTED_HEADLINE))
def test_headline_is_the_best_scored_label_everywhere(ctx, feature):
    method = ui_run.EXPECTED_HEADLINE[feature]
    label = next(r["label"] for r in qf.labels(ctx, feature) if r["method"] == method)
    title = handlers_feature.feature_view(ctx, feature).title
    headline = re.search(r'class="wb-label">(.*?)</div>', title).group(1)
    assert headline == label.replace('"', "&quot;")
    row = next(r for r in handlers.feature_table(ctx, limit=50).rows if r[0] == feature)
    assert row[1] == label and row[3] == method  # the table knows it by the same label


def test_scores_are_named_by_test_and_blanks_explained(ctx):
    t0 = handlers_feature.feature_view(ctx, 0).title
    assert "statistical · concept AUROC 1.00 · detection balanced accuracy 0.90" in t0
    assert "highest score of 2 labels: 0.95" in t0
    assert "fuzzing: not scored for this label" in t0
    assert "detection balanced accuracy 0.55 · fuzzing balanced accuracy 0.50" in t0  # offline
    t1 = handlers_feature.feature_view(ctx, 1).title
    assert "llm:test-model (test-model) · detection balanced accuracy 0.95 · " in t1
    assert "detection vs hard negatives balanced accuracy 0.90" in t1
    assert "simulation correlation 0.70" in t1
    t2 = handlers_feature.feature_view(ctx, 2).title
    assert "no label is scored yet" in t2 and "is below the threshold for naming it" in t2
    assert "a person" in handlers_feature.feature_view(ctx, 6).title


def test_search_ranks_by_the_known_label_and_negations_last(ctx):
    rows = handlers.feature_table(ctx, search="pneumothorax").rows
    assert [r[0] for r in rows] == [0, 2]  # feature 2 fires far more often
    assert rows[0][2] == "its label (statistical) names “pneumothorax”"
    assert rows[1][2].startswith("only in negated phrase “No pneumothorax”")
    effusion = handlers.feature_table(ctx, search="effusion").rows
    assert effusion[0][0] == 1 and effusion[0][2].startswith("its label (llm:test-model)")
    assert effusion[-1][2] == "only in report phrase “pleural effusion.”"  # feature 5


def test_concept_lists_its_features_by_auroc(ctx):
    choices = dict((v, k) for k, v in handlers.concept_choices(ctx))
    assert choices["chexpert:Cardiomegaly"] == "cardiomegaly · CheXpert"
    assert choices["phantom:cardiomegaly"] == "cardiomegaly · ground truth"
    assert len(set(choices.values())) == len(choices)  # each name once per source
    view = handlers.feature_table(ctx, concept="chexpert:Pleural Effusion", sort="AUROC")
    aurocs = [r[6] for r in view.rows]
    assert view.rows[0][0] == 1 and aurocs == sorted(aurocs, reverse=True)
    assert min(aurocs) >= queries.ASSOCIATED_AUROC
    # the selectivity of analyse's mention scores joins across the sources' spellings
    assert re.fullmatch(r"AUROC 1\.00 for pleural effusion · selectivity 0\.\d\d", view.rows[0][2])
    assert view.rows[0][10] is not None  # the select. column
    assert "associated with pleural effusion · CheXpert" in view.summary


def test_study_links_keep_the_feature(ctx):
    view = handlers_feature.feature_view(ctx, 0)
    links = re.findall(r'class="wb-study" data-study="\d+"( data-feature="\d+")?', view.examples)
    assert links and all(x == ' data-feature="0"' for x in links)


def test_study_view_any_feature_placeholders_and_missing_ids(ctx, run):
    sid = ui_run.study_ids(run)[0]
    listed = {f for _, f in handlers_study.study_view(ctx, sid).choices}
    quiet = next(f for f in range(8) if f not in listed)
    view = handlers_study.study_view(ctx, sid, quiet)
    assert view.feature == quiet and f"coloured by feature #{quiet}" in view.report
    assert "&lt;s&gt;" not in view.report and "Describe" in view.report  # <s> dropped
    bad = handlers_study.study_view(ctx, sid, 99999)
    assert "feature 99999: this SAE has features 0-15" in bad.header
    missing = handlers_study.study_view(ctx, 123).header
    assert "Study 123 is not in this run: it has 24 studies" in missing
