"""The Segmentation tab's handlers: one test image through every trained segmentation model.

Where things come from (:func:`find_sources`):

- the models: ``<run>/segmentation/<task>-<model>/`` (``model.pt`` + ``cfg.json``, what the
  demo and ``seg-train`` write), or, when the app's run is itself a segmentation latent run,
  the directory beside the run its store was recorded from;
- the metrics: ``segmentation_results`` in the app's database, else in the latent run's;
- the latent features: the app's run when its store holds segmentation latents (feature
  chips then open the Feature tab), else ``<run>/seg-latents/`` (``RunLayout.seg_latents``).

Models, samples and the latent run's read-only connection are kept in a :class:`SegState`
that the tab builds once per app. As everywhere in the app, paths that come from the run's
files are read only inside the run or the configured image roots, and handlers never raise
into Gradio (:func:`workbench.ui.handlers.guarded`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import numpy as np
import torch

from segmentation.data import load_dataset
from segmentation.io import SegSample, class_names, study_key, task_mask
from segmentation.models import load_model, predict
from workbench import db
from workbench.models.hooks import SEGMENTATION_MODEL
from workbench.run import RunLayout
from workbench.ui import render
from workbench.ui import seg_render as sr
from workbench.ui.context import AppContext, read_json
from workbench.ui.handlers import guarded
from workbench.ui.safety import inside, restrict

SPLIT = "test"


class SegRunInfo(NamedTuple):
    """A trained segmentation run: directory name, path, model kind, dataset, its config."""

    name: str
    path: Path
    kind: str
    dataset: str
    cfg: dict


class Sources(NamedTuple):
    runs: tuple[SegRunInfo, ...]
    latent: Path | None  # run directory with features.duckdb over segmentation latents
    latent_is_app: bool  # the latent run is the app's own run
    problems: tuple[str, ...]


@dataclass
class SegState:
    """Caches of one app: loaded models, loaded test samples, the latent run's connection."""

    models: dict[Path, tuple] = field(default_factory=dict)
    samples: dict[tuple, list[SegSample]] = field(default_factory=dict)
    latent_con: duckdb.DuckDBPyConnection | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def close(self) -> None:
        if self.latent_con is not None:
            self.latent_con.close()


def store_manifest(run_dir: Path) -> dict | None:
    """The activation store manifest of a run (first part of a sharded store), if any."""
    acts = RunLayout(run_dir).activations
    return read_json(acts / "manifest.json") or read_json(acts / "rank0" / "manifest.json")


def _run_info(path: Path) -> SegRunInfo | None:
    cfg = read_json(path / "cfg.json")
    if cfg is None or not (path / "model.pt").is_file():
        return None
    return SegRunInfo(path.name, path, str(cfg.get("model", "?")), str(cfg.get("dataset")), cfg)


def find_sources(ctx: AppContext) -> Sources:
    """The segmentation runs, the latent run and what is missing (module docstring)."""
    own = store_manifest(ctx.run_dir) or {}
    own_is_seg = str(own.get("model", "")).startswith(SEGMENTATION_MODEL)
    seg_dir = RunLayout(ctx.run_dir).segmentation
    if not seg_dir.is_dir() and own_is_seg and own.get("extra", {}).get("seg_run"):
        seg_dir = Path(own["extra"]["seg_run"]).parent
    problems = []
    runs: list[SegRunInfo] = []
    if not seg_dir.is_dir():
        problems.append(
            f"No segmentation models at {seg_dir}: run `python -m workbench demo` or "
            "`python -m workbench seg-train --out <run>/segmentation/<name>`."
        )
    elif inside(seg_dir, ctx.image_roots) is None:
        problems.append(
            f"The segmentation models at {seg_dir} lie outside this run; "
            f"serve with --image-roots {seg_dir.parent} to show them."
        )
    else:
        runs = [i for d in sorted(seg_dir.iterdir()) if d.is_dir() and (i := _run_info(d))]
    latent, is_app = None, False
    if own_is_seg and ctx.con is not None:
        latent, is_app = ctx.run_dir, True
    elif db.db_path(RunLayout(ctx.run_dir).seg_latents).is_file():
        latent = RunLayout(ctx.run_dir).seg_latents
    return Sources(tuple(runs), latent, is_app, tuple(problems))


