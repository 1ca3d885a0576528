"""What each tab shows: a context and the user's inputs in, HTML strings and tables out.

Handlers fetch plain rows through :mod:`workbench.ui.queries` and turn them into views with
:mod:`workbench.ui.render`, :mod:`workbench.ui.charts` and :mod:`workbench.ui.heatmap`. They
never raise into Gradio: a missing run, an empty table or a bad input becomes a message in
the page (:func:`guarded`). No Gradio import here, so they are tested without a browser.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import duckdb

from workbench.cxr.images import CXRDataError, load_image
from workbench.ui import charts, heatmap, queries, render
from workbench.ui.context import AppContext, RunNotReadyError
from workbench.ui.safety import inside

log = logging.getLogger("workbench.ui")

FEATURE_COLUMNS = (
    "feature", "label", "method", "score", "concept", "AUROC", "frequency", "max act", "group",
    "select.",
)  # fmt: skip


class FeatureView(NamedTuple):
    """The feature page, one HTML string per panel."""

    title: str
    histogram: str
    image: str
    concepts: str
    logits: str
    neighbors: str
    examples: str


class FeatureTable(NamedTuple):
    """The features table (rows of :data:`FEATURE_COLUMNS`) and a line saying how many matched."""

    rows: list[list[Any]]
    summary: str


def guarded(empty: Callable[[str], Any]) -> Callable:
    """Turn known failures of a handler into ``empty(message_html)`` instead of a stack trace."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except RunNotReadyError as exc:
                return empty(render.message(str(exc), "warn"))
            except (duckdb.Error, OSError, ValueError, KeyError) as exc:
                log.exception("handler %s failed", fn.__name__)
                return empty(render.message(f"Could not build this view: {exc}", "error"))

        return inner

    return wrap


def _empty_feature(msg: str) -> FeatureView:
    return FeatureView(msg, "", "", "", "", "", "")


def _empty_table(msg: str) -> FeatureTable:
    return FeatureTable([], msg)


@guarded(_empty_table)
def feature_table(
    ctx: AppContext,
    search: str = "",
    concept: str | None = None,
    density: str = "any",
    group: str | int | None = None,
    sort: str = "frequency",
    descending: bool = True,
    limit: int = 200,
    meaning: bool = False,
) -> FeatureTable:
    """The Features tab: matching features as table rows plus a count line.

    ``select.`` is the assertion selectivity on the shown concept's report mentions;
    ``meaning`` keeps the features that mean the concept rather than its word.
    """
    if ctx.con is None:
        return FeatureTable([], render.messages(ctx.status.problems))
    group_i = int(group) if group not in (None, "", "any") else None
    rows, total = queries.feature_table(
        ctx, search, concept or None, density, group_i, sort, descending, limit, meaning
    )
    out = [
        [
            r["feature"],
            r["label"] or "",
            r["method"] or "",
            _round(r["score"]),
            (r["concept"] or "") if r["frequency"] else "",
            _round(r["auroc"]) if r["frequency"] else None,
            _round(r["frequency"], 6),
            _round(r["max_act"]),
            r["group"],
            _round(r["selectivity"]),
        ]
        for r in rows
    ]
    shown = f"showing {len(out):,} of {total:,}" if total > len(out) else f"{total:,}"
    noun = "feature" if total == 1 else "features"
    summary = f"{shown} matching {noun} · click a row to open its page"
    if not ctx.status.has_labels:
        summary += " · no labels yet (run `python -m workbench label`)"
    return FeatureTable(out, render.message(summary, "info"))


def density_chart(ctx: AppContext, per_decade: int = 4) -> str:
    """How often features fire, all features at once: the SAE's health at a glance."""
    if ctx.con is None:
        return ""
    rows, dead = queries.density_histogram(ctx, per_decade)
    bins = [
        (r["bin"], 10 ** (r["bin"] / per_decade), 10 ** ((r["bin"] + 1) / per_decade), r["n"])
        for r in rows
    ]
    live = sum(b[3] for b in bins)
    title = f"{live:,} live features by firing frequency · {dead:,} dead"
    chart = charts.histogram(bins, title, "fraction of tokens (log scale)", "features", 150)
    return f'<div class="wb-density">{chart}</div>'


