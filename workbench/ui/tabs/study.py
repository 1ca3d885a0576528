"""The Study tab: a study's image and report, coloured by one of its most active features."""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr

from workbench.ui import handlers_study, queries, render
from workbench.ui.context import AppContext


class StudyTab(NamedTuple):
    """The pickers and panels (header, image, report, sections)."""

    picker: gr.Dropdown
    feature: gr.Dropdown
    panels: list[gr.HTML]

    @property
    def outputs(self) -> list:
        return [self.picker, self.feature, *self.panels]


def show(ctx: AppContext, study_id, feature=None) -> list:
    """Values for :attr:`StudyTab.outputs` when ``study_id`` is opened (optionally a feature)."""
    view = handlers_study.study_view(ctx, study_id, feature)
    sid = render.as_int(study_id)
    picker = gr.Dropdown(value=sid)
    chooser = gr.Dropdown(choices=view.choices, value=view.feature)
    return [picker, chooser, view.header, view.image, view.report, view.sections]


def build(ctx: AppContext, html: type[gr.HTML]) -> StudyTab:
    """Lay out the pickers and panels; picking a study or a feature redraws the view."""
    studies = queries.study_list(ctx) if ctx.con else []
    with gr.Row(equal_height=True):
        picker = gr.Dropdown(
            studies,
            value=None,
            label="Study (pick or type an id)",
            filterable=True,
            allow_custom_value=True,
            scale=1,
            elem_id="wb-study",
        )
        feature = gr.Dropdown(
            [], value=None, label="Colour by feature", scale=2, elem_id="wb-sfeat"
        )
    header = html(value=handlers_study.study_view(ctx, None).header, elem_id="wb-shead")
    with gr.Row():
        with gr.Column(scale=2):
            image = html(elem_id="wb-simage")
        with gr.Column(scale=3):
            report = html(elem_id="wb-sreport")
            sections = html(elem_id="wb-ssections")
    tab = StudyTab(picker, feature, [header, image, report, sections])
    picker.input(lambda s: show(ctx, s), [picker], tab.outputs)
    feature.input(lambda s, f: show(ctx, s, f), [picker, feature], tab.outputs)
    return tab