def datasets(sources: Sources) -> list[str]:
    """Datasets some model was trained on, in a stable order."""
    return sorted({r.dataset for r in sources.runs})


def _samples(ctx: AppContext, state: SegState, run: SegRunInfo) -> list[SegSample]:
    """The test split of ``run``'s dataset at its input size (cached)."""
    cfg = run.cfg
    data = Path(str(cfg.get("data")))
    key = (run.dataset, str(data), int(cfg.get("image_size", 128)),
           int(cfg.get("crop_size", 128)), bool(cfg.get("lung_class", False)))  # fmt: skip
    with state.lock:
        if key not in state.samples:
            if inside(data, ctx.image_roots) is None:
                raise ValueError(f"{data}: the dataset lies outside this run and the image roots")
            state.samples[key] = load_dataset(key[0], data, SPLIT, key[2], key[3], key[4])
        return state.samples[key]


def image_choices(ctx: AppContext, state: SegState, dataset: str) -> list[tuple[str, str]]:
    """(label, image id) of the dataset's test images."""
    runs = [r for r in find_sources(ctx).runs if r.dataset == dataset]
    if not runs:
        return []
    return [(str(s.meta.get("id")), str(s.meta.get("id"))) for s in _samples(ctx, state, runs[0])]


@guarded(lambda msg: [])
def safe_image_choices(ctx: AppContext, state: SegState, dataset: str | None) -> list:
    """:func:`image_choices`, or no choices when the dataset cannot be read (the view says why)."""
    return image_choices(ctx, state, dataset) if dataset else []


def _model(state: SegState, run: SegRunInfo):
    with state.lock:
        if run.path not in state.models:
            state.models[run.path] = load_model(run.path)
        return state.models[run.path]


class SegView(NamedTuple):
    """The tab's panels, one HTML string each."""

    header: str
    masks: str
    samples: str
    metrics: str
    latents: str


def _empty(msg: str) -> SegView:
    return SegView(msg, "", "", "", "")


def _find(samples: list[SegSample], image_id: str) -> SegSample | None:
    return next((s for s in samples if str(s.meta.get("id")) == str(image_id)), None)


@guarded(_empty)
def seg_view(ctx: AppContext, state: SegState, dataset, image_id, n_samples: int = 8) -> SegView:
    """Every model's prediction for one test image, SSN samples and variance, the metrics and
    the image's most active latent features."""
    sources = find_sources(ctx)
    if not sources.runs:
        return _empty(render.messages(sources.problems or ["No segmentation models found."]))
    if not dataset or not image_id:
        return _empty(render.message("Pick a dataset and a test image above.", "info"))
    runs = [r for r in sources.runs if r.dataset == dataset]
    sample = _find(_samples(ctx, state, runs[0]), image_id) if runs else None
    if sample is None:
        return _empty(render.message(f"No test image {image_id!r} in {dataset}.", "error"))
    masks, sample_figs = [sr.figure(sr.mask_overlay(sample.image, 0 * sample.image), "image")], []
    n_classes = len(class_names(sample.meta))
    for k, m in enumerate(sample.masks):  # the task's class (the nodule, also beside the lung)
        name = f"annotator {k}" if len(sample.masks) > 1 else "ground truth"
        masks.append(sr.figure(sr.mask_overlay(sample.image, task_mask(m, n_classes)), name))
    for run in runs:
        own = _find(_samples(ctx, state, run), image_id)
        if own is not None:
            pred_figs, samp_figs = _predictions(state, run, own, n_samples)
            masks += pred_figs
            sample_figs += samp_figs
    return SegView(
        header=_header(dataset, sample),
        masks=render.card("Masks", sr.gallery(masks)),
        samples=render.card("SSN samples and per-pixel variance", sr.gallery(sample_figs))
        if sample_figs
        else "",
        metrics=_metrics(ctx, state, sources, dataset),
        latents=latent_panel(ctx, state, sources, dataset, sample),
    )


