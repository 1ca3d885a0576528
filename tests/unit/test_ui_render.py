"""Pure rendering: numbers and rows in, escaped HTML / SVG out."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from workbench.ui import charts, examples, heatmap, labels, render


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


def test_feature_title_leads_with_the_first_card_and_names_scores():
    cards = [
        labels.LabelCard("statistical", "effusion (AUROC 1.00)", None, 0.95,
                         [labels.NamedScore("concept", "auroc", 1.0),
                          labels.NamedScore("detection", "balanced_accuracy", 0.9, 20)],
                         ["fuzzing: not run on this database (`label --fuzz`)"]),
        labels.LabelCard("offline", 'words "the" <b>', "rules", 0.5, [], []),
    ]  # fmt: skip
    html = render.feature_title(3, {"frequency": 0.1, "max_act": 2.0}, cards, "best score")
    assert html.index("effusion (AUROC 1.00)") < html.index("words &quot;the&quot; &lt;b&gt;")
    assert "concept AUROC 1.00 · detection balanced accuracy 0.90" in html
    assert "leads: best score" in html and "blank: fuzzing: not run" in html
    assert "all 2 labels, ranked by score" in html


def test_examples_sentence_collapse_and_patches():
    window = [
        {"row": 9, "study_id": 6, "section": "findings", "token": " Lungs clear."},
        {"row": 10, "study_id": 6, "section": "findings", "token": " No"},
        {"row": 11, "study_id": 6, "section": "findings", "token": " effusion<"},
        {"row": 12, "study_id": 6, "section": "findings", "token": "</s>"},
        {"row": 13, "study_id": 6, "section": "findings", "token": " seen."},
        {"row": 14, "study_id": 6, "section": "findings", "token": " Heart"},
    ]
    acts = {11: 2.0}
    top = {
        "example_group": "top",
        "quantile": None,
        "study_id": 6,
        "kind": "report",
        "section": "findings",
        "activation": 2.0,
        "row": 11,
    }
    ex = examples.sentence(top, window, acts)
    assert ex.tokens == [" No", " effusion<", " seen."] and ex.center == 1  # </s> dropped
    assert ex.acts == [0.0, 2.0, 0.0]
    same = ex._replace(study_id=8)
    other = ex._replace(tokens=[" Small", " effusion<"], center=1)
    sized = [" A", " 3.0", " cm", " nodule."]
    cm3, cm2 = (ex._replace(tokens=sized, center=3, study_id=s) for s in (1, 2))
    cm2 = cm2._replace(tokens=[" a", " 2.5", " cm", " nodule."])
    folded = examples.collapse([ex, same, other, cm3, cm2])
    assert [studies for _, studies in folded] == [[6, 8], [6], [1, 2]]  # numbers aside
    rows = [
        {"example_group": "top", "quantile": None, "study_id": 5, "kind": "image",
         "patch_row": 1, "patch_col": 2, "activation": 3.0},
        top, {**top, "study_id": 8, "row": 11},
        {"example_group": "quantile", "quantile": 3, "study_id": 7, "kind": "report",
         "section": "impression", "activation": 0.5, "token": " c", "row": 99},
    ]  # fmt: skip
    texts = {1: ex, 2: same, 3: examples.sentence(rows[3], window, acts)}
    html = examples.panel(rows, texts, {0: "data:image/jpeg;base64,AA"}, scale=3.0, feature=4)
    assert html.index("Top activations") < html.index("Quantile 3")
    assert html.count('class="wb-patch"') == 1 and html.count('class="wb-ex"') == 2
    assert "×2 alike" in html and " effusion&lt;" in html
    assert 'data-study="5" data-feature="4"' in html and 'src="data:image/jpeg;base64,AA"' in html


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


def test_heatmap_grid_covers_the_centre_square():
    """The processor centre-crops a square: on a wide image the margins stay uncoloured."""
    img = Image.new("L", (96, 64), 100)
    grid_RC = np.full((2, 2), 4.0, dtype=np.float32)
    assert heatmap.grid_box(96, 64) == (16, 0, 64)
    out = np.asarray(heatmap.overlay(img, grid_RC, vmax=4.0, side=96))
    assert out[32, 4].tolist() == [100, 100, 100]  # left margin: plain image
    assert out[32, 48, 0] > 200  # inside the square: full colour
    layer = heatmap.heat_layer((96, 64), grid_RC, 4.0)
    assert layer.mode == "RGBA" and layer.getpixel((4, 32))[3] == 0


def test_patch_crop_is_the_radiograph_around_the_patch():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    img = Image.fromarray(pixels, "L")
    crop = heatmap.patch_crop(img, (4, 4), 1, 2, reach=1, side=48)
    assert crop.size == (48, 48)  # 3 x 3 patches of 16 px, scaled to 48
    inner = np.asarray(crop.convert("L"))[20:28, 4:12].astype(int)  # left of the outline
    source = np.asarray(img.resize((64, 64)))[0:48, 16:64]  # rows 0-2, cols 1-3 of the grid
    expect = np.asarray(Image.fromarray(source).resize((48, 48)))[20:28, 4:12].astype(int)
    assert np.abs(inner - expect).mean() < 3  # the real pixels, not a grey square
    rgb = np.asarray(crop)
    assert tuple(rgb[16, 24]) == (255, 140, 0)  # the patch (row 1, col 2) is outlined


def test_colour_bar_and_heat_figure():
    bar = charts.colour_bar([[0, 0, 0], [255, 255, 255]], 8.0, "activation")
    assert 'stop-color="rgb(0,0,0)"' in bar and ">8<" in bar and ">4<" in bar
    fig = render.heat_figure("data:a", "data:b", "scale 0 – 8 <x>", bar)
    assert 'class="wb-toggle" checked' in fig and 'class="wb-opacity"' in fig
    assert "scale 0 – 8 &lt;x&gt;" in fig and 'class="wb-layer" src="data:b"' in fig
