"""The Feature tab: one feature's labels, histogram, image heatmap, concepts, logits, examples,
and an export of it (JSON, CSV, Neuronpedia JSON)."""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr

from workbench.ui import handlers_export, handlers_feature, links, render
from workbench.ui.context import AppContext
from workbench.ui.style import URL_JS


class FeaturePage(NamedTuple):
    """The number box and the panels (in :class:`handlers_feature.FeatureView` order)."""

    number: gr.Number
    panels: list[gr.HTML]
    export: gr.HTML

    @property
    def outputs(self) -> list:
        return [self.number, *self.panels, self.export]


def show(ctx: AppContext, feature) -> list:
    """Values for :attr:`FeaturePage.outputs` when ``feature`` is opened (export cleared)."""
    view = handlers_feature.feature_view(ctx, feature)
    return [render.as_int(feature), *view, ""]


def build(ctx: AppContext, html: type[gr.HTML], url: gr.Textbox) -> FeaturePage:
    """Lay out the page; ``html`` makes HTML panels whose chips are clickable, ``url`` is the
    hidden box whose value the page writes into the address bar."""
    with gr.Row(equal_height=False):
        number = gr.Number(label="Feature", precision=0, minimum=0, scale=0, elem_id="wb-fnum")
        go = gr.Button("Open", variant="primary", scale=0, min_width=90, size="md")
        export = gr.Button("Export", scale=0, min_width=90, size="md", elem_id="wb-fexport")
    files = gr.HTML(elem_id="wb-fexports")
    title = html(value=handlers_feature.feature_view(ctx, None).title, elem_id="wb-ftitle")
    with gr.Row():
        with gr.Column(scale=3):
            histogram = html(elem_id="wb-hist")
            concepts = html(elem_id="wb-concepts")
        with gr.Column(scale=2):
            image = html(elem_id="wb-fimage")
            logits = html(elem_id="wb-logits")
    neighbors = html(elem_id="wb-neighbors")
    examples = html(elem_id="wb-examples")
    panels = [title, histogram, image, concepts, logits, neighbors, examples]
    page = FeaturePage(number, panels, files)

    def open_(f):
        return [*show(ctx, f), links.query("feature", render.as_int(f))]

    for event in (go.click, number.submit):
        event(open_, [number], [*page.outputs, url]).then(None, [url], None, js=URL_JS)
    export.click(lambda f: handlers_export.export_feature(ctx, f), [number], [files])
    return page
