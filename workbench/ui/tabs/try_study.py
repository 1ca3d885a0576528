"""The Try-a-study tab: upload a radiograph, read the findings and the features that fire.

Upload a frontal image (PNG, JPG or DICOM), optionally a lateral and an indication; Generate
runs the run's model in a worker (progress bar, Stop button); the page shows the findings, the
features that fire on the image (a heatmap per chosen feature) and on each generated token,
each a link to its feature page. Handlers: :mod:`workbench.ui.handlers_try`.
"""

from __future__ import annotations

import gradio as gr

from workbench.ui import handlers_try as ht
from workbench.ui import render
from workbench.ui.context import AppContext
from workbench.ui.live import LiveModel

FILE_TYPES = [".png", ".jpg", ".jpeg", ".dcm", ".dicom"]


def build(ctx: AppContext, live: LiveModel, html: type[gr.HTML]) -> None:
    """Lay out the upload, the controls and the panels; wire Generate, Stop and the picker."""
    problem = live.problem()
    if problem:
        gr.HTML(render.message(problem, "warn"), elem_id="wb-try-problem")
    with gr.Row():
        with gr.Column(scale=2):
            frontal = gr.File(label="Frontal image (PNG, JPG or DICOM)", file_types=FILE_TYPES,
                              type="filepath", elem_id="wb-try-frontal")  # fmt: skip
            lateral = gr.File(label="Lateral image (optional)", file_types=FILE_TYPES,
                              type="filepath", elem_id="wb-try-lateral")  # fmt: skip
            indication = gr.Textbox(label="Indication (optional)", lines=1,
                                    elem_id="wb-try-indication")  # fmt: skip
            tokens = gr.Slider(8, 300, value=120, step=1, label="Max new tokens",
                               elem_id="wb-try-tokens")  # fmt: skip
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="wb-try-go")
                stop = gr.Button("Stop", elem_id="wb-try-stop")
            progress = gr.HTML(elem_id="wb-try-progress")
        with gr.Column(scale=3):
            feature = gr.Dropdown([], value=None, label="Heatmap of feature",
                                  elem_id="wb-try-feature")  # fmt: skip
            image = gr.HTML(elem_id="wb-try-heatmap")
    findings = html(elem_id="wb-try-out")
    result, front_img, side_img = gr.State(None), gr.State(None), gr.State(None)

    def generate(front, side, ind, max_new):
        for p, text, options, heat, res in ht.updates(ctx, live, front, side, ind, max_new):
            picker = gr.skip() if options is None else gr.Dropdown(choices=options[0],
                                                                   value=options[1])  # fmt: skip
            yield [gr.skip() if v is None else v for v in (p, text)] + [
                picker, gr.skip() if heat is None else heat, gr.skip() if res is None else res,
            ]  # fmt: skip

    frontal.upload(lambda p: ht.upload(p, "frontal"), [frontal], [front_img, progress])
    lateral.upload(lambda p: ht.upload(p, "lateral"), [lateral], [side_img, progress])
    frontal.clear(lambda: (None, ""), None, [front_img, progress])
    lateral.clear(lambda: (None, ""), None, [side_img, progress])
    event = go.click(generate, [front_img, side_img, indication, tokens],
                     [progress, findings, feature, image, result], concurrency_limit=1)  # fmt: skip
    stop.click(None, None, None, cancels=[event])
    feature.input(ht.heatmap_html, [result, feature], [image])
