"""Readers for the public datasets lung and nodule segmentation papers use.

Each reader takes the dataset's root folder as distributed, returns ``list[SegSample]`` resized
to ``size`` px and splits deterministically by a hash of the patient (or series) id, since
none of these datasets ships an official split.

- **JSRT + SCR**: 247 radiographs, ``*.IMG`` = 2048 x 2048 12-bit big-endian, no header
  (JSRT stores dense = high, so we invert to the usual dark-lung display). SCR lung masks are
  GIFs at 1024 x 1024, one folder per structure (``.../masks/left lung/JPCLN001.gif``,
  ``.../right lung/...``). Age and sex come from ``CLNDAT_EN.txt`` / ``CNNDAT_EN.TXT`` when
  present (best effort: the sex word and the integer before it).
- **Montgomery**: ``CXR_png/<id>.png``, ``ManualMask/leftMask/<id>.png``,
  ``ManualMask/rightMask/<id>.png``, ``ClinicalReadings/<id>.txt`` ("Patient's Sex: M",
  "Patient's Age: 044Y").
- **Shenzhen**: ``CXR_png/<id>.png`` with ``mask/<id>_mask.png`` (images without a mask are
  skipped) and ``ClinicalReadings/<id>.txt`` ("male 35yrs").
- **LIDC crops** (Knegt's pickle, as used by SSN and PHiSeg): a dict filename ->
  {'image': 128 x 128 float, 'masks': four 128 x 128 arrays, 'series_uid': str}; split by
  series_uid. The pickle is read with an unpickler that only admits numpy arrays and plain
  containers, so a tampered file cannot run code.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import numpy as np

from segmentation.io import (
    DataError,
    SegSample,
    hash_split,
    read_grey,
    read_mask,
    resize_image,
    resize_labels,
    with_subgroups,
)

log = logging.getLogger(__name__)
JSRT_SIDE = 2048
JSRT_MAX = 4095  # 12-bit


def _keep(key: str, split: str | None) -> bool:
    return split is None or hash_split(key) == split


# ----------------------------------------------------------------------------- JSRT + SCR


def read_jsrt_img(path: Path, invert: bool = True) -> np.ndarray:
    """A JSRT ``.IMG`` (2048 x 2048 big-endian uint16, 12 bits used) as float32 in [0, 1]."""
    raw = np.fromfile(path, dtype=">u2")
    if raw.size != JSRT_SIDE * JSRT_SIDE:
        raise DataError(
            f"{path}: {raw.size * 2} bytes, expected {JSRT_SIDE**2 * 2} "
            f"(2048x2048 16-bit, no header)"
        )
    img = np.clip(raw.reshape(JSRT_SIDE, JSRT_SIDE).astype(np.float32) / JSRT_MAX, 0.0, 1.0)
    return 1.0 - img if invert else img


def _jsrt_clinical(root: Path) -> dict[str, dict]:
    """stem -> {'sex', 'age'} from JSRT's clinical tables (whatever of them is present)."""
    out: dict[str, dict] = {}
    for table in list(root.rglob("CLNDAT*")) + list(root.rglob("CNNDAT*")):
        for line in table.read_text(errors="replace").splitlines():
            tokens = line.split()
            if not tokens or not tokens[0].upper().endswith(".IMG"):
                continue
            for i, tok in enumerate(tokens[1:], 1):
                if tok.lower() in ("male", "female"):
                    age = tokens[i - 1] if tokens[i - 1].isdigit() else None
                    out[Path(tokens[0]).stem.upper()] = {
                        "sex": tok,
                        "age": float(age) if age else None,
                    }
                    break
    return out


def load_jsrt(root: Path, split: str | None = None, size: int = 128) -> list[SegSample]:
    """JSRT radiographs with SCR left+right lung masks as one 'lung' class."""
    root = Path(root)
    masks: dict[str, dict[str, Path]] = {}
    for gif in root.rglob("*.gif"):
        side = gif.parent.name.lower().replace("_", " ")
        if side in ("left lung", "right lung"):
            masks.setdefault(gif.stem.upper(), {})[side] = gif
    clinical = _jsrt_clinical(root)
    samples = []
    for img_path in sorted(root.rglob("*.IMG")) + sorted(root.rglob("*.img")):
        stem = img_path.stem.upper()
        pair = masks.get(stem, {})
        if len(pair) != 2 or not _keep(stem, split):
            continue
        lung = read_mask(pair["left lung"]) | read_mask(pair["right lung"])
        meta = with_subgroups({"id": stem, **clinical.get(stem, {})})
        samples.append(
            SegSample(
                resize_image(read_jsrt_img(img_path), size),
                resize_labels(lung, size)[None],
                None,
                meta,
            )
        )
    if not samples and split is None:
        raise DataError(f"{root}: no JSRT .IMG file with both SCR lung masks found")
    return samples


# ----------------------------------------------------------------------------- Montgomery


def _montgomery_clinical(path: Path) -> dict:
    if not path.exists():
        return {}
    text = path.read_text(errors="replace")
    sex = re.search(r"Sex:\s*([A-Za-z]+)", text)
    age = re.search(r"Age:\s*0*(\d+)", text)
    return {"sex": sex.group(1) if sex else None, "age": float(age.group(1)) if age else None}


