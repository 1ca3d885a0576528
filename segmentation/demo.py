"""The segmentation stage of ``python -m workbench demo``: small models on the phantom, scored.

:func:`run` trains, within ``budget_s`` seconds of wall time in all, a U-Net and a tiny
SemanticGAN (32 px, a few seconds of GAN and encoder training, 10 test-time optimisation
steps: it shows the pipeline, not the model's quality; ``seg-study`` is the real comparison) on
the phantom's lung fields and a U-Net and an SSN on its nodule crops (four disagreeing
annotators; the SSN also labels the lung field in the crop, :data:`PHASE_OPTIONS`), then
evaluates each on the test split and returns a flat dict of headline metrics. Results also go
to ``out_dir/summary.json`` and, if ``db`` is given, to the ``segmentation_results`` table.
A rerun reuses finished models (``model.pt``) and only re-evaluates.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from segmentation.data import DataError
from segmentation.evaluate import EvalConfig, evaluate
from segmentation.train import TrainConfig, train
from workbench.io import torch_threads, write_json

log = logging.getLogger(__name__)

# Share of the budget per training phase; each phase gets its share of the time still left.
SHARES = {"lungs-unet": 0.2, "lungs-semantic-gan": 0.2, "nodules-unet": 0.25, "nodules-ssn": 0.4}
EVAL_RESERVE = 0.15  # share of the budget kept for data loading and evaluation
# DEMO_THREADS_NOTE: the demo trains on one torch thread. Its 64 px convolutions gain little
# from a second thread on an idle 2-core machine, and on a busy one two OpenMP threads that
# spin-wait for each other made steps ~5-10x slower in our runs.
DEMO_MODEL = {"channels": (8, 16, 32, 64), "batch_size": 8, "lr": 2e-3, "mean_warmup_steps": 60}
# Input side per task: lungs fill the image; nodule crops (a quarter of the phantom's side, so
# the nodule covers ~5 % of the crop) are shrunk to 32 px so a short budget buys 4x the steps.
IMAGE_SIZE = {"phantom-lungs": 64, "phantom-nodules": 32}
# SemanticGAN in the demo: 32 px, narrow, 70 % of its share on the GAN, 30 % on the encoder.
DEMO_GAN = {
    "image_size": 32,
    "latent_dim": 32,
    "n_mlp": 2,
    "channel_base": 512,
    "channel_max": 32,
    "dseg_ndf": 8,
    "enc_width": 8,
    "enc_feature_dim": 32,
    "batch_size": 8,
    "tto_steps": 10,
}
GAN_PHASE_SPLIT = 0.7
# The nodule SSN also labels the lung field (background / lung field / nodule; the low-rank
# normal is over pixel x class logits): its pre-head features, which the demo's seg-latents
# step records, then keep the lung field as well as the nodule. Its nodule metrics are scored
# on the nodule class alone, comparable with the two-class U-Net's (segmentation.evaluate).
# Keyed by phase, the name of its run directory.
PHASE_OPTIONS = {"nodules-ssn": {"lung_class": True, "num_classes": 3}}


def nodule_crop(phantom_root: Path) -> int:
    """Nodule window in phantom px: a quarter of the image side (64 px of the demo's 256 px)."""
    try:
        size = int(json.loads((Path(phantom_root) / "cfg.json").read_text())["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 64
    return max(32, size // 4)


def _train_semantic_gan(phantom_root: Path, run_dir: Path, budget_s: float, seed: int) -> None:
    """The demo's tiny SemanticGAN on the lungs: GAN then encoder, each on a time budget."""
    from segmentation.semantic_gan.config import SemanticGANConfig
    from segmentation.semantic_gan.train import train as train_gan

    cfg = SemanticGANConfig(
        data=phantom_root,
        dataset="phantom-lungs",
        out=run_dir,
        steps=100_000,
        enc_steps=100_000,
        max_time_s=budget_s * GAN_PHASE_SPLIT,
        enc_max_time_s=budget_s * (1 - GAN_PHASE_SPLIT),
        progress=False,
        seed=seed,
        checkpoint_every=50,
        **DEMO_GAN,
    )
    train_gan(cfg)


def _train_supervised(phantom_root, run_dir, model, dataset, budget_s, seed) -> None:
    """A demo-sized U-Net or SSN on a time budget (with its :data:`PHASE_OPTIONS`)."""
    cfg = TrainConfig(
        model=model,
        data=phantom_root,
        dataset=dataset,
        out=run_dir,
        steps=100_000,
        max_time_s=budget_s,
        progress=False,
        seed=seed,
        checkpoint_every=50,
        crop_size=nodule_crop(phantom_root),
        image_size=IMAGE_SIZE[dataset],
        **DEMO_MODEL,
        **PHASE_OPTIONS.get(run_dir.name, {}),
    )
    train(cfg)


def _train_and_eval(
    phantom_root: Path,
    run_dir: Path,
    model: str,
    dataset: str,
    budget_s: float,
    db: Path | None,
    eval_images: int,
    samples: int,
    seed: int,
) -> dict:
    if not (run_dir / "model.pt").exists():
        if model == "semantic-gan":
            _train_semantic_gan(phantom_root, run_dir, budget_s, seed)
        else:
            _train_supervised(phantom_root, run_dir, model, dataset, budget_s, seed)
    result = evaluate(
        EvalConfig(
            model_dir=run_dir,
            data=phantom_root,
            dataset=dataset,
            split="test",
            num_samples=samples,
            max_images=eval_images,
            db=db,
            seed=seed,
        )
    )
    return {r["metric"]: r["value"] for r in result["rows"] if r["subgroup"] == "all"}


def _phase_budget(remaining: list[tuple[str, str, str]], time_left_s: float) -> float:
    """Training seconds for the next phase: its share of the time left, evaluation reserved."""
    shares = [SHARES[f"{task}-{model}"] for task, model, _ in remaining]
    return max(2.0, time_left_s * shares[0] / (sum(shares) + EVAL_RESERVE))


def run(
    phantom_root: Path,
    out_dir: Path,
    budget_s: float = 110.0,
    db: Path | None = None,
    seed: int = 0,
    eval_images: int = 24,
    num_samples: int = 50,
) -> dict:
    """Train and score small segmentation models on the phantom; return headline metrics.

    Keys: ``lungs_{unet,semantic_gan}_{dice,iou}``, ``nodules_{unet,ssn}_{dice,ged,
    sample_diversity,hm_iou}`` (of the nodule), ``nodules_ssn_dice_lung_field``,
    ``nodules_annotator_diversity``, ``elapsed_s``; a task the
    phantom has no train/test images for is reported under ``skipped``.
    """
    with torch_threads(1):  # see DEMO_THREADS_NOTE
        return _run(Path(phantom_root), Path(out_dir), budget_s, db, seed, eval_images, num_samples)


def _run(
    phantom_root: Path,
    out_dir: Path,
    budget_s: float,
    db: Path | None,
    seed: int,
    eval_images: int,
    num_samples: int,
) -> dict:
    t0 = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict = {"skipped": []}
    keep = ("dice", "iou", "ged", "sample_diversity", "hm_iou", "ece", "dice_lung_field")
    plan = [
        ("lungs", "unet", "phantom-lungs"),
        ("lungs", "semantic-gan", "phantom-lungs"),
        ("nodules", "unet", "phantom-nodules"),
        ("nodules", "ssn", "phantom-nodules"),
    ]
    for i, (task, model, dataset) in enumerate(plan):
        if dataset in metrics["skipped"]:
            continue
        share = _phase_budget(plan[i:], budget_s - (time.monotonic() - t0))
        try:
            res = _train_and_eval(
                phantom_root,
                out_dir / f"{task}-{model}",
                model,
                dataset,
                share,
                db,
                eval_images,
                num_samples,
                seed,
            )
        except DataError as exc:  # e.g. a phantom without nodules, or an empty split
            log.warning("segmentation demo: %s skipped: %s", dataset, exc)
            metrics["skipped"].append(dataset)
            continue
        name = model.replace("-", "_")
        metrics.update({f"{task}_{name}_{k}": round(res[k], 4) for k in keep if k in res})
        if task == "nodules":
            metrics["nodules_annotator_diversity"] = round(res["annotator_diversity"], 4)
    metrics["elapsed_s"] = round(time.monotonic() - t0, 1)
    write_json(out_dir / "summary.json", metrics, sort_keys=False)
    return metrics
