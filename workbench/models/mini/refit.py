"""Stage 1b: the dense head refitted on the frozen encoder, a linear segmentation probe.

Stage 1 trains the tower and its linear heads together, so the dense head it ends with tracked
a moving encoder under a decaying learning rate. Once the tower is frozen (as the decoder reads
it), what its tokens localise is best asked of a linear per-patch readout fitted to them alone:
the linear evaluation of frozen patch features (DINOv2, Oquab et al. 2023, section 7.4). The
tokens are computed once and the head is fitted on them, so a refit costs one encoder pass.

The loss is stage 1's class-balanced per-patch BCE plus a **localisation** term: for every
image and channel with a mask, the cross-entropy between the softmax over patches of that
channel's logits and the mask's coverage normalised to sum to one. The BCE calibrates a patch
against patches of other images; the localisation term ranks the patches within one image,
which is the question the pointing game and an image heatmap ask.

``python -m workbench.models.mini.refit --model data/maira2-mini --out DIR`` writes the refitted
``stage1-heads.safetensors`` (the image head kept) to ``DIR``, never over the model's own;
``benchmarks/bench_mini_vision.py gate --heads DIR`` scores it. On the shipped weights it pointed
worse than the stage-1 head (benchmarks/RESULTS.md), so the shipped heads are stage 1's.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from workbench.config import ConfigError, parse_config
from workbench.models.mini.config import SHIPPED
from workbench.models.mini.dense import (
    VisionExample,
    coverage_pos_weight,
    frontal_corpus,
    stack,
)
from workbench.models.mini.vision import HEADS_FILE, encoder_tokens, load_heads, save_heads

log = logging.getLogger(__name__)


@dataclass
class RefitConfig:
    """Refit maira2-mini's stage-1 dense head on its frozen encoder (a linear probe per patch)."""

    model: Path = SHIPPED
    """The maira2-mini whose frozen tower is read and whose stage-1 heads are refitted."""
    corpus: Path = Path("runs/mini-train/pretrain14")
    """Stage-1 phantom (all its splits) the head is fitted on (never the evaluation test split)."""
    phantom: Path = Path("runs/mini-train/phantom")
    """Evaluation phantom: its train split joins the corpus, as in stage 1."""
    out: Path = Path("runs/mini-train/refit")
    """Directory that receives the refitted ``stage1-heads.safetensors`` (not the model's own)."""
    epochs: int = 8
    """Passes over the corpus's cached tokens."""
    batch: int = 64
    """Images per optimisation step."""
    lr: float = 3e-3
    """Peak AdamW learning rate of the head (cosine decay to 5 %)."""
    localisation_weight: float = 1.0
    """Weight of the within-image localisation cross-entropy against the per-patch BCE."""
    pos_weight_cap: float = 50.0
    """Upper bound of the per-channel BCE positive weight (stage 1: ``dense_pos_weight_cap``)."""
    seed: int = 0
    """Seed of the batch order."""
    threads: int = 2
    """torch intra-op threads."""

    def validate(self) -> None:
        """Raise ConfigError naming the first field out of range."""
        for name in ("epochs", "batch", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"field '{name}' must be >= 1, got {getattr(self, name)}")
        if self.out.resolve() == self.model.resolve():
            raise ConfigError(f"field 'out' is the model directory {self.model}: give another")
        for name, least, strict in (
            ("lr", 0.0, True),
            ("localisation_weight", 0.0, False),
            ("pos_weight_cap", 1.0, False),
        ):
            value = getattr(self, name)
            if value < least or (strict and value == least):
                bound = f"> {least:g}" if strict else f">= {least:g}"
                raise ConfigError(f"field '{name}' must be {bound}, got {value}")


@torch.no_grad()
def frozen_tokens(
    tower: torch.nn.Module, examples: list[VisionExample], batch: int = 64
) -> torch.Tensor:
    """[N, P, V] float16 patch tokens of the frozen tower, computed once for the whole fit."""
    tower.eval()
    out = [
        encoder_tokens(tower, stack(examples[i : i + batch])[0]).to(torch.float16)
        for i in range(0, len(examples), batch)
    ]
    return torch.cat(out)


def localisation_loss(dense_BPK: torch.Tensor, cover_BPK: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each channel's softmax over patches against its normalised coverage,
    averaged over the (image, channel) pairs that have a mask (zero when none has)."""
    mass_BK = cover_BPK.sum(1)
    has_BK = mass_BK > 0
    if not has_BK.any():
        return dense_BPK.sum() * 0.0
    target_BPK = cover_BPK / mass_BK.clamp_min(1e-6)[:, None, :]
    nll_BK = -(target_BPK * F.log_softmax(dense_BPK, dim=1)).sum(1)
    return nll_BK[has_BK].mean()


def refit_dense(
    dense: torch.nn.Linear,
    tokens_NPV: torch.Tensor,
    cover_NPK: torch.Tensor,
    cfg: RefitConfig,
) -> list[float]:
    """Fit ``dense`` in place on cached tokens; the mean loss of each epoch."""
    covered_K = cover_NPK.float().sum((0, 1))
    pos_weight_K = coverage_pos_weight(
        covered_K, cover_NPK.shape[0] * cover_NPK.shape[1], cfg.pos_weight_cap
    )
    opt = torch.optim.AdamW(dense.parameters(), lr=cfg.lr, weight_decay=0.0)
    n = tokens_NPV.shape[0]
    steps_per_epoch = -(-n // cfg.batch)
    total, step, history = cfg.epochs * steps_per_epoch, 0, []
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.epochs):
        order, losses = torch.randperm(n, generator=gen), []
        for start in range(0, n, cfg.batch):
            idx = order[start : start + cfg.batch]
            x_BPV, cover_BPK = tokens_NPV[idx].float(), cover_NPK[idx].float()
            for group in opt.param_groups:  # cosine from lr to 5 % of it
                group["lr"] = cfg.lr * (0.05 + 0.475 * (1 + math.cos(math.pi * step / total)))
            logits_BPK = dense(x_BPV)
            loss = F.binary_cross_entropy_with_logits(
                logits_BPK, cover_BPK, pos_weight=pos_weight_K
            )
            loss = loss + cfg.localisation_weight * localisation_loss(logits_BPK, cover_BPK)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        history.append(sum(losses) / len(losses))
        log.info("refit epoch %d/%d loss %.4f", len(history), cfg.epochs, history[-1])
    return history


def refit(cfg: RefitConfig) -> Path:
    """Encode the stage-1 corpus with the model's frozen tower, refit the dense head, save the
    heads (atomically) into ``cfg.out``; returns the heads file."""
    from workbench.cxr.studies import iter_studies
    from workbench.models.registry import load_model

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    adapter = load_model(str(cfg.model))
    heads = load_heads(cfg.model)
    t0 = time.perf_counter()
    train = list(iter_studies(cfg.phantom, split="train"))
    examples = frontal_corpus(adapter.processor, cfg.corpus, cfg.phantom, train)
    tokens_NPV = frozen_tokens(adapter.model.vision_tower, examples)
    cover_NPK = torch.stack([e.cover for e in examples])
    log.info("refit: %d images read and encoded in %.0f s", len(examples), time.perf_counter() - t0)
    with torch.enable_grad():
        refit_dense(heads.dense, tokens_NPV, cover_NPK, cfg)
    out = cfg.out / HEADS_FILE
    save_heads(heads, out)
    log.info("refit: wrote %s (%.1f min in all)", out, (time.perf_counter() - t0) / 60)
    return out


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    refit(parse_config(RefitConfig, argv, prog="python -m workbench.models.mini.refit"))


if __name__ == "__main__":
    main()
