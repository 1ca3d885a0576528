"""The phantom dataset on disk: MIMIC-CXR layout, ids, linkage, splits, masks, determinism."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.config import ConfigError, load_config
from workbench.cxr import layout
from workbench.cxr.findings import CHEXPERT_LABELS, DEVICES, FINDINGS, concept_names
from workbench.cxr.phantom.run import PhantomConfig, generate, main, summarize

DICOM_RE = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
SECTION_RE = re.compile(r"\n ([A-Z ()/,-]+):\s")  # MIT-LCP section_parser.py


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_studies(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / layout.STUDIES).read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom") / "ds"
    generate(PhantomConfig(out=root, studies=36, size=128, seed=3))
    return root


def test_tables_have_mimic_columns(dataset):
    with open(dataset / layout.METADATA) as f:
        assert next(csv.reader(f)) == list(layout.METADATA_COLUMNS)
    with open(dataset / layout.SPLIT) as f:
        assert next(csv.reader(f)) == ["dicom_id", "study_id", "subject_id", "split"]
    with open(dataset / layout.CHEXPERT) as f:
        assert next(csv.reader(f)) == ["subject_id", "study_id", *CHEXPERT_LABELS]
    with open(dataset / layout.LABELS) as f:
        assert next(csv.reader(f)) == ["subject_id", "study_id", *concept_names()]
    for row in read_csv(dataset / layout.CHEXPERT):
        assert {row[k] for k in CHEXPERT_LABELS} <= {"", "1.0", "0.0", "-1.0"}


def test_ids_and_paths_follow_mimic(dataset):
    meta = read_csv(dataset / layout.METADATA)
    assert len(meta) == json.loads((dataset / layout.SUMMARY).read_text())["images"]
    for row in meta:
        sid, stid, did = row["subject_id"], row["study_id"], row["dicom_id"]
        assert re.fullmatch(r"1\d{7}", sid) and re.fullmatch(r"5\d{7}", stid)
        assert DICOM_RE.match(did)
        path = dataset / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{stid}" / f"{did}.jpg"
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "L" and im.size == (128, 128)
        assert row["ViewPosition"] in ("PA", "AP", "LATERAL")
        assert re.fullmatch(r"2\d{7}", row["StudyDate"])
        assert re.fullmatch(r"\d{6}\.\d{3}", row["StudyTime"])
        assert (dataset / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{stid}.txt").exists()
    assert len({r["dicom_id"] for r in meta}) == len(meta)


def test_reports_have_mimic_sections(dataset):
    for rec in read_studies(dataset):
        text = layout.report_path(dataset, rec["subject_id"], rec["study_id"]).read_text()
        assert text.lstrip().startswith("FINAL REPORT")
        headers = SECTION_RE.findall(text)
        assert headers == [
            "EXAMINATION",
            "INDICATION",
            "TECHNIQUE",
            "COMPARISON",
            "FINDINGS",
            "IMPRESSION",
        ]
        findings = text.split(" FINDINGS:")[1].split(" IMPRESSION:")[0]
        assert " ".join(findings.split()) == rec["report_sections"]["findings"]
        if rec["prior_study_id"] is None:
            assert rec["report_sections"]["comparison"] == "None."
        else:
            assert rec["prior_date"] in rec["report_sections"]["comparison"]


def test_prior_linkage_by_date_and_random_study_ids(dataset):
    meta = read_csv(dataset / layout.METADATA)
    when = {int(r["study_id"]): (r["StudyDate"], r["StudyTime"]) for r in meta}
    by_subject: dict[int, list[dict]] = {}
    for rec in read_studies(dataset):
        by_subject.setdefault(rec["subject_id"], []).append(rec)
    unsorted_ids = 0
    for recs in by_subject.values():
        chrono = sorted(recs, key=lambda r: when[r["study_id"]])
        assert [r["study_id"] for r in chrono] == [r["study_id"] for r in recs]
        assert chrono[0]["prior_study_id"] is None
        for prev, cur in zip(chrono, chrono[1:]):
            assert cur["prior_study_id"] == prev["study_id"]
            assert when[cur["study_id"]] > when[prev["study_id"]]
        ids = [r["study_id"] for r in chrono]
        unsorted_ids += len(ids) > 1 and ids != sorted(ids)
    assert unsorted_ids > 0, "study ids must not follow chronological order"
    assert len(when) == 36 and sum(len(r) > 1 for r in by_subject.values()) >= 3


def test_split_is_patient_disjoint(dataset):
    split = read_csv(dataset / layout.SPLIT)
    per_subject: dict[str, set] = {}
    for row in split:
        per_subject.setdefault(row["subject_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in per_subject.values())
    assert {r["split"] for r in split} <= {"train", "validate", "test"}


def test_labels_and_masks_match_ground_truth(dataset):
    labels = {int(r["study_id"]): r for r in read_csv(dataset / layout.LABELS)}
    for rec in read_studies(dataset):
        row = labels[rec["study_id"]]
        mdir = layout.mask_dir(dataset, rec["subject_id"], rec["study_id"], rec["frontal_dicom_id"])
        names = {p.stem for p in mdir.glob("*.png")}
        assert {"left_lung", "right_lung", "heart"} <= names
        for concept in FINDINGS + DEVICES:
            present = concept in rec["findings"] or concept in rec["devices"]
            assert int(row[concept]) == int(present)
            assert (concept in names) == present, (concept, rec["study_id"])
        assert ({f"nodule_annotator_{i}" for i in range(4)} <= names) == ("nodule" in names)
        drawn = {"nodule_drawn_u", "nodule_drawn_v", "nodule_free_frac"} & set(rec["measured"])
        assert bool(drawn) == ("nodule" in names) and len(drawn) in (0, 3)
        if drawn:
            assert all(0 < rec["measured"][k] <= 1 for k in drawn)
        for change in ("new", "resolved", "increased", "decreased", "unchanged"):
            assert int(row[f"change_{change}"]) == int(change in rec["changes"].values())


def _mask(mdir: Path, name: str) -> np.ndarray:
    with Image.open(mdir / f"{name}.png") as im:
        return np.asarray(im) > 127


def _width(mask: np.ndarray) -> int:
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1] - cols[0] + 1)


def _thorax_width(lungs: np.ndarray) -> int:
    widths = [np.flatnonzero(r)[-1] - np.flatnonzero(r)[0] + 1 for r in lungs if r.any()]
    return int(max(widths))


def test_cardiothoracic_ratio_on_masks_decides_cardiomegaly(dataset):
    seen = set()
    for rec in read_studies(dataset):
        mdir = layout.mask_dir(dataset, rec["subject_id"], rec["study_id"], rec["frontal_dicom_id"])
        lungs = _mask(mdir, "left_lung") | _mask(mdir, "right_lung")
        ctr = _width(_mask(mdir, "heart")) / _thorax_width(lungs)
        assert (ctr > 0.5) == ("cardiomegaly" in rec["findings"]), (ctr, rec["study_id"])
        seen.add(ctr > 0.5)
    assert seen == {True, False}


@pytest.mark.slow
def test_same_seed_same_bytes_any_worker_count(dataset, tmp_path):
    other = tmp_path / "again"
    generate(PhantomConfig(out=other, studies=36, size=128, seed=3, workers=2))
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    for rel in files:
        if rel.name != "cfg.json":
            assert (dataset / rel).read_bytes() == (other / rel).read_bytes(), rel


def test_other_seed_differs(tmp_path):
    a = generate(PhantomConfig(out=tmp_path / "a", studies=3, size=64, seed=1))
    b = generate(PhantomConfig(out=tmp_path / "b", studies=3, size=64, seed=2))
    ids = lambda p: [r["study_id"] for r in read_studies(p)]  # noqa: E731
    assert a["studies"] == b["studies"] == 3
    assert ids(tmp_path / "a") != ids(tmp_path / "b")


def test_rerun_is_idempotent_and_refuses_foreign_dirs(tmp_path):
    cfg = PhantomConfig(out=tmp_path / "ds", studies=2, size=64, seed=0)
    first = generate(cfg)
    stamp = (tmp_path / "ds" / layout.METADATA).stat().st_mtime_ns
    assert generate(cfg) == first
    assert (tmp_path / "ds" / layout.METADATA).stat().st_mtime_ns == stamp
    (tmp_path / "ds" / layout.SUMMARY).write_text("{broken")  # stale -> regenerated
    assert generate(cfg) == first
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a phantom dataset"):
        generate(PhantomConfig(out=foreign, studies=2, size=64))
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_config_validation_and_cli(tmp_path, capsys):
    with pytest.raises(ConfigError, match="size"):
        PhantomConfig(size=8).validate()
    with pytest.raises(ConfigError, match="studies"):
        PhantomConfig(studies=0).validate()
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--studies", "3", "--size", "64", "--seed", "5"]) == 0
    assert "3 studies" in capsys.readouterr().out
    assert "3 studies" in summarize(out)
    with pytest.raises(FileNotFoundError, match="phantom summary"):
        summarize(tmp_path / "nothing")


def test_demo_preset_and_all_lateral(tmp_path):
    cfg = load_config(PhantomConfig, Path(__file__).parents[2] / "configs" / "phantom-demo.toml")
    assert cfg.size == 256 and cfg.studies >= 100
    cfg = PhantomConfig(
        out=tmp_path / "lat", studies=12, size=64, seed=4, all_lateral=True, masks=False
    )
    summary = generate(cfg)
    assert summary["lateral_images"] == summary["studies"] == 12
    assert not (tmp_path / "lat" / "masks").exists()
    views = Counter(r["ViewPosition"] for r in read_csv(tmp_path / "lat" / layout.METADATA))
    assert views["LATERAL"] == 12 and views["PA"] + views["AP"] == 12


def test_summary_counts_match_tables(dataset):
    summary = json.loads((dataset / layout.SUMMARY).read_text())
    labels = read_csv(dataset / layout.LABELS)
    assert set(summary["present"]) == set(FINDINGS + DEVICES)
    for name, count in summary["present"].items():
        assert count == sum(int(r[name]) for r in labels)
    assert summary["studies"] == len(labels) == sum(summary["studies_per_split"].values())
    chexpert = read_csv(dataset / layout.CHEXPERT)
    for label, values in summary["chexpert"].items():
        assert values["1.0"] == sum(r[label] == "1.0" for r in chexpert)
        assert values["blank"] == sum(r[label] == "" for r in chexpert)
