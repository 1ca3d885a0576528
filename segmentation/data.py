"""Segmentation samples, splits and the phantom benchmark's two tasks.

A :class:`~segmentation.io.SegSample` is one image with K annotator masks (K = 1 for lungs, 4
for nodules and LIDC). Everything is held in memory as small numpy arrays: the datasets here
are a few hundred images at 64-256 px. Loaders return ``list[SegSample]`` for one split;
:func:`load_dataset` dispatches on a dataset name so the train/evaluate CLIs need one flag.

Phantom layout (``/work/notes/contracts.md``): the frontal image is
``files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg`` and its masks are
``masks/pXX/pSUBJECT/sSTUDY/<dicom_id>/<name>.png`` (0/255); ``phantom-studies.jsonl`` holds the
split and subject attributes (sex, age, body habitus) used for subgroup results.

- ``phantom-lungs``: whole image resized to ``size``, target = left_lung | right_lung.
- ``phantom-nodules``: a ``crop`` px window centred on the nodule (the LIDC-style task), resized
  to ``size``, four targets ``nodule_annotator_0..3``; the ROI is the lung field in the crop.
  With ``lung_class`` the classes are background / lung field / nodule
  (:data:`LUNG_NODULE_CLASSES`): each annotator's map is 2 on their nodule mask, 1 on the rest
  of the phantom's lung field (the same for every annotator), 0 elsewhere.

Phantom samples name their frame in ``meta``: ``mask_dir`` (every mask of the image, which
``segmentation.latents`` reads for per-position ground truth) and, for crops, ``crop_centre``
(row, col in source px) and ``crop`` (side in source px).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from segmentation import readers
from segmentation.io import (
    TWO_CLASSES,
    DataError,
    SegSample,
    crop_around,
    hash_split,
    read_grey,
    read_mask,
    resize_image,
    resize_labels,
    with_subgroups,
)

log = logging.getLogger(__name__)

LUNG_NODULE_CLASSES = ("background", "lung_field", "nodule")
"""Classes of ``phantom-nodules`` with ``lung_class``: the nodule, the task's class, is last."""


# ----------------------------------------------------------------------------- phantom


def _phantom_records(root: Path) -> dict[int, dict]:
    """study_id -> record from phantom-studies.jsonl (empty if the file is absent)."""
    path = root / "phantom-studies.jsonl"
    if not path.exists():
        return {}
    out = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[int(rec["study_id"])] = rec
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{i}: bad study record: {exc}") from None
    return out


def _subject_attr(rec: dict, key: str):
    """``key`` from a study record, top level or in a nested subject/patient table."""
    if key in rec:
        return rec[key]
    for nest in ("subject", "patient", "attributes", "subject_attributes"):
        if isinstance(rec.get(nest), dict) and key in rec[nest]:
            return rec[nest][key]
    return None


def _phantom_items(root: Path, split: str | None):
    """Yield (mask_dir, image_path, meta) for each frontal image with masks in ``split``."""
    if not (root / "masks").is_dir():
        raise DataError(f"{root}: no masks/ folder; not a phantom dataset root")
    records = _phantom_records(root)
    for mask_dir in sorted((root / "masks").glob("p*/p*/s*/*")):
        if not mask_dir.is_dir():
            continue
        study_dir = mask_dir.parent
        subject, study = int(study_dir.parent.name[1:]), int(study_dir.name[1:])
        rel = mask_dir.relative_to(root / "masks")
        image = root / "files" / rel.parent / f"{mask_dir.name}.jpg"
        rec = records.get(study, {})
        rec_split = rec.get("split") or hash_split(str(subject))
        if split is not None and rec_split != split:
            continue
        meta = {
            "id": f"s{study}/{mask_dir.name}",
            "subject_id": subject,
            "study_id": study,
            "sex": _subject_attr(rec, "sex"),
            "age": _subject_attr(rec, "age"),
            "mask_dir": str(mask_dir),
        }
        meta = with_subgroups(meta)
        habitus = _subject_attr(rec, "habitus")
        meta["habitus"] = habitus.get("build") if isinstance(habitus, dict) else None
        yield mask_dir, image, meta


def load_phantom_lungs(root: Path, split: str | None = None, size: int = 128) -> list[SegSample]:
    """Lung-field segmentation: one annotator, classes background / lung."""
    samples = []
    for mask_dir, image_path, meta in _phantom_items(Path(root), split):
        image = read_grey(image_path)
        lung = read_mask(mask_dir / "left_lung.png") | read_mask(mask_dir / "right_lung.png")
        if lung.shape != image.shape:
            raise DataError(f"{mask_dir}: mask {lung.shape} != image {image.shape}")
        samples.append(
            SegSample(resize_image(image, size), resize_labels(lung, size)[None], None, meta)
        )
    return samples