def concept_chips(ctx: AppContext) -> str:
    """The best feature for each concept, as chips that open it."""
    if ctx.con is None:
        return ""
    rows = queries.best_per_concept(ctx)
    if not rows:
        return render.card(
            "Best feature per concept", '<p class="wb-empty">No concepts scored.</p>'
        )
    chips = "".join(
        render.feature_link(
            r["feature"], f"{concept_name(r)} → #{r['feature']}", f" · {r['auroc']:.2f}"
        )
        for r in rows
    )
    return render.card("Best feature per concept (AUROC)", f'<div class="wb-chips">{chips}</div>')


def concept_name(row: dict) -> str:
    """A concept as shown: CheXpert labels marked as such (the phantom has look-alike names)."""
    return f"{row['concept']} (CheXpert)" if row.get("source") == "chexpert" else row["concept"]


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(float(x), digits)


@guarded(_empty_feature)
def feature_view(ctx: AppContext, feature: int | float | str | None) -> FeatureView:
    """The feature page for ``feature``."""
    if ctx.con is None:
        return _empty_feature(render.messages(ctx.status.problems))
    f = render.as_int(feature)
    if f is None:
        return _empty_feature(
            render.message(
                "Click a row in the Features tab, or type a feature number above.", "info"
            )
        )
    header = queries.feature_header(ctx, f)
    labels = queries.labels(ctx, f)
    title = render.feature_title(f, header, labels)
    if header is None:
        return _empty_feature(title)
    hist = queries.by_feature(ctx, "feature_histograms", f, "bin")
    bins = [(r["bin"], r["bin_lo"], r["bin_hi"], r["count"]) for r in hist]
    histogram = render.card(
        "Activation histogram",
        charts.histogram(bins, f"{sum(b[3] for b in bins):,} firing tokens")
        + render.details("numbers", render.table(hist, ["bin_lo", "bin_hi", "count"])),
    )
    ex = queries.by_feature(
        ctx, "feature_examples", f, "example_group = 'top' DESC, quantile DESC, rank"
    )
    scale = float(header.get("max_act") or 0) or max((r["activation"] or 0 for r in ex), default=1)
    image_ex = [r for r in ex if r.get("kind") == "image"]
    top_sid = (
        int(max(image_ex, key=lambda r: r["activation"] or 0)["study_id"]) if image_ex else None
    )
    grid = queries.image_grid(ctx, top_sid) if top_sid is not None else None
    shape = (int(grid["n_rows"]), int(grid["n_cols"])) if grid else None
    return FeatureView(
        title=title,
        histogram=histogram,
        image=_feature_image(ctx, f, top_sid, grid, scale)
        + _localisation_panel(queries.localisation(ctx, f)),
        concepts=_concepts_panel(
            queries.by_feature(ctx, "feature_concepts", f, "auroc DESC NULLS LAST", 12)
        )
        + _mentions_panel(queries.mention_scores(ctx, f)),
        logits=_logits_panel(queries.by_feature(ctx, "feature_logits", f, "direction, rank", 40)),
        neighbors=render.card("Nearest features", render.neighbors(queries.neighbors(ctx, f))),
        examples=render.card("Examples", render.examples(ex, scale, shape)),
    )


def _concepts_panel(rows: list[dict]) -> str:
    items = [(concept_name(r), r["auroc"]) for r in rows if r["auroc"] is not None]
    chart = charts.hbars(items, 0.0, 1.0, ref=0.5, title="AUROC of study max activation")
    numbers = render.table(rows, ["concept", "source", "auroc", "rank"])
    return render.card("Concepts", chart + render.details("numbers", numbers))


_STATUS_BARS = (("mean_asserted", "present"), ("mean_negated", "negated"),
                ("mean_uncertain", "uncertain"))  # fmt: skip


def _mentions_panel(rows: list[dict]) -> str:
    """ "Fires on: present / negated / uncertain" bars for the concepts it fires on most."""
    if not rows:
        return ""
    items = [
        (f"{r['concept']} · {name}", r[key])
        for r in rows[:3]
        for key, name in _STATUS_BARS
        if r[key] is not None
    ]
    top = max((v for _, v in items), default=0.0) or 1.0
    chart = charts.hbars(items, 0.0, top, title="fires on: present / negated / uncertain")
    cols = ["concept", "n_fired", "mean_asserted", "mean_negated", "mean_uncertain",
            "mean_historical", "selectivity"]  # fmt: skip
    note = (
        '<p class="wb-empty">Mean activation over the concept\'s report mentions by status; '
        "selectivity = AUROC of present vs negated mentions (0.5: the word, 1: the meaning)."
        "</p>"
    )
    return render.card("On report mentions", chart + note + render.details(
        "numbers", render.table(rows, cols)))  # fmt: skip


