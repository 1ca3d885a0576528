"""The Segmentation tab: a test image through the U-Net, the SSN and SemanticGAN, the metrics
table, and the image's most active latent features as heatmaps."""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr

from workbench.ui import handlers_seg as hs
from workbench.ui.context import AppContext


class SegTab(NamedTuple):
    """The two pickers and the panels (in :class:`handlers_seg.SegView` order)."""

    dataset: gr.Dropdown
    image: gr.Dropdown
    panels: list[gr.HTML]

    @property
    def outputs(self) -> list:
        return self.panels


def build(ctx: AppContext, html: type[gr.HTML]) -> SegTab:
    """Lay out the tab; picking a dataset lists its test images, picking an image draws it."""
    state = hs.SegState()
    names = hs.datasets(hs.find_sources(ctx))
    first = names[0] if names else None
    with gr.Row(equal_height=True):
        dataset = gr.Dropdown(names, value=first, label="Dataset", elem_id="wb-segdata", scale=1)
        image = gr.Dropdown(
            hs.safe_image_choices(ctx, state, first),
            value=None,
            label="Test image",
            filterable=True,
            elem_id="wb-segimage",
            scale=2,
        )
    header = html(value=hs.seg_view(ctx, state, None, None).header, elem_id="wb-seghead")
    masks = html(elem_id="wb-segmasks")
    samples = html(elem_id="wb-segsamples")
    latents = html(elem_id="wb-seglatents")
    metrics = html(elem_id="wb-segmetrics")
    tab = SegTab(dataset, image, [header, masks, samples, metrics, latents])

    def pick_dataset(name):
        return gr.Dropdown(choices=hs.safe_image_choices(ctx, state, name), value=None)

    dataset.input(pick_dataset, [dataset], [image])
    image.input(lambda d, i: list(hs.seg_view(ctx, state, d, i)), [dataset, image], tab.outputs)
    return tab