def lung_nodule_labels(nodule_KHW: np.ndarray, lung_HW: np.ndarray) -> np.ndarray:
    """``[K, H, W]`` uint8 maps of :data:`LUNG_NODULE_CLASSES`: 2 where annotator k marks the
    nodule, else 1 in the lung field, else 0."""
    lung = np.broadcast_to(np.asarray(lung_HW) > 0, nodule_KHW.shape)
    return np.where(np.asarray(nodule_KHW) > 0, 2, np.where(lung, 1, 0)).astype(np.uint8)


def load_phantom_nodules(
    root: Path,
    split: str | None = None,
    size: int = 128,
    crop: int = 128,
    annotators: int = 4,
    lung_class: bool = False,
) -> list[SegSample]:
    """Nodule crops with ``annotators`` disagreeing masks (the LIDC-style task); with
    ``lung_class`` the lung field is a class of its own (:func:`lung_nodule_labels`)."""
    samples = []
    for mask_dir, image_path, meta in _phantom_items(Path(root), split):
        names = [mask_dir / f"nodule_annotator_{k}.png" for k in range(annotators)]
        if not all(p.exists() for p in names):
            continue  # no nodule in this study
        image = read_grey(image_path)
        masks = np.stack([read_mask(p) for p in names])
        if masks.shape[1:] != image.shape:
            raise DataError(f"{mask_dir}: masks {masks.shape[1:]} != image {image.shape}")
        union = masks.any(0)
        if not union.any():
            continue
        rows, cols = np.nonzero(union)
        centre = (int(rows.mean().round()), int(cols.mean().round()))
        lung = read_mask(mask_dir / "left_lung.png") | read_mask(mask_dir / "right_lung.png")
        img = resize_image(crop_around(image, centre, crop), size)
        m = np.stack([resize_labels(crop_around(mk, centre, crop), size) for mk in masks])
        roi = resize_labels(crop_around(lung | union, centre, crop), size)
        meta = {**meta, "crop_centre": list(centre), "crop": crop}
        if lung_class:
            m = lung_nodule_labels(m, resize_labels(crop_around(lung, centre, crop), size))
            meta["classes"] = list(LUNG_NODULE_CLASSES)
        samples.append(SegSample(img, m, roi, meta))
    return samples


# ----------------------------------------------------------------------------- dispatch


def _loaders(lung_class: bool) -> dict[str, Callable[..., list[SegSample]]]:
    return {
        "phantom-lungs": lambda root, split, size, crop: load_phantom_lungs(root, split, size),
        "phantom-nodules": lambda root, split, size, crop: load_phantom_nodules(
            root, split, size, crop, lung_class=lung_class
        ),
        "jsrt": lambda root, split, size, crop: readers.load_jsrt(root, split, size),
        "montgomery": lambda root, split, size, crop: readers.load_montgomery(root, split, size),
        "shenzhen": lambda root, split, size, crop: readers.load_shenzhen(root, split, size),
        "lidc": lambda root, split, size, crop: readers.load_lidc(root, split, size),
    }


DATASETS = ("phantom-lungs", "phantom-nodules", "jsrt", "montgomery", "shenzhen", "lidc")


LUNG_CLASS_DATASETS = ("phantom-nodules",)
"""Datasets that can label the lung field as a class of its own (``lung_class``)."""


def dataset_classes(name: str, lung_class: bool = False) -> tuple[str, ...]:
    """Class names by label of dataset ``name`` loaded with ``lung_class``."""
    if lung_class and name not in LUNG_CLASS_DATASETS:
        raise DataError(f"lung_class applies to {', '.join(LUNG_CLASS_DATASETS)}, not '{name}'")
    return LUNG_NODULE_CLASSES if lung_class else TWO_CLASSES


def load_dataset(
    name: str,
    root: Path,
    split: str | None = None,
    size: int = 128,
    crop: int = 128,
    lung_class: bool = False,
) -> list[SegSample]:
    """Samples of dataset ``name`` (one of :data:`DATASETS`) for ``split`` (None: all);
    ``lung_class`` (phantom nodules) adds the lung field as a class (:func:`dataset_classes`)."""
    loaders = _loaders(lung_class)
    if name not in loaders:
        raise DataError(f"unknown dataset '{name}'; known: {sorted(loaders)}")
    dataset_classes(name, lung_class)
    if not Path(root).exists():
        raise DataError(f"{root}: dataset root does not exist")
    samples = loaders[name](Path(root), split, size, crop)
    log.info("%s %s: %d samples from %s", name, split or "all", len(samples), root)
    return samples


def stack(samples: list[SegSample]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Images [N, 1, H, W] float32, masks [N, K, H, W] uint8, roi [N, H, W] or None."""
    if not samples:
        raise DataError("no samples to stack (empty split?)")
    images = np.stack([s.image for s in samples])[:, None].astype(np.float32)
    masks = np.stack([s.masks for s in samples])
    rois = None if samples[0].roi is None else np.stack([s.roi for s in samples])
    return images, masks, rois
