"""Where everything goes: the MIMIC-CXR-JPG / MIMIC-CXR tree, ground truth and summary.

Paths and CSV columns follow the real datasets exactly (see shared/reference/maira2.md, s.5),
so the readers built for MIMIC-CXR read the phantom unchanged. Tables are streamed row by row
into temporary files that are renamed into place only when the run completes, so a crash
never leaves a half-written CSV that looks finished.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image

from workbench.cxr.findings import CHANGES, CHEXPERT_LABELS, DEVICES, FINDINGS, concept_names
from workbench.cxr.phantom.reports import examination
from workbench.io import write_bytes

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
    """``files/pXX/pSUBJECT/sSTUDY``."""
    return subject_dir(root, subject_id) / f"s{study_id}"


def report_path(root: Path, subject_id: int, study_id: int) -> Path:
    """``files/pXX/pSUBJECT/sSTUDY.txt``."""
    return subject_dir(root, subject_id) / f"s{study_id}.txt"


def image_path(root: Path, subject_id: int, study_id: int, dicom_id: str) -> Path:
    """``files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg``."""
    return study_dir(root, subject_id, study_id) / f"{dicom_id}.jpg"


def mask_dir(root: Path, subject_id: int, study_id: int, dicom_id: str) -> Path:
    """``masks/pXX/pSUBJECT/sSTUDY/<dicom_id>`` (one PNG per mask)."""
    s = str(subject_id)
    return Path(root) / "masks" / f"p{s[:2]}" / f"p{s}" / f"s{study_id}" / dicom_id


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
    """One row of ``mimic-cxr-2.0.0-chexpert.csv`` (1.0 / 0.0 / -1.0 / blank)."""
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
        """Append one row to ``table``."""
        self.writers[table].writerow(row)

    def write_study(self, record: dict[str, Any]) -> None:
        self.files[STUDIES].write(json.dumps(record, sort_keys=True) + "\n")

    def commit(self) -> None:
        """Close all tables and rename them into place."""
        for name, f in self.files.items():
            f.close()
            (self.root / (name + ".tmp")).replace(self.root / name)

    def abort(self) -> None:
        """Close the tables, leaving only ``*.tmp`` files behind."""
        for f in self.files.values():
            f.close()


def write_study(
    root: Path,
    study: dict,
    images: list[tuple[str, np.ndarray]],
    masks: dict[str, np.ndarray],
    report_text: str,
    quality: int,
) -> None:
    """Write a study's JPEGs, frontal masks (``masks`` may be empty) and report."""
    sid, stid = study["subject_id"], study["study_id"]
    for did, pixels in images:
        write_bytes(image_path(root, sid, stid, did), jpeg_bytes(pixels, quality))
    if masks:
        mdir = mask_dir(root, sid, stid, images[0][0])
        mdir.mkdir(parents=True, exist_ok=True)
        for name, mask in sorted(masks.items()):
            write_bytes(mdir / f"{name}.png", png_bytes(mask), mkdir=False)
    write_bytes(report_path(root, sid, stid), report_text.encode())


def study_rows(
    study: dict, images: list[dict], size: int, labels: dict, record: dict
) -> dict[str, Any]:
    """All table rows of one study (metadata and split: one per image) plus its record."""
    sid, stid = study["subject_id"], study["study_id"]
    return {
        "metadata": [metadata_row(study, im["dicom_id"], im["view"], size) for im in images],
        "split": [
            {
                "dicom_id": im["dicom_id"],
                "study_id": stid,
                "subject_id": sid,
                "split": study["split"],
            }
            for im in images
        ],
        "chexpert": chexpert_row(study, labels),
        "labels": labels_row(study),
        "record": record,
    }


class Tally:
    """Running counts for phantom-summary.json (constant memory in the number of studies)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.subjects: dict[str, set] = {"train": set(), "validate": set(), "test": set()}

    def add(self, rec: dict) -> None:
        """Count one study record."""
        c = self.counts
        c["studies"] += 1
        c["images"] += len(rec["images"])
        c[f"view:{rec['images'][0]['view']}"] += 1
        c["lateral"] += len(rec["images"]) > 1
        c[f"split_studies:{rec['split']}"] += 1
        c["normal"] += not rec["findings"] and not rec["devices"]
        c["with_prior"] += rec["prior_study_id"] is not None
        c["findings_words"] += len(rec["report_sections"]["findings"].split())
        for name in [*rec["findings"], *rec["devices"]]:
            c[f"present:{name}"] += 1
        for change in rec["changes"].values():
            c[f"change:{change}"] += 1
        for label, v in rec["chexpert"].items():
            c[f"chexpert:{label}:{'blank' if v is None else float(v)}"] += 1
        if rec["split"] in self.subjects:  # subject ids: at most one int per subject
            self.subjects[rec["split"]].add(rec["subject_id"])

    def summary(self, config: dict[str, Any]) -> dict[str, Any]:
        """The summary dict; ``config`` is recorded so a rerun can recognise the dataset."""
        c = self.counts
        n = max(c["studies"], 1)
        return {
            "config": config,
            "studies": c["studies"],
            "images": c["images"],
            "lateral_images": c["lateral"],
            "subjects": sum(len(s) for s in self.subjects.values()),
            "subjects_per_split": {k: len(v) for k, v in self.subjects.items()},
            "studies_per_split": {k: c[f"split_studies:{k}"] for k in self.subjects},
            "views": {k[5:]: v for k, v in sorted(c.items()) if k.startswith("view:")},
            "normal_studies": c["normal"],
            "studies_with_prior": c["with_prior"],
            "present": {k: c[f"present:{k}"] for k in FINDINGS + DEVICES},
            "changes": {k: c[f"change:{k}"] for k in CHANGES},
            "chexpert": {
                lab: {val: c[f"chexpert:{lab}:{val}"] for val in ("1.0", "-1.0", "0.0", "blank")}
                for lab in CHEXPERT_LABELS
            },
            "mean_findings_words": round(c["findings_words"] / n, 1),
        }


def summarize(root: str | Path) -> str:
    """A short text summary of a generated dataset (for the demo command to print)."""
    path = Path(root) / SUMMARY
    try:
        s = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{path}: no readable phantom summary: {exc}") from None
    n = max(s["studies"], 1)
    lines = [
        f"phantom {root}: {s['studies']} studies, {s['subjects']} subjects, "
        f"{s['images']} images ({s['lateral_images']} lateral), "
        f"{s['config']['size']} px, seed {s['config']['seed']}",
        "splits (studies): " + ", ".join(f"{k} {v}" for k, v in s["studies_per_split"].items()),
        f"normal studies: {s['normal_studies']} ({100 * s['normal_studies'] / n:.0f}%), "
        f"with a prior: {s['studies_with_prior']}, "
        f"mean FINDINGS length: {s['mean_findings_words']} words",
        "present (% of studies): "
        + ", ".join(f"{k} {100 * v / n:.0f}" for k, v in s["present"].items()),
    ]
    return "\n".join(lines)
