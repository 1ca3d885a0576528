"""Study records from a MIMIC-CXR(-JPG) tree: the inputs MAIRA-2 takes for one report.

A record holds the current frontal image (PA preferred over AP), a lateral (LATERAL, else LL),
the subject's previous study by StudyDate/StudyTime (study ids are random, not chronological;
maira2.md section 5) with its frontal image and FINDINGS, the report sections MAIRA-2 conditions
on, and the CheXpert labels. Records carry paths, never pixels: :meth:`StudyRecord.load_images`
or :func:`image_transform` read them on demand.

Bulk iteration never dies deep inside a long job: a study with a missing report, no FINDINGS,
no frontal image or a missing image file is skipped with a logged reason, collected in
``StudyIterator.skipped`` (and in the caller's ``skipped`` list if one is passed).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from workbench.cxr import mimic
from workbench.cxr.findings import CHEXPERT_LABELS
from workbench.cxr.images import CXRDataError, load_image
from workbench.cxr.sections import read_report

log = logging.getLogger(__name__)

FRONTAL_VIEWS = ("PA", "AP")  # in order of preference
LATERAL_VIEWS = ("LATERAL", "LL")


@dataclass
class StudyRecord:
    """One study: image paths, prior study, report sections and CheXpert labels (contracts.md)."""

    subject_id: int
    study_id: int
    split: str
    study_datetime: datetime
    frontal_path: Path
    frontal_view: str
    lateral_path: Path | None
    prior_study_id: int | None
    prior_frontal_path: Path | None
    prior_report: str | None
    indication: str | None
    technique: str | None
    comparison: str | None
    findings: str | None
    impression: str | None
    report_path: Path
    labels: dict[str, float | None] = field(default_factory=mimic.empty_labels)

    def load_images(self, dropped: list[str] | None = None) -> StudyImages:
        """Read frontal, lateral and prior frontal images ('L').

        The frontal image is required (:class:`CXRDataError`). An unreadable lateral or prior
        frontal image is left out with a warning (and, when ``dropped`` is given, named there
        with the reason): the study is kept without it, as bulk iteration keeps it (module
        docstring).
        """
        dropped = [] if dropped is None else dropped
        return StudyImages(
            frontal=load_image(self.frontal_path),
            lateral=_optional_pixels(self.study_id, self.lateral_path, "lateral", dropped),
            prior_frontal=_optional_pixels(
                self.study_id, self.prior_frontal_path, "prior frontal", dropped
            ),
        )


def _optional_pixels(
    study_id: int, path: Path | None, what: str, dropped: list[str]
) -> Image.Image | None:
    """The image at ``path``, or None (noted in ``dropped``) when it is absent or unreadable."""
    if path is None:
        return None
    try:
        return load_image(path)
    except CXRDataError as exc:
        log.warning("study %s: %s image left out: %s", study_id, what, exc)
        dropped.append(f"{what} image {path}: {exc}")
        return None


class StudyImages(NamedTuple):
    """The pixels of one study, in MAIRA-2's image order (current frontal, lateral, prior)."""

    frontal: Image.Image
    lateral: Image.Image | None
    prior_frontal: Image.Image | None


class Skip(NamedTuple):
    """Why a study was left out of bulk iteration: a short reason and the detail (a path)."""

    study_id: int
    reason: str
    detail: str


@dataclass
class StudyIndex:
    """The metadata tables joined per study: images, time, subject, prior, split, labels."""

    images: dict[int, list[mimic.ImageMeta]]
    when: dict[int, datetime]
    subject: dict[int, int]
    prior: dict[int, int | None]
    split: dict[int, str]
    labels: dict[int, dict[str, float | None]]


def build_index(root: str | Path, labels: str | None = "chexpert") -> StudyIndex:
    """Read metadata (required), split and label tables (optional) from ``root``."""
    images: dict[int, list[mimic.ImageMeta]] = defaultdict(list)
    for meta in mimic.read_metadata(mimic.require_table(root, "metadata")):
        images[meta.study_id].append(meta)
    when = {s: min(m.acquired for m in ms) for s, ms in images.items()}
    subject = {s: ms[0].subject_id for s, ms in images.items()}
    by_subject: dict[int, list[int]] = defaultdict(list)
    for study, subj in subject.items():
        by_subject[subj].append(study)
    prior: dict[int, int | None] = {}
    for studies in by_subject.values():
        studies.sort(key=lambda s: (when[s], s))  # ties broken by id, deterministically
        for previous, study in zip([None, *studies[:-1]], studies):
            prior[study] = previous
    split_path = mimic.find_table(root, "split")
    split = mimic.read_split(split_path) if split_path else {}
    label_path = mimic.find_table(root, labels) if labels else None
    if labels and label_path is None:
        log.warning("%s: no %s label table; labels will be empty", root, labels)
    label_table = mimic.read_labels(label_path) if label_path else {}
    return StudyIndex(dict(images), when, subject, prior, split, label_table)


