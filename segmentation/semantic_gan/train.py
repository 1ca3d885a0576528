"""``seg-train --model semantic-gan``: the GAN phase, then the encoder phase, resumable.

Data: the training split (optionally restricted by ``train_subset``); every image feeds the
image discriminator and the encoder's unlabelled step, the seeded ``labelled_fraction`` of
them (``segmentation.subsets.labelled_indices``, the same images the U-Net gets for that
seed) feed the image+mask discriminator and the encoder's label step. Images are scaled to
[-1, 1]; each draw takes one random annotator's mask, and random horizontal flips.

The run directory holds ``cfg.json``, ``log.jsonl`` (one line per logged iteration, with
``phase`` gan|encoder and a global ``step``: GAN iterations first, encoder iterations after),
``checkpoint.pt`` (all networks, optimisers, the path-length mean and RNG states, written
atomically; a rerun resumes, also across the phase boundary), ``samples.png`` (EMA samples
with their masks) and ``model.pt`` (EMA generator + encoder, read by ``seg-evaluate``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from segmentation.data import stack
from segmentation.models import save_model
from segmentation.runs import (
    RESUMABLE_CHANGES,
    TrainResult,
    check_resumable,
    load_training_samples,
)
from segmentation.semantic_gan import gan_steps as S
from segmentation.semantic_gan.config import SemanticGANConfig
from segmentation.semantic_gan.encoder_steps import build_encoder_phase, encoder_iteration
from segmentation.semantic_gan.generator import labels_to_seg_target
from segmentation.semantic_gan.inference import SemanticGANSegmenter
from segmentation.semantic_gan.samples import save_sample_grid
from segmentation.subsets import labelled_indices
from workbench.config import parse_config, save_config, to_dict

log = logging.getLogger(__name__)
ALLOWED_CHANGES = RESUMABLE_CHANGES | {"enc_steps", "enc_max_time_s", "tto_steps", "tto_lr"}


class GANBatches:
    """Random unlabelled image batches and labelled (image, label) batches in [-1, 1]."""

    def __init__(self, samples, labelled: np.ndarray, augment: bool, rng: np.random.Generator):
        images, self.masks, _ = stack(samples)
        self.images = images * 2 - 1
        self.labelled, self.augment, self.rng = labelled, augment, rng

    def _flip(self, *arrays):
        flip = self.rng.random(len(arrays[0])) < 0.5 if self.augment else None
        out = []
        for a in arrays:
            a = a.copy()
            if flip is not None:
                a[flip] = np.flip(a[flip], -1)
            out.append(torch.from_numpy(np.ascontiguousarray(a)))
        return out

    def unlabelled(self, n: int) -> torch.Tensor:
        (x,) = self._flip(self.images[self.rng.integers(0, len(self.images), n)])
        return x

    def labelled_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.labelled[self.rng.integers(0, len(self.labelled), n)]
        ann = self.rng.integers(0, self.masks.shape[1], n)
        x, y = self._flip(self.images[idx], self.masks[idx, ann].astype(np.int64))
        return x, y


class Run(NamedTuple):
    cfg: SemanticGANConfig
    gan: S.GAN
    enc: object
    batches: GANBatches
    rng: np.random.Generator


def _setup(cfg: SemanticGANConfig) -> tuple[Run, dict]:
    """Config checks, data, networks, optimisers, and the resumed counters."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    check_resumable(cfg, ALLOWED_CHANGES)
    save_config(cfg, cfg.out / "cfg.json")
    samples = load_training_samples(cfg)
    labelled = labelled_indices(len(samples), cfg.labelled_fraction, cfg.seed)
    torch.manual_seed(cfg.seed)
    gan = S.build_gan(cfg)
    spec = cfg.spec()
    segmenter = SemanticGANSegmenter(spec)
    enc = build_encoder_phase(segmenter.encoder, gan.g_ema, cfg.enc_lr)
    rng = np.random.default_rng(cfg.seed)
    run = Run(cfg, gan, enc, GANBatches(samples, labelled, cfg.augment, rng), rng)
    counters = _resume(run)
    log.info("semantic-gan: %d training images, %d labelled", len(samples), len(labelled))
    return run, counters


