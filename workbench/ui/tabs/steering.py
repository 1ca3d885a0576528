"""The Steering tab: sliders on SAE features, the baseline and steered findings side by side.

Pick a site, a study, up to :data:`~workbench.ui.handlers_steer.MAX_SLOTS` features (by number
or by searching their labels) with one slider each (negative allowed), Generate. Site
"image tokens (embeddings)" (the default when the run has ``<run>/image-tokens``) adds each
feature's patch map of the image-token SAE to the study's image-token embeddings
(:mod:`workbench.ui.handlers_steer_image`); site "recorded block" steers the run's SAE at its
hook, at the chosen positions, add or clamp (those two controls show at that site only). A
notice names the site; the sweep panel shows the stored results of both
(:mod:`workbench.ui.steer_sweep`). The work runs in a worker with a progress bar and a Stop
button (:mod:`workbench.ui.live`); the handlers are in :mod:`workbench.ui.handlers_steer`.
"""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr

from workbench.ui import handlers_steer as hs
from workbench.ui import handlers_steer_image as si
from workbench.ui import queries, render
from workbench.ui import steer_sweep as sw
from workbench.ui.context import AppContext
from workbench.ui.live import LiveModel


class SteeringTab(NamedTuple):
    """The tab's components that others may update (the study picker)."""

    study: gr.Dropdown
    image: gr.HTML


def _skip(values: tuple) -> list:
    """``None`` -> leave the component as it is."""
    return [gr.skip() if v is None else v for v in values]


def build(ctx: AppContext, live: LiveModel, html: type[gr.HTML]) -> SteeringTab:
    """Lay out the controls and panels; Generate streams progress, then the findings."""
    problem = live.problem()
    if problem:
        gr.HTML(render.message(problem, "warn"), elem_id="wb-steer-problem")
    options = si.site_options(ctx.run_dir)
    controls = hs.site_controls(ctx, options.value)
    note = gr.HTML(controls.note, elem_id="wb-steer-site-note")
    choices = controls.choices
    with gr.Row():
        with gr.Column(scale=3):
            site = gr.Radio(
                list(si.SITES),
                value=options.value,
                label="Site" if options.image_available else "Site (image tokens: see the notice)",
                interactive=options.image_available,
                elem_id="wb-steer-site",
            )
            study = gr.Dropdown(
                queries.study_list(ctx) if ctx.con else [],
                value=None,
                label="Study (pick or type an id)",
                filterable=True,
                allow_custom_value=True,
                elem_id="wb-steer-study",
            )
            features, sliders = [], []
            for i in range(hs.MAX_SLOTS):
                with gr.Row(equal_height=True):
                    features.append(
                        gr.Dropdown(
                            choices,
                            value=None,
                            label=f"Feature {i + 1} (number or label)",
                            filterable=True,
                            allow_custom_value=True,
                            scale=2,
                            elem_id=f"wb-steer-f{i}",
                        )  # fmt: skip
                    )
                    sliders.append(
                        gr.Slider(
                            -10,
                            10,
                            value=0,
                            step=0.25,
                            label=controls.strength_label,
                            scale=2,
                            elem_id=f"wb-steer-s{i}",
                        )  # fmt: skip
                    )
            with gr.Row():
                positions = gr.Radio(list(hs.POSITIONS), value="all", label="Positions",
                                     visible=controls.block_controls,
                                     elem_id="wb-steer-pos")  # fmt: skip
                mode = gr.Radio(list(hs.MODES), value="add", label="Mode",
                                visible=controls.block_controls,
                                elem_id="wb-steer-mode")  # fmt: skip
                tokens = gr.Slider(8, 300, value=120, step=1, label="Max new tokens",
                                   elem_id="wb-steer-tokens")  # fmt: skip
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="wb-steer-go")
                stop = gr.Button("Stop", elem_id="wb-steer-stop")
            progress = gr.HTML(elem_id="wb-steer-progress")
        with gr.Column(scale=2):
            image = gr.HTML(elem_id="wb-steer-image")
            sweep = gr.HTML(sw.sweep_chart(sw.sweep_rows(ctx), None), elem_id="wb-steer-sweep")
    with gr.Row():
        baseline = gr.HTML(elem_id="wb-steer-base")
        steered = gr.HTML(elem_id="wb-steer-out")
    verdicts = gr.HTML(elem_id="wb-steer-verdicts")
    cache = gr.State(None)

    def generate(*values):
        sid, *rest = values
        n = hs.MAX_SLOTS
        feats, strengths = rest[:n], rest[n : 2 * n]
        where, how, max_new, cached, at = rest[2 * n :]
        for update in hs.updates(ctx, live, sid, feats, strengths, where, how, max_new, cached,
                                 at):  # fmt: skip
            yield _skip(update)

    def switch(at):
        c = hs.site_controls(ctx, at)
        picks = [gr.update(choices=c.choices, value=None) for _ in features]
        scales = [gr.update(label=c.strength_label) for _ in sliders]
        shown = [gr.update(visible=c.block_controls)] * 2
        return [c.note, *picks, *scales, *shown]

    site.change(switch, [site], [note, *features, *sliders, positions, mode])
    inputs = [study, *features, *sliders, positions, mode, tokens, cache, site]
    event = go.click(generate, inputs, [progress, baseline, steered, verdicts, cache],
                     concurrency_limit=1)  # fmt: skip
    stop.click(None, None, None, cancels=[event])
    study.input(lambda s: hs.study_panel(ctx, s), [study], [image])

    def narrow(f, at):  # the sweep's features are the run SAE's: the recorded block's numbers
        return sw.sweep_chart(
            sw.sweep_rows(ctx), hs.parse_feature(f) if at == si.BLOCK_SITE else None
        )

    features[0].input(narrow, [features[0], site], [sweep])
    return SteeringTab(study, image)
