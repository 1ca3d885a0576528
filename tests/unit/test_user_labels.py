"""analyse inputs: a researcher's own labels (`--labels FILE.csv`) and the manifest's model."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.analyse.concepts import LabelMatrix
from workbench.analyse.user_labels import UserLabelError, check_known, merge, read_user_labels


def _write(tmp_path, text: str):
    path = tmp_path / "mine.csv"
    path.write_text(text)
    return path


def test_codes_blank_and_subject_column(tmp_path):
    text = "subject_id,study_id,effusion,device\n1,10,1,\n1,11,0.0,-1\n2,12,,1.0\n"
    path = _write(tmp_path, text)
    got = read_user_labels(path)
    assert got.concepts == ("effusion", "device")
    assert got.study_ids.tolist() == [10, 11, 12]
    np.testing.assert_array_equal(got.values, [[1, np.nan], [0, -1], [np.nan, 1]])


def test_bad_values_are_counted_per_column(tmp_path):
    path = _write(tmp_path, "study_id,a,b\n1,yes,1\n2,2,0\n3,1,0.5\n")
    with pytest.raises(UserLabelError) as err:
        read_user_labels(path)
    msg = str(err.value)
    assert "mine.csv" in msg
    assert "column 'a': 2 values are not 1 / 0 / -1 / blank (line 2: 'yes', line 3: '2')" in msg
    assert "column 'b': 1 values" in msg and "line 4: '0.5'" in msg


def test_missing_columns_ids_and_duplicates(tmp_path):
    with pytest.raises(UserLabelError, match="no study_id column"):
        read_user_labels(_write(tmp_path, "id,a\n1,1\n"))
    with pytest.raises(UserLabelError, match="no concept columns"):
        read_user_labels(_write(tmp_path, "study_id\n1\n"))
    with pytest.raises(UserLabelError, match="1 study ids are not integers"):
        read_user_labels(_write(tmp_path, "study_id,a\nx1,1\n2,0\n"))
    with pytest.raises(UserLabelError, match=r"1 study ids appear more than once \(e.g. \[5\]\)"):
        read_user_labels(_write(tmp_path, "study_id,a\n5,1\n5,0\n6,1\n"))
    with pytest.raises(UserLabelError, match="cannot read"):
        read_user_labels(tmp_path / "absent.csv")


def test_unknown_study_ids_are_noted_or_refused(tmp_path):
    labels = read_user_labels(_write(tmp_path, "study_id,a\n1,1\n2,0\n99,1\n"))
    notes: list[str] = []
    check_known(labels, np.array([1, 2, 3]), notes)
    assert notes == ["mine.csv: 1 of 3 study ids are not in the store and are ignored (e.g. [99])"]
    with pytest.raises(UserLabelError, match="none of its 3 study ids is in the activation store"):
        check_known(labels, np.array([7, 8]), [])
    notes = []
    one_class = read_user_labels(_write(tmp_path, "study_id,a\n1,1\n2,1\n"))
    check_known(one_class, np.array([1, 2]), notes)
    assert notes == ["mine.csv: column 'a' lacks positives or negatives: no AUROC"]


def test_merge_appends_user_columns(tmp_path):
    labels = read_user_labels(_write(tmp_path, "study_id,mine\n2,1\n3,0\n"))
    base = LabelMatrix(np.array([1, 2, 3]), ("pacemaker",), ("phantom",), np.ones((3, 1)))
    got = merge(base, labels)
    assert got.concepts == ("pacemaker", "mine") and got.sources == ("phantom", "user")
    np.testing.assert_array_equal(got.values[:, 1], [np.nan, 1, 0])
    assert merge(base, None) is base


def test_analyse_falls_back_to_the_model_in_the_store_manifest(tmp_path):
    from types import SimpleNamespace

    from workbench.analyse.inputs import _manifest_model

    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    notes: list[str] = []
    store = SimpleNamespace(manifest={"model": str(model)})
    assert _manifest_model(store, notes) == model and notes == []
    missing = SimpleNamespace(manifest={"model": str(tmp_path / "gone")})
    assert _manifest_model(missing, notes) is None
    assert notes and "was not found here" in notes[0]
    assert _manifest_model(SimpleNamespace(manifest={}), notes) is None


def test_a_segmentation_store_is_not_looked_up_as_a_language_model(tmp_path):
    from types import SimpleNamespace

    from workbench.analyse.inputs import _manifest_model

    notes: list[str] = []
    store = SimpleNamespace(manifest={"model": f"segmentation:{tmp_path / 'nodules-ssn'}"})
    assert _manifest_model(store, notes) is None
    assert notes == [
        f"the store's model 'segmentation:{tmp_path / 'nodules-ssn'}' is a "
        "segmentation model: no logit effects"
    ]
