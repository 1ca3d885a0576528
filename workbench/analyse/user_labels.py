"""``analyse --labels FILE.csv``: score features against a researcher's own study labels.

The file has a ``study_id`` column and any number of concept columns coded like CheXpert:
1 (present), 0 (absent), -1 (uncertain: left out of AUROCs) or blank (unknown); ``1.0`` /
``0.0`` / ``-1.0`` are read the same, ``subject_id`` is ignored. Its concepts are stored with
``source = 'user'`` next to the dataset's labels and scored the same way (feature AUROCs,
probe ceiling), but never as ground truth: the phantom recovery table reads only
``source = 'phantom'``.

Everything is checked before analyse starts its pass over the activations, with counts:
values other than the four codes (per column, with the first few lines), repeated study
ids, and study ids the store does not hold (an error when none is known, a note otherwise).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

import numpy as np

from workbench.analyse.concepts import LabelMatrix

_CODES = {"1": 1.0, "0": 0.0, "-1": -1.0, "1.0": 1.0, "0.0": 0.0, "-1.0": -1.0, "": np.nan}


class UserLabels(NamedTuple):
    """The file's labels: ``values[i, j]`` of study ``study_ids[i]``, concept ``concepts[j]``."""

    path: Path
    study_ids: np.ndarray  # int64 [S]
    concepts: tuple[str, ...]
    values: np.ndarray  # float64 [S, C]: 1 / 0 / -1 / NaN


class UserLabelError(ValueError):
    """The labels file cannot be used as it is (the message says where and how often)."""


def _rows(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            return header, list(enumerate(reader, start=2))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserLabelError(f"{path}: cannot read labels: {exc}") from None


def read_user_labels(path: Path) -> UserLabels:
    """Parse and check the file (see the module docstring); :class:`UserLabelError` if bad."""
    path = Path(path)
    header, rows = _rows(path)
    if "study_id" not in header:
        raise UserLabelError(f"{path}: no study_id column (columns: {header})")
    concepts = tuple(h for h in header if h not in ("study_id", "subject_id") and h)
    if not concepts:
        raise UserLabelError(f"{path}: no concept columns besides study_id")
    ids, values = [], np.full((len(rows), len(concepts)), np.nan)
    bad: dict[str, list[str]] = {}
    bad_ids: list[str] = []
    for i, (line, rec) in enumerate(rows):
        raw = (rec.get("study_id") or "").strip()
        try:
            ids.append(int(raw.lstrip("s")))
        except ValueError:
            bad_ids.append(f"line {line}: {raw!r}")
            ids.append(-1)
        for j, c in enumerate(concepts):
            cell = (rec.get(c) or "").strip()
            if cell not in _CODES:
                bad.setdefault(c, []).append(f"line {line}: {cell!r}")
            else:
                values[i, j] = _CODES[cell]
    problems = []
    if bad_ids:
        problems.append(f"{len(bad_ids)} study ids are not integers ({', '.join(bad_ids[:3])})")
    problems += [
        f"column {c!r}: {len(v)} values are not 1 / 0 / -1 / blank ({', '.join(v[:3])})"
        for c, v in bad.items()
    ]
    study_ids = np.asarray(ids, np.int64)
    uniq, counts = np.unique(study_ids[study_ids >= 0], return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        problems.append(f"{len(dup)} study ids appear more than once (e.g. {dup[:3].tolist()})")
    if problems:
        raise UserLabelError(f"{path}: " + "; ".join(problems))
    return UserLabels(path, study_ids, concepts, values)


def check_known(labels: UserLabels, stored: np.ndarray, notes: list[str]) -> None:
    """Refuse a file that names none of the stored studies; note the ones it names in vain."""
    known = np.isin(labels.study_ids, stored)
    if not known.any():
        raise UserLabelError(
            f"{labels.path}: none of its {len(known)} study ids is in the activation store "
            f"(e.g. {labels.study_ids[:3].tolist()}; the store holds e.g. {stored[:3].tolist()})"
        )
    if not known.all():
        unknown = labels.study_ids[~known]
        notes.append(
            f"{labels.path.name}: {len(unknown)} of {len(known)} study ids are not in the store "
            f"and are ignored (e.g. {unknown[:3].tolist()})"
        )
    for j, c in enumerate(labels.concepts):
        col = labels.values[known, j]
        if not ((col == 1).any() and (col == 0).any()):
            notes.append(f"{labels.path.name}: column {c!r} lacks positives or negatives: no AUROC")


def merge(matrix: LabelMatrix, user: UserLabels | None) -> LabelMatrix:
    """``matrix`` with the user's concepts appended as ``source = 'user'`` columns."""
    if user is None:
        return matrix
    where = {int(s): i for i, s in enumerate(user.study_ids)}
    rows = np.array([where.get(int(s), -1) for s in matrix.study_ids], np.int64)
    cols = np.full((len(rows), len(user.concepts)), np.nan)
    cols[rows >= 0] = user.values[rows[rows >= 0]]
    return LabelMatrix(
        matrix.study_ids,
        matrix.concepts + user.concepts,
        matrix.sources + ("user",) * len(user.concepts),
        np.concatenate([matrix.values, cols], axis=1),
    )
