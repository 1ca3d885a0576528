"""The SQL tab: one read-only query over the run's DuckDB, results as a table."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import gradio as gr

from workbench.ui import runinfo
from workbench.ui.context import AppContext

EXAMPLES: Mapping[str, str] = MappingProxyType(
    {
        "tables and what they hold": "SELECT table_name, comment FROM duckdb_tables() ORDER BY 1",
        "best feature per concept": (
            "SELECT concept, source, feature, round(auroc, 3) AS auroc FROM feature_concepts\n"
            "QUALIFY row_number() OVER (PARTITION BY concept, source ORDER BY auroc DESC) = 1\n"
            "ORDER BY auroc DESC"
        ),
        "densest features": (
            "SELECT feature, frequency, max_act FROM feature_stats ORDER BY frequency DESC LIMIT 20"
        ),
        "labels": (
            "SELECT feature, method, label, score FROM feature_labels ORDER BY score DESC LIMIT 50"
        ),
        "where feature 0 fires most": (
            "SELECT t.study_id, t.kind, t.section, t.token, a.value\n"
            "FROM feature_acts a JOIN tokens t USING (row)\n"
            "WHERE a.feature = 0 ORDER BY a.value DESC LIMIT 20"
        ),
    }
)


def build(ctx: AppContext) -> None:
    """Query box, example picker, run button, message line and result table."""
    query = gr.Code(
        value=EXAMPLES["tables and what they hold"], language="sql", lines=5,
        label="Read-only SQL over features.duckdb (tables: see docs/schema.md)",
        interactive=True, elem_id="wb-sql",
    )  # fmt: skip
    with gr.Row(equal_height=True):
        example = gr.Dropdown(list(EXAMPLES), value=None, label="Example queries", scale=3)
        run = gr.Button("Run query", variant="primary", scale=1, elem_id="wb-sqlrun")
    note = gr.HTML(elem_id="wb-sqlnote")
    result = gr.Dataframe(
        interactive=False, wrap=True, max_height=520, visible=False, elem_id="wb-sqlresult"
    )

    def execute(text: str):
        res = runinfo.run_sql(ctx, text)
        if not res.columns:
            return gr.Dataframe(visible=False), res.message
        value = {"headers": res.columns, "data": res.rows}
        return gr.Dataframe(value=value, visible=True), res.message

    run.click(execute, [query], [result, note])
    example.input(lambda name: EXAMPLES.get(name, ""), [example], [query])
