"""Drive the app in Chromium: search, feature page, study, SQL (read and refused write).

Screenshots go to tests/ui/screenshots/ (gitignored) so a person can look at the pages.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHOTS = Path(__file__).parent / "screenshots"
T = 30_000  # ms: generous, the CI machine has two shared cores


@pytest.fixture(scope="module")
def page(browser, app_url):
    SHOTS.mkdir(exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
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


def test_search_and_open_feature(page):
    table = page.locator("#wb-features")
    table.get_by_text("mostly prompt tokens").first.wait_for()
    page.locator("#wb-search textarea, #wb-search input").first.fill("pneumothorax")
    page.wait_for_function(
        "() => !document.querySelector('#wb-features').innerText.includes('mostly prompt')"
    )
    page.screenshot(path=SHOTS / "features.png", full_page=True)
    table.locator("[role=gridcell]", has_text=re.compile(r"pneumothorax \(AUROC")).first.click()
    title = page.locator("#wb-ftitle")
    title.get_by_text("pneumothorax").first.wait_for()
    assert "feature 0" in title.text_content()
    assert page.locator("#wb-hist svg rect.wb-bar").count() >= 2
    highlighted = page.locator("#wb-examples .wb-extext span[title]")
    assert highlighted.count() >= 1
    assert page.locator("#wb-fimage img").count() == 1
    assert page.locator("#wb-concepts svg rect").count() >= 1
    page.screenshot(path=SHOTS / "feature.png", full_page=True)


def test_neighbor_chip_opens_feature(page):
    chip = page.locator("#wb-neighbors a.wb-chip").first
    target = chip.get_attribute("data-feature")
    chip.click()
    page.wait_for_function(
        f"() => document.querySelector('#wb-ftitle').textContent.includes('feature {target}')"
    )


def test_concept_chip_opens_feature(page):
    _tab(page, "Features")
    page.locator("#wb-bestconcepts a.wb-chip", has_text="pneumothorax →").first.click()
    page.wait_for_function(
        "() => document.querySelector('#wb-ftitle').textContent.includes('feature 0')"
    )


def test_study_view(page):
    _tab(page, "Feature")
    page.locator("#wb-fnum input").fill("0")
    page.get_by_role("button", name="Open").click()
    page.wait_for_function(
        "() => document.querySelector('#wb-ftitle').textContent.includes('feature 0')"
    )
    link = page.locator("#wb-examples a.wb-study").first
    sid = link.get_attribute("data-study")
    link.click()
    page.locator("#wb-shead").get_by_text(f"study {sid}").wait_for()
    assert page.locator("#wb-simage img").count() >= 1  # frontal (+ lateral thumbnail)
    assert page.locator("#wb-sreport .wb-report span").count() > 10
    assert page.locator("#wb-ssections a.wb-chip").count() >= 1
    page.screenshot(path=SHOTS / "study.png", full_page=True)


def test_sql_read_and_refused_write(page):
    _tab(page, "SQL")
    _set_code(page, "#wb-sql", "SELECT feature, label FROM feature_labels WHERE feature = 0")
    page.locator("#wb-sqlrun").click()
    page.locator("#wb-sqlresult [role=gridcell]", has_text="pneumothorax").first.wait_for()
    note = page.locator("#wb-sqlnote")
    assert note.inner_text().strip() == "1 row"
    page.screenshot(path=SHOTS / "sql.png", full_page=True)
    _set_code(page, "#wb-sql", "DROP TABLE features")
    page.locator("#wb-sqlrun").click()
    note.get_by_text("Refused").wait_for()
    page.screenshot(path=SHOTS / "sql-refused.png", full_page=True)


def test_runs_tab(page):
    _tab(page, "Runs")
    facts = page.locator("#wb-runfacts")
    facts.get_by_text("blocks.1.hook_resid_post").first.wait_for()
    page.screenshot(path=SHOTS / "runs.png", full_page=True)


def test_no_file_route(page, app_url, tiny_run):
    """Gradio's file route serves nothing from the run directory or elsewhere."""
    for path in (tiny_run / "features.duckdb", Path("/etc/passwd")):
        resp = page.request.get(f"{app_url}gradio_api/file={path}")
        assert resp.status in (403, 404), (path, resp.status)
