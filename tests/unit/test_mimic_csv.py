"""MIMIC-CXR CSV readers: plain and gzipped tables, column checks, value parsing, paths."""

from __future__ import annotations

import gzip
from datetime import datetime
from pathlib import Path

import pytest

from workbench.cxr import mimic
from workbench.cxr.findings import CHEXPERT_LABELS
from workbench.cxr.images import CXRDataError

META_HEADER = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
    "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
)
META_ROWS = [
    "02aa804e,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,"
    "CHEST (PA AND LAT),postero-anterior,Erect",
    "2a2277a9,10000032,50414267,CHEST (PA AND LAT),,3056,2544,21800506,213014.531,"
    "CHEST (PA AND LAT),lateral,Erect",
    "68b5c4b1,10000032,53189527,CHEST (PORTABLE AP),AP,2544,3056,21800626,84513.0,"
    "CHEST (PORTABLE AP),antero-posterior,",
]


def write(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_metadata_plain_and_gz(tmp_path, gz):
    name = "mimic-cxr-2.0.0-metadata.csv" + (".gz" if gz else "")
    write(tmp_path / name, [META_HEADER, *META_ROWS], gz)
    path = mimic.require_table(tmp_path, "metadata")
    assert path.name == name
    metas = mimic.read_metadata(path)
    assert [m.view for m in metas] == ["PA", "LATERAL", "AP"]  # blank view from view code
    assert metas[0] == mimic.ImageMeta(
        "02aa804e", 10000032, 50414267, "PA", datetime(2180, 5, 6, 21, 30, 14, 531000)
    )
    assert metas[2].acquired == datetime(2180, 6, 26, 8, 45, 13)  # HMMSS, lost leading zero


def test_missing_columns_named(tmp_path):
    path = write(tmp_path / "m.csv.gz", ["dicom_id,subject_id,study_id,ViewPosition"], gz=True)
    with pytest.raises(CXRDataError, match=r"m\.csv\.gz.*\['StudyDate', 'StudyTime'\]"):
        mimic.read_metadata(path)
    path = write(tmp_path / "c.csv", ["subject_id,study_id,Atelectasis"])
    with pytest.raises(CXRDataError, match=r"c\.csv.*Cardiomegaly"):
        mimic.read_labels(path)


def test_bad_values_name_file_and_line(tmp_path):
    bad_time = META_ROWS[0].replace("213014.531", "256014")
    path = write(tmp_path / "m.csv", [META_HEADER, META_ROWS[1], bad_time])
    with pytest.raises(CXRDataError, match=r"m\.csv:3: bad StudyDate/StudyTime"):
        mimic.read_metadata(path)
    path = write(tmp_path / "m2.csv", [META_HEADER, META_ROWS[0].replace("10000032", "p1")])
    with pytest.raises(CXRDataError, match=r"m2\.csv:2: column subject_id"):
        mimic.read_metadata(path)


def test_corrupt_gzip_named(tmp_path):
    path = tmp_path / "mimic-cxr-2.0.0-split.csv.gz"
    path.write_bytes(gzip.compress(b"dicom_id,study_id,subject_id,split\n")[:-6])
    with pytest.raises(CXRDataError, match="split.csv.gz: cannot read CSV"):
        mimic.read_split(path)


def test_split_table(tmp_path):
    lines = ["dicom_id,study_id,subject_id,split", "a,1,10,train", "b,1,10,train", "c,2,11,test"]
    assert mimic.read_split(write(tmp_path / "s.csv", lines)) == {1: "train", 2: "test"}
    with pytest.raises(CXRDataError, match="both train and test"):
        mimic.read_split(write(tmp_path / "s2.csv", [*lines, "d,1,10,test"]))
    with pytest.raises(CXRDataError, match=r"s3\.csv:2: split must be"):
        mimic.read_split(write(tmp_path / "s3.csv", [lines[0], "a,1,10,val"]))


def test_chexpert_and_negbio_coding(tmp_path):
    header = ",".join(mimic.LABEL_COLUMNS)
    values = ["1.0", "0.0", "-1.0", "", "nan", *[""] * 9]
    write(tmp_path / "mimic-cxr-2.0.0-negbio.csv", [header, "10,20," + ",".join(values)])
    labels = mimic.read_labels(mimic.find_table(tmp_path, "negbio"))[20]
    assert list(labels) == list(CHEXPERT_LABELS)
    assert labels["Atelectasis"] == 1.0 and labels["Cardiomegaly"] == 0.0
    assert labels["Consolidation"] == -1.0
    assert labels["Edema"] is None and labels["Enlarged Cardiomediastinum"] is None
    bad = write(tmp_path / "b.csv", [header, "10,20,2.0" + "," * 13])
    with pytest.raises(CXRDataError, match="Atelectasis must be"):
        mimic.read_labels(bad)


def test_paths_follow_mimic_layout(tmp_path):
    assert mimic.image_path(tmp_path, 10000032, 50414267, "02aa") == (
        tmp_path / "files/p10/p10000032/s50414267/02aa.jpg"
    )
    assert mimic.report_path(tmp_path, 19999987, 1) == tmp_path / "files/p19/p19999987/s1.txt"
    assert mimic.find_table(tmp_path, "chexpert") is None
    with pytest.raises(CXRDataError, match="chexpert.csv"):
        mimic.require_table(tmp_path, "chexpert")