def _localisation_panel(rows: list[dict]) -> str:
    """Pointing game and patch AUROC against the ground-truth masks (phantom runs)."""
    if not rows:
        return ""
    items = [(r["concept"], r["pointing_game"]) for r in rows]
    chart = charts.hbars(items, 0.0, 1.0, title="pointing game: peak patch inside the mask")
    numbers = render.table(rows, ["concept", "n_studies", "pointing_game", "patch_auroc"])
    return render.card("Localisation vs masks", chart + render.details("numbers", numbers))


def _logits_panel(rows: list[dict]) -> str:
    up = [r for r in rows if r["direction"] == "promote"][:10]
    down = [r for r in rows if r["direction"] == "suppress"][:10]
    if not up and not down:
        return render.card("Logit effects", '<p class="wb-empty">Not computed for this run.</p>')
    items = [(render.token_text(r["token"]).strip() or repr(r["token"]), r["effect"]) for r in up]
    items += [
        (render.token_text(r["token"]).strip() or repr(r["token"]), r["effect"]) for r in down
    ]
    bound = max(abs(v) for _, v in items) or 1.0
    chart = charts.hbars(
        items,
        -bound,
        bound,
        0.0,
        charts.GREEN,
        title="promoted ↑ / suppressed ↓ tokens",
        narrow=True,
    )
    numbers = render.table(rows, ["direction", "rank", "token", "effect"])
    return render.card("Logit effects", chart + render.details("numbers", numbers))


def _feature_image(
    ctx: AppContext, feature: int, sid: int | None, grid: dict | None, scale: float
) -> str:
    """Heatmap over the frontal image of the study where the feature peaks on image tokens."""
    if sid is None:
        return render.card("On the image", '<p class="wb-empty">Fires on text only.</p>')
    uri = study_heatmap_uri(ctx, sid, feature, scale, grid)
    caption = f"study {sid}: activation over image patches (max {charts.fmt(scale)})"
    return render.card(
        "On the image", render.image_block(uri, caption if uri else "Image not available.")
    )


def resolve_image(ctx: AppContext, path: str | None) -> Path | None:
    """The study image path if it exists inside the allowed roots (relative: to the run dir)."""
    if not path:
        return None
    p = Path(path)
    candidates = [p] if p.is_absolute() else [ctx.run_dir / p, Path.cwd() / p]
    # a run that was moved, or analysed from another working directory: the same file at
    # the same place below the run dir (e.g. .../old/run/phantom/files/... -> phantom/files/...)
    candidates += [ctx.run_dir.joinpath(*p.parts[i:]) for i in range(1, len(p.parts))]
    for c in candidates:
        safe = inside(c, ctx.image_roots)
        if safe is not None and safe.is_file():
            return safe
    return None


def study_heatmap_uri(
    ctx: AppContext, study_id: int, feature: int | None, vmax: float, grid: dict | None = None
) -> str | None:
    """A data URI of the study's frontal image with ``feature``'s patch activations over it.

    ``grid`` is the study's :func:`queries.image_grid` when the caller already has it.
    """
    st = queries.study(ctx, study_id)
    path = resolve_image(ctx, st.get("frontal_path") if st else None)
    if path is None:
        return None
    try:
        image = load_image(path)
    except (CXRDataError, OSError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    if grid is None and feature is not None:
        grid = queries.image_grid(ctx, study_id)
    if grid is None or feature is None:
        return heatmap.data_uri(heatmap.thumbnail(image))
    acts = queries.patch_acts(ctx, study_id, feature, grid)
    grid_RC = heatmap.grid_from_patches(
        [(a["patch_row"], a["patch_col"], a["value"]) for a in acts], grid["n_rows"], grid["n_cols"]
    )
    return heatmap.data_uri(heatmap.overlay(image, grid_RC, vmax or float(grid_RC.max())))
