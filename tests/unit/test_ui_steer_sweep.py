"""The Steering tab's stored-sweep panel and site notice as pure functions of plain rows."""

from __future__ import annotations

from workbench.ui import handlers_steer_image as si
from workbench.ui import steer_sweep as sw


def row(site: str, method: str = "sae", features=(3,), strength=2.0, success=0.5, **kw) -> dict:
    base = {
        "site": site, "method": method, "concept": "pacemaker", "direction": "add",
        "strength": strength, "features": list(features), "unit": "adjusted_map",
        "positions": "image", "n": 4, "success": success, "side_effects": 0.25,
    }  # fmt: skip
    return base | kw


def test_rows_of_both_sites_are_shown_and_labelled():
    rows = [row("layer", features=(3,)), row("image", features=(40, 41), strength=1.0),
            row("image", method="prompt", features=(), strength=1.0)]  # fmt: skip
    chart = sw.sweep_chart(rows, None)
    assert "site: recorded block" in chart and "site: image embeddings" in chart
    assert chart.index("site: image embeddings") < chart.index("site: recorded block")
    assert "<td>recorded block</td>" in chart and "<td>image embeddings</td>" in chart
    assert "<td>40,41</td>" in chart and "prompt pacemaker add +1" in chart
    assert "<td>adjusted_map</td>" in chart  # the unit tells the SAE variants apart


def test_a_feature_narrows_the_recorded_block_only():
    rows = [row("layer", features=(3,)), row("layer", features=(9,), strength=3.0),
            row("layer", method="dim", features=()), row("image", features=(9,))]  # fmt: skip
    chart = sw.sweep_chart(rows, 3)
    layer = chart[chart.index("site: recorded block") :]
    assert "feature 3: success rate" in layer and "+3" not in layer and "dim" not in layer
    assert "site: image embeddings" in chart  # another SAE's numbers: kept whatever the feature
    only_image = sw.sweep_chart([row("image")], 3)
    assert "No stored sweep at the recorded block for feature 3" in only_image
    assert "<svg" in only_image


def test_empty_and_ineligible_sweeps_say_so():
    assert "No stored steering sweep" in sw.sweep_chart([], None)
    assert "image-tokens" in sw.sweep_chart([], None)
    assert "No stored sweep with an eligible study" in sw.sweep_chart(
        [row("image", success=None)], None
    )


def test_many_arms_are_capped_in_the_chart_not_the_table():
    rows = [row("image", strength=float(i)) for i in range(sw.MAX_BARS + 5)]
    chart = sw.sweep_chart(rows, None)
    assert f"First {sw.MAX_BARS} of {sw.MAX_BARS + 5} arms" in chart
    assert chart.count("<td>image embeddings</td>") == sw.MAX_BARS + 5


def test_the_site_note_names_the_site_and_why_the_image_site_is_off():
    note = si.site_note(si.BLOCK_SITE, "blocks.4.hook_resid_post")
    assert "<code>blocks.4.hook_resid_post</code>" in note and "recorded block" in note
    assert "image-token site" in note and "wb-warn" not in note
    assert "the SAE's hook" in si.site_note(si.BLOCK_SITE, None)
    off = si.site_note(si.BLOCK_SITE, None, "Steering at the image tokens needs runs/x")
    assert "wb-warn" in off and "needs runs/x" in off
    image = si.site_note(si.IMAGE_SITE, None)
    assert "vision.hook_projector_out" in image and "recorded block only" in image
