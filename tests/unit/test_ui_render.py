"""Pure rendering: numbers and rows in, escaped HTML / SVG out."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from workbench.ui import charts, heatmap, render


def test_fmt_is_short_and_honest():
    assert charts.fmt(None) == "–"
    assert charts.fmt(0) == "0"
    assert charts.fmt(12345.6) == "12,346"
    assert charts.fmt(0.5) == "0.5"
    assert charts.fmt(0.000123) == "1.23e-4"


def test_histogram_one_bar_per_bin_tallest_for_largest_count():
    bins = [(0, 1.0, 1.19, 5), (1, 1.19, 1.41, 20), (4, 2.0, 2.38, 1)]
    svg = charts.histogram(bins, "t")
    heights = [float(h) for h in re.findall(r'class="wb-bar"[^>]*height="([\d.]+)"', svg)]
    assert len(heights) == 3  # bins 2 and 3 are empty: no bar, but a gap
    assert heights[1] == max(heights) and heights[2] == min(heights)
    assert "20 tokens" in svg and "activation (log scale)" in svg


def test_histogram_empty_says_so():
    assert "No activations" in charts.histogram([])


def test_hbars_colours_below_reference():
    svg = charts.hbars([("a", 0.9), ("b", 0.3)], 0.0, 1.0, ref=0.5, color="#00f", neg_color="#f00")
    fills = re.findall(r'<rect[^>]*fill="(#[0-9a-f]+)"', svg)
    assert fills == ["#00f", "#f00"]


def test_line_needs_two_points_and_labels_ends():
    assert "not enough" in charts.line([(0, 1.0)], "fvu")
    svg = charts.line([(0, 1.0), (10, 0.25), (20, 0.5)], "fvu")
    assert "<path" in svg and "step 20" in svg


def test_highlight_scales_alpha_and_escapes():
    html = render.highlight(["<b>", " x", " y"], [0.0, 1.0, 2.0], scale=2.0, center=2)
    assert "&lt;b&gt;" in html and "<b>" not in html
    alphas = [float(a) for a in re.findall(r"rgba\(232,89,12,([\d.]+)\)", html)]
    assert alphas == sorted(alphas) and len(alphas) == 2
    assert 'class="wb-center"' in html


def test_token_text_turns_markers_into_spaces():
    assert render.token_text("▁effusion") == " effusion"
    assert render.token_text("Ġleft") == " left"


def test_feature_title_without_labels_and_dead():
    html = render.feature_title(7, {"frequency": 0.0, "max_act": 0.0, "dead": True}, [])
    assert "not labelled yet" in html and "never fires" in html and "feature 7" in html
    assert "does not exist" in render.feature_title(7, None, [])


def test_examples_group_text_and_patches():
    rows = [
        {"example_group": "top", "quantile": None, "study_id": 5, "kind": "image",
         "patch_row": 1, "patch_col": 2, "activation": 3.0},
        {"example_group": "top", "quantile": None, "study_id": 6, "kind": "report",
         "section": "findings", "activation": 2.0, "context_tokens": [" a", " b<"],
         "context_acts": [0.0, 2.0], "center": 1},
        {"example_group": "quantile", "quantile": 3, "study_id": 7, "kind": "report",
         "section": "impression", "activation": 0.5, "token": " c"},
    ]  # fmt: skip
    html = render.examples(rows, scale=3.0, grid=(4, 4))
    assert html.index("Top activations") < html.index("Quantile 3")
    assert html.count('class="wb-patch"') == 1 and html.count('class="wb-ex"') == 2
    assert 'data-study="5"' in html and " b&lt;" in html


def test_neighbors_are_clickable_chips():
    html = render.neighbors([{"neighbor": 3, "cosine": 0.5, "label": "x<y"}])
    assert 'data-feature="3"' in html and "x&lt;y" in html and "0.50" in html


def test_heatmap_colours_only_where_it_fires():
    img = Image.new("L", (64, 64), 100)
    grid_RC = heatmap.grid_from_patches([(0, 0, 2.0), (9, 9, 5.0)], 2, 2)
    assert grid_RC.tolist() == [[2.0, 0.0], [0.0, 0.0]]
    out = np.asarray(heatmap.overlay(img, grid_RC, vmax=2.0, side=64))
    assert out.shape == (64, 64, 3)
    assert out[60, 60].tolist() == [100, 100, 100]  # silent corner: the plain image
    assert out[2, 2, 0] > 150 and out[2, 2, 0] > out[2, 2, 2]  # firing corner: warm colour
    assert heatmap.data_uri(img).startswith("data:image/jpeg;base64,")
