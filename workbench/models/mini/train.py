"""The maira2-mini training loop: resumable, logged, deterministic for a given seed.

Stage 1 (``vision_steps``): the vision tower and projector learn the phantom's concepts from
the current frontal image through a linear probe (mean- and max-pooled projector output,
multi-label loss), standing in for MAIRA-2's pretrained RAD-DINO encoder; the probe is
discarded afterwards. Stage 2: teacher-forced next-token loss on the FINDINGS after the exact
MAIRA-2 prompt
(:mod:`workbench.models.mini.data`), plus (weight ``aux_weight``) a multi-label loss of a
linear probe on the mean- and max-pooled projector output of the current frontal image
against the phantom's ground-truth concepts: deep supervision that gives the from-scratch
vision tower a direct signal (the language-model loss reaches it only through attention),
discarded after training. AdamW with linear warm-up and cosine decay, gradient
clipping at 1. A checkpoint (model, optimiser, step) is written atomically every
``checkpoint_every`` steps to ``<out>/.train/``; rerunning the same command continues from it.
Batch order depends only on (seed, epoch), so a resumed run takes the same steps as an
uninterrupted one. Both stages run on ``cfg.device`` (cpu, cuda, or auto); checkpoints hold CPU
tensors, so a run may move between a GPU machine and a CPU one. The model is saved in float32,
or with its weights rounded to ``cfg.save_dtype`` in the safetensors while ``config.json`` keeps
declaring float32. The log goes to ``<out>/train.log`` as well as to the console.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch

from workbench.config import save_config
from workbench.cxr.studies import iter_studies
from workbench.models.mini.config import (
    MiniConfig,
    build_mini,
    is_trained,
    resolve_device,
    storage_dtype,
)
from workbench.models.mini.data import (
    collate,
    encode_all,
    epoch_batches,
    epoch_studies,
    pick_variants,
    prompt_corpus,
)
from workbench.models.mini.eval import read_phantom_labels
from workbench.models.mini.state import restore_state, save_state
from workbench.models.mini.tokenizer import check_layout, save_tokenizer, train_tokenizer
from workbench.models.processor import Maira2Processor
from workbench.models.registry import MINI_TRAIN_CONFIG

log = logging.getLogger("workbench.models.mini")
CHECKPOINT = "checkpoint.pt"


def ensure_phantom(root: Path, studies: int, size: int, seed: int) -> Path:
    """The phantom at ``root``, generated (with masks) with these settings if absent."""
    if not (root / "phantom-summary.json").is_file():
        from workbench.cxr.phantom.run import PhantomConfig, generate

        log.info("generating %d phantom studies in %s", studies, root)
        generate(PhantomConfig(out=root, studies=studies, size=size, seed=seed, workers=2))
    return root


def load_or_train_tokenizer(cfg: MiniConfig, records, work: Path):
    """The run's tokenizer: reloaded from ``work`` on resume, else trained on the records."""
    from transformers import AutoTokenizer

    tok_dir = work / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    else:
        tokenizer = train_tokenizer(prompt_corpus(records), vocab_size=cfg.vocab_size)
        save_tokenizer(tokenizer, tok_dir)
    check_layout(tokenizer)
    return tokenizer


