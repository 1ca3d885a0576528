"""The Segmentation tab's handlers on a tiny run, without a browser."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from workbench.testing.seg_run import build
from workbench.ui import handlers_seg as hs
from workbench.ui import seg_render as sr
from workbench.ui.context import open_context

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("segui") / "run")


def _images(html: str) -> int:
    return len(re.findall(r'<img src="data:image/png;base64,', html))


def _view(ctx, dataset="phantom-nodules", image=None):
    state = hs.SegState()
    image = image or hs.image_choices(ctx, state, dataset)[0][1]
    return hs.seg_view(ctx, state, dataset, image)


def test_the_main_run_shows_every_model_metrics_and_nested_latents(run):
    ctx = open_context(run)
    src = hs.find_sources(ctx)
    assert [r.name for r in src.runs] == ["lungs-unet", "nodules-ssn", "nodules-unet"]
    assert src.latent == run / "seg-latents" and not src.latent_is_app
    assert hs.datasets(src) == ["phantom-lungs", "phantom-nodules"]
    choices = hs.image_choices(ctx, hs.SegState(), "phantom-nodules")
    assert choices and all(c[0].startswith("s") for c in choices)
    view = _view(ctx)
    # image + 4 graders + U-Net prediction + SSN mean (nodule) and its lung field class;
    # 8 samples + the variance map
    assert _images(view.masks) == 8 and "annotator 3" in view.masks
    assert "nodules-ssn: mean, lung_field" in view.masks
    assert _images(view.samples) == 9 and "variance" in view.samples
    for model in ("nodules-ssn", "nodules-unet"):
        assert model in view.metrics
    assert "<th>ged</th>" in view.metrics and "sex=" in view.metrics
    assert "<th>dice_lung_field</th>" in view.metrics
    assert _images(view.latents) >= 1 and "AUROC" in view.latents
    assert "data-feature" not in view.latents  # another run's features: no chips here
    assert "python app.py --run" in view.latents
    lungs = _view(ctx, "phantom-lungs")
    assert _images(lungs.masks) == 3 and lungs.samples == ""  # image, truth, U-Net
    assert "recorded on phantom-nodules" in lungs.latents


def test_the_latent_run_links_features_and_needs_the_models_root(run):
    ctx = open_context(run / "seg-latents")
    src = hs.find_sources(ctx)
    assert src.latent_is_app and not src.runs and "--image-roots" in src.problems[0]
    assert "--image-roots" in hs.seg_view(ctx, hs.SegState(), "phantom-nodules", "x").header
    ctx = open_context(run / "seg-latents", (run,))
    view = _view(ctx)
    chips = re.findall(r'data-feature="(\d+)"', view.latents)
    top = ctx.rows("SELECT feature FROM study_features WHERE study_id = ? ORDER BY max_act DESC",
                   [int(view.header.split("study ")[1].split(" ")[0])])  # fmt: skip
    assert chips and [int(c) for c in chips] == [r["feature"] for r in top][: len(chips)]


def test_bad_input_becomes_a_message(run, tmp_path):
    ctx = open_context(run)
    assert "Pick a dataset" in hs.seg_view(ctx, hs.SegState(), None, None).header
    assert "No test image" in hs.seg_view(ctx, hs.SegState(), "phantom-nodules", "nope").header
    empty = tmp_path / "empty"
    empty.mkdir()
    ctx = open_context(empty)
    assert "No segmentation models" in hs.seg_view(ctx, hs.SegState(), "x", "y").header
    assert hs.safe_image_choices(ctx, hs.SegState(), "phantom-nodules") == []
    moved = tmp_path / "moved"  # models whose dataset has gone: a message, no traceback
    shutil.copytree(run / "segmentation", moved / "segmentation")
    ctx = open_context(moved)
    assert hs.safe_image_choices(ctx, hs.SegState(), "phantom-nodules") == []
    view = hs.seg_view(ctx, hs.SegState(), "phantom-nodules", "s1/d1")
    assert "wb-msg" in view.header


def test_metrics_table_pivots_one_row_per_model_and_subgroup():
    rows = [
        {"model": "ssn", "subgroup": "sex=F", "metric": "dice", "value": 0.5, "n_images": 2},
        {"model": "ssn", "subgroup": "all", "metric": "dice", "value": 0.7, "n_images": 4},
        {"model": "ssn", "subgroup": "all", "metric": "ged", "value": 0.2, "n_images": 4},
        {"model": "ssn", "subgroup": "all", "metric": "other", "value": 9.0, "n_images": 4},
    ]
    html = sr.metrics_table(rows)
    assert html.index(">all<") < html.index(">sex=F<")  # 'all' first
    assert "<th>dice</th><th>ged</th>" in html and "other" not in html
    assert "0.7" in html and "0.2" in html
