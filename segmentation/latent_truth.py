"""Ground truth at every recorded position of a segmentation model: the concepts of its tokens.

A segmentation store's token is a cell of a feature map over one sample's frame (the whole
image resized, or a nodule crop). The concepts stored with it (:mod:`workbench.record.tokens`:
``concept_<name>`` in [0, 1], ``target_<name>`` continuous) are:

- every phantom mask of the image (``masks/.../<dicom_id>/*.png``: heart, each lung, each
  rendered finding and device, the four nodule graders), cut to the sample's frame, plus
  ``lung`` (left | right): the fraction of the cell each one covers;
- the task's own annotations at model resolution: ``annotated`` (the annotators' mean mask)
  and, with several annotators, ``annotator_disagreement`` (pixels where the graders differ)
  and the target ``annotator_variance`` (mean of p(1 - p), p = share of graders marking it);
- study attributes on every token: ``sex=F``/``sex=M``, ``age=<40`` ... ``age=80+``,
  ``habitus=thin|average|obese``, and ``device_present`` (any support device, from
  ``phantom-labels.csv``);
- for an SSN, the target ``sample_variance``: per pixel p(1 - p) with p the share of
  ``samples`` label-map samples that mark it as foreground (the uncertainty the samples show).

Annotations and sample variance are of the task's class: with the lung field as a class of its
own (``lung_class``: background / lung field / nodule) they are the nodule's, and the lung field
stays the ``lung`` mask concept above.

Each concept also gets a group (:func:`workbench.record.tokens.concept_group`) that the
store's manifest keeps and the analysis report prints.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segmentation.io import (
    AGE_EDGES,
    DataError,
    SegSample,
    class_names,
    crop_around,
    read_mask,
    task_mask,
)
from workbench.cxr.findings import DEVICES, FINDINGS
from workbench.record.tokens import (
    CONCEPT_PREFIX,
    STRUCTURES,
    TARGET_PREFIX,
    cell_means,
    study_columns,
)

GRADERS = tuple(f"nodule_annotator_{k}" for k in range(4))
# Masks every phantom store has a column for (absent file: the concept is absent, coverage 0).
PHANTOM_MASKS = (*STRUCTURES, *FINDINGS, *DEVICES, *GRADERS)
SEXES = ("F", "M")
HABITUS = ("thin", "average", "obese")


def age_bands(edges: tuple[int, ...] = AGE_EDGES) -> tuple[str, ...]:
    """The age-group names :func:`segmentation.io.age_group` gives: <40, 40-59, 60-79, 80+."""
    inner = tuple(f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False))
    return (f"<{edges[0]}", *inner, f"{edges[-1]}+")


def _square(mask_HW: np.ndarray) -> np.ndarray:
    """A mask squashed to a square the way ``resize_image`` squashes the image (area mean)."""
    h, w = mask_HW.shape
    if h == w:
        return mask_HW.astype(np.float32)
    side = max(h, w)
    img = Image.fromarray(mask_HW.astype(np.float32), mode="F")
    return np.asarray(img.resize((side, side), Image.Resampling.BOX), dtype=np.float32)


def frame_masks(sample: SegSample) -> dict[str, np.ndarray]:
    """Every :data:`PHANTOM_MASKS` mask of the sample's image in the sample's frame.

    The frame is the whole image, or the ``crop`` x ``crop`` window at ``crop_centre`` that
    the nodule loader cut; the masks stay at source resolution (coverage resamples them). A
    mask without a file is all zero (the phantom writes a finding's mask only when present);
    a sample without ``mask_dir`` (public datasets) has none.
    """
    folder = sample.meta.get("mask_dir")
    if not folder:
        return {}
    folder = Path(folder)
    found = {
        n: read_mask(folder / f"{n}.png") for n in PHANTOM_MASKS if (folder / f"{n}.png").is_file()
    }
    if "left_lung" in found and "right_lung" in found:
        found["lung"] = found["left_lung"] | found["right_lung"]
    if not found:
        raise DataError(f"{folder}: no phantom masks ({', '.join(STRUCTURES[:3])}.png, ...)")
    shape = next(iter(found.values())).shape
    masks = {n: found.get(n, np.zeros(shape, bool)) for n in PHANTOM_MASKS}
    centre, crop = sample.meta.get("crop_centre"), sample.meta.get("crop")
    if centre is not None and crop:
        masks = {
            k: crop_around(m, (int(centre[0]), int(centre[1])), int(crop)) for k, m in masks.items()
        }
    return {k: _square(m) for k, m in masks.items()}


def annotation_maps(sample: SegSample) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(concept maps, target maps) from the sample's own annotator masks at model resolution.

    They are of the task's class (:func:`segmentation.io.task_mask`): the nodule also when the
    lung field is a class of its own, which every annotator marks alike.
    """
    masks = np.asarray(sample.masks)
    fg_KHW = task_mask(masks, len(class_names(sample.meta))).astype(np.float32)
    p_HW = fg_KHW.mean(0)
    concepts = {"annotated": p_HW}
    targets = {}
    if fg_KHW.shape[0] > 1:
        concepts["annotator_disagreement"] = ((p_HW > 0) & (p_HW < 1)).astype(np.float32)
        targets["annotator_variance"] = p_HW * (1 - p_HW)
    return concepts, targets


def read_devices(root: Path | None) -> dict[int, float]:
    """study_id -> 1.0 if ``phantom-labels.csv`` marks any support device, else 0.0."""
    path = Path(root) / "phantom-labels.csv" if root else None
    if path is None or not path.is_file():
        return {}
    out = {}
    with open(path, newline="") as fh:
        for line, rec in enumerate(csv.DictReader(fh), start=2):
            try:
                out[int(rec["study_id"])] = float(any(rec.get(d) == "1" for d in DEVICES))
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: bad row: {exc}") from None
    return out


def attributes(meta: Mapping, device_present: float | None) -> dict[str, float | None]:
    """One-hot study attributes (None where the attribute is unknown)."""
    out: dict[str, float | None] = {}
    for key, values in (("sex", SEXES), ("age", age_bands()), ("habitus", HABITUS)):
        known = meta.get("age_group" if key == "age" else key)
        for v in values:
            out[f"{key}={v}"] = None if known is None else float(known == v)
    out["device_present"] = device_present
    return out


@torch.no_grad()
def sample_variance(
    model, x_BCHW: torch.Tensor, roi_BHW, num_samples: int, generator: torch.Generator
) -> np.ndarray:
    """``[B, H, W]`` per-pixel p(1 - p), p = share of an SSN's label-map samples marking
    the pixel with the task's class (any foreground with two classes; the nodule of
    background / lung field / nodule)."""
    samples_SBHW = model.sample(x_BCHW, num_samples, roi_BHW, generator=generator)
    p = task_mask(samples_SBHW, model.num_classes).float().mean(0)
    return (p * (1 - p)).numpy()


def truth_columns(
    sample: SegSample,
    grid: int,
    n_tokens: int,
    study_values: Mapping[str, float | None],
    extra_targets: Mapping[str, np.ndarray] | None = None,
) -> dict[str, list]:
    """Every concept and target column for one sample's ``grid`` x ``grid`` tokens.

    ``n_tokens`` is ``grid * grid`` for a feature map; for a latent sequence (W+) pass
    ``grid = 0``: only the study-level columns are written.
    """
    cols = study_columns(study_values, n_tokens)
    if grid:
        concepts, targets = annotation_maps(sample)
        cols.update(cell_means(frame_masks(sample), grid, CONCEPT_PREFIX))
        cols.update(cell_means(concepts, grid, CONCEPT_PREFIX))
        cols.update(cell_means({**targets, **(extra_targets or {})}, grid, TARGET_PREFIX))
    return cols