def lr_at(step: int, total: int, cfg: MiniConfig) -> float:
    """Linear warm-up to ``cfg.lr`` then cosine decay to 10 % of it."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model: torch.nn.Module, cfg: MiniConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not norms, biases, embeddings, position tables)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_matrix = p.ndim == 2 and "embed" not in name
        (decay if is_matrix else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)


def _log_to_file(out: Path) -> logging.Handler:
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def run_tokenizer(cfg: MiniConfig, records, work: Path):
    """The tokenizer of a continuation's source model, else the run's own (trained once)."""
    source = cfg.init_from or cfg.init_decoder_from
    if source is None:
        return load_or_train_tokenizer(cfg, records, work)
    from workbench.models.registry import model_tokenizer

    return model_tokenizer(source)


def keep_prefixes(cfg: MiniConfig) -> tuple[str, ...]:
    """State-dict prefixes taken from ``init_decoder_from``: the language model and LM head,
    and the projector with ``init_projector``."""
    keep = ("language_model.", "lm_head.")
    return keep + (("multi_modal_projector.",) if cfg.init_projector else ())


def initial_model(cfg: MiniConfig, tokenizer):
    """A fresh maira2-mini, or one starting from ``init_from`` (all weights), from
    ``init_decoder_from`` (the language model and LM head, and the projector with
    ``init_projector``) and from ``init_vision_from`` (the vision tower)."""
    from workbench.models.maira2 import Maira2ForConditionalGeneration

    model = build_mini(cfg, tokenizer)
    if cfg.init_from is not None:
        model.load_state_dict(
            Maira2ForConditionalGeneration.from_pretrained(cfg.init_from).state_dict()
        )
        log.info("stage 2 continues from %s (stage 1 skipped)", cfg.init_from)
        return model
    if cfg.init_decoder_from is not None:
        start = Maira2ForConditionalGeneration.from_pretrained(cfg.init_decoder_from).state_dict()
        keep = keep_prefixes(cfg)
        part = {k: v for k, v in start.items() if k.startswith(keep)}
        missing = model.load_state_dict(part, strict=False).missing_keys
        if any(k.startswith(keep) for k in missing):
            raise ValueError(
                f"{cfg.init_decoder_from}: weights do not fit this config ({missing[:3]} ...)"
            )
        what = "decoder and projector" if cfg.init_projector else "decoder"
        log.info("%s initialised from %s", what, cfg.init_decoder_from)
    if cfg.init_vision_from is not None:
        from workbench.models.mini.vision import resized_tower_state

        vision = Maira2ForConditionalGeneration.from_pretrained(cfg.init_vision_from)
        grid = cfg.image_size // cfg.patch_size
        model.vision_tower.load_state_dict(
            resized_tower_state(vision.vision_tower.state_dict(), grid)
        )
        log.info("vision tower initialised from %s", cfg.init_vision_from)
    return model


def train(cfg: MiniConfig) -> Path:
    """Train maira2-mini as ``cfg`` says and save it to ``cfg.out``; returns that path."""
    cfg.validate()
    if is_trained(cfg.out):
        log.info("%s already holds a trained maira2-mini; nothing to do", cfg.out)
        return cfg.out
    device = resolve_device(cfg)
    handler = _log_to_file(cfg.out)
    try:
        torch.set_num_threads(cfg.threads)
        ensure_phantom(cfg.phantom, cfg.studies, cfg.size, cfg.phantom_seed)
        records = list(iter_studies(cfg.phantom, split="train"))
        if cfg.max_train_studies:
            records = records[: cfg.max_train_studies]
        work = cfg.out / ".train"
        work.mkdir(parents=True, exist_ok=True)
        tokenizer = run_tokenizer(cfg, records, work)
        processor = Maira2Processor(tokenizer, image_size=cfg.image_size, patch_size=cfg.patch_size)
        t0 = time.perf_counter()
        examples = encode_all(
            processor, records, read_phantom_labels(cfg.phantom), cfg.image_only_prob > 0
        )
        for extra in cfg.report_phantoms:
            more = list(iter_studies(extra))
            examples += encode_all(
                processor, more, read_phantom_labels(extra), cfg.image_only_prob > 0
            )
            log.info("stage 2: %d studies of %s join the training set", len(more), extra)
        log.info("encoded %d studies in %.0f s", len(examples), time.perf_counter() - t0)
        model = initial_model(cfg, tokenizer).to(device)
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        log.info("maira2-mini: %.2f M parameters, training on %s", n_params, device)
        vision_stats = {}
        if cfg.vision_steps and cfg.init_from is None:
            vision_stats = stage1(cfg, model, processor, records, work)
        stats = {**vision_stats, **run_steps(cfg, model, examples, tokenizer.pad_token_id, work)}
        return finish(cfg, model, processor, stats, work)
    finally:
        log.removeHandler(handler)
        handler.close()


class AuxProbe(torch.nn.Module):
    """Linear probe: [mean; max] over the frontal image's projected patches -> concept logits."""

    def __init__(self, d_model: int, n_concepts: int):
        super().__init__()
        self.linear = torch.nn.Linear(2 * d_model, n_concepts)

    def forward(self, feats_BPD: torch.Tensor) -> torch.Tensor:
        pooled_B2D = torch.cat([feats_BPD.mean(1), feats_BPD.amax(1)], dim=-1)
        return self.linear(pooled_B2D)


