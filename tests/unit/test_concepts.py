"""Labels load with gaps counted; concepts fall into their categories."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from workbench.analyse.concepts import concept_category, load_labels
from workbench.cxr.findings import CHEXPERT_LABELS, concept_names


def _write_phantom(path, rows):
    names = concept_names()
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["subject_id", "study_id", *names])
        for sid, present in rows:
            w.writerow([1, sid, *[int(n in present) for n in names]])


def test_load_labels_marks_absent_studies_missing(tmp_path):
    _write_phantom(tmp_path / "p.csv", [(10, {"pacemaker"}), (11, set())])
    chexpert = {10: {"Edema": 1.0, "Pleural Effusion": -1.0}, 12: {"Edema": 0.0}}
    lab = load_labels(np.array([10, 11, 12]), chexpert, tmp_path / "p.csv")
    assert lab.concepts[: len(CHEXPERT_LABELS)] == CHEXPERT_LABELS
    assert lab.sources.count("phantom") == len(concept_names())
    col = {c: lab.values[:, j] for j, c in enumerate(lab.concepts)}
    np.testing.assert_array_equal(col["Edema"], [1.0, np.nan, 0.0])
    np.testing.assert_array_equal(col["Pleural Effusion"][:1], [-1.0])
    np.testing.assert_array_equal(col["pacemaker"], [1.0, 0.0, np.nan])
    counts = lab.counts()
    j = lab.concepts.index("Pleural Effusion")
    assert (counts["n_uncertain"][j], counts["n_missing"][j]) == (1, 2)


def test_load_labels_without_any_table_has_no_concepts():
    lab = load_labels(np.array([1, 2]), None, None)
    assert lab.concepts == () and lab.values.shape == (2, 0)


def test_bad_phantom_csv_names_file_and_line(tmp_path):
    path = tmp_path / "p.csv"
    _write_phantom(path, [(10, set())])
    text = path.read_text().replace("\n1,10,0", "\n1,10,x", 1)
    path.write_text(text)
    with pytest.raises(ValueError, match=r"p\.csv:2: bad label value"):
        load_labels(np.array([10]), None, path)
    path.write_text("subject_id,study_id,nothing\n1,10,1\n")
    with pytest.raises(ValueError, match="none of the label columns"):
        load_labels(np.array([10]), None, path)


def test_phantom_csv_lacking_some_concepts_scores_the_others(tmp_path):
    path = tmp_path / "phantom-labels.csv"
    path.write_text("subject_id,study_id,pacemaker,nodule\n1,10,1,0\n1,11,0,1\n")
    notes: list[str] = []
    lab = load_labels(np.array([10, 11]), None, path, notes)
    assert lab.concepts == ("nodule", "pacemaker")  # in vocabulary order
    np.testing.assert_array_equal(lab.values, [[0.0, 1.0], [1.0, 0.0]])
    assert len(notes) == 1 and "lacks" in notes[0] and "'cardiomegaly'" in notes[0]


def test_concept_category():
    assert concept_category("nodule") == "finding"
    assert concept_category("pacemaker") == "device"
    assert concept_category("change_new") == "change"


def test_feature_blocks_bound_rows_and_features():
    import duckdb

    from workbench.analyse.concepts import feature_blocks

    con = duckdb.connect()
    con.execute("CREATE TABLE study_features (study_id BIGINT, feature INTEGER)")
    # feature 1 fires in 5 studies, feature 3 in 2, the others nowhere
    con.execute("INSERT INTO study_features VALUES (1,1),(2,1),(3,1),(4,1),(5,1),(1,3),(2,3)")
    assert feature_blocks(con, 6, block=4, max_entries=100) == [(0, 4), (4, 2)]
    assert feature_blocks(con, 6, block=4, max_entries=5) == [(0, 3), (3, 3)]
    assert feature_blocks(con, 6, block=4, max_entries=1) == [
        (0, 1),
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 2),
    ]
