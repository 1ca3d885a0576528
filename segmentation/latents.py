"""Segmentation latents into the activation store: ``record --model segmentation:RUN_DIR``.

``python -m workbench record --model segmentation:runs/demo/segmentation/nodules-ssn \\
--hook backbone.hook_features --run runs/seg-latents`` runs a trained segmentation model
(``segmentation.train`` / ``seg-train`` run directory) over its dataset and stores, through
:mod:`workbench.record.tokens`, one token per spatial position of the hooked feature map (or
one per W+ entry) with the ground truth at that position (:mod:`segmentation.latent_truth`).
The store has the same format as a language model's, so ``train-sae`` and ``analyse`` run on
it unchanged. Hooks (names from :mod:`workbench.models.hooks`):

- ``backbone.hook_bottleneck`` (unet, ssn, ssn-diag): a cell of the coarsest map
  (side / 2^(levels - 1)), width channels[-1];
- ``backbone.hook_features`` (unet, ssn, ssn-diag): a pixel of the features the head reads,
  width recomb_channels;
- ``head.hook_cov_factor`` (ssn): a pixel's loadings on the R covariance factors, one per
  (factor, class), rank-major: "which uncertainty modes involve this pixel";
- ``generator.hook_w_plus`` (semantic-gan): one W+ entry (style input), width latent_dim;
- ``generator.blocks.{i}.hook_out`` (semantic-gan): a pixel of the synthesis map at 4 * 2^i px.

Spatial tokens of a whole-image frame are ``kind = 'image'`` (they index the study's frontal
image, so the feature page's heatmap is right); tokens of a nodule crop and W+ entries are
``kind = 'latent'``. The covariance loadings are those the model uses: zero outside the region
of interest when it was trained with ``--use-roi``. SemanticGAN latents are those of its
inversion (encoder + ``tto_steps`` of test-time optimisation), the code that segments the image.
The recording is resumable like any other (finished studies are skipped) and seeded per study.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from segmentation import latent_truth as truth
from segmentation.data import load_dataset
from segmentation.io import SegSample, study_key
from segmentation.models import load_model
from segmentation.semantic_gan.inference import SemanticGANSegmenter
from segmentation.ssn import StochasticSegmentationNetwork
from workbench.config import save_config
from workbench.models import hooks
from workbench.record.tokens import (
    Tokens,
    concat,
    feature_map_tokens,
    groups_of,
    sequence_tokens,
)
from workbench.run import RunLayout
from workbench.store import ActivationStore, StoreError, StoreWriter

log = logging.getLogger("segmentation.latents")
PREFIX = hooks.SEGMENTATION_MODEL


class SegRun(NamedTuple):
    """A trained segmentation run: the model, its kind and the config it was trained with."""

    path: Path
    model: nn.Module
    kind: str
    train_cfg: dict


def open_run(spec: str | Path) -> SegRun:
    """``segmentation:RUN_DIR`` (or the bare directory / ``model.pt``) -> the loaded run."""
    text = str(spec)
    path = Path(text[len(PREFIX) :] if text.startswith(PREFIX) else text)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no segmentation run (expected a directory with model.pt)")
    model, spec_obj, extra = load_model(path)
    return SegRun(path, model, spec_obj.kind, dict(extra.get("config") or {}))


def hooks_of(run: SegRun) -> tuple[str, ...]:
    """The hook names this run's model has."""
    if isinstance(run.model, SemanticGANSegmenter):
        n_blocks = len(run.model.generator.to_rgbs) + 1
        return (hooks.GAN_W_PLUS, *(hooks.generator_block_name(i) for i in range(n_blocks)))
    names = [hooks.SEG_BOTTLENECK, hooks.SEG_FEATURES]
    if (
        isinstance(run.model, StochasticSegmentationNetwork)
        and run.model.head.cov_factor is not None
    ):
        names.append(hooks.SEG_COV_FACTOR)
    return tuple(names)


def _generator_block(model: SemanticGANSegmenter, block: int) -> nn.Module:
    """The StyledConv whose output is the synthesis map of ``block`` (0: the 4 px conv)."""
    return model.generator.conv1 if block == 0 else model.generator.convs[2 * block - 1]


def capture(
    run: SegRun, hook: str, x_BCHW: torch.Tensor, roi_BHW, generator: torch.Generator
) -> torch.Tensor:
    """The hooked activation for a batch: ``[B, C, H, W]`` maps, or ``[B, L, D]`` for W+.

    Backbone and head hooks stop the forward pass once captured; SemanticGAN's maps are those
    of the last synthesis, the one at the optimised code.
    """
    if hook not in hooks_of(run):
        raise ValueError(f"{run.path}: a {run.kind} model has no hook {hook!r}; "
                         f"it has {', '.join(hooks_of(run))}")  # fmt: skip
    model = run.model
    site = hooks.hook_site(hook)
    with torch.no_grad():
        if site.site in ("bottleneck", "features"):
            backbone = model.backbone
            module = backbone.down[-1] if site.site == "bottleneck" else backbone.recomb
            with hooks.capture_module(module, hook) as cap:
                backbone(x_BCHW)
            return cap.acts
        if site.site == "cov_factor":
            with hooks.capture_module(model.head.cov_factor, hook) as cap:
                model(x_BCHW, roi_BHW)
            factor = cap.acts
            return factor if roi_BHW is None else factor * roi_BHW[:, None].to(factor.dtype)
    if site.site == "w_plus":
        return model.invert(x_BCHW, generator).latent
    with hooks.capture_module(_generator_block(model, site.layer), hook, stop=False) as cap:
        model.invert(x_BCHW, generator)
    return cap.acts


