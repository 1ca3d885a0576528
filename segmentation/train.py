"""``python -m segmentation.train --model {unet,ssn,ssn-diag,semantic-gan} --data ROOT ...``.

Trains one model on one dataset's train split. Each step draws a batch of images and, per
image, one random annotator's mask (PHiSeg's ``_select_random_label``, how SSN used LIDC's four
annotations), with random flips. The run directory holds ``cfg.json``, ``log.jsonl`` (one JSON
object per logged step), ``checkpoint.pt`` (model, optimiser and RNG state, written
atomically every ``checkpoint_every`` steps; a rerun resumes from it) and the final
``model.pt`` that ``segmentation.evaluate`` reads. ``--labelled-fraction`` trains on a seeded
subset of the labelled images only, ``--train-subset sex=F:0.9`` on a deliberately imbalanced
training set (``segmentation.subsets``). ``--model semantic-gan`` hands the whole command line
to ``segmentation.semantic_gan.train`` (its own config, ``--help`` lists it).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from segmentation.data import dataset_classes, stack
from segmentation.io import DataError
from segmentation.models import ModelSpec, build_model, save_model, training_loss
from segmentation.runs import (
    TrainResult,
    check_resumable,
    load_training_samples,
)
from segmentation.ssn import SSNConfig
from segmentation.subsets import labelled_indices, parse_subset
from segmentation.unet import UNetConfig
from workbench.config import ConfigError, parse_config, save_config, to_dict

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Train a U-Net, SSN or diagonal SSN on a 2-D segmentation dataset."""

    model: Literal["unet", "ssn", "ssn-diag", "semantic-gan"] = "ssn"
    """Which model: deterministic U-Net (CE), low-rank SSN, or the diagonal SSN ablation
    (semantic-gan has its own flags: --model semantic-gan --help)."""
    data: Path = Path("runs/demo/phantom")
    """Dataset root (phantom root, JSRT/Montgomery/Shenzhen folder, or LIDC pickle)."""
    dataset: Literal[
        "phantom-lungs", "phantom-nodules", "jsrt", "montgomery", "shenzhen", "lidc"
    ] = "phantom-nodules"
    """Dataset reader to use."""
    out: Path = Path("runs/seg/ssn")
    """Run directory for cfg.json, log.jsonl, checkpoint.pt and model.pt."""
    image_size: int = 64
    """Side of the (square) network input in px."""
    crop_size: int = 128
    """Phantom nodules: side of the crop around the nodule, in source px, before resizing."""
    num_classes: int = 2
    """Classes including background (every bundled reader produces 2; 3 with lung_class)."""
    lung_class: bool = False
    """phantom-nodules: label the lung field as a class of its own, so the classes are
    background / lung field / nodule (set num_classes = 3). The lung-field target is the
    phantom's lung mask, the same for every annotator; the nodule stays per annotator and is
    what the headline metrics (Dice, GED, diversity) score."""
    channels: tuple[int, ...] = (16, 32, 64, 128)
    """U-Net channels per level, finest first (PHiSeg LIDC: 32,64,128,192,192,192,192)."""
    convs_per_level: int = 2
    """3x3 convolutions per U-Net level."""
    norm: Literal["batch", "group", "none"] = "batch"
    """U-Net normalisation layer."""
    recomb_layers: int = 2
    """1x1 recombination convolutions after the U-Net."""
    recomb_channels: int = 32
    """Width of the recombination convolutions."""
    rank: int = 10
    """SSN covariance rank R."""
    epsilon: float = 1e-5
    """SSN diagonal floor."""
    mc_samples: int = 20
    """SSN Monte-Carlo samples per image in the loss."""
    antithetic: bool = True
    """SSN antithetic sample pairs in the loss."""
    factor_init_scale: float = 1.0
    """SSN: scale of the covariance-factor convolution's initial weights (below 1 starts the
    model near the deterministic U-Net)."""
    use_roi: bool = False
    """Mask the SSN covariance outside the dataset's region of interest (phantom nodules)."""
    mean_warmup_steps: int = 0
    """SSN: first train only the logit mean with cross-entropy for this many steps (the
    official toy script's schedule; helps short CPU runs)."""
    steps: int = 2000
    """Optimiser steps (including the warm-up)."""
    batch_size: int = 12
    """Images per step (PHiSeg LIDC: 12)."""
    lr: float = 1e-3
    """Adam learning rate (constant, as in the SSN LIDC config)."""
    weight_decay: float = 0.0
    """Adam L2 weight decay (the official SSN LIDC config uses 1e-4)."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value (None: no clipping)."""
    augment: bool = True
    """Random left-right and up-down flips."""
    seed: int = 0
    """Seed for initialisation, batches, annotators and augmentation."""
    max_time_s: float | None = None
    """Stop after this many seconds of training (the model is still saved)."""
    checkpoint_every: int = 200
    """Steps between checkpoints."""
    log_every: int = 20
    """Steps between log.jsonl lines."""
    labelled_fraction: float = 1.0
    """Train on this share of the training images only (a seeded subset, nested across
    fractions; the rest count as unlabelled and are unused by these supervised models)."""
    train_subset: str | None = None
    """Restrict the training split first, ATTRIBUTE=VALUE:SHARE (e.g. 'sex=F:0.9')."""
    train_subset_size: int | None = None
    """Size of that restricted set (None: as large as the split allows)."""
    resume: bool = True
    """Continue from out/checkpoint.pt if it exists."""
    threads: int | None = None
    """torch CPU threads (None: leave torch's default)."""
    progress: bool = True
    """Show a progress bar."""

    def validate(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("TrainConfig: steps >= 0, batch_size >= 1, lr > 0 required")
        if self.weight_decay < 0 or (self.grad_clip is not None and self.grad_clip <= 0):
            raise ConfigError("TrainConfig: weight_decay >= 0 and grad_clip > 0 required")
        if self.model == "semantic-gan":
            raise ConfigError(
                "TrainConfig: semantic-gan is configured by "
                "segmentation.semantic_gan.config.SemanticGANConfig (seg-train dispatches to it)"
            )
        self._validate_classes()
        if not 0 < self.labelled_fraction <= 1:
            raise ConfigError("TrainConfig.labelled_fraction must be in (0, 1]")
        if self.train_subset:
            try:
                parse_subset(self.train_subset)
            except ValueError as exc:
                raise ConfigError(f"TrainConfig: {exc}") from None
        if self.image_size % 2 ** (len(self.channels) - 1):
            raise ConfigError(
                f"TrainConfig.image_size {self.image_size} must be divisible by "
                f"2**(len(channels)-1) = {2 ** (len(self.channels) - 1)}"
            )
        spec = self.spec()
        try:
            spec.unet.validate()
            spec.ssn.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _validate_classes(self) -> None:
        try:
            names = dataset_classes(self.dataset, self.lung_class)
        except DataError as exc:
            raise ConfigError(f"TrainConfig.lung_class: {exc}") from None
        if self.lung_class and self.num_classes != len(names):
            raise ConfigError(
                f"TrainConfig.lung_class needs num_classes = {len(names)} "
                f"({' / '.join(names)}), got {self.num_classes}"
            )

    def spec(self) -> ModelSpec:
        unet = UNetConfig(
            1,
            tuple(self.channels),
            self.convs_per_level,
            self.norm,
            self.recomb_layers,
            self.recomb_channels,
        )
        ssn = SSNConfig(
            self.rank,
            self.epsilon,
            self.model == "ssn-diag",
            self.mc_samples,
            self.antithetic,
            self.factor_init_scale,
        )
        return ModelSpec(self.model, self.num_classes, unet, ssn)


class Batches:
    """Random batches with one random annotator per image, and random flips."""

    def __init__(self, samples, batch_size: int, augment: bool, rng: np.random.Generator):
        self.images, self.masks, self.rois = stack(samples)
        self.batch_size, self.augment, self.rng = batch_size, augment, rng

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        N, K = self.masks.shape[:2]
        idx = self.rng.integers(0, N, self.batch_size)
        ann = self.rng.integers(0, K, self.batch_size)
        x, y = self.images[idx], self.masks[idx, ann]
        roi = None if self.rois is None else self.rois[idx]
        if self.augment:
            for axis in (-1, -2):
                flip = self.rng.random(self.batch_size) < 0.5
                x[flip] = np.flip(x[flip], axis)
                y[flip] = np.flip(y[flip], axis)
                if roi is not None:
                    roi[flip] = np.flip(roi[flip], axis)
        as_t = torch.from_numpy
        return as_t(x.copy()), as_t(y.astype(np.int64)), None if roi is None else as_t(roi.copy())


def _resume(cfg: TrainConfig, model, opt, rng_state: dict) -> int:
    """Load out/checkpoint.pt into model/optimiser; drop log lines after it. Returns step."""
    ckpt_path = cfg.out / "checkpoint.pt"
    if not (cfg.resume and ckpt_path.exists()):
        (cfg.out / "log.jsonl").unlink(missing_ok=True)
        return 0
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["state_dict"])
    opt.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["torch_rng"])
    rng_state["numpy"] = ckpt["numpy_rng"]
    step = int(ckpt["step"])
    log_path = cfg.out / "log.jsonl"
    if log_path.exists():
        kept = [
            ln
            for ln in log_path.read_text().splitlines()
            if ln.strip() and json.loads(ln).get("step", 0) <= step
        ]
        tmp = log_path.with_name(log_path.name + ".tmp")  # a kill here must not empty the log
        tmp.write_text("".join(ln + "\n" for ln in kept))
        tmp.replace(log_path)
    log.info("resumed %s at step %d", ckpt_path, step)
    return step


