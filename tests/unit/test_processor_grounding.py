"""Grounded output parsing (strict) and box re-projection to the original image."""

from __future__ import annotations

import pytest

from workbench.models.grounding import adjust_box_for_original_image_size, parse_box, parse_grounded


def test_plain_text_is_returned_stripped():
    assert parse_grounded("  The lungs are clear.\n") == "The lungs are clear."


def test_grounded_and_ungrounded_phrases():
    text = (
        "<obj>Left pleural effusion.<box><x55><y45><x70><y56></box></obj>"
        "<obj> No pneumothorax.</obj>"
    )
    phrases = parse_grounded(text)
    assert phrases[0][0] == "Left pleural effusion."
    assert phrases[0][1] == [pytest.approx((0.555, 0.455, 0.705, 0.565))]
    assert phrases[1] == ("No pneumothorax.", None)


def test_several_boxes_per_phrase_and_bin_centres():
    text = "<obj>Nodules <box><x0><y0><x99><y99></box><box><x10><y20><x30><y40></box></obj>"
    [(phrase, boxes)] = parse_grounded(text)
    assert phrase == "Nodules"
    assert boxes == [
        pytest.approx((0.005, 0.005, 0.995, 0.995)),
        pytest.approx((0.105, 0.205, 0.305, 0.405)),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "<obj>Effusion.<box><x1><y2><x3><y4></box>",  # unclosed </obj>
        "Free text <obj>Effusion.</obj>",  # text outside an item
        "<obj>Effusion.</obj> trailing",  # text after the items
        "<obj>Effusion.<box><x1><y2><x3></box></obj>",  # three coordinates
        "<obj>Effusion.<box><x1><y2><x3><y4>junk</box></obj>",  # junk in the box
        "<obj>Effusion.<box><x1><y2><x3><y4></obj>",  # unclosed box
        "<obj>Effusion.</box></obj>",  # box end without start
        "<obj>Effusion.<box><x100><y2><x3><y4></box></obj>",  # bin out of range
    ],
)
def test_malformed_grounding_raises(bad):
    with pytest.raises(ValueError):
        parse_grounded(bad)


def test_parse_box_with_other_bin_counts():
    assert parse_box("<x1><y1><x2><y2>", num_bins=4) == (0.375, 0.375, 0.625, 0.625)


def test_adjust_box_undoes_centre_crop_of_wide_image():
    # 200 x 100 image: the square crop is x in [50, 150), the full height.
    box = adjust_box_for_original_image_size((0.0, 0.0, 1.0, 1.0), width=200, height=100)
    assert box == (0.25, 0.0, 0.75, 1.0)


def test_adjust_box_truncates_to_whole_pixels_on_tall_image():
    # 100 x 300 image: crop is y in [100, 200); 0.555 * 100 + 100 = 155.5 -> 155 px.
    box = adjust_box_for_original_image_size((0.555, 0.555, 0.705, 0.705), width=100, height=300)
    assert box == pytest.approx((0.55, 155 / 300, 0.7, 170 / 300))


def test_square_image_box_is_unchanged_up_to_pixels():
    box = adjust_box_for_original_image_size((0.25, 0.5, 0.75, 1.0), width=100, height=100)
    assert box == (0.25, 0.5, 0.75, 1.0)
