"""Drive the app in Chromium: search, feature page, heatmap controls, study navigation, deep
links and the address bar, SQL (read, links, refused write), export.

Screenshots go to tests/ui/screenshots/ (gitignored) so a person can look at the pages; with
``WB_DOC_SHOTS=1`` the run also writes the small per-tab PNGs that docs/app.md shows
(docs/images/app-*.png; :func:`tests.ui.conftest.shot`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.fixtures import ui_run
from tests.ui.conftest import shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]

T = 30_000  # ms: generous, the CI machine has two shared cores


@pytest.fixture(scope="module")
def page(browser, app_url):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(T)
    pg.goto(app_url)
    yield pg
    ctx.close()


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def _set_code(page, selector: str, text: str) -> None:
    editor = page.locator(f"{selector} .cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(text)


def _title_has(page, text: str) -> None:
    page.wait_for_function(
        "(t) => (document.querySelector('#wb-ftitle') || {}).textContent?.includes(t)", arg=text
    )


def _query(page) -> str:
    return "?" + page.url.split("?", 1)[1] if "?" in page.url else ""


def test_search_ranks_and_opens_feature(page):
    table = page.locator("#wb-features")
    table.locator("[role=gridcell]", has_text="mostly image tokens").first.wait_for()
    shot(page, "features", doc=True)
    page.locator("#wb-search textarea, #wb-search input").first.fill("pneumothorax")
    page.locator("#wb-features [role=gridcell]", has_text="names “pneumothorax”").first.wait_for()
    negated = page.locator("#wb-features [role=gridcell]", has_text="only in negated phrase")
    negated.first.wait_for()
    assert page.locator("#wb-fsummary").inner_text().startswith("2 matching features")
    table.locator("[role=gridcell]", has_text=re.compile(r"pneumothorax \(AUROC")).first.click()
    _title_has(page, "feature 0")
    assert _query(page) == "?feature=0"
    title = page.locator("#wb-ftitle")
    assert "concept AUROC 1.00 · detection balanced accuracy 0.90" in title.text_content()
    assert page.locator("#wb-hist svg rect.wb-bar").count() >= 2
    assert page.locator("#wb-examples .wb-extext span[title]").count() >= 1
    assert page.locator("#wb-examples .wb-patch img").count() >= 1  # radiograph crops
    assert page.locator("#wb-concepts svg rect").count() >= 1
    shot(page, "feature", doc=True)


def test_heatmap_scale_caption_and_controls(page, app_url, tiny_run):
    page.goto(app_url + "?feature=5")
    _title_has(page, "feature 5")
    peak = ui_run.study_ids(tiny_run)[ui_run.PEAK_AT]
    caption = page.locator("#wb-fimage figcaption").first
    caption.wait_for()
    text = caption.inner_text()
    assert f"study {peak} · colour scale 0 – 0.66 = this image's maximum" in text
    assert "its maximum on any token is 0.7" in text
    assert page.locator("#wb-fimage svg[aria-label='colour scale 0 to 0.66']").count() == 1
    layer = page.locator("#wb-fimage .wb-layer")
    page.locator("#wb-fimage .wb-opacity").fill("25")
    assert layer.evaluate("e => getComputedStyle(e).opacity") == "0.25"
    page.locator("#wb-fimage .wb-toggle").uncheck()
    assert not layer.is_visible()
    page.locator("#wb-fimage .wb-toggle").check()
    assert layer.is_visible()
    assert page.locator("#wb-fimage a.wb-thumb img").count() == 2


def test_study_navigation_keeps_the_feature(page, app_url):
    page.goto(app_url + "?feature=0")
    _title_has(page, "feature 0")
    link = page.locator("#wb-examples a.wb-study").first
    sid = link.get_attribute("data-study")
    link.click()
    page.locator("#wb-shead").get_by_text(f"study {sid}").wait_for()
    page.wait_for_function("() => location.search.includes('study=')")
    assert _query(page) == f"?study={sid}&feature=0"
    assert page.locator("#wb-sfeat input").input_value().startswith("#0 ")
    assert "coloured by feature #0" in page.locator("#wb-simage figcaption").first.inner_text()
    assert page.locator("#wb-sreport .wb-report span").count() > 10
    assert "<s>" not in page.locator("#wb-sreport").inner_text()
    shot(page, "study", doc=True)
    # any feature number colours the study, listed or not
    box = page.locator("#wb-sfeat input")
    box.fill("5")
    box.press("Enter")
    page.wait_for_function("() => location.search.endsWith('feature=5')")
    assert "feature #5" in page.locator("#wb-sreport h3").first.inner_text()
    typed = page.locator("#wb-studyid input, #wb-studyid textarea").first
    typed.fill("123")
    typed.press("Enter")
    page.locator("#wb-shead").get_by_text("Study 123 is not in this run").wait_for()


def test_deep_links_open_the_right_view(page, app_url, tiny_run):
    sid = ui_run.study_ids(tiny_run)[0]
    page.goto(app_url + f"?study={sid}&feature=4")
    page.locator("#wb-shead").get_by_text(f"study {sid}").wait_for()
    assert page.locator("[role=tab][aria-selected=true]").inner_text() == "Study"
    assert "feature #4" in page.locator("#wb-sreport h3").first.inner_text()
    page.goto(app_url + "?tab=sql")
    page.locator("[role=tab][aria-selected=true]", has_text="SQL").wait_for()
    page.goto(app_url + "?feature=99999")
    page.locator("#wb-ftitle").get_by_text("feature 99999: this SAE has features 0-15").wait_for()
    page.goto(app_url + "?feature=abc")
    page.locator("#wb-linknote").get_by_text("?feature=abc is not a feature number").wait_for()
    page.goto(app_url + "?tab=features&q=effusion")
    page.wait_for_function(
        "() => (document.querySelector('#wb-features') || {}).innerText?.includes("
        "'pleural effusion that')"
    )


def test_address_bar_follows_navigation(page, app_url):
    page.goto(app_url + "?feature=0")
    _title_has(page, "feature 0")
    chip = page.locator("#wb-neighbors a.wb-chip").first
    target = chip.get_attribute("data-feature")
    chip.click()
    _title_has(page, f"feature {target}")
    page.wait_for_function(f"() => location.search === '?feature={target}'")
    _tab(page, "Runs")
    page.wait_for_function("() => location.search === '?tab=runs'")
    page.go_back()
    _title_has(page, f"feature {target}")
    assert page.locator("[role=tab][aria-selected=true]").inner_text() == "Feature"


def test_concept_chip_and_concept_filter(page, app_url):
    page.goto(app_url)
    page.locator(
        "#wb-bestconcepts a.wb-chip", has_text="pneumothorax · ground truth →"
    ).first.click()
    _title_has(page, "feature 0")
    _tab(page, "Features")
    page.locator("#wb-concept input").click()
    page.get_by_role("option", name="pleural effusion · CheXpert").click()
    page.locator(
        "#wb-features [role=gridcell]", has_text="AUROC 1.00 for pleural effusion"
    ).wait_for()
    assert (
        "associated with pleural effusion · CheXpert" in page.locator("#wb-fsummary").inner_text()
    )


def test_sql_links_refusal_and_scroll(page, app_url):
    page.goto(app_url + "?tab=sql")
    page.locator("[role=tab][aria-selected=true]", has_text="SQL").wait_for()
    _set_code(
        page, "#wb-sql",
        "SELECT feature, label, repeat('x', 400) AS wide FROM feature_labels WHERE feature = 0",
    )  # fmt: skip
    page.locator("#wb-sqlrun").click()
    page.locator("#wb-sqlresult td", has_text="pneumothorax").first.wait_for()
    assert page.locator("#wb-sqlnote").inner_text().strip() == "2 rows"
    cell = page.locator("#wb-sqlresult .wb-cell").nth(2)
    assert cell.evaluate("e => e.scrollWidth > e.clientWidth")  # the wide cell scrolls alone
    shot(page, "sql", doc=True)
    page.locator("#wb-sqlresult a.wb-chip").first.click()
    _title_has(page, "feature 0")
    _tab(page, "SQL")
    _set_code(page, "#wb-sql", "DROP TABLE features")
    page.locator("#wb-sqlrun").click()
    page.locator("#wb-sqlnote").get_by_text("Refused").wait_for()


def test_export_downloads_json(page, app_url):
    page.goto(app_url + "?feature=1")
    _title_has(page, "feature 1")
    page.locator("#wb-fexport").click()
    link = page.locator("#wb-fexports a.wb-download", has_text="feature-1.json")
    with page.expect_download() as got:
        link.click()
    doc = json.loads(Path(got.value.path()).read_text())
    assert doc["features"][0]["label"]["label"] == ui_run.LLM_1


def test_runs_tab(page):
    _tab(page, "Runs")
    facts = page.locator("#wb-runfacts")
    facts.get_by_text("blocks.1.hook_resid_post").first.wait_for()
    assert "8 of 16 (50%)" in facts.inner_text()
    shot(page, "runs", doc=True)


def test_no_file_route(page, app_url, tiny_run):
    """Gradio's file route serves nothing from the run directory or elsewhere."""
    for path in (tiny_run / "features.duckdb", Path("/etc/passwd")):
        resp = page.request.get(f"{app_url}gradio_api/file={path}")
        assert resp.status in (403, 404), (path, resp.status)
