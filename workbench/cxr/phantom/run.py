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
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.config import ConfigError, parse_config, save_config, to_dict
from workbench.cxr import layout
from workbench.cxr.layout import summarize
from workbench.cxr.phantom.cohort import dicom_id, plan_subjects, rng_for, subject_studies
from workbench.cxr.phantom.render import render_study
from workbench.cxr.phantom.reports import write_report
from workbench.io import write_json

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
        """Refuse values that cannot give a valid dataset, naming the field."""
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
    if cfg.all_lateral and not study["acquisition"]["lateral"]:
        study = {**study, "acquisition": {**study["acquisition"], "lateral": True}}
    rendered = render_study(study, cfg.size, rng_for(cfg.seed, RENDER_STREAM, study["study_index"]))
    report = write_report(study, rng_for(cfg.seed, REPORT_STREAM, study["study_index"]))
    views = [(study["acquisition"]["view"], rendered.frontal)]
    if rendered.lateral is not None:
        views.append(("LATERAL", rendered.lateral))
    images = [{"dicom_id": dicom_id(cfg.seed, study["study_id"], v), "view": v} for v, _ in views]
    layout.write_study(
        Path(cfg.out),
        study,
        [(im["dicom_id"], px) for im, (_, px) in zip(images, views)],
        rendered.masks if cfg.masks else {},
        report.text,
        cfg.jpeg_quality,
    )
    record = {k: v for k, v in study.items() if k not in ("study_index", "order")}
    record.update(
        images=images,
        frontal_dicom_id=images[0]["dicom_id"],
        measured=rendered.measured,
        masks=sorted(rendered.masks),
        chexpert=report.labels,
        hedged=report.hedged,
        report_sections=report.sections,
        mask_area={k: int(m.sum()) for k, m in sorted(rendered.masks.items())},
    )
    return layout.study_rows(study, images, cfg.size, report.labels, record)


def _build_subject(task: tuple[PhantomConfig, dict, int, int]) -> list[dict[str, Any]]:
    """Worker task: all studies of one subject, in order."""
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
    tally = layout.Tally()
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
    summary = tally.summary(content_config(cfg))
    write_json(out / layout.SUMMARY, summary)
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


def _drain(results, sink: layout.TableSink, tally: layout.Tally) -> None:
    """Write every result's rows in order and count them."""
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


def main(argv: list[str] | None = None) -> int:
    """CLI entry: parse flags (and ``--preset``), generate, print the summary."""
    cfg = parse_config(PhantomConfig, argv, prog="python -m workbench.cxr.phantom")
    generate(cfg)
    print(summarize(cfg.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
