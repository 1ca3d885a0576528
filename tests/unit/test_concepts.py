"""Sparse AUROC equals the brute-force Mann-Whitney statistic; labels load with gaps counted."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from workbench.analyse.concepts import auroc_sparse, concept_category, load_labels
from workbench.cxr.findings import CHEXPERT_LABELS, concept_names


def _brute(x: np.ndarray, y: np.ndarray) -> float:
    keep = (y == 0) | (y == 1)
    x, y = x[keep], y[keep]
    pos, neg = x[y == 1], x[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return np.nan
    gt = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    return gt / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [True, False])
def test_sparse_auroc_matches_brute_force_with_ties_and_gaps(seed, ties):
    rng = np.random.default_rng(seed)
    S, C, F = 80, 4, 7
    labels = rng.choice([0.0, 1.0, -1.0, np.nan], size=(S, C), p=[0.5, 0.3, 0.1, 0.1])
    values = rng.integers(1, 4, (S, F)).astype(float) if ties else rng.random((S, F)) + 0.1
    dense = np.where(rng.random((S, F)) < 0.35, values, 0.0)
    dense[:, 2] = 0.0  # a feature that never fires: AUROC 0.5 exactly
    s, f = np.nonzero(dense)
    perm = rng.permutation(len(s))  # input order must not matter
    got = auroc_sparse(f[perm] + 100, s[perm], dense[s, f][perm], labels, 100, F)
    want = np.array([[_brute(dense[:, i], labels[:, j]) for j in range(C)] for i in range(F)])
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(got[2], 0.5)


def test_perfect_and_inverted_features():
    labels = np.array([[1.0], [1.0], [0.0], [0.0], [0.0]])
    # feature 0 fires exactly on the positives, feature 1 exactly on the negatives
    feats = np.array([0, 0, 1, 1, 1])
    studies = np.array([0, 1, 2, 3, 4])
    vals = np.array([1.0, 2.0, 1.0, 1.0, 3.0])
    got = auroc_sparse(feats, studies, vals, labels, 0, 2)
    assert got[0, 0] == 1.0 and got[1, 0] == 0.0


def test_concept_without_both_classes_is_nan_not_half():
    labels = np.array([[1.0, 0.0], [1.0, np.nan], [np.nan, 0.0]])
    got = auroc_sparse(np.array([0]), np.array([0]), np.array([1.0]), labels, 0, 1)
    assert np.isnan(got).all()


def test_feature_outside_block_is_an_error():
    with pytest.raises(ValueError, match="outside the block"):
        auroc_sparse(np.array([5]), np.array([0]), np.array([1.0]), np.ones((1, 1)), 0, 2)


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