def pick_view(metas: list[mimic.ImageMeta], views: tuple[str, ...]) -> mimic.ImageMeta | None:
    """The earliest image of the most preferred view in ``views`` (PA before AP, ...)."""
    for view in views:
        found = sorted((m for m in metas if m.view == view), key=lambda m: (m.acquired, m.dicom_id))
        if found:
            return found[0]
    return None


class StudyIterator:
    """Iterator of :class:`StudyRecord`; ``skipped`` lists the studies left out and why."""

    def __init__(self, produce: Callable[[StudyIterator], Iterator[StudyRecord]], skipped=None):
        self.skipped: list[Skip] = skipped if skipped is not None else []
        self._records = produce(self)

    def __iter__(self) -> StudyIterator:
        return self

    def __next__(self) -> StudyRecord:
        return next(self._records)

    @property
    def counts(self) -> Counter:
        """Number of skipped studies per reason."""
        return Counter(s.reason for s in self.skipped)

    def skip(self, study_id: int, reason: str, detail: str) -> None:
        """Record (and log) one skipped study."""
        self.skipped.append(Skip(study_id, reason, detail))
        log.info("skipping study %s: %s (%s)", study_id, reason, detail)


def iter_studies(
    root: str | Path,
    split: str | None = None,
    require_findings: bool = True,
    *,
    image_root: str | Path | None = None,
    reports_root: str | Path | None = None,
    image_ext: str = ".jpg",
    labels: str | None = "chexpert",
    check_files: bool = True,
    decode_images: bool = False,
    skipped: list | None = None,
    only: Collection[int] | None = None,
) -> StudyIterator:
    """Study records of ``root`` (CSV tables), ordered by subject then date.

    ``decode_images`` reads every image now (slow) so that an unreadable frontal image skips
    its study here rather than failing a long job later. ``image_root`` / ``reports_root``
    default to ``root`` (MIMIC-CXR-JPG images and CSVs, the
    MIMIC-CXR reports can live apart); ``image_ext='.dcm'`` reads the original DICOM tree.
    Tables are read now, so a missing or malformed CSV raises :class:`CXRDataError` at once.
    ``only`` restricts the records to these study ids (ids not in the tables are ignored).
    """
    if split is not None and split not in mimic.SPLITS:
        raise CXRDataError(f"split must be one of {mimic.SPLITS}, got {split!r}")
    index = build_index(root, labels)
    if split is not None and not index.split:
        raise CXRDataError(f"{root}: split {split!r} requested but no split table found")
    roots = _Roots(
        Path(image_root or root), Path(reports_root or root), image_ext, check_files, decode_images
    )
    order = sorted(index.images, key=lambda s: (index.subject[s], index.when[s], s))
    wanted = [s for s in order if split is None or index.split.get(s) == split]
    if only is not None:
        keep = set(only)
        wanted = [s for s in wanted if s in keep]

    def produce(it: StudyIterator) -> Iterator[StudyRecord]:
        for study in wanted:
            try:
                yield _record(index, study, roots, require_findings)
            except _SkipStudyError as exc:
                it.skip(study, exc.reason, exc.detail)
        if it.skipped:
            log.warning("%s: skipped %d studies: %s", root, len(it.skipped), dict(it.counts))

    return StudyIterator(produce, skipped)


class _Roots(NamedTuple):
    images: Path
    reports: Path
    ext: str
    check: bool
    decode: bool


class _SkipStudyError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _image_path(meta: mimic.ImageMeta, roots: _Roots) -> Path:
    return mimic.image_path(roots.images, meta.subject_id, meta.study_id, meta.dicom_id, roots.ext)


def _image(meta: mimic.ImageMeta, roots: _Roots) -> tuple[Path | None, tuple[str, str] | None]:
    """``(path, None)``, or ``(None, (reason, detail))`` for a missing or undecodable image."""
    path = _image_path(meta, roots)
    if roots.check and not path.is_file():
        return None, ("missing image file", str(path))
    if roots.decode:
        try:
            load_image(path)
        except CXRDataError as exc:
            return None, ("unreadable image", str(exc))
    return path, None


