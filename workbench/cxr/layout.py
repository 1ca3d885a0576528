"""Where everything goes: the MIMIC-CXR-JPG / MIMIC-CXR tree and the ground-truth files.

Paths and CSV columns follow the real datasets exactly (see shared/reference/maira2.md, s.5),
so the readers built for MIMIC-CXR read the phantom unchanged. Tables are streamed row by row
into temporary files that are renamed into place only when the run completes, so a crash
never leaves a half-written CSV that looks finished.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image

from workbench.cxr.findings import CHEXPERT_LABELS, concept_names
from workbench.cxr.reports import examination

METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
LABELS = "phantom-labels.csv"
STUDIES = "phantom-studies.jsonl"
SUMMARY = "phantom-summary.json"
METADATA_COLUMNS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
CHEXPERT_COLUMNS = ("subject_id", "study_id", *CHEXPERT_LABELS)
VIEW_MEANING = MappingProxyType(
    {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}
)


def subject_dir(root: Path, subject_id: int) -> Path:
    """``files/pXX/pSUBJECT`` where XX are the subject id's first two digits."""
    s = str(subject_id)
    return Path(root) / "files" / f"p{s[:2]}" / f"p{s}"


def study_dir(root: Path, subject_id: int, study_id: int) -> Path:
    return subject_dir(root, subject_id) / f"s{study_id}"


def report_path(root: Path, subject_id: int, study_id: int) -> Path:
    return subject_dir(root, subject_id) / f"s{study_id}.txt"


def image_path(root: Path, subject_id: int, study_id: int, dicom_id: str) -> Path:
    return study_dir(root, subject_id, study_id) / f"{dicom_id}.jpg"


def mask_dir(root: Path, subject_id: int, study_id: int, dicom_id: str) -> Path:
    s = str(subject_id)
    return Path(root) / "masks" / f"p{s[:2]}" / f"p{s}" / f"s{study_id}" / dicom_id


def write_bytes(path: Path, data: bytes, mkdir: bool = True) -> None:
    """Write atomically: a reader never sees a truncated file."""
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def jpeg_bytes(img_u8: np.ndarray, quality: int) -> bytes:
    """8-bit greyscale baseline JPEG; fixed settings so equal pixels give equal bytes."""
    buf = io.BytesIO()
    Image.fromarray(img_u8, mode="L").save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def png_bytes(mask: np.ndarray) -> bytes:
    """A boolean mask as an 8-bit 0/255 PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def metadata_row(study: dict, dicom_id: str, view: str, size: int) -> dict[str, Any]:
    """One row of ``mimic-cxr-2.0.0-metadata.csv``."""
    acq = study["acquisition"]
    upright = acq["position"] != "supine"
    return {
        "dicom_id": dicom_id,
        "subject_id": study["subject_id"],
        "study_id": study["study_id"],
        "PerformedProcedureStepDescription": examination(acq),
        "ViewPosition": view,
        "Rows": size,
        "Columns": size,
        "StudyDate": study["date"].replace("-", ""),
        "StudyTime": study["time"].replace(":", "") + f".{study['study_id'] % 1000:03d}",
        "ProcedureCodeSequence_CodeMeaning": examination(acq),
        "ViewCodeSequence_CodeMeaning": VIEW_MEANING[view],
        "PatientOrientationCodeSequence_CodeMeaning": "Erect" if upright else "Recumbent",
    }


def chexpert_row(study: dict, labels: dict[str, float | None]) -> dict[str, Any]:
    row: dict[str, Any] = {"subject_id": study["subject_id"], "study_id": study["study_id"]}
    for k in CHEXPERT_LABELS:
        v = labels.get(k)
        row[k] = "" if v is None else f"{float(v):.1f}"
    return row


def labels_row(study: dict) -> dict[str, Any]:
    """Ground-truth concept flags: findings, devices, and any change of each kind."""
    present = {**study["findings"], **study["devices"]}
    changes = set(study["changes"].values())
    row: dict[str, Any] = {"subject_id": study["subject_id"], "study_id": study["study_id"]}
    for name in concept_names():
        if name.startswith("change_"):
            row[name] = int(name[len("change_") :] in changes)
        else:
            row[name] = int(name in present)
    return row


class TableSink:
    """The five tables of a run, streamed to ``*.tmp`` files and renamed on ``commit``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.files: dict[str, Any] = {}
        self.writers: dict[str, csv.DictWriter] = {}
        for name, cols in (
            (METADATA, METADATA_COLUMNS),
            (SPLIT, SPLIT_COLUMNS),
            (CHEXPERT, CHEXPERT_COLUMNS),
            (LABELS, ("subject_id", "study_id", *concept_names())),
        ):
            f = open(self.root / (name + ".tmp"), "w", newline="")  # noqa: SIM115
            self.files[name] = f
            self.writers[name] = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
            self.writers[name].writeheader()
        self.files[STUDIES] = open(self.root / (STUDIES + ".tmp"), "w")  # noqa: SIM115

    def write(self, table: str, row: dict[str, Any]) -> None:
        self.writers[table].writerow(row)

    def write_study(self, record: dict[str, Any]) -> None:
        self.files[STUDIES].write(json.dumps(record, sort_keys=True) + "\n")

    def commit(self) -> None:
        for name, f in self.files.items():
            f.close()
            (self.root / (name + ".tmp")).replace(self.root / name)

    def abort(self) -> None:
        for f in self.files.values():
            f.close()
