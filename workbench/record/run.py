"""``python -m workbench.record``: residual-stream activations of a model into an activation store.

For every study the model sees the exact prompt with the ground-truth FINDINGS teacher-forced
after it (the SAE must see report tokens; a text-only LM can be given the IMPRESSION or both
instead, ``--sections``), and the residual stream after decoder block L
(``blocks.{L}.hook_resid_post``) is captured by a forward hook that then *stops the forward
pass*: later blocks and the LM head never run (:func:`workbench.models.hooks.capture`).

Tokens are filtered as in the MAIRA-2 SAE study (Bouzid et al. 2025, Fig. 1: "we filter out
token indices corresponding to intermediate image tokens and boilerplate parts of the
prompt"), configurably: image tokens all / first_last / none, prompt tokens that carry the
study's own text (indication, technique, comparison, prior report) / all / none; report
tokens are always kept. The ``kind`` and ``section`` columns say what each stored row is.

``--layers 2,4`` records several blocks from one forward pass that stops after the deepest,
sharing the input preparation, token filtering and metadata: one store per hook in
``<out>/<hook name>/``, listed in ``<out>/hooks.json`` (each the store a single-layer run
would write; ``train_sae`` on ``<out>`` trains one SAE per hook).

Other hooks (``--hook``; every name is listed in docs/sae.md): the vision side of a
vision-language model (``vision.blocks.{L}.hook_resid_post``, ``vision.hook_projector_out``;
:mod:`workbench.record.vision`), and with ``--model segmentation:RUN_DIR`` a segmentation
model's latents (:mod:`segmentation.latents`). All write the same store format, through the
same token API (:mod:`workbench.record.tokens`), so ``train-sae`` and ``analyse`` read them
unchanged.

Resumable: the store's log lists finished studies, and a rerun skips them. Under
``accelerate launch`` process r of W records every W-th study (by sorted study id) into
``<out>/rank<r>``, and :class:`workbench.store.ActivationStore` reads the parts as one store.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import NamedTuple

import torch

from workbench.config import parse_config, save_config
from workbench.cxr.collection import Collection, Item, load_collection, model_input
from workbench.cxr.images import CXRDataError
from workbench.models.hooks import SEGMENTATION_MODEL, hook_site
from workbench.progress import Heartbeat
from workbench.record.config import RecordConfig
from workbench.record.tokens import groups_of
from workbench.record.vision import (
    coverage_names,
    frontal_coverage,
    is_vision_hook,
    vision_tokens,
    vision_width,
)
from workbench.run import RunLayout
from workbench.store import (
    MANIFEST,
    ActivationStore,
    StoreError,
    StoreWriter,
    hook_stores,
    write_hook_index,
)

log = logging.getLogger("workbench.record")
PROMPT_SECTIONS = frozenset({"indication", "technique", "comparison", "prior_report", "phrase"})
META_KEYS = ("position", "token_id", "token", "kind", "section", "patch_row", "patch_col")


class RecordError(RuntimeError):
    """Recording cannot go on (non-finite activations, inconsistent store, wrong data)."""


def keep_mask(tokens: list[dict], image_tokens: str, prompt_tokens: str) -> list[bool]:
    """Which token positions are stored, by kind/section (see the module docstring)."""
    first: dict[object, int] = {}
    last: dict[object, int] = {}
    for pos, t in enumerate(tokens):
        if t["kind"] == "image":
            key = t.get("image_index", t.get("section"))
            first.setdefault(key, pos)
            last[key] = pos
    edges = set(first.values()) | set(last.values())
    keep = []
    for pos, t in enumerate(tokens):
        kind = t["kind"]
        if kind == "image":
            keep.append(image_tokens == "all" or (image_tokens == "first_last" and pos in edges))
        elif kind == "prompt":
            in_section = t.get("section") in PROMPT_SECTIONS
            keep.append(prompt_tokens == "all" or (prompt_tokens == "sections" and in_section))
        else:
            keep.append(True)
    return keep


def token_metadata(tokens: list[dict], keep: list[bool], subject_id: int | None) -> dict:
    """Store columns (contracts.md) for the kept positions."""
    kept = [t for t, k in zip(tokens, keep, strict=True) if k]
    cols = {key: [t.get(key) for t in kept] for key in META_KEYS}
    cols["subject_id"] = [subject_id] * len(kept)
    return cols


class Recorded(NamedTuple):
    """One study's stored rows: activations [n_kept, d_model] (``{layer: acts}`` when several
    layers were asked), their metadata columns, and the optional input files it was recorded
    without (unreadable lateral / prior image)."""

    acts: torch.Tensor | dict[int, torch.Tensor]
    meta: dict
    dropped: tuple[str, ...]


def prepare_item(adapter, item: Item, source=None):
    """The model inputs of one item, its chosen report sections teacher-forced (``source``:
    the item's source already read by ``model_input``; default: read it here)."""
    if source is None:
        source, _ = model_input(item.source, adapter.kind == "vision_language")
    if item.impression is None:
        return adapter.prepare(source, findings=item.findings)
    if adapter.kind != "causal_lm":
        raise RecordError(f"{adapter.name} is given FINDINGS only; --sections needs a text LM")
    return adapter.prepare(source, findings=item.findings, impression=item.impression)


def record_item(adapter, item: Item, layer: int | tuple[int, ...], cfg: RecordConfig) -> Recorded:
    """Activations [n_kept, d_model] and metadata of one study; RecordError if not finite.

    With a tuple of layers, one forward (stopped after the deepest) gives ``{layer: acts}``;
    the inputs, the kept positions and the metadata are prepared once for all of them.
    """
    source, dropped = model_input(item.source, adapter.kind == "vision_language")
    if is_vision_hook(cfg.hook):
        return _vision_item(adapter, item, source, dropped, cfg)
    inp = prepare_item(adapter, item, source)
    if isinstance(layer, int):
        acts = {layer: adapter.residual(inp, layer)}
    else:
        acts = adapter.residuals(inp, layer)
    for at, acts_TD in acts.items():
        if not torch.isfinite(acts_TD).all():
            n_nan, n_inf = int(torch.isnan(acts_TD).sum()), int(torch.isinf(acts_TD).sum())
            raise RecordError(
                f"study {item.study_id}: {n_nan} NaN and {n_inf} inf values in "
                f"{adapter.hook_name(at)} of {adapter.name}; stopping (finished studies are "
                "kept; check the model weights, dtype and this study's inputs)"
            )
    keep = keep_mask(inp.tokens, cfg.image_tokens, cfg.prompt_tokens)
    keep_T = torch.tensor(keep, dtype=torch.bool, device=next(iter(acts.values())).device)
    kept = {at: acts_TD[keep_T] for at, acts_TD in acts.items()}
    meta = token_metadata(inp.tokens, keep, item.subject_id)
    return Recorded(kept[layer] if isinstance(layer, int) else kept, meta, dropped)


def _vision_item(adapter, item: Item, source, dropped: tuple, cfg: RecordConfig) -> Recorded:
    """One study's image-patch tokens at a vision hook, with frontal mask coverage."""
    inp = adapter.prepare(source)
    acts_TD, image_tokens = vision_tokens(adapter, inp, cfg.hook)
    if not torch.isfinite(acts_TD).all():
        raise RecordError(
            f"study {item.study_id}: NaN or inf values in {cfg.hook} of {adapter.name}; stopping "
            "(finished studies are kept)"
        )
    keep = keep_mask(image_tokens, cfg.image_tokens, "none")
    kept = [t for t, k in zip(image_tokens, keep, strict=True) if k]
    meta = token_metadata(image_tokens, keep, item.subject_id)
    meta.update(frontal_coverage(adapter, item.source, cfg.data, kept))
    keep_T = torch.tensor(keep, dtype=torch.bool, device=acts_TD.device)
    return Recorded(acts_TD[keep_T], meta, dropped)


def plain_hook(cfg: RecordConfig) -> RecordConfig:
    """``cfg`` with a language-model ``--hook blocks.L.hook_resid_post`` turned into
    ``--layer L``; a segmentation hook is refused (it needs ``--model segmentation:RUN``)."""
    if not cfg.hook:
        return cfg
    site = hook_site(cfg.hook)
    if site.site == "resid_post":
        return dataclasses.replace(cfg, hook="", layer=site.layer)
    if not is_vision_hook(cfg.hook):
        raise RecordError(
            f"{cfg.hook} is a segmentation-model hook: use --model segmentation:RUN_DIR"
        )
    return cfg


def part_dir(out: Path, rank: int, world: int) -> Path:
    """This process's store directory: ``out`` alone, ``out/rank<r>`` when sharded."""
    single = (out / "manifest.json").is_file()
    sharded = any(out.glob("rank*/manifest.json"))
    if world > 1 and single:
        raise RecordError(
            f"{out} holds a single-process store; resume it with one process or pick a new --out"
        )
    return out / f"rank{rank}" if world > 1 or sharded else out


def check_resume(out: Path, cfg: RecordConfig) -> None:
    """Refuse to resume a store recorded with other report sections (they would mix)."""
    try:
        extra = ActivationStore(out).manifest.get("extra") or {}
    except StoreError:
        return
    was = extra.get("sections", "findings")
    if was != cfg.sections:
        raise RecordError(f"{out} was recorded with --sections {was}; got {cfg.sections}")


def finished_studies(out: Path) -> set[int]:
    """Studies complete or skipped in any part of the store at ``out`` (empty if none)."""
    try:
        manifest = ActivationStore(out).manifest
    except StoreError:
        return set()
    return set(manifest["studies_complete"]) | {int(s) for s in manifest["skipped"]}


def resolve_layer(adapter, layer: int) -> int:
    """``layer``, or the middle block (n - 1) // 2 for -1 (15 of MAIRA-2's 32, as the study)."""
    return (adapter.n_layers - 1) // 2 if layer == -1 else layer


def resolve_layers(adapter, cfg: RecordConfig) -> tuple[int, ...]:
    """The blocks to record, ascending: ``layers`` (each -1 = the middle block) or ``layer``."""
    layers = sorted({resolve_layer(adapter, layer) for layer in (cfg.layers or (cfg.layer,))})
    for layer in layers:
        adapter.hook_name(layer)  # ValueError naming the model's range
    return tuple(layers)


def _store_dirs(adapter, out: Path, layers: tuple[int, ...], multi: bool) -> dict[int, Path]:
    """Where each layer's store goes: ``out`` alone, or ``out/<hook name>`` with ``--layers``."""
    if multi and ((out / MANIFEST).is_file() or any(out.glob(f"rank*/{MANIFEST}"))):
        raise RecordError(f"{out} holds a single-layer store; pick a new --out for --layers")
    if not multi and hook_stores(out) is not None:
        raise RecordError(f"{out} holds one store per hook (--layers); pass the same --layers")
    return {layer: out / adapter.hook_name(layer) if multi else out for layer in layers}


def record(cfg: RecordConfig) -> Path:
    """Record ``cfg`` into ``cfg.out`` (resuming); returns the store directory."""
    from accelerate import PartialState

    from workbench.models.registry import load_model

    cfg.validate()
    if cfg.model.startswith(SEGMENTATION_MODEL):
        from segmentation.latents import record_segmentation

        return record_segmentation(cfg)
    run = RunLayout(cfg.run)
    cfg = dataclasses.replace(cfg, data=cfg.data or run.phantom, out=cfg.out or run.activations)
    cfg = plain_hook(cfg)
    state = PartialState(cpu=cfg.device == "cpu")
    device = state.device if cfg.device != "cpu" else "cpu"
    adapter = load_model(cfg.model, device=device)
    layers = (hook_site(cfg.hook).layer or 0,) if cfg.hook else resolve_layers(adapter, cfg)
    width = vision_width(adapter, cfg.hook) if cfg.hook else adapter.d_model
    if (adapter.kind == "vision_language" or cfg.hook) and cfg.sections != "findings":
        raise RecordError(
            f"{adapter.name} writes FINDINGS; --sections {cfg.sections} needs a text-only LM"
        )
    collection = load_collection(
        cfg.data, cfg.split or None, cfg.text_column, cfg.id_column, cfg.sections
    )
    if (adapter.kind == "vision_language" or cfg.hook) and collection.kind != "studies":
        raise RecordError(f"{adapter.name} needs images; {cfg.data} holds only report text")
    out = Path(cfg.out)
    dirs = _store_dirs(adapter, out, layers, multi=bool(cfg.layers))
    for path in dirs.values():
        check_resume(path, cfg)
    writers = {
        layer: StoreWriter(
            part_dir(path, state.process_index, state.num_processes),
            model=adapter.name,
            layer=layer,
            hook_name=cfg.hook or adapter.hook_name(layer),
            d_model=width,
            dtype=cfg.dtype,
            shard_tokens=cfg.shard_tokens,
            flush_seconds=cfg.flush_seconds,
            extra={
                "image_tokens": cfg.image_tokens,
                "prompt_tokens": cfg.prompt_tokens,
                "data": str(Path(cfg.data).resolve()),
                "source_kind": collection.kind,
                "sections": cfg.sections,
                "text_column": cfg.text_column,
                "id_column": cfg.id_column,
                "concept_groups": groups_of(coverage_names()) if cfg.hook else {},
            },
        )  # fmt: skip
        for layer, path in dirs.items()
    }
    if cfg.layers and state.is_main_process:
        write_hook_index(out, {path.name: path.name for path in dirs.values()})
    mine = my_share(collection, cfg.limit, state.process_index, state.num_processes)
    done = {layer: finished_studies(path) for layer, path in dirs.items()}
    run_items(adapter, writers, mine, done, cfg)
    for writer in writers.values():
        writer.close()
    state.wait_for_everyone()
    if state.is_main_process:
        save_config(cfg, out / "cfg.json")
    return out


def my_share(collection: Collection, limit: int, rank: int, world: int) -> Collection:
    """This process's disjoint share: every ``world``-th study id from ``rank`` (of the first
    ``limit`` ids), with the skips that fall in it."""
    ids = sorted(
        {it.study_id for it in collection.items} | {s.study_id for s in collection.skipped}
    )
    ids = ids[:limit] if limit else ids
    mine = set(ids[rank::world])
    items = [it for it in collection.items if it.study_id in mine]
    skipped = [s for s in collection.skipped if s.study_id in mine]
    return Collection(collection.kind, items, skipped)


def run_items(
    adapter, writers: dict[int, StoreWriter], share: Collection, done: dict[int, set[int]], cfg
) -> None:
    """Record every unfinished study of ``share`` into each layer's writer; unreadable ones
    become skips. A study some stores already hold (a run killed between two stores' flushes)
    is recorded only into the others."""
    from tqdm import tqdm

    done = {layer: done[layer] | w.completed for layer, w in writers.items()}
    skips = [(s.study_id, s.reason) for s in share.skipped if s.study_id not in done[max(done)]]
    for s in share.skipped:
        for layer, writer in writers.items():
            if s.study_id not in done[layer]:
                writer.skip(s.study_id, s.reason)
    finished = set.intersection(*done.values())
    todo = [it for it in share.items if it.study_id not in finished]
    where = ", ".join(str(w.path) for w in writers.values())
    log.info("%s: %d studies to record (%d already done)", where, len(todo),
             len(share.items) - len(todo))  # fmt: skip
    t0, n_tokens, n_stored = time.perf_counter(), 0, 0
    what = f"record L{','.join(map(str, writers))}"
    beat = Heartbeat(log, what, len(todo), cfg.log_seconds)
    bar = tqdm(todo, unit="study", disable=not cfg.progress, desc=what)
    for i, item in enumerate(bar):
        need = tuple(layer for layer in writers if item.study_id not in done[layer])
        try:
            acts, meta, dropped = record_item(adapter, item, need if cfg.layers else need[0], cfg)
        except (CXRDataError, OSError) as exc:
            for layer in need:
                writers[layer].skip(item.study_id, f"unreadable input: {exc}")
            skips.append((item.study_id, f"unreadable input: {exc}"))
        else:
            acts = acts if isinstance(acts, dict) else {need[0]: acts}
            for layer, acts_ND in acts.items():
                writers[layer].add(item.study_id, acts_ND, meta, dropped)
            n_tokens += next(iter(acts.values())).shape[0]
            n_stored += 1
            bar.set_postfix(tok_s=f"{n_tokens / (time.perf_counter() - t0):.0f}")
        beat.update(i + 1, stored=n_stored, skipped=len(skips), tokens=n_tokens)
    elapsed = max(time.perf_counter() - t0, 1e-9)
    log.info(
        "recorded %d studies, %d tokens in %.1f s (%.1f studies/s, %.0f tokens/s)",
        n_stored, n_tokens, elapsed, n_stored / elapsed, n_tokens / elapsed,
    )  # fmt: skip
    warn_skipped(writers[max(writers)].path, skips)


def warn_skipped(store: Path, skips: list[tuple[int, str]], show: int = 5) -> None:
    """One WARNING with the number of studies left out and the first few reasons (the
    manifest's ``skipped`` lists them all)."""
    if not skips:
        return
    first = "; ".join(f"study {sid}: {reason}" for sid, reason in skips[:show])
    more = f" (and {len(skips) - show} more)" if len(skips) > show else ""
    log.warning(
        "%d studies skipped, not recorded (all listed under 'skipped' in %s): %s%s",
        len(skips), Path(store) / "manifest.json", first, more,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = parse_config(RecordConfig, argv, prog="python -m workbench.record")
    try:
        print(record(cfg))
    except (RecordError, StoreError, CXRDataError, FileNotFoundError, ValueError) as exc:
        # segmentation.io.DataError is a ValueError
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
