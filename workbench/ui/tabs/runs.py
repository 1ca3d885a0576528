"""The Runs tab: what the run was built from and how the SAE's training went."""

from __future__ import annotations

import gradio as gr

from workbench.ui import runinfo
from workbench.ui.context import AppContext


def build(ctx: AppContext) -> None:
    """Facts and curves, re-read from disk on demand (an SAE may still be training)."""
    first = runinfo.runs_view(ctx)
    facts = gr.HTML(first.facts, elem_id="wb-runfacts")
    curves = gr.HTML(first.curves, elem_id="wb-curves")
    refresh = gr.Button("Reload from disk", size="sm")
    refresh.click(lambda: list(runinfo.runs_view(ctx)), None, [facts, curves])
