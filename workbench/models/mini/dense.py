"""Stage-1 data of maira2-mini: frontal images with dense, per-patch targets from the masks.

MAIRA-2 starts from RAD-DINO, an image encoder pretrained on chest X-rays and then frozen.
maira2-mini's stand-in is pretrained on phantom radiographs with *dense* supervision: for every
patch token, the fraction of that patch covered by each finding/device/anatomy mask the
phantom writes (``masks/.../<name>.png``), plus the study's image-level labels. Coverage is
computed in the processor's geometry (shortest edge resized to the crop size, centre crop,
then the patch grid), so target ``p`` describes exactly the pixels that image token ``p`` sees.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from workbench.cxr.findings import RENDERED
from workbench.cxr.images import CXRDataError
from workbench.cxr.layout import mask_dir
from workbench.cxr.studies import StudyRecord
from workbench.models.processor import Maira2Processor

log = logging.getLogger(__name__)
ANATOMY: tuple[str, ...] = ("heart", "left_lung", "right_lung")
DENSE_CHANNELS: tuple[str, ...] = RENDERED + ANATOMY  # the 13 concepts, then anatomy


class VisionExample(NamedTuple):
    """One frontal image for stage 1: pixels, per-patch coverage and image-level truth."""

    study_id: int
    pixels: torch.Tensor  # [S, S] float16, processor-normalised grey channel
    cover: torch.Tensor  # [P, K] float16 fraction of patch p covered by mask k
    concepts: torch.Tensor  # [C] 0/1 float, C = len(RENDERED)


def patch_coverage(mask_HW: np.ndarray, image_size: int, patch_size: int) -> np.ndarray:
    """Fraction of each patch covered by a binary mask, in the processor's geometry.

    The mask is area-resampled (``BOX``) with the processor's shortest-edge resize, centre
    cropped like the image, then averaged over each ``patch_size`` square: returns
    ``[grid * grid]`` values in [0, 1], row-major like the image tokens.
    """
    if mask_HW.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask_HW.shape}")
    height, width = mask_HW.shape
    short, long = min(width, height), max(width, height)
    new_long = int(image_size * long / short)
    size = (image_size, new_long) if width <= height else (new_long, image_size)
    img = Image.fromarray(mask_HW.astype(np.float32), mode="F")
    resized = np.asarray(img.resize(size, resample=Image.Resampling.BOX), dtype=np.float32)
    top = (resized.shape[0] - image_size) // 2
    left = (resized.shape[1] - image_size) // 2
    crop = resized[top : top + image_size, left : left + image_size]
    grid = image_size // patch_size
    cells = crop[: grid * patch_size, : grid * patch_size].reshape(
        grid, patch_size, grid, patch_size
    )
    return np.clip(cells.mean(axis=(1, 3)), 0.0, 1.0).reshape(-1)


def read_mask(path: Path) -> np.ndarray:
    """A 0/255 phantom mask PNG as a boolean array; CXRDataError names the file if unreadable."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) > 127
    except OSError as exc:
        raise CXRDataError(f"{path}: unreadable mask ({exc})") from exc


def dense_targets(root: Path, rec: StudyRecord, image_size: int, patch_size: int) -> np.ndarray:
    """[P, K] coverage of every DENSE_CHANNELS mask of the study's frontal image.

    A concept without a mask file is absent (zero coverage); the anatomy masks are written
    for every frontal image, so their absence means the phantom was made with ``--no-masks``.
    """
    folder = mask_dir(root, rec.subject_id, rec.study_id, rec.frontal_path.stem)
    if not (folder / "heart.png").is_file():
        raise CXRDataError(
            f"{folder}: no masks for study {rec.study_id} (generate the phantom with masks)"
        )
    grid = image_size // patch_size
    out = np.zeros((grid * grid, len(DENSE_CHANNELS)), dtype=np.float32)
    for k, name in enumerate(DENSE_CHANNELS):
        path = folder / f"{name}.png"
        if path.is_file():
            out[:, k] = patch_coverage(read_mask(path), image_size, patch_size)
    return out


def encode_frontals(
    processor: Maira2Processor,
    root: Path,
    records: Sequence[StudyRecord],
    truth: dict[int, dict[str, int]],
) -> list[VisionExample]:
    """Every usable frontal image of ``records`` with its dense and image-level targets."""
    examples = []
    for i, rec in enumerate(records):
        gold = truth.get(rec.study_id)
        if gold is None:
            log.warning("stage 1 leaves out study %s: no ground-truth labels", rec.study_id)
            continue
        try:
            pixels = processor.pixel_values([rec.load_images().frontal])[0, 0]
            cover = dense_targets(root, rec, processor.image_size, processor.patch_size)
        except CXRDataError as exc:
            log.warning("stage 1 leaves out study %s: %s", rec.study_id, exc)
            continue
        concepts = torch.tensor([float(gold[c]) for c in RENDERED])
        examples.append(
            VisionExample(
                rec.study_id,
                pixels.to(torch.float16),
                torch.from_numpy(cover).to(torch.float16),
                concepts,
            )
        )
        if (i + 1) % 1000 == 0:
            log.info("stage 1: encoded %d/%d frontal images", i + 1, len(records))
    return examples


def frontal_corpus(
    processor: Maira2Processor, corpus: Path, phantom: Path, train_records: Sequence[StudyRecord]
) -> list[VisionExample]:
    """Stage 1's images: every frontal of the ``corpus`` phantom (all splits), then those of
    ``train_records`` from the evaluation ``phantom`` (never its validate or test studies)."""
    from workbench.cxr.studies import iter_studies
    from workbench.models.mini.eval import read_phantom_labels

    out = encode_frontals(
        processor, corpus, list(iter_studies(corpus)), read_phantom_labels(corpus)
    )
    return out + encode_frontals(processor, phantom, train_records, read_phantom_labels(phantom))


def stack(examples: Sequence[VisionExample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch tensors: pixels [B, 3, S, S] float32, coverage [B, P, K], concepts [B, C]."""
    grey_BHW = torch.stack([e.pixels for e in examples]).float()
    pixels = grey_BHW.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    cover = torch.stack([e.cover for e in examples]).float()
    concepts = torch.stack([e.concepts for e in examples])
    return pixels, cover, concepts


def channel_pos_weight(examples: Sequence[VisionExample], cap: float = 50.0) -> torch.Tensor:
    """Per-channel BCE positive weight of a corpus: see :func:`coverage_pos_weight`."""
    total_K = torch.zeros(len(DENSE_CHANNELS))
    n = 0
    for e in examples:
        total_K += e.cover.float().sum(0)
        n += e.cover.shape[0]
    return coverage_pos_weight(total_K, n, cap)


def coverage_pos_weight(covered_K: torch.Tensor, patches: int, cap: float = 50.0) -> torch.Tensor:
    """Uncovered over covered patch area per channel, clamped to [1, cap], given the summed
    coverage ``covered_K`` over ``patches`` patches.

    Small lesions (a nodule covers ~1 of 256 patches) would otherwise add almost nothing to
    the dense loss, which is what kept them unlearned in the unweighted runs.
    """
    pos = covered_K.clamp_min(1e-6)
    return ((patches - covered_K) / pos).clamp(1.0, cap)