def _checkpoint(cfg, model, opt, step: int, rng: np.random.Generator) -> None:
    tmp = cfg.out / "checkpoint.pt.tmp"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": rng.bit_generator.state,
        },
        tmp,
    )
    tmp.replace(cfg.out / "checkpoint.pt")


class _State(NamedTuple):
    spec: ModelSpec
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    batches: Batches
    step: int


def _setup(cfg: TrainConfig) -> _State:
    """Config checks, data, model, optimiser, and the resumed step (0 for a fresh run)."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    check_resumable(cfg)
    save_config(cfg, cfg.out / "cfg.json")
    samples = load_training_samples(cfg)
    samples = [samples[i] for i in labelled_indices(len(samples), cfg.labelled_fraction, cfg.seed)]
    torch.manual_seed(cfg.seed)
    spec = cfg.spec()
    model = build_model(spec)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng_state: dict = {}
    step = _resume(cfg, model, opt, rng_state)
    rng = np.random.default_rng(cfg.seed)
    if "numpy" in rng_state:
        rng.bit_generator.state = rng_state["numpy"]
    return _State(spec, model, opt, Batches(samples, cfg.batch_size, cfg.augment, rng), step)


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) training as configured; write model.pt; return a summary."""
    spec, model, opt, batches, step = _setup(cfg)
    use_roi = cfg.use_roi and cfg.model != "unet"
    t0, loss_value = time.monotonic(), float("nan")
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, disable=not cfg.progress, desc=f"train {cfg.model}")
    with open(cfg.out / "log.jsonl", "a") as logf:
        while step < cfg.steps:
            if cfg.max_time_s is not None and time.monotonic() - t0 > cfg.max_time_s:
                log.info("time budget %.0fs reached at step %d", cfg.max_time_s, step)
                break
            x, y, roi = batches.next()
            warm = step < cfg.mean_warmup_steps
            loss = training_loss(model, x, y, roi if use_roi else None, mean_only=warm)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step, loss_value = step + 1, loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4g}")
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = {
                    "step": step,
                    "loss": loss_value,
                    "mean_only": warm,
                    "elapsed_s": round(time.monotonic() - t0, 3),
                }
                logf.write(json.dumps(row) + "\n")
                logf.flush()
            if step % cfg.checkpoint_every == 0:
                _checkpoint(cfg, model, opt, step, batches.rng)
    bar.close()
    _checkpoint(cfg, model, opt, step, batches.rng)
    save_model(
        cfg.out / "model.pt", model, spec, step=step, dataset=cfg.dataset, config=to_dict(cfg)
    )
    return TrainResult(cfg.out, step, loss_value, time.monotonic() - t0)


def wants_semantic_gan(argv: list[str] | None) -> bool:
    """True when ``--model semantic-gan`` is given, or a ``--preset`` names that model."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model")
    pre.add_argument("--preset", type=Path)
    ns, _ = pre.parse_known_args(argv)
    if ns.model is not None or ns.preset is None:
        return ns.model == "semantic-gan"
    try:
        return tomllib.loads(ns.preset.read_text()).get("model") == "semantic-gan"
    except (OSError, tomllib.TOMLDecodeError):
        return False  # the regular parser reports the unreadable preset


def main(argv: list[str] | None = None) -> int:
    if wants_semantic_gan(argv):
        from segmentation.semantic_gan.train import main as semantic_gan_main

        return semantic_gan_main(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(TrainConfig, argv, prog="python -m segmentation.train")
    result = train(cfg)
    print(
        json.dumps(
            {
                "out": str(result.out),
                "steps": result.steps,
                "last_loss": result.last_loss,
                "elapsed_s": round(result.elapsed_s, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