def _header(dataset: str, s: SegSample) -> str:
    attrs = ", ".join(f"{k} {s.meta[k]}" for k in ("sex", "age_group", "habitus") if s.meta.get(k))
    sid = study_key(s.meta)[0]
    text = f"{dataset} · test image {s.meta.get('id')} · study {sid}"
    return f'<div class="wb-fid">{escape(text)}{escape(" · " + attrs) if attrs else ""}</div>'


def _predictions(state, run: SegRunInfo, s: SegSample, n: int) -> tuple[list[str], list[str]]:
    """(mask figures, sample figures) of one model on one sample, seeded."""
    model, spec, _ = _model(state, run)
    x = torch.from_numpy(s.image[None, None].astype(np.float32))
    use_roi = bool(run.cfg.get("use_roi")) and s.roi is not None and spec.kind != "unet"
    roi = torch.from_numpy(s.roi[None]) if use_roi else None
    pred = predict(model, x, n, roi, generator=torch.Generator().manual_seed(0))
    C, names = spec.num_classes, class_names(s.meta)
    point = task_mask(pred.prediction[0].numpy(), C)
    what = "mean" if spec.kind.startswith("ssn") else "prediction"
    masks = [sr.figure(sr.mask_overlay(s.image, point), f"{run.name}: {what}")]
    for c in range(1, C - 1):  # the other foreground classes (the lung field) of the point map
        name = names[c] if len(names) == C else f"class {c}"
        masks.append(sr.figure(sr.mask_overlay(s.image, pred.prediction[0].numpy() == c),
                               f"{run.name}: {what}, {name}"))  # fmt: skip
    if not spec.kind.startswith("ssn"):
        return masks, []
    fg_SHW = task_mask(pred.samples[:, 0], C).float().numpy()
    p = fg_SHW.mean(0)
    figs = [
        sr.figure(sr.mask_overlay(s.image, m), f"{run.name}: sample {i}")
        for i, m in enumerate(fg_SHW)
    ]
    var = p * (1 - p)
    figs.append(
        sr.figure(
            sr.heat_overlay(s.image, var, 0.25), f"{run.name}: variance (max {var.max():.2f})"
        )
    )
    return masks, figs


def _query(ctx: AppContext, state: SegState, sources: Sources, sql: str, params=()) -> list[dict]:
    """Rows from the latent run's database (the app's own connection when it is the app run)."""
    if sources.latent_is_app:
        return ctx.rows(sql, params)
    with state.lock:
        if state.latent_con is None:
            con = db.connect(sources.latent, read_only=True)
            acts = db.db_path(sources.latent).parent / db.ACTS_NAME
            restrict(con, [acts] if acts.exists() else [])
            state.latent_con = con
        cur = state.latent_con.execute(sql, list(params))
        names = [d[0] for d in cur.description or []]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _metrics(ctx: AppContext, state: SegState, sources: Sources, dataset: str) -> str:
    sql = (
        "SELECT model, subgroup, metric, value, n_images FROM segmentation_results "
        "WHERE dataset = ? ORDER BY model, subgroup, metric"
    )
    rows: list[dict[str, Any]] = []
    if ctx.has("segmentation_results"):
        rows = ctx.rows(sql, [dataset])
    elif sources.latent is not None and not sources.latent_is_app:
        found = _query(
            ctx,
            state,
            sources,
            "SELECT count(*) AS n FROM duckdb_tables() WHERE table_name = ?",
            ["segmentation_results"],
        )
        rows = _query(ctx, state, sources, sql, [dataset]) if found[0]["n"] else []
    if not rows:
        return render.card(
            "Metrics",
            render.message(
                "No segmentation_results for this dataset: run `python -m workbench seg-evaluate "
                f"--db {db.db_path(ctx.run_dir)}`.",
                "info",
            ),
        )
    return render.card(
        f"Metrics on the {SPLIT} split (DuckDB segmentation_results)", sr.metrics_table(rows)
    )