def _state(run: Run, counters: dict) -> dict:
    gan, enc = run.gan, run.enc
    return {
        "counters": counters,
        "modules": {k: m.state_dict() for k, m in gan.modules().items()},
        "optimisers": {k: o.state_dict() for k, o in gan.optimisers().items()},
        "encoder": enc.encoder.state_dict(),
        "enc_label_opt": enc.label_opt.state_dict(),
        "enc_unlabel_opt": enc.unlabel_opt.state_dict(),
        "mean_path_length": gan.mean_path_length,
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": run.rng.bit_generator.state,
    }


def _checkpoint(run: Run, counters: dict) -> None:
    tmp = run.cfg.out / "checkpoint.pt.tmp"
    torch.save(_state(run, counters), tmp)
    tmp.replace(run.cfg.out / "checkpoint.pt")


def _resume(run: Run) -> dict:
    """Load out/checkpoint.pt if resuming; trim log lines past it. Returns the counters."""
    cfg, path = run.cfg, run.cfg.out / "checkpoint.pt"
    if not (cfg.resume and path.exists()):
        (cfg.out / "log.jsonl").unlink(missing_ok=True)
        return {"gan": 0, "encoder": 0}
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for k, m in run.gan.modules().items():
        m.load_state_dict(ckpt["modules"][k])
    for k, o in run.gan.optimisers().items():
        o.load_state_dict(ckpt["optimisers"][k])
    run.enc.encoder.load_state_dict(ckpt["encoder"])
    run.enc.label_opt.load_state_dict(ckpt["enc_label_opt"])
    run.enc.unlabel_opt.load_state_dict(ckpt["enc_unlabel_opt"])
    run.gan.mean_path_length = float(ckpt["mean_path_length"])
    torch.set_rng_state(ckpt["torch_rng"])
    run.rng.bit_generator.state = ckpt["numpy_rng"]
    counters = {k: int(v) for k, v in ckpt["counters"].items()}
    step = counters["gan"] + counters["encoder"]
    log_path = cfg.out / "log.jsonl"
    if log_path.exists():
        keep = [ln for ln in log_path.read_text().splitlines() if json.loads(ln)["step"] <= step]
        log_path.write_text("".join(ln + "\n" for ln in keep))
    log.info(
        "resumed %s at GAN step %d, encoder step %d", path, counters["gan"], counters["encoder"]
    )
    return counters


