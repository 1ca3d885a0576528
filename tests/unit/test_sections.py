"""Report section parser: MIMIC banners, synonyms, multi-line sections, wet reads, fallbacks."""

from __future__ import annotations

import pytest

from workbench.cxr.images import CXRDataError
from workbench.cxr.sections import normalise_name, parse_report, read_report, section_text

MIMIC = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)

 REASON FOR EXAM:  ___-year-old man with shortness of breath, evaluate for
 pneumonia.

 COMPARISONS:  ___.

 FINDINGS:

 Single portable view of the chest.  Lung volumes are low.  There is a small
 left pleural effusion.
 No pneumothorax.

 CONCLUSION:

 Small left effusion.
"""


def test_mimic_report_sections_and_synonyms():
    rep = parse_report(MIMIC)
    assert rep.indication == (
        "___-year-old man with shortness of breath, evaluate for pneumonia."
    )  # multi-line joined, "REASON FOR EXAM" -> indication
    assert rep.comparison == "___."  # "COMPARISONS" -> comparison
    assert rep.findings == (
        "Single portable view of the chest. Lung volumes are low. There is a small "
        "left pleural effusion. No pneumothorax."
    )
    assert rep.impression == "Small left effusion."  # "CONCLUSION" -> impression
    assert rep.sections["examination"] == "CHEST (PORTABLE AP)"
    assert "preamble" not in rep.sections  # the FINAL REPORT banner is not content
    assert "last_paragraph" not in rep.sections


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("REASON FOR EXAMINATION", "indication"),
        ("CLINICAL INDICATION", "indication"),
        ("CLINICAL  HISTORY", "history"),
        ("CLINICAL INFORMATION", "history"),
        ("FINDINGS/IMPRESSION", "impression"),
        ("IMPRESSIONS", "impression"),
        ("TYPE OF EXAMINATION", "examination"),
        ("NOTIFICATION", "notification"),
    ],
)
def test_header_synonyms(header, name):
    assert normalise_name(header) == name


def test_history_stands_in_for_indication_and_tech_on_one_line():
    rep = parse_report(" HISTORY:  Fever.\n TECHNIQUE: PA and lateral.\n FINDINGS: Clear lungs.\n")
    assert rep.indication == "Fever." and rep.sections["history"] == "Fever."
    assert rep.technique == "PA and lateral." and rep.findings == "Clear lungs."
    assert rep.impression is None


def test_wet_read_stops_at_final_report_banner():
    text = (
        " WET READ: ___ ___ 4:19 PM\n  Possible right lower lobe pneumonia.\n"
        "______________________________________________________________________________\n"
        "                                 FINAL REPORT\n"
        " INDICATION:  Cough.\n\n FINDINGS:  Right lower lobe opacity.\n"
    )
    sec = section_text(text)
    assert sec["wet read"].startswith("___ ___ 4:19 PM Possible right lower lobe pneumonia.")
    assert "FINAL" not in sec["wet read"] and "Cough" not in sec["wet read"]
    assert sec["indication"] == "Cough." and sec["findings"] == "Right lower lobe opacity."


def test_addendum_kept_apart_from_findings():
    text = (
        "                                 FINAL ADDENDUM\n ADDENDUM:  Findings were called.\n\n"
        "                                 FINAL REPORT\n FINDINGS:  Heart is normal.\n\n"
        " ADDENDUM:  Second note.\n"
    )
    sec = section_text(text)
    assert sec["findings"] == "Heart is normal."
    assert sec["addendum"] == "Findings were called. Second note."


def test_empty_sections_dropped_and_last_paragraph_fallback():
    text = (
        "                                 FINAL REPORT\n CHEST RADIOGRAPH\n\n"
        " FINDINGS:\n \n IMPRESSION:\n\n Portable chest.\n\n The lungs are clear, no effusion.\n"
    )
    sec = section_text(text)
    assert "findings" not in sec  # empty FINDINGS dropped
    assert sec["impression"].endswith("The lungs are clear, no effusion.")
    no_headers = "                                 FINAL REPORT\n Chest.\n\n Lungs are clear.\n"
    sec = section_text(no_headers)
    assert sec["last_paragraph"] == "Lungs are clear."
    assert sec["preamble"] == "Chest. Lungs are clear."


def test_repeated_section_joined_and_header_without_space():
    rep = parse_report("FINDINGS: First part.\nIMPRESSION: One.\n FINDINGS: Second part.")
    assert rep.findings == "First part. Second part." and rep.impression == "One."


def test_lowercase_colon_lines_stay_in_body():
    rep = parse_report(" FINDINGS: Lines: right PICC ends in the SVC.\n Note: tiny effusion.")
    assert rep.findings == "Lines: right PICC ends in the SVC. Note: tiny effusion."


def test_read_report_errors_name_file(tmp_path):
    with pytest.raises(CXRDataError, match="s1.txt.*not found"):
        read_report(tmp_path / "s1.txt")
    path = tmp_path / "s2.txt"
    path.write_text(" INDICATION: Cough.\n IMPRESSION: Normal.\n")
    assert read_report(path).impression == "Normal."
    with pytest.raises(CXRDataError, match="s2.txt.*no FINDINGS"):
        read_report(path, require_findings=True)


def test_addendum_after_final_report_and_rules_removed():
    text = (
        "                                 FINAL REPORT\n FINDINGS:  Small effusion.\n\n"
        " IMPRESSION:  Effusion.\n\n                                 FINAL ADDENDUM\n"
        " ADDENDUM:  Discussed with Dr. ___.\n"
    )
    sec = section_text(text)
    assert sec == {
        "findings": "Small effusion.",
        "impression": "Effusion.",
        "addendum": "Discussed with Dr. ___.",
    }
    wet = " WET READ: ___ 9:00 AM\n  Left effusion.\n____________________\n\n FINAL REPORT\n"
    assert section_text(wet) == {"wet read": "___ 9:00 AM Left effusion."}
