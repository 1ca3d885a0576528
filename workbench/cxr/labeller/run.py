"""``python -m workbench label-reports``: label report texts and score them against truth.

Reads the same inputs ``record`` reads (:mod:`workbench.cxr.collection`): a MIMIC-CXR/phantom
root, a MIMIC-CXR reports tree, or a CSV / JSON / JSON-lines / Parquet table of texts (e.g.
generated findings); labels the chosen report sections (``--sections``: FINDINGS, IMPRESSION
or both) with the spaCy + negspacy labeller (:mod:`workbench.cxr.labeller`) and writes one CSV
row per study: ``study_id``, then every phantom concept and every CheXpert label coded
1 / 0 / -1 / blank (not mentioned). With ``--truth`` (``phantom-labels.csv`` or a CheXpert
table) it also reports per-concept precision, recall and F1 of the positives.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from workbench.config import parse_config
from workbench.cxr import mimic
from workbench.cxr.collection import load_collection
from workbench.cxr.findings import CHEXPERT_LABELS
from workbench.cxr.images import CXRDataError
from workbench.cxr.labeller.context import PHANTOM_CONCEPTS, label_report, score_labels
from workbench.io import atomic_path

COLUMNS = ("study_id", *PHANTOM_CONCEPTS, *CHEXPERT_LABELS)


@dataclass
class ReportLabelsConfig:
    """Label report texts with the rule-based CheXpert-style labeller; optionally score them."""

    input: Path = Path("runs/demo/phantom")
    """What record reads: a MIMIC-CXR / phantom root, a reports tree (files/pXX/pSUBJECT/
    sSTUDY.txt) or a CSV / JSON / JSON-lines / Parquet file of texts."""
    sections: Literal["findings", "impression", "both"] = "findings"
    """Report sections labelled (joined when both); studies without them are left out."""
    text_column: str = "text"
    """Text column of a table input; without it, the column named after the section."""
    id_column: str = ""
    """Id column of a table input ('': study_id if present, else the row number)."""
    split: str | None = None
    """Only studies of this split (train/validate/test) of a MIMIC-CXR root; empty: all."""
    out: Path | None = None
    """CSV to write (default: <input stem>-labels.csv next to the input)."""
    truth: Path | None = None
    """phantom-labels.csv or a CheXpert CSV to score the positives against."""
    uncertain_as_positive: bool = True
    """Count an uncertain (-1) mention as a positive prediction when scoring."""


def read_texts(cfg: ReportLabelsConfig) -> dict[int, str]:
    """study_id -> text of the chosen sections, from any input ``record`` accepts."""
    try:
        collection = load_collection(
            cfg.input, cfg.split or None, cfg.text_column, cfg.id_column, cfg.sections
        )
    except (FileNotFoundError, ValueError) as exc:
        raise CXRDataError(str(exc)) from None
    return {
        it.study_id: " ".join(t for t in (it.findings, it.impression) if t)
        for it in collection.items
    }


def write_labels(labels: dict[int, dict], path: Path) -> Path:
    """Write the label table atomically (tmp file, then rename)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for study, row in sorted(labels.items()):
            values = [row.get(c) for c in COLUMNS[1:]]
            writer.writerow([study, *("" if v is None else int(v) for v in values)])
    return path


def read_truth(path: Path) -> tuple[dict[int, dict], tuple[str, ...]]:
    """study_id -> {name: value} and the names to score (phantom concepts or CheXpert labels)."""
    rows = list(mimic.read_rows(path, ("study_id",)))
    header = set(rows[0][1]) if rows else set()
    names = tuple(n for n in (*PHANTOM_CONCEPTS, *CHEXPERT_LABELS) if n in header)
    if not names:
        raise CXRDataError(f"{path}: no phantom concept or CheXpert label columns")
    truth = {}
    for _, row in rows:
        truth[int(row["study_id"])] = {
            n: (float(row[n]) if (row[n] or "").strip() else None) for n in names
        }
    return truth, names


def run(cfg: ReportLabelsConfig) -> dict:
    """Label, write the CSV and (with a truth table) score; returns a JSON-ready summary."""
    texts = read_texts(cfg)
    labels = {}
    for study, text in texts.items():
        lab = label_report(text)
        labels[study] = {**lab.concepts, **lab.chexpert}
    out = cfg.out or Path(cfg.input).with_name(f"{Path(cfg.input).stem}-labels.csv")
    summary: dict = {"texts": len(texts), "out": str(write_labels(labels, out))}
    if cfg.truth is not None:
        truth, names = read_truth(Path(cfg.truth))
        common = sorted(set(labels) & set(truth))
        if not common:
            raise CXRDataError(f"{cfg.truth}: no study ids in common with {cfg.input}")
        scores = score_labels(
            [labels[s] for s in common],
            [truth[s] for s in common],
            names,
            uncertain_as_positive=cfg.uncertain_as_positive,
        )
        summary["scored"] = len(common)
        summary["scores"] = {n: s._asdict() for n, s in scores.items()}
    return summary


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ReportLabelsConfig, argv, prog="python -m workbench label-reports")
    try:
        summary = run(cfg)
    except CXRDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
