"""Stage 1 of maira2-mini: pretrain the Dinov2 tower alone, then freeze it (RAD-DINO's role).

No language model is in the loop, so a step costs one encoder forward/backward. Two heads
read the tower's output tokens (the backbone feature map with its final LayerNorm, CLS
dropped: exactly what the projector sees):

- a *dense* head, one linear map per token, predicts the fraction of the token's patch
  covered by each finding / device / anatomy mask (:mod:`workbench.models.mini.dense`),
  class-balanced per channel so that a nodule covering one patch counts;
- an *image* probe, linear on the [mean; max] pooled tokens, predicts the 13 concepts.

Both heads are discarded from the model (the saved checkpoint is MAIRA-2's architecture
only) but kept beside it for the stage-1 gate (:mod:`workbench.models.mini.probe`).
Training is resumable: batch ``i`` depends only on (seed, i) (drawn uniformly, or with images
positive for ``vision_oversample`` concepts weighted up), and a checkpoint is written
atomically every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.nn import functional as F

from workbench.cxr.findings import RENDERED
from workbench.io import atomic_path
from workbench.models.mini.dense import DENSE_CHANNELS, VisionExample, channel_pos_weight, stack
from workbench.models.mini.state import load_state_file, restore_state, save_state

log = logging.getLogger("workbench.models.mini")
STAGE1_FINAL = "vision.pt"
STAGE1_CKPT = "vision-checkpoint.pt"


class VisionHeads(torch.nn.Module):
    """Dense per-token head (K mask channels) and pooled image probe (C concepts)."""

    def __init__(self, d_vision: int, n_channels: int = len(DENSE_CHANNELS)):
        super().__init__()
        self.dense = torch.nn.Linear(d_vision, n_channels)
        self.image = torch.nn.Linear(2 * d_vision, len(RENDERED))

    def forward(self, tokens_BPV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled_B2V = torch.cat([tokens_BPV.mean(1), tokens_BPV.amax(1)], dim=-1)
        return self.dense(tokens_BPV), self.image(pooled_B2V)


def encoder_tokens(vision_tower: torch.nn.Module, pixels_BCHW: torch.Tensor) -> torch.Tensor:
    """[B, P, V] patch tokens the projector reads (final LayerNorm, CLS dropped)."""
    return vision_tower(pixels_BCHW).feature_maps[-1][:, 1:]


def stage1_loss(
    tokens_BPV: torch.Tensor,
    heads: VisionHeads,
    cover_BPK: torch.Tensor,
    concepts_BC: torch.Tensor,
    pos_weight_K: torch.Tensor,
    dense_weight: float,
) -> tuple[torch.Tensor, float, float]:
    """Image-level BCE + ``dense_weight`` x class-balanced per-patch BCE; (loss, dense, image)."""
    dense_BPK, image_BC = heads(tokens_BPV)
    image = F.binary_cross_entropy_with_logits(image_BC, concepts_BC)
    dense = F.binary_cross_entropy_with_logits(dense_BPK, cover_BPK, pos_weight=pos_weight_K)
    return image + dense_weight * dense, dense.item(), image.item()


def stage1_lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up then cosine decay to 5 % of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def oversample_weights(
    examples: Sequence[VisionExample], concepts: Sequence[str], factor: int
) -> torch.Tensor | None:
    """Stage-1 sampling weight per example: ``factor`` when positive for any of ``concepts``
    (names of ``RENDERED``), else 1; None when nothing is up-weighted (uniform draws)."""
    columns = [RENDERED.index(c) for c in concepts]
    if not columns or factor == 1 or not examples:
        return None
    boosted_N = torch.stack([e.concepts for e in examples])[:, columns].amax(1) > 0
    if not boosted_N.any():
        return None
    return 1.0 + (factor - 1) * boosted_N.double()


def stage1_batch(
    n: int, batch: int, seed: int, step: int, weights: torch.Tensor | None = None
) -> list[int]:
    """Example indices of stage-1 step ``step``, a function of (seed, step) only.

    Uniform (``randint``) without ``weights``; else drawn with replacement in proportion to
    ``weights`` (one per example) from the same seeded generator.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if weights is None:
        return torch.randint(0, n, (batch,), generator=gen).tolist()
    if len(weights) != n:
        raise ValueError(f"{len(weights)} sampling weights for {n} examples")
    return torch.multinomial(weights, batch, replacement=True, generator=gen).tolist()


def stage1_sampling(cfg, examples: Sequence[VisionExample]) -> torch.Tensor | None:
    """``cfg``'s stage-1 sampling weights (see :func:`oversample_weights`), logged once."""
    if not cfg.vision_oversample or cfg.vision_oversample_factor == 1:
        return None
    concepts, factor = list(cfg.vision_oversample), cfg.vision_oversample_factor
    weights = oversample_weights(examples, concepts, factor)
    if weights is None:
        log.warning("stage 1: no image is positive for %s; batches are drawn uniformly", concepts)
        return None
    boosted = int((weights > 1).sum())
    log.info(
        "stage 1 oversamples %d of %d images (positive for %s) x%d: %.1f %% of draws",
        boosted, len(examples), concepts, factor, 100 * factor * boosted / float(weights.sum()),
    )  # fmt: skip
    return weights


