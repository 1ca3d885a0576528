"""``python -m workbench.cxr.phantom``: the phantom chest X-ray benchmark in MIMIC-CXR layout.

Synthetic radiographs whose ground truth is known, written exactly as MIMIC-CXR-JPG and the
MIMIC-CXR reports lay them out, plus what the real data lacks (every parameter, masks,
simulated nodule graders). Work is split by subject; each study draws from generators seeded
by ``(seed, study index)``, so output bytes do not depend on the number of workers.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.config import ConfigError, parse_config, save_config, to_dict
from workbench.cxr import layout
from workbench.cxr.cohort import dicom_id, plan_subjects, rng_for, subject_studies
from workbench.cxr.findings import CHEXPERT_LABELS
from workbench.cxr.render import render_study
from workbench.cxr.reports import write_report

RENDER_STREAM, REPORT_STREAM = 3, 4  # rng_for stream ids (cohort uses 1 and 2)


@dataclass
class PhantomConfig:
    """Generate the phantom chest X-ray benchmark (MIMIC-CXR layout + ground truth)."""

    out: Path = Path("runs/demo/phantom")
    """Output directory (the dataset root, like a MIMIC-CXR-JPG download)."""
    studies: int = 200
    """Number of studies to generate (subjects have 1-4 studies each)."""
    size: int = 256
    """Image side in pixels (square images)."""
    seed: int = 0
    """Random seed; the same seed gives identical bytes."""
    workers: int = 1
    """Worker processes; output does not depend on it."""
    jpeg_quality: int = 95
    """JPEG quality of the images (fixed for determinism)."""
    train_frac: float = 0.8
    """Share of subjects in the train split (splits are patient-disjoint)."""
    validate_frac: float = 0.1
    """Share of subjects in the validate split; the rest is test."""
    masks: bool = True
    """Write masks/ (lungs, heart, findings, devices, nodule annotators) for frontal images."""
    all_lateral: bool = False
    """Give every study a lateral view (by default portable AP studies have none, as in MIMIC)."""

    def validate(self) -> None:
        if not 1 <= self.studies < 10**7:
            raise ConfigError(f"studies must be in [1, 1e7), got {self.studies}")
        if not 64 <= self.size <= 2048:
            raise ConfigError(f"size must be in [64, 2048] pixels, got {self.size}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if not (
            self.train_frac > 0
            and self.validate_frac >= 0
            and self.train_frac + self.validate_frac <= 1
        ):
            raise ConfigError("train_frac and validate_frac must be >= 0 and sum to <= 1")


def content_config(cfg: PhantomConfig) -> dict[str, Any]:
    """The fields that decide the dataset's content (not where or how fast it was written)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in ("out", "workers")}


def build_study(cfg: PhantomConfig, study: dict) -> dict[str, Any]:
    """Render, report and write one study's files; return its table rows and record."""
    root = Path(cfg.out)
    if cfg.all_lateral and not study["acquisition"]["lateral"]:
        study = {**study, "acquisition": {**study["acquisition"], "lateral": True}}
    sid, stid = study["subject_id"], study["study_id"]
    rendered = render_study(study, cfg.size, rng_for(cfg.seed, RENDER_STREAM, study["study_index"]))
    report = write_report(study, rng_for(cfg.seed, REPORT_STREAM, study["study_index"]))
    views = [(study["acquisition"]["view"], rendered.frontal)]
    if rendered.lateral is not None:
        views.append(("LATERAL", rendered.lateral))
    images = []
    for view, pixels in views:
        did = dicom_id(cfg.seed, stid, view)
        layout.write_bytes(
            layout.image_path(root, sid, stid, did), layout.jpeg_bytes(pixels, cfg.jpeg_quality)
        )
        images.append({"dicom_id": did, "view": view})
    frontal_id = images[0]["dicom_id"]
    if cfg.masks:
        mdir = layout.mask_dir(root, sid, stid, frontal_id)
        mdir.mkdir(parents=True, exist_ok=True)
        for name, mask in sorted(rendered.masks.items()):
            layout.write_bytes(mdir / f"{name}.png", layout.png_bytes(mask), mkdir=False)
    layout.write_bytes(layout.report_path(root, sid, stid), report.text.encode())
    record = {k: v for k, v in study.items() if k not in ("study_index", "order")}
    record.update(
        images=images,
        frontal_dicom_id=frontal_id,
        measured=rendered.measured,
        masks=sorted(rendered.masks),
        chexpert=report.labels,
        hedged=report.hedged,
        report_sections=report.sections,
        mask_area={k: int(m.sum()) for k, m in sorted(rendered.masks.items())},
    )
    return {
        "metadata": [
            layout.metadata_row(study, im["dicom_id"], im["view"], cfg.size) for im in images
        ],
        "split": [
            {
                "dicom_id": im["dicom_id"],
                "study_id": stid,
                "subject_id": sid,
                "split": study["split"],
            }
            for im in images
        ],
        "chexpert": layout.chexpert_row(study, report.labels),
        "labels": layout.labels_row(study),
        "record": record,
    }


