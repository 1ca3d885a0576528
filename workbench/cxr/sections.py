"""Split a MIMIC-CXR free-text report into named sections (findings, impression, ...).

Behaviour follows the one described for MIT-LCP's MIMIC-CXR section parser (maira2.md
section 5), written here from that description:

* a header is a line ``\\n ([A-Z ()/,-]+):\\s`` (upper case, one leading space in MIMIC; we
  accept up to three spaces so hand-written and generated text parse too);
* text before the first header is the ``preamble``, with the ``FINAL REPORT`` banner removed;
* a ``WET READ`` (and any ``ADDENDUM``) written above the ``FINAL REPORT`` banner ends at that
  banner, so it never swallows the final report;
* header synonyms are normalised (``REASON FOR EXAM`` -> indication, ``CONCLUSION`` ->
  impression, ...); a repeated section is joined; empty sections are dropped;
* when neither findings nor impression exists, the report's last paragraph is returned as
  ``last_paragraph``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from workbench.cxr.images import CXRDataError

HEADER_RE = re.compile(r"\n {0,3}([A-Z][A-Z ()/,&-]*[A-Z)]) ?:(?=\s|$)")
BANNER_RE = re.compile(r"^[ \t]*FINAL (?:REPORT|ADDENDUM)[ \t]*$", re.MULTILINE)
REPORT_BANNER_RE = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.MULTILINE)
RULE_RE = re.compile(r"^[ \t]*_{10,}[ \t]*$", re.MULTILINE)  # a wet read's underline
PARAGRAPH_RE = re.compile(r"\n[ \t]*\n")

# Normalised header (lower case, single spaces) -> canonical section name.
SYNONYMS: dict[str, str] = {
    "indications": "indication",
    "reason for exam": "indication",
    "reason for examination": "indication",
    "reason for study": "indication",
    "clinical indication": "indication",
    "reason": "indication",
    "indication for exam": "indication",
    "indication for examination": "indication",
    "history": "history",
    "clinical history": "history",
    "clinical information": "history",
    "patient history": "history",
    "comparisons": "comparison",
    "comparison exam": "comparison",
    "comparison film": "comparison",
    "comparison study": "comparison",
    "reference exam": "comparison",
    "prior": "comparison",
    "prior studies": "comparison",
    "prior study": "comparison",
    "prior exam": "comparison",
    "comparison studies": "comparison",
    "comparison exams": "comparison",
    "technique": "technique",
    "procedure": "technique",
    "views": "technique",
    "exam": "examination",
    "type of examination": "examination",
    "study": "examination",
    "finding": "findings",
    "findings": "findings",
    "pa and lateral views of the chest": "findings",
    "chest, pa and lateral": "findings",
    "chest, two views": "findings",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "summary": "impression",
    "findings/impression": "impression",
    "findings / impression": "impression",
    "findings and impression": "impression",
    "impression/findings": "impression",
    "opinion": "impression",
    "final impression": "impression",
    "impression and findings": "impression",
    "recommendations": "recommendation",
    "recommendation(s)": "recommendation",
    "wet read": "wet read",
    "addendum": "addendum",
    "final addendum": "addendum",
}

_REQUIRED = ("findings", "impression")


class Report(NamedTuple):
    """A parsed report: the sections MAIRA-2 uses plus every section by canonical name."""

    indication: str | None
    technique: str | None
    comparison: str | None
    findings: str | None
    impression: str | None
    sections: dict[str, str]


def normalise_name(header: str) -> str:
    """Canonical section name for a header (``REASON FOR EXAM`` -> ``indication``)."""
    name = " ".join(header.lower().split())
    return SYNONYMS.get(name, name)


def clean_text(text: str) -> str:
    """Collapse all whitespace (MIMIC wraps lines at ~80 columns) into single spaces."""
    return " ".join(text.split())


def _split_headers(text: str) -> list[tuple[str, str]]:
    """``[(name, body), ...]`` in order; the text before the first header is the preamble."""
    text = "\n" + text
    matches = list(HEADER_RE.finditer(text))
    first = matches[0].start() if matches else len(text)
    parts = [("preamble", text[:first])]
    for match, nxt in zip(matches, [*matches[1:], None]):
        end = nxt.start() if nxt is not None else len(text)
        parts.append((normalise_name(match.group(1)), text[match.end() : end]))
    return parts


def section_text(text: str) -> dict[str, str]:
    """All sections of a report by canonical name, cleaned, empty ones dropped (see module)."""
    text = RULE_RE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    finals = list(REPORT_BANNER_RE.finditer(text))
    # Everything above the FINAL REPORT banner (a wet read, an early addendum) is parsed on its
    # own so that its last section stops at the banner instead of running into the report.
    before, after = (text[: finals[-1].start()], text[finals[-1].end() :]) if finals else ("", text)
    before, after = BANNER_RE.sub("", before), BANNER_RE.sub("", after)
    parts = [(n, b) for n, b in _split_headers(before) if n != "preamble"]
    parts += _split_headers(after)
    sections: dict[str, str] = {}
    for name, body in parts:
        body = clean_text(body)
        if body:
            sections[name] = f"{sections[name]} {body}" if name in sections else body
    if not any(k in sections for k in _REQUIRED):
        last = _last_paragraph(after)
        if last:
            sections["last_paragraph"] = last
    return sections


def _last_paragraph(text: str) -> str | None:
    """The last non-empty blank-line-separated paragraph, cleaned."""
    paragraphs = [clean_text(p) for p in PARAGRAPH_RE.split(text)]
    paragraphs = [p for p in paragraphs if p]
    return paragraphs[-1] if paragraphs else None


def parse_report(text: str) -> Report:
    """Parse report text; indication falls back to HISTORY, the usual MIMIC substitute."""
    sections = section_text(text)
    return Report(
        indication=sections.get("indication") or sections.get("history"),
        technique=sections.get("technique"),
        comparison=sections.get("comparison"),
        findings=sections.get("findings"),
        impression=sections.get("impression"),
        sections=sections,
    )


def read_report(path: str | Path, require_findings: bool = False) -> Report:
    """Read and parse a report file; missing file or (optionally) no FINDINGS -> CXRDataError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise CXRDataError(f"{path}: report not found") from None
    except OSError as exc:
        raise CXRDataError(f"{path}: cannot read report: {exc}") from exc
    report = parse_report(text)
    if require_findings and not report.findings:
        raise CXRDataError(f"{path}: report has no FINDINGS section")
    return report
