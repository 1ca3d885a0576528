"""Study records over a tiny tree laid out exactly like MIMIC-CXR-JPG + MIMIC-CXR reports."""

from __future__ import annotations

import csv
import gzip
import logging
from datetime import datetime

import numpy as np
import pytest
from PIL import Image

from workbench.cxr import mimic
from workbench.cxr.findings import CHEXPERT_LABELS
from workbench.cxr.images import CXRDataError
from workbench.cxr.studies import StudyRecord, as_dataset, image_transform, iter_studies

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough {tag}

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 Findings of study {tag}.  No pleural effusion.

 IMPRESSION:

 Nothing acute.
"""

# (dicom_id, subject, study, view, date, time). Study ids are deliberately not chronological:
# for subject 10000032, s50000003 (2180) < s50000001 (2181) < s50000002 (2182).
IMAGES = [
    ("d1-ap", 10000032, 50000001, "AP", "21810101", "101010.5"),
    ("d1-pa", 10000032, 50000001, "PA", "21810101", "101500"),
    ("d1-lat", 10000032, 50000001, "LATERAL", "21810101", "101600"),
    ("d2-ap", 10000032, 50000002, "AP", "21820505", "90000"),
    ("d2-ll", 10000032, 50000002, "LL", "21820505", "90100"),
    ("d3-pa", 10000032, 50000003, "PA", "21800303", "235959"),
    ("d4-pa", 11000011, 50000004, "PA", "21800303", "120000"),  # missing report
    ("d5-lat", 11000011, 50000005, "LATERAL", "21810303", "120000"),  # no frontal
    ("d6-pa", 11000011, 50000006, "PA", "21820303", "120000"),  # report without FINDINGS
    ("d7-pa", 11000011, 50000007, "PA", "21820303", "130000"),  # image file missing
]
SPLIT = {50000001: "train", 50000002: "train", 50000003: "train", 50000004: "test"}
SPLIT |= {50000005: "test", 50000006: "test", 50000007: "test"}


def write_csv(path, header, rows):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def make_tree(root, gz=False):
    """Write images, reports and the three CSV tables under ``root``."""
    sfx = ".csv.gz" if gz else ".csv"
    meta_header = [*mimic.METADATA_COLUMNS[:3], "PerformedProcedureStepDescription"]
    meta_header += ["ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime"]
    meta_rows = [[d, sub, st, "CHEST", v, 8, 8, date, t] for d, sub, st, v, date, t in IMAGES]
    write_csv(root / f"mimic-cxr-2.0.0-metadata{sfx}", meta_header, meta_rows)
    split_rows = [[d, st, sub, SPLIT[st]] for d, sub, st, *_ in IMAGES]
    write_csv(root / f"mimic-cxr-2.0.0-split{sfx}", mimic.SPLIT_COLUMNS, split_rows)
    label_rows = [[10000032, 50000001, *([""] * 8), "1.0", "0.0", "", "", "-1.0", "1.0"]]
    write_csv(root / f"mimic-cxr-2.0.0-chexpert{sfx}", mimic.LABEL_COLUMNS, label_rows)
    for dicom, subject, study, *_ in IMAGES:
        if dicom == "d7-pa":
            continue
        path = mimic.image_path(root, subject, study, dicom)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), len(dicom) * 9, np.uint8)).save(path)
    for study in {s for _, _, s, *_ in IMAGES} - {50000004}:
        subject = next(sub for _, sub, st, *_ in IMAGES if st == study)
        text = REPORT.format(tag=study)
        if study == 50000006:
            text = text.split(" FINDINGS:")[0]
        mimic.report_path(root, subject, study).write_text(text)
    return root


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path)


def by_id(records):
    return {r.study_id: r for r in records}


def test_records_frontal_lateral_prior(tree):
    recs = by_id(iter_studies(tree))
    assert set(recs) == {50000001, 50000002, 50000003}
    first, second, third = recs[50000003], recs[50000001], recs[50000002]
    assert isinstance(second, StudyRecord)
    # PA preferred over an AP of the same study; LATERAL picked; LL used when only LL exists
    assert second.frontal_view == "PA" and second.frontal_path.name == "d1-pa.jpg"
    assert second.lateral_path.name == "d1-lat.jpg"
    assert third.frontal_view == "AP" and third.lateral_path.name == "d2-ll.jpg"
    assert first.lateral_path is None
    # prior by StudyDate/StudyTime, not by id order
    assert first.prior_study_id is None and first.prior_report is None
    assert second.prior_study_id == 50000003
    assert second.prior_frontal_path.name == "d3-pa.jpg"
    assert second.prior_report == "Findings of study 50000003. No pleural effusion."
    assert third.prior_study_id == 50000001
    assert second.study_datetime == datetime(2181, 1, 1, 10, 10, 10, 500000)
    assert third.study_datetime == datetime(2182, 5, 5, 9, 0, 0)


def test_sections_split_and_labels(tree):
    rec = by_id(iter_studies(tree))[50000001]
    assert rec.indication == "___F with cough 50000001"
    assert rec.technique == "Chest PA and lateral" and rec.comparison == "None."
    assert rec.findings.startswith("Findings of study 50000001")
    assert rec.impression == "Nothing acute." and rec.split == "train"
    assert rec.labels["No Finding"] == 1.0 and rec.labels["Pleural Effusion"] == 0.0
    assert rec.labels["Pneumothorax"] == -1.0 and rec.labels["Atelectasis"] is None
    assert set(rec.labels) == set(CHEXPERT_LABELS)
    assert by_id(iter_studies(tree))[50000002].labels == dict.fromkeys(CHEXPERT_LABELS)


def test_bad_studies_are_skipped_with_reasons(tree, caplog):
    caller_list = []
    with caplog.at_level(logging.INFO, logger="workbench.cxr.studies"):
        it = iter_studies(tree, split="test", skipped=caller_list)
        assert list(it) == []
    reasons = {s.study_id: s.reason for s in it.skipped}
    assert reasons == {
        50000004: "missing report",
        50000005: "no frontal image",
        50000006: "no findings",
        50000007: "missing image file",
    }
    assert caller_list == it.skipped and it.counts["missing report"] == 1
    assert "s50000004.txt" in next(s.detail for s in it.skipped if s.study_id == 50000004)
    assert "skipped 4 studies" in caplog.text


def test_require_findings_false_keeps_report_without_findings(tree):
    recs = by_id(iter_studies(tree, split="test", require_findings=False))
    assert set(recs) == {50000006}
    assert recs[50000006].findings is None and recs[50000006].indication is not None


def test_gz_tables_and_missing_table(tmp_path):
    make_tree(tmp_path, gz=True)
    assert len(list(iter_studies(tmp_path, split="train"))) == 3
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    with pytest.raises(CXRDataError, match="metadata"):
        iter_studies(tmp_path)


def test_missing_column_fails_before_iteration(tree):
    path = tree / "mimic-cxr-2.0.0-metadata.csv"
    write_csv(path, ["dicom_id", "subject_id", "study_id", "ViewPosition"], [])
    with pytest.raises(CXRDataError, match=r"metadata\.csv.*StudyDate"):
        iter_studies(tree)


def test_separate_report_root_and_dicom_ext(tree, tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    for path in (tree / "files").rglob("*.txt"):
        target = reports / path.relative_to(tree)
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    assert len(list(iter_studies(tree, reports_root=reports))) == 3
    it = iter_studies(tree, reports_root=reports, image_ext=".dcm")
    assert list(it) == [] and set(it.counts) == {"missing image file", "no frontal image"}


@pytest.mark.slow  # importing `datasets` takes seconds
def test_dataset_has_paths_not_pixels(tree):
    ds = as_dataset(tree, split="train")
    assert ds.num_rows == 3
    assert all(f.__class__.__name__ in ("Value", "dict") for f in ds.features.values())
    assert {type(v) for v in ds.features["labels"].values()} == {type(ds.features["split"])}
    row = ds[0]
    assert row["study_id"] == 50000003 and row["frontal_path"].endswith("d3-pa.jpg")
    assert row["lateral_path"] is None and row["labels"]["No Finding"] is None
    assert ds[1]["labels"]["No Finding"] == 1.0 and ds[1]["prior_study_id"] == 50000003
    lazy = ds.with_transform(image_transform)
    img = lazy[1]["frontal_image"]
    assert img.mode == "L" and img.size == (8, 8)
    assert lazy[0]["prior_frontal_image"] is None


def test_load_images_in_maira_order(tree):
    rec = by_id(iter_studies(tree))[50000001]
    imgs = rec.load_images()
    assert np.asarray(imgs.frontal)[0, 0] == len("d1-pa") * 9
    assert np.asarray(imgs.lateral)[0, 0] == len("d1-lat") * 9
    assert np.asarray(imgs.prior_frontal)[0, 0] == len("d3-pa") * 9


def test_unknown_split_rejected(tree):
    with pytest.raises(CXRDataError, match="split"):
        iter_studies(tree, split="val")


@pytest.mark.slow
def test_phantom_tree_matches_generator_ground_truth(tmp_path):
    """Priors, frontal images and splits agree with what the phantom generator says it made."""
    import json

    from workbench.cxr.phantom.run import PhantomConfig, generate

    generate(PhantomConfig(out=tmp_path, studies=30, size=64, masks=False, seed=5))
    with (tmp_path / "phantom-studies.jsonl").open() as fh:
        truth = {s["study_id"]: s for s in map(json.loads, fh)}
    it = iter_studies(tmp_path)
    records = list(it)
    assert len(records) + len(it.skipped) == len(truth) and len(records) >= 25
    assert any(r.prior_study_id for r in records)
    for rec in records:
        gt = truth[rec.study_id]
        assert rec.prior_study_id == gt["prior_study_id"]
        assert rec.frontal_path.stem == gt["frontal_dicom_id"]
        assert rec.frontal_view == gt["acquisition"]["view"] and rec.split == gt["split"]
        assert (rec.lateral_path is not None) == gt["acquisition"]["lateral"]
        assert (rec.prior_report is not None) == (rec.prior_study_id is not None)
        assert rec.findings and rec.labels == gt["chexpert"]


def test_decode_images_skips_unreadable_frontal_and_drops_bad_lateral(tree, caplog):
    frontal = mimic.image_path(tree, 10000032, 50000003, "d3-pa")
    frontal.write_bytes(frontal.read_bytes()[:40])  # truncated JPEG
    lateral = mimic.image_path(tree, 10000032, 50000001, "d1-lat")
    lateral.write_bytes(b"garbage")
    assert len(list(iter_studies(tree, split="train"))) == 3  # not decoded: not noticed
    with caplog.at_level(logging.INFO, logger="workbench.cxr.studies"):
        it = iter_studies(tree, split="train", decode_images=True)
        recs = by_id(it)
    assert [(s.study_id, s.reason) for s in it.skipped] == [(50000003, "unreadable image")]
    assert "d3-pa.jpg" in it.skipped[0].detail
    assert recs[50000001].lateral_path is None and recs[50000001].prior_frontal_path is None
    assert recs[50000001].prior_study_id == 50000003  # the prior is still linked
    assert "no lateral image" in caplog.text