def _build_subject(task: tuple[PhantomConfig, dict, int, int]) -> list[dict[str, Any]]:
    cfg, subject, first, n = task
    return [build_study(cfg, s) for s in subject_studies(cfg.seed, subject, first, n)]


def _prepare(out: Path, cfg: PhantomConfig) -> dict | None:
    """Return the existing summary if ``out`` already holds this exact dataset, else clean up.

    Only directories this generator wrote (they carry ``cfg.json`` and phantom tables) are
    cleaned; a non-empty foreign directory is refused rather than overwritten.
    """
    summary_path = out / layout.SUMMARY
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError):
            summary = {}  # unreadable: treat the dataset as stale and regenerate it
        if isinstance(summary, dict) and summary.get("config") == content_config(cfg):
            return summary
    if out.exists() and any(out.iterdir()):
        if not (out / "cfg.json").exists():
            raise FileExistsError(f"{out}: not empty and not a phantom dataset; refusing to write")
        for sub in ("files", "masks"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for f in out.glob("*.csv*"):
            f.unlink()
        summary_path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return None


def generate(cfg: PhantomConfig) -> dict[str, Any]:
    """Write the dataset under ``cfg.out`` and return its summary (also phantom-summary.json)."""
    out = Path(cfg.out)
    existing = _prepare(out, cfg)
    if existing is not None:
        return existing
    save_config(cfg, out / "cfg.json")
    tasks = (
        (cfg, subj, first, n)
        for subj, first, n in plan_subjects(
            cfg.seed, cfg.studies, (cfg.train_frac, cfg.validate_frac)
        )
    )
    sink = layout.TableSink(out)
    tally = Tally()
    try:
        if cfg.workers == 1:
            results = map(_build_subject, tasks)
            _drain(results, sink, tally)
        else:
            with mp.get_context("spawn").Pool(cfg.workers) as pool:
                _drain(_in_order(pool, tasks, 4 * cfg.workers), sink, tally)
    except BaseException:
        sink.abort()
        raise
    sink.commit()
    summary = tally.summary(cfg)
    tmp = out / (layout.SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / layout.SUMMARY)
    return summary


def _in_order(pool, tasks: Iterator, window: int) -> Iterator[list[dict[str, Any]]]:
    """Results of ``tasks`` in submission order with at most ``window`` in flight.

    ``Pool.imap`` would queue every task up front (memory growing with N); this keeps the
    number of pending subjects, and so memory, bounded whatever the dataset size.
    """
    pending: deque = deque()
    for task in tasks:
        pending.append(pool.apply_async(_build_subject, (task,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _drain(results, sink: layout.TableSink, tally: Tally) -> None:
    for rows in results:
        for r in rows:
            for row in r["metadata"]:
                sink.write(layout.METADATA, row)
            for row in r["split"]:
                sink.write(layout.SPLIT, row)
            sink.write(layout.CHEXPERT, r["chexpert"])
            sink.write(layout.LABELS, r["labels"])
            sink.write_study(r["record"])
            tally.add(r["record"])


class Tally:
    """Running counts for phantom-summary.json (constant memory in the number of studies)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.subjects: dict[str, set] = {"train": set(), "validate": set(), "test": set()}

    def add(self, rec: dict) -> None:
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

    def summary(self, cfg: PhantomConfig) -> dict[str, Any]:
        c = self.counts
        n = max(c["studies"], 1)
        return {
            "config": content_config(cfg),
            "studies": c["studies"],
            "images": c["images"],
            "lateral_images": c["lateral"],
            "subjects": sum(len(s) for s in self.subjects.values()),
            "subjects_per_split": {k: len(v) for k, v in self.subjects.items()},
            "studies_per_split": {k: c[f"split_studies:{k}"] for k in self.subjects},
            "views": {k[5:]: v for k, v in sorted(c.items()) if k.startswith("view:")},
            "normal_studies": c["normal"],
            "studies_with_prior": c["with_prior"],
            "present": {k[8:]: v for k, v in sorted(c.items()) if k.startswith("present:")},
            "changes": {k[7:]: v for k, v in sorted(c.items()) if k.startswith("change:")},
            "chexpert": {
                lab: {val: c[f"chexpert:{lab}:{val}"] for val in ("1.0", "-1.0", "0.0", "blank")}
                for lab in CHEXPERT_LABELS
            },
            "mean_findings_words": round(c["findings_words"] / n, 1),
        }


def summarize(root: str | Path) -> str:
    """A short text summary of a generated dataset (for the demo command to print)."""
    path = Path(root) / layout.SUMMARY
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


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PhantomConfig, argv, prog="python -m workbench.cxr.phantom")
    generate(cfg)
    print(summarize(cfg.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
