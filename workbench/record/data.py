"""What ``python -m workbench.record`` iterates over: studies, or report texts for a text LM.

Three sources, chosen by what ``data`` is:

* a MIMIC-CXR(-JPG) or phantom root (has ``mimic-cxr-2.0.0-metadata.csv``): study records
  with images, prior study and report sections (:func:`workbench.cxr.studies.iter_studies`);
  studies without FINDINGS or without a readable frontal image come back as skips;
* a MIMIC-CXR reports tree (``files/pXX/pSUBJECT/sSTUDY.txt`` without the image tables): the
  report sections of every ``.txt``, for a text-only causal LM;
* a CSV / JSON / JSON-lines / Parquet file read with ``datasets``: one text per row from
  ``text_column``, for a text-only causal LM (the text is teacher-forced as the findings).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

from workbench.cxr import mimic
from workbench.cxr.images import CXRDataError
from workbench.cxr.sections import read_report
from workbench.cxr.studies import iter_studies

TABLE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_REPORT_NAME = re.compile(r"^s(\d+)\.txt$")
_SUBJECT_DIR = re.compile(r"^p(\d+)$")


class Item(NamedTuple):
    """One unit of recording: a study (or text) id, its subject, what ``prepare`` takes."""

    study_id: int
    subject_id: int | None
    source: Any  # a StudyRecord, or a mapping of report sections
    findings: str | None


class Skipped(NamedTuple):
    """A study that cannot be recorded and why (goes into the store manifest)."""

    study_id: int
    reason: str


def model_input(source: Any, with_images: bool) -> tuple[Any, tuple[str, ...]]:
    """What ``adapter.prepare`` gets for one item, and the optional images left out.

    A study record's images are read here when the model takes images: an unreadable lateral
    or prior frontal image is left out (the study is kept, frontal only) and named in the
    second value, so that the store's manifest can list it; an unreadable frontal image still
    raises :class:`CXRDataError` (the study is skipped). Other sources pass unchanged.
    """
    if not with_images or not hasattr(source, "load_images"):
        return source, ()
    dropped: list[str] = []
    images = source.load_images(dropped)
    inputs = {
        "frontal": images.frontal,
        "lateral": images.lateral,
        "prior_frontal": images.prior_frontal,
        **{k: getattr(source, k) for k in ("indication", "technique", "comparison")},
        "prior_report": source.prior_report,
    }
    return inputs, tuple(dropped)


class Collection(NamedTuple):
    """Everything a recording run will see: usable items and skipped studies."""

    kind: str  # "studies" | "reports" | "table"
    items: list[Item]
    skipped: list[Skipped]


def load_collection(
    data: str | Path, split: str | None = None, text_column: str = "text", id_column: str = ""
) -> Collection:
    """Read ``data`` (see the module docstring) into items and skips, ordered by id."""
    data = Path(data)
    if data.is_file():
        return _table(data, text_column, id_column)
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: no such study root, reports tree or table file")
    if mimic.find_table(data, "metadata") is not None:
        return _studies(data, split)
    if (data / "files").is_dir():
        return _reports(data)
    raise CXRDataError(
        f"{data}: neither a MIMIC-CXR root (no mimic-cxr-2.0.0-metadata.csv) nor a reports "
        "tree (no files/ directory)"
    )


def _studies(root: Path, split: str | None) -> Collection:
    skips: list = []
    records = list(iter_studies(root, split=split, require_findings=True, skipped=skips))
    items = [Item(r.study_id, r.subject_id, r, r.findings) for r in records]
    skipped = [Skipped(s.study_id, f"{s.reason}: {s.detail}") for s in skips]
    return Collection("studies", items, skipped)


def _reports(root: Path) -> Collection:
    items, skipped = [], []
    for path in sorted((root / "files").glob("p*/p*/s*.txt")):
        name, subject = _REPORT_NAME.match(path.name), _SUBJECT_DIR.match(path.parent.name)
        if name is None or subject is None:
            continue
        study = int(name.group(1))
        try:
            report = read_report(path, require_findings=True)
        except CXRDataError as exc:
            skipped.append(Skipped(study, f"no findings: {exc}"))
            continue
        fields = {
            "indication": report.indication,
            "technique": report.technique,
            "comparison": report.comparison,
        }
        items.append(Item(study, int(subject.group(1)), fields, report.findings))
    if not items and not skipped:
        raise CXRDataError(f"{root}/files: no reports (files/pXX/pSUBJECT/sSTUDY.txt)")
    return Collection("reports", sorted(items, key=lambda it: it.study_id), sorted(skipped))


def _table(path: Path, text_column: str, id_column: str) -> Collection:
    import datasets

    fmt = TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown table format; use one of {sorted(TABLE_FORMATS)}")
    ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
    if text_column not in ds.column_names:
        raise ValueError(f"{path}: no column {text_column!r}; columns are {ds.column_names}")
    id_column = id_column or ("study_id" if "study_id" in ds.column_names else "")
    if id_column and id_column not in ds.column_names:
        raise ValueError(f"{path}: no id column {id_column!r}; columns are {ds.column_names}")
    has_subject = "subject_id" in ds.column_names
    items, skipped, seen = [], [], set()
    for i, row in enumerate(ds):
        study = int(row[id_column]) if id_column else i
        if study in seen:
            raise ValueError(f"{path}: id {study} appears twice in column {id_column!r}")
        seen.add(study)
        text = row[text_column]
        if not isinstance(text, str) or not text.strip():
            skipped.append(Skipped(study, f"empty {text_column!r}"))
            continue
        subject = int(row["subject_id"]) if has_subject and row["subject_id"] is not None else None
        items.append(Item(study, subject, {}, text.strip()))
    return Collection("table", sorted(items, key=lambda it: it.study_id), skipped)
