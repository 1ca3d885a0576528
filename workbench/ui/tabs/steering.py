"""The Steering tab: sliders on SAE features, the baseline and steered findings side by side.

Pick a study, add up to :data:`~workbench.ui.handlers_steer.MAX_SLOTS` features (by number or
by searching their labels), set one slider each (strength in units of the feature's max
activation, negative allowed), choose positions and add/clamp, Generate. It steers at the
recorded block (the run's SAE hook); a notice says so and that ``steer``'s default site is the
image-token embeddings, whose stored results the sweep panel shows beside the block's
(:mod:`workbench.ui.steer_sweep`). The work runs in a worker with a progress bar and a Stop
button (:mod:`workbench.ui.live`); the handlers are in :mod:`workbench.ui.handlers_steer`.
"""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr

from workbench.ui import handlers_steer as hs
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
    gr.HTML(sw.site_note(sw.recorded_hook(ctx)), elem_id="wb-steer-site-note")
    choices = hs.feature_choices(ctx) if ctx.con else []
    with gr.Row():
        with gr.Column(scale=3):
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
                            label="strength (x max act)",
                            scale=2,
                            elem_id=f"wb-steer-s{i}",
                        )  # fmt: skip
                    )
            with gr.Row():
                positions = gr.Radio(list(hs.POSITIONS), value="all", label="Positions",
                                     elem_id="wb-steer-pos")  # fmt: skip
                mode = gr.Radio(list(hs.MODES), value="add", label="Mode", elem_id="wb-steer-mode")
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
        where, how, max_new, cached = rest[2 * n :]
        for update in hs.updates(ctx, live, sid, feats, strengths, where, how, max_new, cached):
            yield _skip(update)

    inputs = [study, *features, *sliders, positions, mode, tokens, cache]
    event = go.click(generate, inputs, [progress, baseline, steered, verdicts, cache],
                     concurrency_limit=1)  # fmt: skip
    stop.click(None, None, None, cancels=[event])
    study.input(lambda s: hs.study_panel(ctx, s), [study], [image])
    features[0].input(
        lambda f: sw.sweep_chart(sw.sweep_rows(ctx), hs.parse_feature(f)), [features[0]], [sweep]
    )
    return SteeringTab(study, image)
