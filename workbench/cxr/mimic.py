"""MIMIC-CXR(-JPG) tables and paths: metadata, split and CheXpert/NegBio label CSVs.

The CSVs ship gzipped (``mimic-cxr-2.0.0-metadata.csv.gz``) or unpacked; both are read, and a
file that lacks a required column fails at once with the file and the missing columns named
(maira2.md section 5 lists the columns). Readers use the standard library ``csv`` module so that
the full 377k-row metadata table loads in about a second without pandas.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from workbench.cxr.findings import CHEXPERT_LABELS
from workbench.cxr.images import CXRDataError

PREFIX = "mimic-cxr-2.0.0-"
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime")
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
LABEL_COLUMNS = ("subject_id", "study_id", *CHEXPERT_LABELS)
SPLITS = ("train", "validate", "test")

# ViewCodeSequence_CodeMeaning values, used when ViewPosition is blank.
VIEW_CODE_TO_POSITION = {
    "postero-anterior": "PA",
    "antero-posterior": "AP",
    "lateral": "LATERAL",
    "left lateral": "LL",
    "right lateral": "LATERAL",
}


class ImageMeta(NamedTuple):
    """One row of the metadata CSV: an image (dicom_id) of a study."""

    dicom_id: str
    subject_id: int
    study_id: int
    view: str
    acquired: datetime


def find_table(root: str | Path, name: str) -> Path | None:
    """``root/mimic-cxr-2.0.0-<name>.csv`` or its ``.csv.gz``; None if neither exists."""
    for suffix in (".csv", ".csv.gz"):
        path = Path(root) / f"{PREFIX}{name}{suffix}"
        if path.is_file():
            return path
    return None


def require_table(root: str | Path, name: str) -> Path:
    """Like :func:`find_table` but a missing table is a :class:`CXRDataError`."""
    path = find_table(root, name)
    if path is None:
        raise CXRDataError(f"{Path(root) / (PREFIX + name)}.csv(.gz): table not found")
    return path


def read_rows(path: str | Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)`` from a plain or gzipped CSV after checking its header."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the suffix says
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        raise CXRDataError(f"{path}: cannot read CSV: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        raise CXRDataError(f"{path}: missing column(s) {missing}; found {header}")
    for row in reader:
        yield reader.line_num, row


def _int(path: Path, line: int, row: dict, key: str) -> int:
    value = (row.get(key) or "").strip()
    try:
        return int(float(value)) if "." in value else int(value)
    except ValueError:
        raise CXRDataError(f"{path}:{line}: column {key} is not an integer: {value!r}") from None


def parse_study_datetime(date: str, time: str) -> datetime:
    """StudyDate ``YYYYMMDD`` + StudyTime ``HHMMSS(.fff)`` (numeric, leading zeros may be lost)."""
    day = datetime.strptime(str(date).strip().split(".")[0], "%Y%m%d")
    seconds_of_day = float(str(time).strip() or 0.0)
    hh, rest = divmod(seconds_of_day, 10000)
    mm, ss = divmod(rest, 100)
    if hh >= 24 or mm >= 60 or ss >= 61:
        raise ValueError(f"StudyTime {time!r} is not HHMMSS")
    return day + timedelta(hours=hh, minutes=mm, seconds=ss)


def view_of(row: dict) -> str:
    """ViewPosition upper-cased, else mapped from ViewCodeSequence_CodeMeaning, else ''."""
    view = (row.get("ViewPosition") or "").strip().upper()
    if view:
        return view
    code = (row.get("ViewCodeSequence_CodeMeaning") or "").strip().lower()
    return VIEW_CODE_TO_POSITION.get(code, "")


def read_metadata(path: str | Path) -> list[ImageMeta]:
    """Every image of the metadata CSV with its view and acquisition date-time."""
    path = Path(path)
    out = []
    for line, row in read_rows(path, METADATA_COLUMNS):
        try:
            acquired = parse_study_datetime(row["StudyDate"], row["StudyTime"])
        except ValueError as exc:
            raise CXRDataError(f"{path}:{line}: bad StudyDate/StudyTime: {exc}") from None
        dicom_id = (row["dicom_id"] or "").strip()
        if not dicom_id:
            raise CXRDataError(f"{path}:{line}: empty dicom_id")
        subject, study = _int(path, line, row, "subject_id"), _int(path, line, row, "study_id")
        out.append(ImageMeta(dicom_id, subject, study, view_of(row), acquired))
    return out


def read_split(path: str | Path) -> dict[int, str]:
    """study_id -> split (train / validate / test); a study split two ways is an error."""
    path = Path(path)
    out: dict[int, str] = {}
    for line, row in read_rows(path, SPLIT_COLUMNS):
        study, split = _int(path, line, row, "study_id"), (row["split"] or "").strip()
        if split not in SPLITS:
            raise CXRDataError(f"{path}:{line}: split must be one of {SPLITS}, got {split!r}")
        if out.setdefault(study, split) != split:
            raise CXRDataError(f"{path}:{line}: study {study} is in both {out[study]} and {split}")
    return out


def _label_value(path: Path, line: int, name: str, text: str) -> float | None:
    text = (text or "").strip()
    if text == "" or text.lower() == "nan":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value not in (1.0, 0.0, -1.0):
        raise CXRDataError(f"{path}:{line}: {name} must be 1, 0, -1 or blank, got {text!r}")
    return value


def read_labels(path: str | Path) -> dict[int, dict[str, float | None]]:
    """study_id -> {CheXpert label: 1.0 / 0.0 / -1.0 / None} from a chexpert or negbio CSV."""
    path = Path(path)
    out = {}
    for line, row in read_rows(path, LABEL_COLUMNS):
        study = _int(path, line, row, "study_id")
        out[study] = {n: _label_value(path, line, n, row[n]) for n in CHEXPERT_LABELS}
    return out


def empty_labels() -> dict[str, float | None]:
    """All 14 CheXpert labels 'not mentioned' (a study absent from the label CSV)."""
    return dict.fromkeys(CHEXPERT_LABELS)


def subject_dir(root: str | Path, subject_id: int) -> Path:
    """``root/files/pXX/pSUBJECT`` where XX are the subject id's first two digits."""
    return Path(root) / "files" / f"p{str(subject_id)[:2]}" / f"p{subject_id}"


def image_path(root: str | Path, subject_id: int, study_id: int, dicom_id: str, ext=".jpg"):
    """``files/pXX/pSUBJECT/sSTUDY/<dicom_id><ext>`` (``.jpg`` for JPG, ``.dcm`` for DICOM)."""
    return subject_dir(root, subject_id) / f"s{study_id}" / f"{dicom_id}{ext}"


def report_path(root: str | Path, subject_id: int, study_id: int) -> Path:
    """``files/pXX/pSUBJECT/sSTUDY.txt`` (the layout of MIMIC-CXR's reports zip)."""
    return subject_dir(root, subject_id) / f"s{study_id}.txt"
