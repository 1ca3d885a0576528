"""Tiny datasets written in the phantom benchmark's on-disk layout, for tests and smoke runs.

The real benchmark comes from ``workbench.cxr.phantom``; this writer produces the same layout
(``files/.../<dicom_id>.jpg``, ``masks/.../<dicom_id>/<name>.png``, ``phantom-studies.jsonl``)
with simple geometry so the segmentation code can be exercised without it: two dark
elliptical lungs in a bright body, a nodule disc in one lung, and four annotators who
disagree the way graders do (one tight, one generous, one shifted, one who sometimes leaves
out a faint satellite lobe).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def _ellipse(size: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _study_masks(rng: np.random.Generator, size: int, nodule: bool) -> dict[str, np.ndarray]:
    s = size
    right = _ellipse(s, 0.5 * s, 0.3 * s, 0.3 * s, 0.13 * s)  # patient's right = image left
    left = _ellipse(s, 0.5 * s, 0.7 * s, 0.3 * s, 0.12 * s)
    masks = {
        "right_lung": right,
        "left_lung": left,
        "heart": _ellipse(s, 0.62 * s, 0.55 * s, 0.12 * s, 0.12 * s) & ~right,
    }
    if nodule:
        cx = (0.3 if rng.random() < 0.5 else 0.7) * s + rng.uniform(-0.04, 0.04) * s
        cy = rng.uniform(0.4, 0.6) * s
        r = rng.uniform(0.05, 0.08) * s
        core = _ellipse(s, cy, cx, r, r)
        lobe = _ellipse(s, cy - 0.8 * r, cx + 0.8 * r, 0.6 * r, 0.6 * r)  # faint satellite
        masks["nodule"] = core | lobe
        masks["nodule_annotator_0"] = _ellipse(s, cy, cx, 0.8 * r, 0.8 * r)
        masks["nodule_annotator_1"] = _ellipse(s, cy, cx, 1.25 * r, 1.25 * r) | lobe
        masks["nodule_annotator_2"] = _ellipse(s, cy + 0.3 * r, cx - 0.3 * r, r, r)
        masks["nodule_annotator_3"] = core | (lobe if rng.random() < 0.5 else False)
    return masks


def _render(rng: np.random.Generator, masks: dict[str, np.ndarray], size: int) -> np.ndarray:
    body = _ellipse(size, 0.5 * size, 0.5 * size, 0.48 * size, 0.46 * size)
    img = 0.15 + 0.55 * body
    img = np.where(masks["right_lung"] | masks["left_lung"], 0.25, img)
    img = np.where(masks["heart"], 0.65, img)
    if "nodule" in masks:
        img = np.where(masks["nodule"], 0.6, img)
    img = img + rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_phantom_fixture(
    root: Path, studies: int = 8, size: int = 64, seed: int = 0, nodule_fraction: float = 1.0
) -> Path:
    """Write ``studies`` frontal studies in the phantom layout under ``root``; return root.

    Splits cycle train/train/validate/test so small fixtures still have every split; sex
    alternates F/M, ages spread over 30-85 and the habitus cycles thin/average/obese.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    splits = ("train", "train", "validate", "test")
    records = []
    for i in range(studies):
        subject, study = 10000000 + i, 50000000 + i
        dicom = f"d{i:04d}"
        rel = Path(f"p{str(subject)[:2]}") / f"p{subject}" / f"s{study}"
        masks = _study_masks(rng, size, nodule=rng.random() < nodule_fraction)
        (root / "files" / rel).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_render(rng, masks, size)).save(root / "files" / rel / f"{dicom}.jpg")
        (root / "masks" / rel / dicom).mkdir(parents=True, exist_ok=True)
        for name, m in masks.items():
            Image.fromarray((m * 255).astype(np.uint8)).save(
                root / "masks" / rel / dicom / f"{name}.png"
            )
        records.append(
            {
                "subject_id": subject,
                "study_id": study,
                "split": splits[i % 4],
                "view": "PA",
                "subject": {
                    "sex": "F" if i % 2 == 0 else "M",
                    "age": int(30 + (i * 7) % 56),
                    "habitus": {"build": ("thin", "average", "obese")[i % 3]},
                },
            }
        )
    (root / "cfg.json").write_text(json.dumps({"size": size, "studies": studies, "seed": seed}))
    with open(root / "phantom-studies.jsonl", "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    return root
