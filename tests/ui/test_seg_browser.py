"""Drive the Segmentation tab in Chromium: pick an image, see samples and a latent heatmap,
follow a latent feature to its feature page. The app serves the latent run of a tiny
segmentation run (workbench.testing.seg_run), with the models' run as an image root."""

from __future__ import annotations

import pytest

from tests.ui.conftest import serve_app, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]

T = 60_000  # ms: predictions and heatmaps on two shared cores


@pytest.fixture(scope="module")
def seg_url(tmp_path_factory):
    from workbench.testing.seg_run import build

    run = build(tmp_path_factory.mktemp("segui") / "run")
    with serve_app("--run", str(run / "seg-latents"), "--image-roots", str(run)) as url:
        yield url


def test_pick_an_image_see_samples_and_a_latent_heatmap(browser, seg_url):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = ctx.new_page()
    page.set_default_timeout(T)
    try:
        page.goto(seg_url)
        page.get_by_role("tab", name="Segmentation", exact=True).click()
        page.locator("#wb-segdata input").first.click()
        page.get_by_role("option", name="phantom-nodules").click()
        page.locator("#wb-segimage input").first.click()
        page.get_by_role("option").first.click()
        page.locator("#wb-segsamples img").nth(8).wait_for()  # 8 samples + the variance map
        assert page.locator("#wb-segsamples figcaption", has_text="variance").count() == 1
        assert page.locator("#wb-segmasks img").count() >= 6  # image, graders, predictions
        heat = page.locator("#wb-seglatents figure img")
        heat.first.wait_for()
        assert page.locator("#wb-segmetrics table").count() == 1
        shot(page, "segmentation", doc=True)
        chip = page.locator("#wb-seglatents a.wb-chip").first
        target = chip.get_attribute("data-feature")
        chip.click()
        title = page.locator("#wb-ftitle")
        title.get_by_text(f"feature {target}").first.wait_for()  # the Feature tab opened on it
    finally:
        ctx.close()
