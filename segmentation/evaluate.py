"""``python -m segmentation.evaluate --model-dir RUN --data ROOT --dataset NAME [--db F]``.

Scores a trained model on one split the way SSN's LIDC evaluation does: the point prediction
is the argmax of the mean logits; distribution metrics use ``num_samples`` (100) samples per
image against all of the image's annotator masks. Per image we compute Dice and IoU of the
prediction (mean over annotators), Dice per annotator, ECE (mean over annotators), GED
(D^2 with d = 1 - IoU), sample diversity E[d(S,S')], the annotators' own diversity E[d(Y,Y')]
and Hungarian-matched IoU. A model with more than two classes (the phantom nodules with
``lung_class``) is scored on its task's class, the last, as a two-class problem, plus
``dice_<class>`` for each other foreground class (``dice_lung_field``). Results are averaged
per subgroup (all, sex, age group), written to ``eval-<dataset>-<split>.json`` in the run
directory and, with ``--db``, to the DuckDB table ``segmentation_results`` (replacing that
model+dataset's rows).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from segmentation import metrics as M
from segmentation.data import DataError, SegSample, load_dataset
from segmentation.io import TWO_CLASSES, class_names, task_mask
from segmentation.models import Prediction, load_model, predict
from segmentation.results_db import ResultRow, write_results
from workbench.config import parse_config
from workbench.io import write_text

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Evaluate a trained segmentation model; optionally store results in DuckDB."""

    model_dir: Path = Path("runs/seg/ssn")
    """Training run directory (or its model.pt)."""
    data: Path = Path("runs/demo/phantom")
    """Dataset root."""
    dataset: Literal[
        "phantom-lungs", "phantom-nodules", "jsrt", "montgomery", "shenzhen", "lidc"
    ] = "phantom-nodules"
    """Dataset reader."""
    split: str = "test"
    """Split to evaluate (train, validate, test)."""
    num_samples: int = 100
    """Model samples per image for GED, diversity, HM-IoU and SSN probabilities."""
    image_size: int | None = None
    """Network input size; None: the size the model was trained at."""
    crop_size: int | None = None
    """Phantom nodule crop; None: as in training."""
    use_roi: bool | None = None
    """Mask the SSN covariance by the ROI; None: as in training."""
    batch_size: int = 8
    """Images per forward pass."""
    max_images: int | None = None
    """Evaluate only the first N images of the split (smoke runs)."""
    model_name: str | None = None
    """Name in the results table; None: the model kind (unet, ssn, ssn-diag)."""
    dataset_name: str | None = None
    """Dataset name in the results table; None: the --dataset value."""
    db: Path | None = None
    """DuckDB file to write segmentation_results into (e.g. runs/demo/features.duckdb)."""
    seed: int = 0
    """Seed of the sampling noise."""
    tto_steps: int | None = None
    """SemanticGAN: test-time optimisation steps per image; None: as saved at training."""


def task_view(pred: Prediction, i: int, ann_KHW: torch.Tensor, C: int) -> tuple:
    """(point, samples, probs, annotations) of image ``i`` for the headline metrics.

    With more than two classes they score the task's class alone (the last: the nodule of
    background / lung field / nodule), as a two-class problem: label maps become task-class
    masks and the probabilities [1 - p, p] with p that class's. So a three-class model's Dice,
    GED and diversity compare with a two-class model's on the same task. Two classes: as is.
    """
    point, samples, probs = pred.prediction[i], pred.samples[:, i], pred.probs[i]
    if C <= 2:
        return point, samples, probs, ann_KHW
    p = probs[C - 1]
    binary = (point, samples, ann_KHW)
    point, samples, ann_KHW = (task_mask(t, C).long() for t in binary)
    return point, samples, torch.stack([1 - p, p]), ann_KHW


def other_class_dice(pred: Prediction, i: int, ann_KHW, C: int, names) -> dict[str, float]:
    """``dice_<class>`` of the point prediction for each foreground class but the task's
    (mean over annotators); empty for two classes."""
    point, out = pred.prediction[i], {}
    for c in range(1, C - 1):
        name = names[c] if len(names) == C else f"class_{c}"
        dice_k = M.per_annotator_dice((point == c).long(), (ann_KHW == c).long(), 2)
        out[f"dice_{name}"] = float(np.mean(dice_k))
    return out