def latent_panel(ctx: AppContext, state: SegState, sources: Sources, dataset: str, s, k=6) -> str:
    """The image's most active latent features, each as a heatmap over the image."""
    if sources.latent is None:
        where = RunLayout(ctx.run_dir).seg_latents
        return _note(
            "No SAE on segmentation latents yet: record one into "
            f"{where} (docs/segmentation.md, Latents)."
        )
    manifest = store_manifest(sources.latent) or {}
    extra = manifest.get("extra", {})
    if extra.get("dataset") != dataset:
        return _note(
            f"The latent run {sources.latent} was recorded on {extra.get('dataset')}, "
            f"not {dataset}."
        )
    sid = study_key(s.meta)[0]
    top = _query(
        ctx,
        state,
        sources,
        "SELECT feature, max_act FROM study_features "
        "WHERE study_id = ? ORDER BY max_act DESC LIMIT ?",
        [sid, k],
    )
    if not top:
        return _note(f"Study {sid} is not in the latent run's store.")
    labels = _labels(ctx, state, sources, [r["feature"] for r in top])
    grid = _query(
        ctx,
        state,
        sources,
        "SELECT max(patch_row) + 1 AS r, max(patch_col) + 1 AS c FROM tokens WHERE study_id = ?",
        [sid],
    )[0]
    figs = []
    for r in top:
        f, label = int(r["feature"]), labels.get(int(r["feature"]))
        caption = sr.latent_caption(f, label, r["max_act"])
        chip = render.feature_link(f, "open", "") if sources.latent_is_app else ""
        if grid["r"] is None:  # W+ tokens: no picture, the chips alone
            figs.append(f"<p>{escape(caption)} {chip}</p>")
            continue
        acts = _query(
            ctx,
            state,
            sources,
            "SELECT t.patch_row, t.patch_col, a.value FROM feature_acts a "
            "JOIN tokens t ON a.row = t.row WHERE t.study_id = ? AND a.feature = ? "
            "AND t.patch_row IS NOT NULL",
            [sid, f],
        )
        grid_RC = np.zeros((int(grid["r"]), int(grid["c"])), np.float32)
        for a in acts:
            grid_RC[a["patch_row"], a["patch_col"]] = max(
                grid_RC[a["patch_row"], a["patch_col"]], a["value"]
            )
        figs.append(
            sr.figure(sr.heat_overlay(s.image, grid_RC, float(r["max_act"])), caption, chip)
        )
    hint = (
        ""
        if sources.latent_is_app
        else render.message(f"Feature pages: python app.py --run {sources.latent}", "info")
    )
    title = f"Most active latent features ({manifest.get('hook_name')}, {sources.latent.name})"
    return render.card(title, sr.gallery(figs) + hint)


def _labels(ctx: AppContext, state: SegState, sources: Sources, features: list[int]) -> dict:
    """feature -> its best token-level concept with the AUROC, when analyse wrote them."""
    found = _query(
        ctx,
        state,
        sources,
        "SELECT count(*) AS n FROM duckdb_tables() WHERE table_name = 'feature_token_concepts'",
    )
    if not found[0]["n"] or not features:
        return {}
    marks = ", ".join("?" * len(features))
    sql = (
        "SELECT feature, arg_max(concept, value) AS concept, max(value) AS auroc "
        "FROM feature_token_concepts WHERE metric = 'auroc' AND value IS NOT NULL "
        f"AND feature IN ({marks}) GROUP BY 1"
    )
    rows = _query(ctx, state, sources, sql, features)
    return {int(r["feature"]): f"{r['concept']} (AUROC {r['auroc']:.2f})" for r in rows}


def _note(text: str) -> str:
    return render.card("Latent features", render.message(text, "info"))