def _optional_image(meta: mimic.ImageMeta | None, roots: _Roots, what: str) -> Path | None:
    """A lateral or prior image: a problem drops it (logged) instead of skipping the study."""
    if meta is None:
        return None
    path, problem = _image(meta, roots)
    if problem:
        log.info("study %s: no %s (%s: %s)", meta.study_id, what, *problem)
    return path


def _prior_parts(index: StudyIndex, prior: int | None, roots: _Roots):
    """(prior frontal path, prior FINDINGS); either may be None without skipping the study."""
    if prior is None:
        return None, None
    frontal = pick_view(index.images[prior], FRONTAL_VIEWS)
    path = _optional_image(frontal, roots, "prior frontal image")
    try:
        findings = read_report(
            mimic.report_path(roots.reports, index.subject[prior], prior)
        ).findings
    except CXRDataError as exc:
        log.info("prior study %s has no usable report: %s", prior, exc)
        findings = None
    return path, findings


def _record(index: StudyIndex, study: int, roots: _Roots, require_findings: bool) -> StudyRecord:
    metas, subject = index.images[study], index.subject[study]
    frontal = pick_view(metas, FRONTAL_VIEWS)
    if frontal is None:
        raise _SkipStudyError("no frontal image", ",".join(sorted({m.view or "?" for m in metas})))
    frontal_path, problem = _image(frontal, roots)
    if problem:
        raise _SkipStudyError(*problem)
    report_file = mimic.report_path(roots.reports, subject, study)
    try:
        report = read_report(report_file)
    except CXRDataError as exc:
        raise _SkipStudyError("missing report", str(exc)) from None
    if require_findings and not report.findings:
        raise _SkipStudyError("no findings", str(report_file))
    prior = index.prior.get(study)
    prior_frontal, prior_findings = _prior_parts(index, prior, roots)
    return StudyRecord(
        subject_id=subject,
        study_id=study,
        split=index.split.get(study, ""),
        study_datetime=index.when[study],
        frontal_path=frontal_path,
        frontal_view=frontal.view,
        lateral_path=_optional_image(pick_view(metas, LATERAL_VIEWS), roots, "lateral image"),
        prior_study_id=prior,
        prior_frontal_path=prior_frontal,
        prior_report=prior_findings,
        indication=report.indication,
        technique=report.technique,
        comparison=report.comparison,
        findings=report.findings,
        impression=report.impression,
        report_path=report_file,
        labels=dict(index.labels.get(study) or mimic.empty_labels()),
    )


def record_row(record: StudyRecord) -> dict:
    """A flat, Arrow-friendly row: paths as strings, labels as a struct of 14 floats."""
    row = dict(vars(record))
    for key in ("frontal_path", "lateral_path", "prior_frontal_path", "report_path"):
        row[key] = str(row[key]) if row[key] is not None else None
    row["labels"] = {name: record.labels.get(name) for name in CHEXPERT_LABELS}
    return row


def as_dataset(root: str | Path, split: str | None = None, **kwargs):
    """A ``datasets.Dataset`` of study records: paths and text only, no pixel data.

    Takes the arguments of :func:`iter_studies`. Use ``ds.with_transform(image_transform)``
    to have images read lazily when rows are accessed.
    """
    import datasets

    features = datasets.Features(
        {
            "subject_id": datasets.Value("int64"),
            "study_id": datasets.Value("int64"),
            "split": datasets.Value("string"),
            "study_datetime": datasets.Value("timestamp[us]"),
            "frontal_path": datasets.Value("string"),
            "frontal_view": datasets.Value("string"),
            "lateral_path": datasets.Value("string"),
            "prior_study_id": datasets.Value("int64"),
            "prior_frontal_path": datasets.Value("string"),
            **{k: datasets.Value("string") for k in ("prior_report", "indication", "technique")},
            **{k: datasets.Value("string") for k in ("comparison", "findings", "impression")},
            "report_path": datasets.Value("string"),
            "labels": {name: datasets.Value("float64") for name in CHEXPERT_LABELS},
        }
    )
    rows = [record_row(r) for r in iter_studies(root, split, **kwargs)]
    return datasets.Dataset.from_list(rows, features=features)


def image_transform(batch: dict) -> dict:
    """``Dataset.with_transform`` hook: add PIL images read from the path columns on access."""
    out = dict(batch)
    for key in ("frontal", "lateral", "prior_frontal"):
        paths = batch.get(f"{key}_path", [])
        out[f"{key}_image"] = [load_image(p) if p else None for p in paths]
    return out