def step_loss(model, probe: AuxProbe, batch, aux_weight: float) -> tuple[torch.Tensor, float]:
    """LM loss (+ weighted aux loss) of one batch; also returns the aux loss for the log."""
    captured: list[torch.Tensor] = []
    hook = model.multi_modal_projector.register_forward_hook(
        lambda module, args, out: captured.append(out)
    )
    try:
        out = model(**batch.model_inputs())
    finally:
        hook.remove()
    if not torch.isfinite(out.loss):
        raise FloatingPointError(f"loss is {out.loss.item()}; lower --lr")
    if not aux_weight:
        return out.loss, 0.0
    logits_BC = probe(captured[0][batch.frontal])
    aux = torch.nn.functional.binary_cross_entropy_with_logits(logits_BC, batch.concepts)
    return out.loss + aux_weight * aux, aux.item()


def stage1_corpus(cfg: MiniConfig, processor: Maira2Processor, train_records) -> list:
    """Frontal images of the stage-1 phantom (all splits) and of the evaluation train split."""
    from workbench.models.mini.dense import frontal_corpus

    t0 = time.perf_counter()
    root = ensure_phantom(cfg.vision_phantom, cfg.vision_studies, cfg.size, cfg.vision_phantom_seed)
    corpus = frontal_corpus(processor, root, cfg.phantom, train_records)
    log.info("stage 1: %d frontal images encoded in %.0f s", len(corpus), time.perf_counter() - t0)
    return corpus


def stage1(cfg: MiniConfig, model, processor: Maira2Processor, train_records, work: Path) -> dict:
    """Pretrain the vision tower alone (dense + image-level targets), then freeze it.

    The corpus is the stage-1 phantom (all splits) plus the evaluation phantom's train split;
    the heads are kept in ``work`` and shipped beside the model for the stage-1 gate.
    """
    from workbench.models.mini.vision import HEADS_FILE, STAGE1_FINAL, pretrain_encoder, save_heads

    corpus = [] if (work / STAGE1_FINAL).is_file() else stage1_corpus(cfg, processor, train_records)
    heads, stats = pretrain_encoder(cfg, model.vision_tower, corpus, work)
    save_heads(heads, work / HEADS_FILE)
    return stats


class StepLog:
    """Running losses and throughput of stage 2, logged every 10 steps."""

    def __init__(self, total: int):
        self.total, self.t0, self.tokens = total, time.perf_counter(), 0
        self.losses: list[float] = []
        self.aux: list[float] = []

    def add(self, lm: float, aux: float, tokens: int) -> None:
        self.losses.append(lm)
        self.aux.append(aux)
        self.tokens += tokens

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def report(self, epoch: int, step: int, lr: float) -> None:
        log.info(
            "epoch %d step %d/%d loss %.4f aux %.4f lr %.2e | %.0f tok/s, %.1f min",
            epoch, step, self.total, sum(self.losses[-10:]) / len(self.losses[-10:]),
            sum(self.aux[-10:]) / len(self.aux[-10:]), lr, self.tokens / self.elapsed,
            self.elapsed / 60,
        )  # fmt: skip


def train_step(model, probe, trainable, optimizer, batch, aux_weight: float) -> tuple[float, float]:
    """One AdamW step on a batch (gradient clipped at 1); returns (LM loss, aux loss)."""
    loss, aux = step_loss(model, probe, batch, aux_weight)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in trainable.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item() - aux_weight * aux, aux


