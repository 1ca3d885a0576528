"""The SQL tab: one read-only query over the run's DuckDB, results as a table."""

from __future__ import annotations

import gradio as gr

from workbench.ui import runinfo
from workbench.ui.context import AppContext

EXAMPLES = {
    "tables": "SELECT table_name, comment FROM duckdb_tables() ORDER BY 1",
    "best feature per concept": (
        "SELECT concept, feature, round(auroc, 3) AS auroc FROM feature_concepts\n"
        "QUALIFY row_number() OVER (PARTITION BY concept ORDER BY auroc DESC) = 1\n"
        "ORDER BY auroc DESC"
    ),
    "densest features": (
        "SELECT feature, frequency, max_act FROM feature_stats ORDER BY frequency DESC LIMIT 20"
    ),
    "labels": (
        "SELECT feature, method, label, score FROM feature_labels ORDER BY score DESC LIMIT 50"
    ),
}


def build(ctx: AppContext) -> None:
    """Query box, example picker, run button, message line and result table."""
    example = gr.Dropdown(list(EXAMPLES), value=None, label="Examples")
    query = gr.Code(
        value=EXAMPLES["tables"], language="sql", label="Read-only SQL", lines=5,
        interactive=True, elem_id="wb-sql",
    )  # fmt: skip
    run = gr.Button("Run query", variant="primary", elem_id="wb-sqlrun")
    note = gr.HTML(elem_id="wb-sqlnote")
    result = gr.Dataframe(interactive=False, wrap=True, max_height=520, elem_id="wb-sqlresult")

    def execute(text: str):
        res = runinfo.run_sql(ctx, text)
        value = {"headers": res.columns, "data": res.rows} if res.columns else None
        return gr.Dataframe(value=value), res.message

    run.click(execute, [query], [result, note])
    example.input(lambda name: EXAMPLES.get(name, ""), [example], [query])