def load_montgomery(root: Path, split: str | None = None, size: int = 128) -> list[SegSample]:
    """Montgomery County set: left and right manual masks joined into one lung class."""
    root = Path(root)
    img_dir = root / "CXR_png"
    if not img_dir.is_dir():
        raise DataError(f"{root}: no CXR_png/ folder; not a Montgomery root")
    samples = []
    for img_path in sorted(img_dir.glob("*.png")):
        stem = img_path.stem
        left = root / "ManualMask" / "leftMask" / img_path.name
        right = root / "ManualMask" / "rightMask" / img_path.name
        if not (left.exists() and right.exists()):
            log.warning("%s: no ManualMask pair, skipped", img_path)
            continue
        if not _keep(stem, split):
            continue
        image = read_grey(img_path)
        lung = read_mask(left) | read_mask(right)
        if lung.shape != image.shape:
            raise DataError(f"{left}: mask {lung.shape} != image {image.shape}")
        meta = with_subgroups(
            {"id": stem, **_montgomery_clinical(root / "ClinicalReadings" / f"{stem}.txt")}
        )
        samples.append(
            SegSample(resize_image(image, size), resize_labels(lung, size)[None], None, meta)
        )
    return samples


# ----------------------------------------------------------------------------- Shenzhen


def _shenzhen_clinical(path: Path) -> dict:
    if not path.exists():
        return {}
    text = path.read_text(errors="replace").lower()
    sex = re.search(r"\b(female|male)\b", text)
    age = re.search(r"(\d+)\s*(?:yrs?|years?)", text)
    return {"sex": sex.group(1) if sex else None, "age": float(age.group(1)) if age else None}


def load_shenzhen(root: Path, split: str | None = None, size: int = 128) -> list[SegSample]:
    """Shenzhen set: images with a ``mask/<id>_mask.png`` lung mask (others skipped)."""
    root = Path(root)
    img_dir, mask_dir = root / "CXR_png", root / "mask"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise DataError(f"{root}: expected CXR_png/ and mask/ folders (Shenzhen layout)")
    samples, missing = [], 0
    for img_path in sorted(img_dir.glob("*.png")):
        stem = img_path.stem
        mask_path = mask_dir / f"{stem}_mask.png"
        if not mask_path.exists():
            missing += 1
            continue
        if not _keep(stem, split):
            continue
        meta = with_subgroups(
            {"id": stem, **_shenzhen_clinical(root / "ClinicalReadings" / f"{stem}.txt")}
        )
        samples.append(
            SegSample(
                resize_image(read_grey(img_path), size),
                resize_labels(read_mask(mask_path), size)[None],
                None,
                meta,
            )
        )
    if missing:
        log.info("%s: %d images have no lung mask and were skipped", root, missing)
    return samples


# ----------------------------------------------------------------------------- LIDC pickle


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays/dtypes and plain containers; refuses every other global."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in an LIDC pickle")
        return super().find_class(module, name)


def _binary(mask, where: str) -> np.ndarray:
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim != 2 or not np.isfinite(m).all():
        raise DataError(f"{where}: expected a finite 2-D mask, got shape {m.shape}")
    return m > (0.5 if m.max() <= 1.0 else 127.0)


def load_lidc(
    path: Path, split: str | None = None, size: int = 128, annotators: int = 4
) -> list[SegSample]:
    """LIDC-IDRI 2-D lesion crops with four annotator masks, split by series_uid."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.pickle")) + sorted(path.glob("*.pkl"))
        if not candidates:
            raise DataError(f"{path}: no .pickle/.pkl file (Knegt's LIDC crops)")
        path = candidates[0]
    try:
        with open(path, "rb") as f:
            data = _ArraysOnlyUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
        raise DataError(f"{path}: cannot read LIDC pickle: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict keyed by filename, got {type(data).__name__}")
    samples = []
    for key in sorted(data):
        item, where = data[key], f"{path}[{key!r}]"
        if not isinstance(item, dict) or not {"image", "masks", "series_uid"} <= set(item):
            raise DataError(f"{where}: needs 'image', 'masks' and 'series_uid'")
        if not _keep(str(item["series_uid"]), split):
            continue
        masks = list(item["masks"])
        if len(masks) < annotators:
            raise DataError(f"{where}: {len(masks)} masks, expected {annotators}")
        image = np.asarray(item["image"], dtype=np.float32)
        if image.ndim != 2 or not np.isfinite(image).all():
            raise DataError(f"{where}: 'image' must be a finite 2-D array, got {image.shape}")
        lo, hi = float(image.min()), float(image.max())
        if lo < 0 or hi > 1:
            image = (image - lo) / max(hi - lo, 1e-8)
        m = np.stack([resize_labels(_binary(mk, where), size) for mk in masks[:annotators]])
        meta = {
            "id": str(key),
            "series_uid": str(item["series_uid"]),
            "sex": None,
            "age": None,
            "age_group": None,
        }
        samples.append(SegSample(resize_image(image, size), m, None, meta))
    return samples
