"""Drive the live tabs in Chromium: steer a feature with a slider, upload a radiograph.

The tiny run carries a random tiny model of the store's width (``tiny_run.build(model=True)``),
so generation takes well under a second; what is checked is the path through the page: the
inputs reach the model, progress ends, and the panels show what the handlers made.
"""

from __future__ import annotations

import pytest

from tests.ui.conftest import shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]

T = 60_000  # ms: the first Generate also loads the model


@pytest.fixture(scope="module")
def page(browser, app_url):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1100})
    pg = ctx.new_page()
    pg.set_default_timeout(T)
    pg.goto(app_url)
    yield pg
    ctx.close()


def _choose(page, elem_id: str, text: str) -> None:
    """Type into a Gradio dropdown and pick the first matching option."""
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill(text)
    page.locator("ul[role=listbox] li", has_text=text).first.click()


def test_steering_slider_changes_the_findings(page, tiny_run):
    page.get_by_role("tab", name="Steering", exact=True).click()
    study = sorted((tiny_run / "phantom" / "files").glob("p*/p*/s*"))[0].name[1:]
    _choose(page, "wb-steer-study", study)
    page.locator("#wb-steer-image img").wait_for()
    _choose(page, "wb-steer-f0", "0 · ")
    slider = page.locator("#wb-steer-s0 input[type=number]")
    slider.fill("15")
    slider.press("Enter")
    page.locator("#wb-steer-go").click()
    page.locator("#wb-steer-text").wait_for()
    base = page.locator("#wb-base-text").inner_text()
    steered = page.locator("#wb-steer-text").inner_text()
    assert steered != base
    assert page.locator("#wb-steer-text ins").count() >= 1
    page.locator("#wb-steer-verdicts").get_by_text("report labeller").wait_for()
    shot(page, "steering", doc=True)


def test_try_a_study_upload(page, tiny_run):
    page.get_by_role("tab", name="Try a study", exact=True).click()
    image = next((tiny_run / "phantom" / "files").rglob("*.jpg"))
    page.locator("#wb-try-frontal input[type=file]").set_input_files(str(image))
    page.locator("#wb-try-progress").get_by_text("frontal image read").wait_for()
    page.locator("#wb-try-go").click()
    page.locator("#wb-try-findings").wait_for()
    page.locator("#wb-try-heatmap img").wait_for()
    assert page.locator("#wb-try-out a.wb-chip").count() >= 1  # links to feature pages
    shot(page, "try", doc=True)
    page.locator("#wb-try-out a.wb-chip").first.click()
    page.locator("#wb-ftitle").get_by_text("feature").first.wait_for()
