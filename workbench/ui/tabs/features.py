"""The Features tab: a searchable, filterable, sortable table of every feature."""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr

from workbench.ui import handlers, handlers_export, queries
from workbench.ui.context import AppContext


class FeaturesTab(NamedTuple):
    """Components other tabs wire to: the table (row clicks open a feature), the search box
    and what a refresh needs (a deep link may search)."""

    table: gr.Dataframe
    search: gr.Textbox
    summary: gr.HTML
    inputs: list


def build(ctx: AppContext, html: type[gr.HTML]) -> FeaturesTab:
    """Lay out the filters, overview charts and the table; refresh on every filter change.

    ``html`` makes HTML panels whose chips open features (see :mod:`workbench.ui.app`).
    """
    group_choices = ["any", *(str(g) for g in queries.groups(ctx))] if ctx.con else ["any"]
    with gr.Row(equal_height=True):
        search = gr.Textbox(
            label="Search labels",
            placeholder="e.g. effusion, pacemaker, or a feature number",
            scale=3,
            elem_id="wb-search",
        )
        concept = gr.Dropdown(
            handlers.concept_choices(ctx), value=handlers.NO_CONCEPT, label="Concept",
            scale=2, elem_id="wb-concept",
        )  # fmt: skip
        density = gr.Dropdown(list(queries.DENSITIES), value="any", label="Firing frequency")
        group = gr.Dropdown(group_choices, value="any", label="Matryoshka group")
        sort = gr.Dropdown(list(queries.SORTS), value="frequency", label="Sort by")
        descending = gr.Checkbox(value=True, label="descending")
        meaning = gr.Checkbox(value=False, label="means present, not the word")
    first = handlers.feature_table(ctx)
    with gr.Row():
        with gr.Column(scale=3):
            summary = gr.HTML(first.summary, elem_id="wb-fsummary")
            html(value=handlers.concept_chips(ctx), elem_id="wb-bestconcepts")
            with gr.Row():
                export = gr.Button("Export the listed features", size="sm", scale=0)
                files = gr.HTML(elem_id="wb-texports")
        with gr.Column(scale=2):
            gr.HTML(handlers.density_chart(ctx), elem_id="wb-density")
    table = _table(first.rows)
    inputs = [search, concept, density, group, sort, descending, meaning]

    def refresh(*values):
        view = handlers.feature_table(ctx, *values)
        return view.rows, view.summary

    for comp in inputs[2:]:
        comp.change(refresh, inputs, [table, summary])
    search.submit(refresh, inputs, [table, summary])
    search.change(refresh, inputs, [table, summary], trigger_mode="always_last")
    # choosing a concept lists its features best first: sort by its AUROC, descending
    concept.input(
        lambda c: (
            (gr.Dropdown(value="AUROC"), gr.Checkbox(value=True))
            if c != handlers.NO_CONCEPT
            else (gr.skip(), gr.skip())
        ),
        [concept],
        [sort, descending],
    ).then(refresh, inputs, [table, summary])
    export.click(lambda *v: handlers_export.export_table(ctx, *v), inputs, [files])
    return FeaturesTab(table, search, summary, inputs)


def _table(rows: list) -> gr.Dataframe:
    """The features table (columns: :data:`handlers.FEATURE_COLUMNS`)."""
    return gr.Dataframe(
        value=rows,
        headers=list(handlers.FEATURE_COLUMNS),
        datatype=["number", "str", "str", "str", "number", "str", "number", "number", "number",
                  "number", "number"],
        interactive=False,
        wrap=True,
        max_height=640,
        column_widths=["6%", "30%", "13%", "7%", "6%", "12%", "6%", "7%", "5%", "4%", "4%"],
        elem_id="wb-features",
    )  # fmt: skip