def pretrain_encoder(cfg, tower: torch.nn.Module, examples: list[VisionExample], work: Path):
    """Train ``tower`` + heads for ``cfg.vision_steps`` steps; returns (heads, stats).

    ``cfg`` is a :class:`~workbench.models.mini.MiniConfig` (vision_* fields, seed, threads
    already set). Heads and batches go to the tower's device. A finished stage
    (``work/vision.pt``) is loaded instead of retrained.
    """
    device = next(tower.parameters()).device
    heads = VisionHeads(tower.config.hidden_size)
    if cfg.init_vision_from is not None:
        heads.load_state_dict(load_heads(cfg.init_vision_from).state_dict())
    heads.to(device)
    final = work / STAGE1_FINAL
    if final.is_file():
        state = load_state_file(final)
        tower.load_state_dict(state["tower"])
        heads.load_state_dict(state["heads"])
        log.info("stage 1 (vision) already done: loaded %s", final)
        return heads, state["stats"]
    pos_weight = channel_pos_weight(examples, cap=cfg.dense_pos_weight_cap).to(device)
    weights = stage1_sampling(cfg, examples)
    params = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=0.05)
    ckpt = work / STAGE1_CKPT
    step = restore_state(ckpt, {"tower": tower, "heads": heads}, optimizer)
    if step:
        log.info("stage 1 resumes at step %d", step)
    tower.train()
    t0, dense_log, image_log = time.perf_counter(), [], []
    while step < cfg.vision_steps:
        idx = stage1_batch(len(examples), cfg.vision_batch, cfg.seed, step, weights)
        pixels, cover, concepts = (t.to(device) for t in stack([examples[i] for i in idx]))
        for group in optimizer.param_groups:
            group["lr"] = stage1_lr(step, cfg.vision_steps, cfg.vision_lr)
        loss, dense, image = stage1_loss(
            encoder_tokens(tower, pixels), heads, cover, concepts, pos_weight, cfg.dense_weight
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        dense_log.append(dense)
        image_log.append(image)
        elapsed = time.perf_counter() - t0
        if step % 50 == 0 or step == cfg.vision_steps:
            log.info(
                "stage 1 step %d/%d dense %.4f image %.4f | %.0f img/s, %.1f min",
                step, cfg.vision_steps, sum(dense_log[-50:]) / len(dense_log[-50:]),
                sum(image_log[-50:]) / len(image_log[-50:]),
                len(image_log) * cfg.vision_batch / elapsed, elapsed / 60,
            )  # fmt: skip
        if step % (cfg.checkpoint_every * 4) == 0 and step < cfg.vision_steps:
            save_state(ckpt, {"tower": tower, "heads": heads}, optimizer, step)
        if cfg.vision_minutes and elapsed > cfg.vision_minutes * 60:
            log.warning("stage 1 stops at step %d: --vision-minutes reached", step)
            break
    tower.eval()
    stats = {
        "vision_steps_done": step,
        "vision_images": len(examples),
        "vision_seconds": round(time.perf_counter() - t0, 1),
        "vision_final_dense_loss": sum(dense_log[-50:]) / max(1, len(dense_log[-50:])),
        "vision_final_image_loss": sum(image_log[-50:]) / max(1, len(image_log[-50:])),
    }
    save_state(final, {"tower": tower, "heads": heads}, None, step, stats=stats)
    ckpt.unlink(missing_ok=True)
    return heads, stats


def resized_tower_state(state: dict[str, torch.Tensor], grid: int) -> dict[str, torch.Tensor]:
    """A Dinov2 tower's state dict with its position embeddings resampled to ``grid`` x ``grid``
    patches, so a tower pretrained at one input size continues at another (DINOv2 section 4,
    "adapting the resolution": a short final phase at a higher resolution).

    The resampling is the one Dinov2 applies on the fly to an input of another size (bicubic,
    ``align_corners=False``, CLS position kept), so the resized tower computes exactly what
    the original computes on that input before any further training.
    """
    key = "embeddings.position_embeddings"
    pos_1NV = state[key]
    old = math.isqrt(pos_1NV.shape[1] - 1)
    if old * old != pos_1NV.shape[1] - 1:
        raise ValueError(f"{key}: {pos_1NV.shape[1] - 1} patch positions are not a square grid")
    if old == grid:
        return state
    patch_1VGG = pos_1NV[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patch_1VGG = F.interpolate(patch_1VGG, size=(grid, grid), mode="bicubic", align_corners=False)
    patch_1PV = patch_1VGG.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos_1NV.dtype)
    log.info("vision tower position embeddings resampled from %dx%d to %dx%d", old, old, grid, grid)
    return {**state, key: torch.cat([pos_1NV[:, :1], patch_1PV], dim=1)}


HEADS_FILE = "stage1-heads.safetensors"


def save_heads(heads: VisionHeads, path: Path) -> None:
    """Write the stage-1 heads (safetensors, atomic) for the gate and image heatmaps."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in heads.state_dict().items()}, str(tmp))


def load_heads(model_dir: str | Path) -> VisionHeads:
    """The stage-1 heads shipped beside a maira2-mini (``stage1-heads.safetensors``)."""
    from safetensors.torch import load_file

    path = Path(model_dir) / HEADS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no stage-1 heads (model trained without stage 1?)")
    state = load_file(str(path))
    heads = VisionHeads(state["dense.weight"].shape[1], state["dense.weight"].shape[0])
    heads.load_state_dict(state)
    return heads.eval()
