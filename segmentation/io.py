"""Segmentation samples and the small readers every dataset loader shares.

A :class:`SegSample` is one image with K annotator masks (K = 1 for lungs, 4 for nodules and
LIDC). This module reads and resizes images and masks, crops around a centre, derives the
subgroup attributes (sex, age group) and splits deterministically by a hash of an id. Both the
phantom loaders (:mod:`segmentation.data`) and the public-dataset readers
(:mod:`segmentation.readers`) build on it, so neither has to import the other's module.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

AGE_EDGES = (40, 60, 80)
"""Age-group boundaries in years: <40, 40-59, 60-79, 80+."""
SPLITS = ("train", "validate", "test")


class SegSample(NamedTuple):
    image: np.ndarray
    """[H, W] float32 in [0, 1]."""
    masks: np.ndarray
    """[K, H, W] uint8 class labels, one map per annotator."""
    roi: np.ndarray | None
    """[H, W] uint8 region of interest (1 inside) or None."""
    meta: dict
    """id, and where known subject_id, study_id, series_uid, sex ('F'|'M'), age, age_group,
    habitus (phantom: 'thin' | 'average' | 'obese', from the subject's BMI); ``classes`` (the
    class names by label) where a loader labels more than background and one foreground."""


TWO_CLASSES = ("background", "foreground")
"""Class names of a sample whose meta names none: label 0 and any other label."""


class DataError(ValueError):
    """A dataset file is missing, unreadable or malformed; the message names it."""


# ----------------------------------------------------------------------------- classes


def class_names(meta: dict) -> tuple[str, ...]:
    """A sample's class names by label: ``meta['classes']``, else :data:`TWO_CLASSES`."""
    return tuple(meta.get("classes") or TWO_CLASSES)


def task_mask(labels, num_classes: int):
    """Where label maps (numpy or torch, any shape) mark the task's class.

    With more than two classes the task's class is the last one (the nodule of background /
    lung field / nodule: the class the annotators disagree on, which the headline metrics and
    the uncertainty targets score); with two it is any foreground label, as always.
    """
    return labels == num_classes - 1 if num_classes > 2 else labels > 0


# ----------------------------------------------------------------------------- image helpers


def read_grey(path: Path) -> np.ndarray:
    """An image file as float32 [H, W] in [0, 1].

    8-bit files are divided by 255; 16-bit files (Montgomery's 12-bit PNGs) by their maximum,
    since their bit depth is not recorded reliably.
    """
    try:
        with Image.open(path) as im:
            wide = im.mode in ("I", "I;16", "I;16B", "I;16L")
            arr = np.asarray(im.convert("I") if wide else im.convert("L"), dtype=np.float32)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot read image: {exc}") from None
    if wide:
        return arr / max(float(arr.max()), 1.0)
    return arr / 255.0


def read_mask(path: Path) -> np.ndarray:
    """A 0/255 (or palette) mask file as bool [H, W]."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) > 127
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot read mask: {exc}") from None


def resize_image(image_HW: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a float image to ``size`` x ``size``."""
    if image_HW.shape == (size, size):
        return image_HW.astype(np.float32)
    im = Image.fromarray(image_HW.astype(np.float32), mode="F")
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def resize_labels(labels_HW: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``size`` x ``size`` (uint8)."""
    labels = labels_HW.astype(np.uint8)
    if labels.shape == (size, size):
        return labels
    im = Image.fromarray(labels, mode="L")
    return np.asarray(im.resize((size, size), Image.Resampling.NEAREST), dtype=np.uint8)


def crop_around(arr_HW: np.ndarray, centre: tuple[int, int], crop: int) -> np.ndarray:
    """A ``crop`` x ``crop`` window centred at ``centre`` (row, col), zero-padded at borders."""
    r0, c0 = centre[0] - crop // 2, centre[1] - crop // 2
    padded = np.pad(arr_HW, crop, mode="constant")
    return padded[r0 + crop : r0 + 2 * crop, c0 + crop : c0 + 2 * crop]


# ----------------------------------------------------------------------------- subgroups, splits


def age_group(age: float | None, edges: tuple[int, ...] = AGE_EDGES) -> str | None:
    """'<40', '40-59', '60-79', '80+' for the default edges; None when age is unknown."""
    if age is None or not np.isfinite(age):
        return None
    if age < edges[0]:
        return f"<{edges[0]}"
    for lo, hi in zip(edges, edges[1:], strict=False):
        if lo <= age < hi:
            return f"{lo}-{hi - 1}"
    return f"{edges[-1]}+"


def normalise_sex(value) -> str | None:
    """'F' or 'M' from the spellings datasets use (F, female, Woman, 'M', male, ...)."""
    if value is None:
        return None
    s = str(value).strip().lower()
    if s in ("f", "female", "woman", "w"):
        return "F"
    if s in ("m", "male", "man"):
        return "M"
    return None


def hash_split(
    key: str, fractions: tuple[float, float, float] = (0.64, 0.16, 0.2), seed: int = 0
) -> str:
    """Deterministic train/validate/test assignment of a key (subject or series id)."""
    u = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / 16**12
    return (
        SPLITS[0]
        if u < fractions[0]
        else SPLITS[1]
        if u < fractions[0] + fractions[1]
        else SPLITS[2]
    )


def with_subgroups(meta: dict) -> dict:
    """Add ``age_group`` to a meta dict from its ``age``; normalise ``sex``."""
    meta = dict(meta)
    meta["sex"] = normalise_sex(meta.get("sex"))
    meta["age_group"] = age_group(meta.get("age"))
    return meta


def study_key(meta: dict) -> tuple[int, int | None]:
    """(study id, subject id) of a sample, as the activation store keys it.

    Datasets without study ids (the public sets) get a stable 60-bit hash of the image id,
    so every image is its own study.
    """
    sid = meta.get("study_id")
    if sid is None:
        sid = int(hashlib.sha256(str(meta.get("id")).encode()).hexdigest()[:15], 16)
    subject = meta.get("subject_id")
    return int(sid), (int(subject) if isinstance(subject, int | np.integer) else None)
