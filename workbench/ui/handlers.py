"""What each tab shows: a context and the user's inputs in, HTML strings and tables out.

Handlers fetch plain rows through :mod:`workbench.ui.queries` and turn them into views with
:mod:`workbench.ui.render`, :mod:`workbench.ui.charts` and :mod:`workbench.ui.heatmap`. They
never raise into Gradio: a missing run, an empty table or a bad input becomes a message in
the page (:func:`guarded`). No Gradio import here, so they are tested without a browser.
This module holds the shared pieces and the Features tab; the Feature tab is
:mod:`workbench.ui.handlers_feature`, the Study tab :mod:`workbench.ui.handlers_study`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import duckdb

from workbench.ui import charts, queries, render
from workbench.ui import search as lookup
from workbench.ui.context import AppContext, RunNotReadyError

log = logging.getLogger("workbench.ui")

FEATURE_COLUMNS = (
    "feature", "label", "why", "method", "score", "concept", "AUROC", "frequency", "max act",
    "group", "select.",
)  # fmt: skip
NO_CONCEPT = "(best concept)"


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


def missing_feature(ctx: AppContext, feature: int) -> str:
    """The message for a feature number the SAE does not have, with the valid range."""
    span = queries.feature_range(ctx)
    if span is None:
        return f"feature {feature}: this run has no features table yet"
    return f"feature {feature}: this SAE has features {span[0]}-{span[1]}"


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
    meaning: bool = False,
    limit: int = 200,
) -> FeatureTable:
    """The Features tab: matching features as table rows plus a line saying what is shown.

    ``concept`` is a filter value ('source:name', or a bare name): the table keeps the features
    associated with it. A search ranks matches by where they matched (:mod:`workbench.ui.search`)
    and fills the 'why' column. ``select.`` is the assertion selectivity on the shown concept's
    report mentions; ``meaning`` keeps the features that mean the concept rather than its word.
    """
    if ctx.con is None:
        return FeatureTable([], render.messages(ctx.status.problems))
    text = (search or "").strip()
    group_i = int(group) if group not in (None, "", "any") else None
    chosen = None
    if concept not in (None, "", NO_CONCEPT):
        chosen = lookup.parse_concept(concept, queries.concepts(ctx))
        if chosen is None:
            return FeatureTable([], render.message(f"Unknown concept {concept!r}.", "error"))
    rows, total = queries.feature_table(
        ctx, text, chosen, density, group_i, sort, descending, limit, meaning
    )
    if text:
        key = queries.SORTS.get(sort, queries.SORTS["frequency"])
        rows = lookup.rank(rows, text, key, descending)[:limit]
    out = [_row(r, chosen) for r in rows]
    return FeatureTable(out, render.message(_summary(ctx, len(out), total, text, chosen), "info"))


def _row(r: dict, chosen: tuple[str, str] | None) -> list[Any]:
    """One table row; the 'why' column says why a search or a concept filter kept it."""
    why = r.get("why") or ""
    if chosen and r.get("auroc") is not None:
        why = f"AUROC {r['auroc']:.2f} for {lookup.norm_concept(chosen[1])}"
        if r.get("selectivity") is not None:
            why += f" · selectivity {r['selectivity']:.2f}"
    live = bool(r["frequency"])
    return [
        r["feature"],
        r["label"] or "",
        why,
        r["method"] or "",
        _round(r["score"]),
        lookup.concept_display(r["concept"], r.get("source")) if live and r["concept"] else "",
        _round(r["auroc"]) if live else None,
        _round(r["frequency"], 6),
        _round(r["max_act"]),
        r["group"],
        _round(r["selectivity"]),
    ]


def _summary(ctx: AppContext, shown: int, total: int, text: str, chosen) -> str:
    """What the table shows and in which order."""
    count = f"showing {shown:,} of {total:,}" if total > shown else f"{total:,}"
    noun = "feature" if total == 1 else "features"
    out = f"{count} matching {noun}"
    if chosen:
        name = lookup.concept_display(chosen[1], chosen[0])
        out += (
            f" · associated with {name} (AUROC ≥ {queries.ASSOCIATED_AUROC}), "
            "best first unless you sort otherwise"
        )
    if text:
        out += " · ranked by where the text matched (see 'why'), then by the sort"
    out += " · click a row to open its page"
    if not ctx.status.has_labels:
        out += " · no labels yet (run `python -m workbench label`)"
    return out


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


def concept_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """The concept filter's choices: (normalised name · source, value), alphabetical."""
    if ctx.con is None:
        return [(NO_CONCEPT, NO_CONCEPT)]
    pairs = [
        (
            lookup.concept_display(r["concept"], r["source"]),
            lookup.concept_value(r["source"], r["concept"]),
        )
        for r in queries.concepts(ctx)
    ]
    return [(NO_CONCEPT, NO_CONCEPT), *pairs]


def concept_name(row: dict) -> str:
    """A concept as shown: normalised, with its source (CheXpert, ground truth, your labels)."""
    return lookup.concept_display(row["concept"], row.get("source"))


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(float(x), digits)
