"""The Study tab: a study's image and report, coloured by any feature of the SAE."""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr

from workbench.ui import handlers_study, links, queries, render
from workbench.ui.context import AppContext
from workbench.ui.style import URL_JS


class StudyTab(NamedTuple):
    """The study box, the picker, the feature chooser and the panels (header, image, report,
    sections)."""

    study: gr.Textbox
    picker: gr.Dropdown
    feature: gr.Dropdown
    panels: list[gr.HTML]

    @property
    def outputs(self) -> list:
        return [self.study, self.picker, self.feature, *self.panels]


def show(ctx: AppContext, study_id, feature=None) -> list:
    """Values for :attr:`StudyTab.outputs` when ``study_id`` is opened (optionally a feature)."""
    view = handlers_study.study_view(ctx, study_id, feature)
    typed = "" if study_id is None else str(study_id).strip()
    picker = gr.Dropdown(value=None)
    chooser = gr.Dropdown(choices=view.choices, value=view.feature)
    return [typed, picker, chooser, view.header, view.image, view.report, view.sections]


def url_of(study_id, feature) -> str:
    """The address of a study view (for the address bar)."""
    return links.query("study", feature=render.as_int(feature), study=render.as_int(study_id))


def build(ctx: AppContext, html: type[gr.HTML], url: gr.Textbox) -> StudyTab:
    """Lay out the study box, picker, feature chooser and panels; each redraws the view."""
    studies = queries.study_list(ctx) if ctx.con else []
    with gr.Row(equal_height=True):
        typed = gr.Textbox(
            label="Study id (type, then Enter)", scale=1, elem_id="wb-studyid", max_lines=1
        )
        picker = gr.Dropdown(
            studies, value=None, label="or pick a study", filterable=True, scale=1,
            elem_id="wb-study",
        )  # fmt: skip
        feature = gr.Dropdown(
            [], value=None, label="Colour by feature (pick, or type any number)",
            allow_custom_value=True, filterable=True, scale=2, elem_id="wb-sfeat",
        )  # fmt: skip
    header = html(value=handlers_study.study_view(ctx, None).header, elem_id="wb-shead")
    with gr.Row():
        with gr.Column(scale=2):
            image = html(elem_id="wb-simage")
        with gr.Column(scale=3):
            report = html(elem_id="wb-sreport")
            sections = html(elem_id="wb-ssections")
    tab = StudyTab(typed, picker, feature, [header, image, report, sections])
    outputs = [*tab.outputs, url]

    def by_box(s, f):
        return [*show(ctx, s, f), url_of(s, f)]

    def by_id(s):
        return [*show(ctx, s), url_of(s, None)]

    typed.submit(by_id, [typed], outputs).then(None, [url], None, js=URL_JS)
    picker.input(by_id, [picker], outputs).then(None, [url], None, js=URL_JS)
    feature.input(by_box, [typed, feature], outputs).then(None, [url], None, js=URL_JS)
    return tab