def image_metrics(
    pred: Prediction, i: int, annotations_KHW: np.ndarray, C: int, names=TWO_CLASSES
) -> dict:
    """All per-image metrics for image ``i`` of a predicted batch (``names``: the classes)."""
    full = torch.from_numpy(annotations_KHW.astype(np.int64))
    point, samples, probs, ann = task_view(pred, i, full, C)
    C_task = 2 if C > 2 else C
    ged = M.generalised_energy_distance(samples, ann, C_task)
    dice_k = M.per_annotator_dice(point, ann, C_task)
    out = {
        "dice": float(np.mean(dice_k)),
        "iou": float(M.pairwise_iou(point[None], ann, C_task).mean()),
        "ged": ged.ged,
        "sample_diversity": ged.d_ss,
        "annotator_diversity": ged.d_yy,
        "sample_annotator_distance": ged.d_sy,
        "hm_iou": M.hungarian_matched_iou(samples, ann, C_task),
        "ece": float(np.mean([M.expected_calibration_error(probs, a) for a in ann])),
    }
    out.update({f"dice_annotator_{k}": d for k, d in enumerate(dice_k)})
    out.update(other_class_dice(pred, i, full, C, names))
    return out


def subgroups_of(meta: dict) -> list[str]:
    """'all' plus 'sex=..', 'age=..' and 'habitus=..' where the sample's attributes are known."""
    groups = ["all"]
    if meta.get("sex"):
        groups.append(f"sex={meta['sex']}")
    if meta.get("age_group"):
        groups.append(f"age={meta['age_group']}")
    if meta.get("habitus"):
        groups.append(f"habitus={meta['habitus']}")
    return groups


def aggregate(per_image: list[dict]) -> list[ResultRow]:
    """Mean of every metric per subgroup."""
    buckets: dict[str, list[dict]] = defaultdict(list)
    for rec in per_image:
        for g in subgroups_of(rec["meta"]):
            buckets[g].append(rec["metrics"])
    rows = []
    for g, recs in sorted(buckets.items()):
        for metric in sorted(recs[0]):
            vals = [r[metric] for r in recs if metric in r]
            rows.append(ResultRow(g, metric, float(np.mean(vals)), len(vals)))
    return rows


def evaluate_samples(
    model,
    spec,
    samples: list[SegSample],
    num_samples: int,
    batch_size: int,
    use_roi: bool,
    seed: int = 0,
) -> list[dict]:
    """Per-image metrics (with meta) for ``samples``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        x = torch.from_numpy(np.stack([s.image for s in chunk])[:, None].astype(np.float32))
        roi = None
        if use_roi and chunk[0].roi is not None:
            roi = torch.from_numpy(np.stack([s.roi for s in chunk]))
        pred = predict(model, x, num_samples, roi, generator=gen)
        for i, s in enumerate(chunk):
            out.append(
                {
                    "id": s.meta.get("id"),
                    "meta": s.meta,
                    "metrics": image_metrics(
                        pred, i, s.masks, spec.num_classes, class_names(s.meta)
                    ),
                }
            )
    return out


def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluation; return {'rows': [...], 'per_image': [...], ...} and write outputs."""
    model, spec, extra = load_model(cfg.model_dir)
    if cfg.tto_steps is not None and hasattr(model, "inference"):
        model.inference.steps = cfg.tto_steps
    train_cfg = extra.get("config") or {}
    size = cfg.image_size or int(train_cfg.get("image_size", 128))
    crop = cfg.crop_size or int(train_cfg.get("crop_size", 128))
    use_roi = cfg.use_roi if cfg.use_roi is not None else bool(train_cfg.get("use_roi", False))
    lung_class = bool(train_cfg.get("lung_class", False))
    samples = load_dataset(cfg.dataset, cfg.data, cfg.split, size, crop, lung_class=lung_class)
    if cfg.max_images is not None:
        samples = samples[: cfg.max_images]
    if not samples:
        raise DataError(f"{cfg.data}: no {cfg.dataset} images in split '{cfg.split}'")
    per_image = evaluate_samples(
        model,
        spec,
        samples,
        cfg.num_samples,
        cfg.batch_size,
        use_roi and spec.kind != "unet",
        cfg.seed,
    )
    rows = aggregate(per_image)
    name, dataset = cfg.model_name or spec.kind, cfg.dataset_name or cfg.dataset
    run_dir = cfg.model_dir if cfg.model_dir.is_dir() else cfg.model_dir.parent
    result = {
        "model": name,
        "dataset": dataset,
        "split": cfg.split,
        "kind": spec.kind,
        "num_samples": cfg.num_samples,
        "rows": [r._asdict() for r in rows],
        "per_image": per_image,
    }
    path = run_dir / f"eval-{cfg.dataset}-{cfg.split}.json"
    write_text(path, json.dumps(result, indent=1, default=str))
    if cfg.db is not None:
        ckpt = str(cfg.model_dir / "model.pt" if cfg.model_dir.is_dir() else cfg.model_dir)
        write_results(cfg.db, name, dataset, rows, cfg.split, cfg.num_samples, ckpt)
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(EvalConfig, argv, prog="python -m segmentation.evaluate")
    result = evaluate(cfg)
    summary = {r["metric"]: round(r["value"], 4) for r in result["rows"] if r["subgroup"] == "all"}
    print(json.dumps({"model": result["model"], "dataset": result["dataset"], **summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
