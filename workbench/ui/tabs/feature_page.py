"""The Feature tab: one feature's labels, histogram, image heatmap, concepts, logits, examples."""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr

from workbench.ui import handlers, render
from workbench.ui.context import AppContext


class FeaturePage(NamedTuple):
    """The number box and the panels (in :class:`handlers.FeatureView` order)."""

    number: gr.Number
    panels: list[gr.HTML]

    @property
    def outputs(self) -> list:
        return [self.number, *self.panels]


def show(ctx: AppContext, feature) -> list:
    """Values for :attr:`FeaturePage.outputs` when ``feature`` is opened."""
    view = handlers.feature_view(ctx, feature)
    value = render.as_int(feature)
    return [value, *view]


def build(ctx: AppContext, html: type[gr.HTML]) -> FeaturePage:
    """Lay out the page; ``html`` makes HTML panels whose chips are clickable."""
    with gr.Row(equal_height=False):
        number = gr.Number(label="Feature", precision=0, minimum=0, scale=0, elem_id="wb-fnum")
        go = gr.Button("Open", variant="primary", scale=0, min_width=90, size="md")
    title = html(value=handlers.feature_view(ctx, None).title, elem_id="wb-ftitle")
    with gr.Row():
        with gr.Column(scale=3):
            histogram = html(elem_id="wb-hist")
            concepts = html(elem_id="wb-concepts")
        with gr.Column(scale=2):
            image = html(elem_id="wb-fimage")
            logits = html(elem_id="wb-logits")
    neighbors = html(elem_id="wb-neighbors")
    examples = html(elem_id="wb-examples")
    page = FeaturePage(number, [title, histogram, image, concepts, logits, neighbors, examples])
    go.click(lambda f: show(ctx, f), [number], page.outputs)
    number.submit(lambda f: show(ctx, f), [number], page.outputs)
    return page
