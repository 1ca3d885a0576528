"""What ``record`` and ``label-reports`` read: studies, a reports tree or a table of texts.

Three sources, chosen by what ``data`` is:

* a MIMIC-CXR(-JPG) or phantom root (has ``mimic-cxr-2.0.0-metadata.csv``): study records
  with images, prior study and report sections (:func:`workbench.cxr.studies.iter_studies`);
  studies without the chosen sections or without a readable frontal image come back as skips;
* a MIMIC-CXR reports tree (``files/pXX/pSUBJECT/sSTUDY.txt`` without the image tables): the
  report sections of every ``.txt``, for a text-only causal LM;
* a CSV / JSON / JSON-lines / Parquet file read with ``datasets``: one text per row, for a
  text-only causal LM.

``sections`` chooses what an :class:`Item` carries to be teacher-forced: ``findings`` (the
default; MAIRA-2's task), ``impression`` or ``both``. A study lacking a chosen section is a
skip naming it. A table's text for one section comes from ``text_column`` when the table has
it, else from a column named after the section; ``both`` reads the ``findings`` and
``impression`` columns.
"""

from __future__ import annotations

import re
from collections.abc import Collection as Ids
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from workbench.cxr import mimic
from workbench.cxr.images import CXRDataError
from workbench.cxr.sections import Report, read_report
from workbench.cxr.studies import build_index, iter_studies

TABLE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SECTIONS = {
    "findings": ("findings",),
    "impression": ("impression",),
    "both": ("findings", "impression"),
}
_REPORT_NAME = re.compile(r"^s(\d+)\.txt$")
_SUBJECT_DIR = re.compile(r"^p(\d+)$")


class Item(NamedTuple):
    """One unit of recording: a study (or text) id, its subject, what ``prepare`` takes, and the
    sections to teacher-force (None: not chosen)."""

    study_id: int
    subject_id: int | None
    source: Any  # a StudyRecord, or a mapping of report sections
    findings: str | None
    impression: str | None = None


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


def section_names(sections: str) -> tuple[str, ...]:
    """``findings`` / ``impression`` / ``both`` -> the section names, in report order."""
    if sections not in SECTIONS:
        raise ValueError(f"sections must be one of {sorted(SECTIONS)}, got {sections!r}")
    return SECTIONS[sections]


def source_kind(data: str | Path) -> str:
    """``studies``, ``reports`` or ``table``: what :func:`load_collection` makes of ``data``."""
    data = Path(data)
    if data.is_file():
        return "table"
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: no such study root, reports tree or table file")
    if mimic.find_table(data, "metadata") is not None:
        return "studies"
    if (data / "files").is_dir():
        return "reports"
    raise CXRDataError(
        f"{data}: neither a MIMIC-CXR root (no mimic-cxr-2.0.0-metadata.csv) nor a reports "
        "tree (no files/ directory)"
    )


def load_collection(
    data: str | Path,
    split: str | None = None,
    text_column: str = "text",
    id_column: str = "",
    sections: str = "findings",
    only: Ids[int] | None = None,
) -> Collection:
    """Read ``data`` (see the module docstring) into items and skips, ordered by id.

    ``only`` keeps just these study ids (read nothing else where the layout allows).
    """
    names = section_names(sections)
    kind = source_kind(data)
    if kind == "studies":
        return _studies(Path(data), split, names, only)
    if kind == "reports":
        return _reports(Path(data), names, only)
    return _table(Path(data), text_column, id_column, names, only)


def study_ids(data: str | Path, id_column: str = "") -> list[int]:
    """Every study id ``data`` holds, read cheaply (tables and file names, no report text)."""
    data = Path(data)
    kind = source_kind(data)
    if kind == "studies":
        return sorted(build_index(data, labels=None).images)
    if kind == "reports":
        return sorted(study for study, _, _ in report_files(data))
    ds = read_table(data)
    id_column = id_column or ("study_id" if "study_id" in ds.column_names else "")
    if not id_column:
        return list(range(len(ds)))
    if id_column not in ds.column_names:
        raise ValueError(f"{data}: no id column {id_column!r}; columns are {ds.column_names}")
    rows = enumerate(ds.select_columns([id_column]))
    return sorted(_row_id(row, id_column, i, data) for i, row in rows)


def _chosen(study: int, report: Report | Any, names: tuple[str, ...], where: str):
    """(findings, impression) to teacher-force, or a :class:`Skipped` naming what is missing."""
    texts = {n: getattr(report, n) if n in names else None for n in ("findings", "impression")}
    missing = [n.upper() for n in names if not texts[n]]
    if missing:
        return Skipped(study, f"no {' or '.join(missing)}: {where}")
    return texts["findings"], texts["impression"]


def _studies(root: Path, split: str | None, names: tuple[str, ...], only) -> Collection:
    skips: list = []
    records = iter_studies(
        root, split=split, require_findings=names == ("findings",), skipped=skips, only=only
    )
    items, skipped = [], []
    for r in records:  # iterating fills ``skips`` with the studies iter_studies leaves out
        got = _chosen(r.study_id, r, names, str(r.report_path))
        if isinstance(got, Skipped):
            skipped.append(got)
        else:
            items.append(Item(r.study_id, r.subject_id, r, *got))
    skipped += [Skipped(s.study_id, f"{s.reason}: {s.detail}") for s in skips]
    return Collection("studies", items, sorted(skipped))


