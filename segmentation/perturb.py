"""Perturbed test images for the robustness analysis, and the phantom's "scanner shift".

Image perturbations act on a :class:`SegSample` (image in [0, 1]) at a given strength and
return a new sample; geometry changes (rotation) move the masks with the image:

| name | strength | identity |
|---|---|---|
| ``noise`` | std of added Gaussian noise (image units) | 0 |
| ``gamma`` | exponent, ``x ** gamma`` | 1 |
| ``contrast`` | factor about the image mean | 1 |
| ``blur`` | Gaussian sigma in px | 0 |
| ``rotation`` | degrees (bilinear image, nearest-neighbour masks, zero fill) | 0 |
| ``resolution`` | downscale factor, then back up (bilinear) | 1 |

The **scanner shift** re-renders the phantom's own studies with another acquisition profile:
higher exposure, a brightness offset, more quantum noise, a wider detector blur and another
display gamma (``SCANNER_SHIFT``), all outside the ranges the phantom's cohort draws (exposure
0.88-1.12, brightness +-0.04, noise 0.008-0.032, blur 0.8 px, gamma 1.1), so no training image
has them. Strength ``t`` in [0, 1] interpolates each parameter from the study's own value to the
profile's. A study is re-rendered from its record in ``phantom-studies.jsonl`` with the
renderer's own seed (line i is study index i), so anatomy and masks are those on disk.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from segmentation.io import DataError, SegSample, resize_image, resize_labels

PerturbFn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


class Perturbation(NamedTuple):
    fn: PerturbFn
    """image [H, W] in [0, 1], strength, rng -> perturbed image (clipped to [0, 1])."""
    strengths: tuple[float, ...]
    """Default strengths of the degradation curve."""
    identity: float
    """The strength that leaves the image unchanged (the curve's clean point)."""
    unit: str
    """Axis label of the strength."""


def _noise(img, s, rng):
    return img + rng.normal(0.0, s, img.shape).astype(np.float32)


def _gamma(img, s, rng):
    return np.clip(img, 0, 1) ** s


def _contrast(img, s, rng):
    return (img - img.mean()) * s + img.mean()


def _blur(img, s, rng):
    return ndimage.gaussian_filter(img, s, mode="nearest") if s > 0 else img


def _resolution(img, s, rng):
    size = img.shape[0]
    small = max(4, int(round(size / s)))
    low = np.asarray(
        Image.fromarray(img.astype(np.float32), mode="F").resize(
            (small, small), Image.Resampling.BILINEAR
        )
    )
    return resize_image(low, size)


PERTURBATIONS: dict[str, Perturbation] = {
    "noise": Perturbation(_noise, (0.02, 0.05, 0.1, 0.2), 0.0, "noise std"),
    "gamma": Perturbation(_gamma, (0.5, 0.7, 1.5, 2.0), 1.0, "gamma"),
    "contrast": Perturbation(_contrast, (0.4, 0.6, 1.5, 2.0), 1.0, "contrast factor"),
    "blur": Perturbation(_blur, (0.5, 1.0, 2.0, 3.0), 0.0, "blur sigma (px)"),
    "rotation": Perturbation(lambda img, s, rng: img, (5.0, 10.0, 15.0, 20.0), 0.0, "degrees"),
    "resolution": Perturbation(_resolution, (1.5, 2.0, 3.0, 4.0), 1.0, "downscale factor"),
}


def perturb(sample: SegSample, name: str, strength: float, seed: int = 0) -> SegSample:
    """``sample`` with perturbation ``name`` at ``strength`` (deterministic for a seed)."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation '{name}'; known: {sorted(PERTURBATIONS)}")
    p = PERTURBATIONS[name]
    image, masks, roi = sample.image.astype(np.float32), sample.masks, sample.roi
    if strength != p.identity:
        rng = np.random.default_rng([seed, zlib.crc32(str(sample.meta.get("id")).encode())])
        if name == "rotation":
            image = ndimage.rotate(image, strength, reshape=False, order=1, mode="constant")
            masks = np.stack([ndimage.rotate(m, strength, reshape=False, order=0) for m in masks])
            roi = None if roi is None else ndimage.rotate(roi, strength, reshape=False, order=0)
        else:
            image = p.fn(image, strength, rng)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return SegSample(image, masks, roi, sample.meta)


# ----------------------------------------------------------------------------- scanner shift

SCANNER_SHIFT = {
    "exposure": 1.45,
    "brightness": -0.08,
    "noise": 0.05,
    "detector_blur": 2.5,
    "display_gamma": 0.8,
}
"""The unseen acquisition profile (detector blur in px of the phantom's full resolution)."""
RENDER_DEFAULTS = {"detector_blur": 0.8, "display_gamma": 1.1}
"""The renderer's values when an acquisition does not set them."""


def shifted_acquisition(acq: dict, strength: float) -> dict:
    """``acq`` with each ``SCANNER_SHIFT`` parameter moved ``strength`` of the way to it."""
    out = dict(acq)
    for key, target in SCANNER_SHIFT.items():
        own = float(acq.get(key, RENDER_DEFAULTS.get(key, 0.0)))
        out[key] = own + strength * (target - own)
    out["lateral"] = False  # only the frontal view is needed
    return out


def scanner_shift(
    phantom_root: Path, samples: list[SegSample], size: int, strength: float
) -> list[SegSample]:
    """Phantom lung samples re-rendered with the shifted profile (same ids, meta, masks)."""
    from workbench.cxr.phantom.cohort import rng_for
    from workbench.cxr.phantom.render import render_study
    from workbench.cxr.phantom.run import RENDER_STREAM

    root = Path(phantom_root)
    try:
        cfg = json.loads((root / "cfg.json").read_text())
        seed, full = int(cfg["seed"]), int(cfg["size"])
        lines = (root / "phantom-studies.jsonl").read_text().splitlines()
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(
            f"{root}: scanner shift needs the generator's cfg.json and records: {exc}"
        ) from None
    index = {}
    for i, line in enumerate(lines):
        rec = json.loads(line)
        index[int(rec["study_id"])] = (i, rec)
    out = []
    for s in samples:
        if s.meta.get("study_id") not in index:
            raise DataError(f"{root}: study {s.meta.get('study_id')} has no record to re-render")
        i, rec = index[s.meta["study_id"]]
        if "acquisition" not in rec:
            raise DataError(f"{root}: study {rec['study_id']} record lacks 'acquisition'")
        study = {**rec, "acquisition": shifted_acquisition(rec["acquisition"], strength)}
        rendered = render_study(study, full, rng_for(seed, RENDER_STREAM, i))
        lung = rendered.masks["left_lung"] | rendered.masks["right_lung"]
        image = resize_image(rendered.frontal.astype(np.float32) / 255.0, size)
        out.append(SegSample(image, resize_labels(lung, size)[None], None, s.meta))
    return out
