"""The Study tab's handler: a study's images, report and most active features.

Same rules as :mod:`workbench.ui.handlers`: plain rows in, HTML out, known failures shown as
messages. Images are read only from inside the run (or the configured image roots).
"""

from __future__ import annotations

import itertools
from html import escape
from typing import NamedTuple

from workbench.cxr.images import CXRDataError, load_image
from workbench.ui import heatmap, queries, render
from workbench.ui.context import AppContext
from workbench.ui.handlers import guarded, log, resolve_image, study_heatmap_uri
from workbench.ui.safety import inside


class StudyView(NamedTuple):
    """The study view: header, image (with the chosen feature's heatmap), report, features."""

    header: str
    image: str
    report: str
    sections: str
    choices: list[tuple[str, int]]
    feature: int | None


def _empty_study(msg: str) -> StudyView:
    return StudyView(msg, "", "", "", [], None)


@guarded(_empty_study)
def study_view(ctx: AppContext, study_id: int | float | str | None, feature=None) -> StudyView:
    """A study's images and report, its most active features per section and on the image.

    ``feature`` picks whose activation colours the image and the report; by default the
    study's most active image feature (or text feature when no image tokens fire).
    """
    if ctx.con is None:
        return _empty_study(render.messages(ctx.status.problems))
    sid = render.as_int(study_id)
    if sid is None:
        return _empty_study(
            render.message(
                "Pick or type a study id above, or click a study on a feature page.", "info"
            )
        )
    st = queries.study(ctx, sid)
    if st is None:
        return _empty_study(render.message(f"Study {sid} is not in this run.", "error"))
    sections = queries.study_sections(ctx, sid)
    f = (
        render.as_int(feature)
        if render.as_int(feature) is not None
        else (sections[0]["feature"] if sections else None)
    )
    vmax = _feature_vmax(ctx, f)
    return StudyView(
        header=_header(ctx, st),
        image=_images_card(ctx, st, f, vmax),
        report=_report_card(ctx, st, f, vmax),
        sections=render.card("Most active features", _sections_html(sections)),
        choices=_feature_choices(sections),
        feature=f,
    )


def _feature_choices(sections: list[dict]) -> list[tuple[str, int]]:
    """The study's active features for the picker, first occurrence (section) of each."""
    choices: list[tuple[str, int]] = []
    for r in sections:
        if all(r["feature"] != f for _, f in choices):
            choices.append((f"#{r['feature']} {r['label'] or ''} ({r['section']})", r["feature"]))
    return choices


def _feature_vmax(ctx: AppContext, feature: int | None) -> float:
    """The feature's maximum activation over the run (0 when unknown): the colour scale."""
    header_rows = queries.feature_header(ctx, feature) if feature is not None else None
    return float(header_rows["max_act"] or 0) if header_rows else 0.0


def _images_card(ctx: AppContext, st: dict, f: int | None, vmax: float) -> str:
    """The frontal image coloured by feature ``f`` and thumbnails of the other views."""
    uri = study_heatmap_uri(ctx, st["study_id"], f, vmax)
    cap = f"frontal image, coloured by feature #{f}" if f is not None else "frontal image"
    return render.card(
        "Images",
        render.image_block(uri, cap if uri else "Image not available.")
        + _other_images(ctx, st.get("frontal_path")),
    )


def _report_card(ctx: AppContext, st: dict, f: int | None, vmax: float) -> str:
    """The report text, its tokens coloured by feature ``f`` when it has recorded tokens."""
    toks = queries.study_tokens(ctx, st["study_id"], f)
    report = _report_html(toks, vmax or 1.0) if toks else escape(_report_text(st))
    return render.card(
        "Report" + (f" (coloured by feature #{f})" if f is not None else ""),
        f'<div class="wb-report">{report}</div>',
    )


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm")


def _other_images(ctx: AppContext, frontal: str | None, side: int = 200) -> str:
    """Thumbnails of the study's other images (lateral views): its folder in MIMIC layout."""
    path = resolve_image(ctx, frontal)
    if path is None:
        return ""
    thumbs = []
    for other in sorted(path.parent.iterdir()):
        safe = inside(other, ctx.image_roots)
        if safe is None or other == path or other.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            uri = heatmap.data_uri(heatmap.thumbnail(load_image(safe), side))
        except (CXRDataError, OSError) as exc:
            log.warning("cannot read %s: %s", other, exc)
            continue
        thumbs.append(render.image_block(uri, other.name))
    return f'<div class="wb-thumbs">{"".join(thumbs)}</div>' if thumbs else ""


def _report_html(toks: list[dict], scale: float) -> str:
    """The study's text tokens, one block per section, coloured by activation."""
    parts = []
    for section, group in itertools.groupby(toks, key=lambda t: t["section"] or t["kind"]):
        g = list(group)
        text = render.highlight([t["token"] for t in g], [t["value"] for t in g], scale)
        label = f'<span class="wb-seclabel">{escape(section)}</span>'
        parts.append(f'<div class="wb-sec">{label}{text}</div>')
    return "".join(parts)


def _header(ctx: AppContext, st: dict) -> str:
    """Study id, subject, split and the concepts labelled present."""
    sid = int(st["study_id"])
    positives = ", ".join(queries.study_positives(ctx, sid)) or "none"
    return (
        f'<div class="wb-head"><div class="wb-fid">study {sid}</div>'
        f'<div class="wb-meta">subject {st.get("subject_id")} · split {st.get("split") or "–"} · '
        f"labelled present: {escape(positives)}</div></div>"
    )


def _report_text(st: dict) -> str:
    parts = [(k.upper(), st.get(k)) for k in ("findings", "impression")]
    return "\n\n".join(f"{k}: {v}" for k, v in parts if v)


def _sections_html(rows: list[dict]) -> str:
    if not rows:
        return '<p class="wb-empty">No feature fires on this study.</p>'
    out, current = [], None
    for r in rows:
        if r["section"] != current:
            current = r["section"]
            out.append(f'<h4 class="wb-group">{escape(str(current))}</h4>')
        rel = r["rel"] if r["rel"] is not None else 0.0
        out.append(
            render.feature_link(
                r["feature"], f"#{r['feature']} {r['label'] or ''}", f" · {rel:.0%}"
            )
        )
    return '<div class="wb-chips">' + "".join(out) + "</div>"