def report_files(root: Path, only: Ids[int] | None = None) -> Iterator[tuple[int, int, Path]]:
    """(study id, subject id, path) of every ``files/pXX/pSUBJECT/sSTUDY.txt``, in path order."""
    keep = None if only is None else set(only)
    for path in sorted((root / "files").glob("p*/p*/s*.txt")):
        name, subject = _REPORT_NAME.match(path.name), _SUBJECT_DIR.match(path.parent.name)
        if name is None or subject is None:
            continue
        study = int(name.group(1))
        if keep is None or study in keep:
            yield study, int(subject.group(1)), path


def _reports(root: Path, names: tuple[str, ...], only) -> Collection:
    items, skipped, found = [], [], False
    for study, subject, path in report_files(root, only):
        found = True
        try:
            report = read_report(path)
        except CXRDataError as exc:
            skipped.append(Skipped(study, f"unreadable report: {exc}"))
            continue
        got = _chosen(study, report, names, str(path))
        if isinstance(got, Skipped):
            skipped.append(got)
            continue
        fields = {
            "indication": report.indication,
            "technique": report.technique,
            "comparison": report.comparison,
        }
        items.append(Item(study, subject, fields, *got))
    if not found and only is None:
        raise CXRDataError(f"{root}/files: no reports (files/pXX/pSUBJECT/sSTUDY.txt)")
    return Collection("reports", sorted(items, key=lambda it: it.study_id), sorted(skipped))


def table_columns(columns: list[str], text_column: str, names: tuple[str, ...], path) -> dict:
    """Section -> the table column holding its text (see the module docstring)."""
    if len(names) == 1 and text_column in columns:
        return {names[0]: text_column}
    missing = [n for n in names if n not in columns]
    if missing:
        wanted = f"{text_column!r} (or {names[0]!r})" if len(names) == 1 else repr(missing)
        raise ValueError(f"{path}: no column {wanted}; columns are {columns}")
    return {n: n for n in names}


def read_table(path: Path):
    """A CSV / JSON / JSON-lines / Parquet file as a ``datasets.Dataset``."""
    import datasets

    fmt = TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown table format; use one of {sorted(TABLE_FORMATS)}")
    return datasets.load_dataset(fmt, data_files=str(path), split="train")


def _row_id(row: dict, id_column: str, i: int, path: Path) -> int:
    if not id_column:
        return i
    try:
        return int(row[id_column])
    except (TypeError, ValueError):
        raise ValueError(
            f"{path}: row {i + 1}: {id_column} {row[id_column]!r} is not an integer"
        ) from None


def _table(path: Path, text_column: str, id_column: str, names, only) -> Collection:
    ds = read_table(path)
    columns = table_columns(ds.column_names, text_column, names, path)
    id_column = id_column or ("study_id" if "study_id" in ds.column_names else "")
    if id_column and id_column not in ds.column_names:
        raise ValueError(f"{path}: no id column {id_column!r}; columns are {ds.column_names}")
    has_subject = "subject_id" in ds.column_names
    keep = None if only is None else set(only)
    items, skipped, seen = [], [], set()
    for i, row in enumerate(ds):
        study = _row_id(row, id_column, i, path)
        if study in seen:
            raise ValueError(f"{path}: id {study} appears twice in column {id_column!r}")
        seen.add(study)
        if keep is not None and study not in keep:
            continue
        texts = {n: row[c].strip() if isinstance(row[c], str) else "" for n, c in columns.items()}
        empty = [columns[n] for n in names if not texts[n]]
        if empty:
            skipped.append(Skipped(study, f"empty {' and '.join(map(repr, empty))}"))
            continue
        subject = int(row["subject_id"]) if has_subject and row["subject_id"] is not None else None
        items.append(Item(study, subject, {}, texts.get("findings"), texts.get("impression")))
    return Collection("table", sorted(items, key=lambda it: it.study_id), skipped)


def study_texts(
    data: str | Path,
    study_ids: Ids[int],
    text_column: str = "text",
    id_column: str = "",
    sections: str = "findings",
) -> dict[int, tuple[str | None, str | None]]:
    """(FINDINGS, IMPRESSION) of the given studies from a reports tree or a table of texts.

    What analyse puts in its ``studies`` table for a text-only run (a MIMIC-CXR root has its
    own reader). A report gives both sections whatever was recorded; a table gives the
    column(s) ``sections`` names, read as :func:`load_collection` reads them.
    """
    data = Path(data)
    out: dict[int, tuple[str | None, str | None]] = {}
    if source_kind(data) == "reports":
        for study, _, path in report_files(data, study_ids):
            try:
                report = read_report(path)
            except CXRDataError:
                continue
            out[study] = (report.findings, report.impression)
        return out
    if source_kind(data) != "table":
        raise ValueError(f"{data}: study_texts reads a reports tree or a table")
    for item in _table(data, text_column, id_column, section_names(sections), study_ids).items:
        out[item.study_id] = (item.findings, item.impression)
    return out