def sample_tokens(
    run: SegRun, hook: str, sample: SegSample, cfg, study_values: dict, seed: int
) -> Tokens:
    """Tokens (activations and every metadata column) of one sample."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(sample.image[None, None].astype(np.float32))
    use_roi = bool(run.train_cfg.get("use_roi")) and sample.roi is not None
    roi = torch.from_numpy(sample.roi[None]) if use_roi else None
    acts = capture(run, hook, x, roi, gen)[0]
    crop = sample.meta.get("crop_centre") is not None
    if acts.ndim == 2:  # W+
        names = [f"w{i}" for i in range(acts.shape[0])]
        toks = sequence_tokens(acts, names, section="w_plus")
        grid = 0
    else:
        kind, section = ("latent", "crop") if crop else ("image", "image")
        toks = feature_map_tokens(acts, kind=kind, section=section, pool=cfg.pool)
        grid = int(max(toks.meta["patch_row"])) + 1
    extra = {}
    if grid and isinstance(run.model, StochasticSegmentationNetwork):
        extra["sample_variance"] = truth.sample_variance(run.model, x, roi, cfg.samples, gen)[0]
    cols = truth.truth_columns(sample, grid, toks.acts.shape[0], study_values, extra)
    return toks.with_columns({"image": [sample.meta.get("id")] * toks.acts.shape[0], **cols})


def _study_tokens(run, hook, samples, cfg, devices) -> tuple[int, int | None, Tokens]:
    """All tokens of one study's samples (usually one image)."""
    sid, subject = study_key(samples[0].meta)
    parts = []
    for i, s in enumerate(samples):
        values = truth.attributes(s.meta, devices.get(sid))
        parts.append(sample_tokens(run, hook, s, cfg, values, seed=(sid * 31 + i) % 2**31))
    return sid, subject, concat(parts)


def _settings(run: SegRun, cfg) -> dict:
    """Dataset, split, sizes and data root: the record flags, else the training config."""
    t = run.train_cfg
    data = cfg.data or (Path(t["data"]) if t.get("data") else None)
    if data is None:
        raise ValueError(f"{run.path}: the training config names no data root; pass --data")
    if cfg.tto_steps >= 0:
        if not isinstance(run.model, SemanticGANSegmenter):
            raise ValueError("--tto-steps applies to SemanticGAN runs only")
        run.model.inference = dataclasses.replace(run.model.inference, steps=cfg.tto_steps)
    return {
        "data": str(data),
        "dataset": t.get("dataset", "phantom-nodules"),
        "split": cfg.split,
        "image_size": int(t.get("image_size", 128)),
        "crop_size": int(t.get("crop_size", 128)),
        "lung_class": bool(t.get("lung_class", False)),
        "pool": cfg.pool,
        "samples": cfg.samples,
        "seg_model": run.kind,
        "seg_run": str(run.path),
        "source_kind": "segmentation",
    }


def _studies(settings: dict, limit: int) -> dict[int, list[SegSample]]:
    samples = load_dataset(
        settings["dataset"], Path(settings["data"]), settings["split"],
        settings["image_size"], settings["crop_size"], lung_class=settings["lung_class"],
    )  # fmt: skip
    by_study: dict[int, list[SegSample]] = defaultdict(list)
    for s in samples:
        by_study[study_key(s.meta)[0]].append(s)
    ids = sorted(by_study)[:limit] if limit else sorted(by_study)
    return {sid: by_study[sid] for sid in ids}


def _check_resume(out: Path, settings: dict) -> None:
    """Refuse to extend a store recorded with another dataset, split or pooling."""
    try:
        old = ActivationStore(out).manifest.get("extra", {})
    except StoreError:
        return
    for key in ("dataset", "lung_class", "split", "pool", "seg_run"):
        if key in old and old[key] != settings[key]:
            raise StoreError(f"{out}: recorded with {key}={old[key]!r}, now {settings[key]!r}; "
                             "pick a new --out")  # fmt: skip


def record_segmentation(cfg) -> Path:
    """Record ``cfg`` (a :class:`workbench.record.run.RecordConfig`); returns the store path."""
    from tqdm import tqdm

    run = open_run(cfg.model)
    if not cfg.hook:
        raise ValueError(f"--hook is required for {cfg.model}; it has {', '.join(hooks_of(run))}")
    settings = _settings(run, cfg)
    out = Path(cfg.out or RunLayout(cfg.run).activations)
    _check_resume(out, settings)
    studies = _studies(settings, cfg.limit)
    if not studies:
        raise ValueError(f"{settings['data']}: no {settings['dataset']} images to record")
    devices = truth.read_devices(Path(settings["data"]))
    first = _study_tokens(run, cfg.hook, studies[next(iter(studies))], cfg, devices)[2]
    settings["concept_groups"] = groups_of(list(first.meta))
    writer = StoreWriter(
        out, model=PREFIX + str(run.path), layer=hooks.hook_site(cfg.hook).layer or 0,
        hook_name=cfg.hook, d_model=int(first.acts.shape[1]), dtype=cfg.dtype,
        shard_tokens=cfg.shard_tokens, extra=settings,
    )  # fmt: skip
    todo = [sid for sid in studies if sid not in writer.completed]
    log.info("%s: %d studies to record (%d already done)", out, len(todo), len(studies) - len(todo))
    for sid in tqdm(todo, unit="study", disable=not cfg.progress, desc=cfg.hook):
        sid, subject, toks = _study_tokens(run, cfg.hook, studies[sid], cfg, devices)
        writer.add(sid, toks.acts, {**toks.meta, "subject_id": [subject] * toks.acts.shape[0]})
    writer.close()
    save_config(dataclasses.replace(cfg, out=out), out / "cfg.json")
    return out
