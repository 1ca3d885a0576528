"""docs/own-reports.md runs: its ``python`` cells are executed in order, in an empty directory.

The page shows the smallest layouts ``record`` accepts and a worked example on a folder of
reports (record FINDINGS + IMPRESSION, an SAE, ``label-reports`` labels, ``analyse --labels``);
executing it here keeps every snippet true, and the checks below hold it to what it claims.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_interop_docs import cells

DOC = Path(__file__).resolve().parents[2] / "docs" / "own-reports.md"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]


def test_worked_example_runs(tmp_path, monkeypatch):
    found = cells(DOC.read_text())
    assert len(found) >= 5, "docs/own-reports.md lost its cells"
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "own_reports_walkthrough"}
    for line, source in found:
        exec(compile("\n" * (line - 1) + source, str(DOC), "exec"), ns)  # noqa: S102
    assert ns["report_sections"] == {"findings", "impression"}
    assert len(ns["store"].manifest["studies_complete"]) == 8
    assert ns["labels"][50000000]["pleural_effusion"] == "1"
    assert ns["labels"][50000001]["pleural_effusion"] == "0"  # "No pleural effusion."
    studies = ns["studies"]
    assert len(studies) == 8 and studies.impression.notna().all()
    assert studies.findings[0].startswith("The heart size is normal. There is a small left")
    quality = ns["quality"]
    assert quality.held_out.all() and (quality.n_studies == 4).all()
    assert quality.ce_recovered.notna().all() and quality.fvu.notna().all()
    assert "pleural_effusion" in set(ns["best"].concept)
