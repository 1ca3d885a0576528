"""The Features tab: a searchable, filterable, sortable table of every feature."""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr

from workbench.ui import handlers, queries
from workbench.ui.context import AppContext


class FeaturesTab(NamedTuple):
    """Components other tabs wire to: the table (row clicks open a feature)."""

    table: gr.Dataframe


def build(ctx: AppContext, html: type[gr.HTML]) -> FeaturesTab:
    """Lay out the filters, overview charts and the table; refresh on every filter change.

    ``html`` makes HTML panels whose chips open features (see :mod:`workbench.ui.app`).
    """
    concept_choices = ["(best concept)", *queries.concepts(ctx)] if ctx.con else ["(best concept)"]
    group_choices = ["any", *(str(g) for g in queries.groups(ctx))] if ctx.con else ["any"]
    with gr.Row(equal_height=True):
        search = gr.Textbox(
            label="Search labels",
            placeholder="e.g. effusion, pacemaker, or a feature number",
            scale=3,
            elem_id="wb-search",
        )
        concept = gr.Dropdown(concept_choices, value="(best concept)", label="Concept", scale=2)
        density = gr.Dropdown(list(queries.DENSITIES), value="any", label="Firing frequency")
        group = gr.Dropdown(group_choices, value="any", label="Matryoshka group")
        sort = gr.Dropdown(list(queries.SORTS), value="frequency", label="Sort by")
        descending = gr.Checkbox(value=True, label="descending")
        meaning = gr.Checkbox(value=False, label="means present, not the word")
    first = handlers.feature_table(ctx)
    with gr.Row():
        with gr.Column(scale=3):
            summary = gr.HTML(first.summary)
            html(value=handlers.concept_chips(ctx), elem_id="wb-bestconcepts")
        with gr.Column(scale=2):
            gr.HTML(handlers.density_chart(ctx), elem_id="wb-density")
    table = gr.Dataframe(
        value=first.rows,
        headers=list(handlers.FEATURE_COLUMNS),
        datatype=[
            "number",
            "str",
            "str",
            "number",
            "str",
            "number",
            "number",
            "number",
            "number",
            "number",
        ],  # fmt: skip
        interactive=False,
        wrap=True,
        max_height=640,
        column_widths=["6%", "30%", "9%", "7%", "14%", "7%", "8%", "7%", "5%", "7%"],
        elem_id="wb-features",
    )
    inputs = [search, concept, density, group, sort, descending, meaning]

    def refresh(search_, concept_, density_, group_, sort_, desc_, meaning_):
        chosen = None if concept_ in (None, "(best concept)") else concept_
        view = handlers.feature_table(
            ctx, search_, chosen, density_, group_, sort_, desc_, meaning=meaning_
        )
        return view.rows, view.summary

    for comp in inputs[1:]:
        comp.change(refresh, inputs, [table, summary])
    search.submit(refresh, inputs, [table, summary])
    search.change(refresh, inputs, [table, summary], trigger_mode="always_last")
    return FeaturesTab(table)