def gan_iteration(run: Run, i: int) -> dict:
    """Steps 1-5 of ``gan_steps`` for iteration ``i`` (0-based, regularisers at i % k == 0)."""
    cfg, gan, b, rng = run.cfg, run.gan, run.batches, run.rng
    B, D, n_lat = cfg.batch_size, cfg.latent_dim, gan.g.n_latent
    real = b.unlabelled(B)
    seg_img, seg_y = b.labelled_batch(B)
    seg_mask = labels_to_seg_target(seg_y, cfg.seg_dim)
    row = S.d_img_step(gan, real, S.latents(B, D, cfg.mixing, n_lat, rng))
    row |= S.d_seg_step(gan, seg_img, seg_mask, S.latents(B, D, cfg.mixing, n_lat, rng))
    if i % cfg.d_reg_every == 0:
        row |= S.d_reg_step(gan, real, seg_img, seg_mask, cfg.r1, cfg.d_reg_every)
    z = S.latents(B, D, cfg.mixing, n_lat, rng)
    row |= S.g_step(gan, seg_img, seg_mask, z, cfg.lambda_dseg_feat)
    if cfg.g_reg_every and i % cfg.g_reg_every == 0:
        n = max(1, B // cfg.path_batch_shrink)
        z = S.latents(n, D, cfg.mixing, n_lat, rng)
        row |= S.g_reg_step(gan, z, cfg.path_regularize, cfg.g_reg_every)
    S.accumulate(gan.g_ema, gan.g, cfg.ema_decay)
    return row


def encoder_step(run: Run, i: int) -> dict:
    cfg, b = run.cfg, run.batches
    unl = b.unlabelled(cfg.batch_size)
    lab_x, lab_y = b.labelled_batch(cfg.batch_size)
    return encoder_iteration(run.enc, cfg, unl, lab_x, lab_y, i)


def _phase(run: Run, counters: dict, name: str, total: int, budget, fn, logf) -> dict:
    """Run ``fn(run, i)`` from ``counters[name]`` to ``total`` (or the time budget); return
    the last iteration's losses (empty if none ran)."""
    cfg, t0, row = run.cfg, time.monotonic(), {}
    offset = 0 if name == "gan" else counters["gan"]
    bar = tqdm(total=total, initial=counters[name], disable=not cfg.progress, desc=name)
    while counters[name] < total:
        if budget is not None and time.monotonic() - t0 > budget:
            log.info("%s phase: time budget %.0fs reached at %d", name, budget, counters[name])
            break
        row = fn(run, counters[name])
        if not all(np.isfinite(v) for v in row.values()):
            raise FloatingPointError(f"{name} step {counters[name]}: non-finite loss {row}")
        counters[name] += 1
        bar.update(1)
        if counters[name] % cfg.log_every == 0 or counters[name] == total:
            meta = {"step": offset + counters[name], "phase": name, "phase_step": counters[name]}
            meta["elapsed_s"] = round(time.monotonic() - t0, 3)
            logf.write(json.dumps({**meta, **{k: float(v) for k, v in row.items()}}) + "\n")
            logf.flush()
        if counters[name] % cfg.checkpoint_every == 0:
            _checkpoint(run, counters)
    bar.close()
    return row


def train(cfg: SemanticGANConfig) -> TrainResult:
    """Run (or resume) both phases; write samples.png and model.pt; return a summary."""
    run, counters = _setup(cfg)
    t0 = time.monotonic()
    if counters["encoder"] and counters["gan"] < cfg.steps:
        log.warning(
            "%s: the encoder phase has started, so the GAN stays at %d of %d steps",
            cfg.out, counters["gan"], cfg.steps,
        )  # fmt: skip
    with open(cfg.out / "log.jsonl", "a") as logf:
        if counters["encoder"] == 0:
            _phase(run, counters, "gan", cfg.steps, cfg.max_time_s, gan_iteration, logf)
            _checkpoint(run, counters)
            save_sample_grid(run.gan.g_ema, cfg.out / "samples.png", seed=cfg.seed)
        last = _phase(
            run, counters, "encoder", cfg.enc_steps, cfg.enc_max_time_s, encoder_step, logf
        )
    _checkpoint(run, counters)
    segmenter = SemanticGANSegmenter(cfg.spec())
    segmenter.generator.load_state_dict(run.gan.g_ema.state_dict())
    segmenter.encoder.load_state_dict(run.enc.encoder.state_dict())
    save_model(
        cfg.out / "model.pt",
        segmenter,
        cfg.spec(),
        step=counters["gan"] + counters["encoder"],
        gan_steps=counters["gan"],
        encoder_steps=counters["encoder"],
        dataset=cfg.dataset,
        config=to_dict(cfg),
    )
    steps, elapsed = counters["gan"] + counters["encoder"], time.monotonic() - t0
    return TrainResult(cfg.out, steps, float(last.get("e_label", float("nan"))), elapsed)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(SemanticGANConfig, argv, prog="seg-train --model semantic-gan")
    result = train(cfg)
    out = {"out": str(result.out), "steps": result.steps, "elapsed_s": round(result.elapsed_s, 1)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