def run_steps(cfg: MiniConfig, model, variants, pad_id: int, work: Path) -> dict:
    """The stage-2 loop over ``cfg.epochs`` epochs, resuming from ``work``.

    ``variants[i]`` holds study ``i``'s prompt variants (full, then image-only); each step
    draws the image-only one with probability ``cfg.image_only_prob``.
    """
    device = next(model.parameters()).device
    probe = AuxProbe(model.config.text_config.hidden_size, len(variants[0][0].concepts))
    probe.to(device)
    ckpt_path = work / CHECKPOINT
    if cfg.freeze_vision:
        model.vision_tower.requires_grad_(False)
    trainable = torch.nn.ModuleDict({"model": model, "probe": probe})
    optimizer = make_optimizer(trainable, cfg)
    concepts_SC = torch.stack([v[0].concepts for v in variants])
    studies = epoch_studies(concepts_SC, cfg.oversample, cfg.oversample_factor)
    lengths = [len(variants[i][0].input_ids) for i in studies]
    per_epoch = math.ceil(len(studies) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    step = restore_state(ckpt_path, {"model": model, "probe": probe}, optimizer)
    if step:
        log.info("resuming from step %d/%d", step, total)
    model.train()
    if cfg.freeze_vision:
        model.vision_tower.eval()
    progress = StepLog(total)
    while step < total:
        epoch, index = divmod(step, per_epoch)
        slots = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch)[index]
        batch_ids = [studies[s] for s in slots]
        chosen = pick_variants(variants, batch_ids, cfg.image_only_prob, cfg.seed, step)
        batch = collate(chosen, pad_id).to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, cfg)
        lm, aux = train_step(model, probe, trainable, optimizer, batch, cfg.aux_weight)
        step += 1
        progress.add(lm, aux, int(batch.attention_mask.sum()))
        if step % 10 == 0 or step == total:
            progress.report(epoch, step, lr_at(step - 1, total, cfg))
        if step % cfg.checkpoint_every == 0 and step < total:
            save_state(ckpt_path, {"model": model, "probe": probe}, optimizer, step)
        if cfg.max_minutes and progress.elapsed > cfg.max_minutes * 60:
            log.warning("stopping at step %d/%d: --max-minutes reached", step, total)
            break
    model.eval()
    final = sum(progress.losses[-20:]) / max(1, len(progress.losses[-20:]))
    return {
        "steps": step,
        "total_steps": total,
        "final_loss": final,
        "train_studies": len(variants),
    }


def validate(cfg: MiniConfig, model, processor: Maira2Processor, stats: dict) -> None:
    """Generate and score findings for the first validation studies; logged and kept."""
    from workbench.models.mini.eval import evaluate_split

    try:
        report = evaluate_split(model, processor, cfg.phantom, "validate", cfg.eval_studies)
    except ValueError as exc:  # no validation studies: nothing to score, not an error
        log.warning("no validation check: %s", exc)
        return
    stats["validate_macro_f1"] = report.macro_f1
    log.info("validation (%d studies): macro F1 %.3f", report.n_studies, report.macro_f1)


def finish(cfg: MiniConfig, model, processor: Maira2Processor, stats: dict, work: Path) -> Path:
    """Save model + processor to a staging directory, move it into place, drop checkpoints."""
    staging = cfg.out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    half = None if cfg.save_dtype == "float32" else storage_dtype(cfg)
    model.save_pretrained(staging, storage_dtype=half)  # config.json still declares float32
    processor.save_pretrained(staging)
    save_config(cfg, staging / MINI_TRAIN_CONFIG)
    from workbench.models.mini.vision import HEADS_FILE

    heads = [work / HEADS_FILE] + ([Path(cfg.init_from) / HEADS_FILE] if cfg.init_from else [])
    for path in heads:  # this run's stage-1 heads, else those of the model it continues
        if path.is_file():
            shutil.copy2(path, staging / HEADS_FILE)
            break
    if cfg.eval_studies:
        validate(cfg, model, processor, stats)
    (staging / "train-stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    for f in staging.iterdir():
        os.replace(f, cfg.out / f.name)
    staging.rmdir()
    shutil.rmtree(work, ignore_errors=True)
    log.info("saved maira2-mini to %s", cfg.out)
    return cfg.out
