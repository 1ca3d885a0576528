"""The Study tab's handler: a study's images, report and most active features.

Same rules as :mod:`workbench.ui.handlers`: plain rows in, HTML out, known failures shown as
messages. Images are read only from inside the run (or the configured image roots).
"""

from __future__ import annotations

import itertools
from html import escape
from typing import NamedTuple

from workbench.ui import charts, examples, heatmap, pictures, queries, render
from workbench.ui import search as lookup
from workbench.ui.context import AppContext
from workbench.ui.handlers import guarded, missing_feature
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

    ``feature`` picks whose activation colours the image and the report: any feature number
    of the SAE, listed or not; by default the study's most active image feature (or text
    feature when no image tokens fire).
    """
    if ctx.con is None:
        return _empty_study(render.messages(ctx.status.problems))
    sid = render.as_int(study_id)
    if sid is None:
        text = str(study_id or "").strip()
        note = f"“{text}” is not a study id. " if text else ""
        return _empty_study(
            render.message(
                note + "Type a study id above, pick one, or click a study on a feature page.",
                "error" if text else "info",
            )
        )
    st = queries.study(ctx, sid)
    if st is None:
        return _empty_study(render.message(_missing_study(ctx, sid), "error"))
    sections = queries.study_sections(ctx, sid)
    f = render.as_int(feature)
    if f is not None and queries.feature_header(ctx, f) is None:
        note = render.message(missing_feature(ctx, f), "error")
        return _empty_study(_header(ctx, st) + note)._replace(
            choices=_feature_choices(sections), feature=f
        )
    if f is None:
        f = sections[0]["feature"] if sections else None
    return StudyView(
        header=_header(ctx, st),
        image=_images_card(ctx, st, f),
        report=_report_card(ctx, st, f),
        sections=render.card("Most active features", _sections_html(sections, f)),
        choices=_feature_choices(sections),
        feature=f,
    )


def _missing_study(ctx: AppContext, sid: int) -> str:
    """A study id that is not in the run, with what the run does have."""
    ids = queries.study_list(ctx)
    if not ids:
        return f"Study {sid} is not in this run (it has no studies)."
    return (
        f"Study {sid} is not in this run: it has {len(ids):,} studies, ids {ids[0]} to "
        f"{ids[-1]}. Pick one from the list."
    )


def _feature_choices(sections: list[dict]) -> list[tuple[str, int]]:
    """The study's active features for the picker, first occurrence (section) of each."""
    choices: list[tuple[str, int]] = []
    for r in sections:
        if all(r["feature"] != f for _, f in choices):
            choices.append((f"#{r['feature']} {r['label'] or ''} ({r['section']})", r["feature"]))
    return choices


def _images_card(ctx: AppContext, st: dict, f: int | None) -> str:
    """The frontal image coloured by feature ``f`` (on this image's scale) and thumbnails of
    the other views."""
    sid = int(st["study_id"])
    others = _other_images(ctx, st.get("frontal_path"))
    heat = pictures.study_heat(ctx, sid, f) if f is not None else None
    if heat is None:
        uri = pictures.frontal_uri(ctx, sid)
        cap = "frontal image" + (" (no image tokens recorded)" if f is not None else "")
        return render.card(
            "Images", render.image_block(uri, cap if uri else "Image not available.") + others
        )
    if heat.vmax > 0:
        caption = (
            f"frontal image coloured by feature #{f} · colour scale 0 – {charts.fmt(heat.vmax)} "
            f"= this image's maximum ({heat.n_fired} patches fire)"
        )
    else:
        caption = f"frontal image · feature #{f} does not fire on it"
    if not heat.has_image:
        caption += " · image file not found: the patch grid alone"
    bar = charts.colour_bar(heatmap.ANCHORS.tolist(), heat.vmax or 1.0, "activation on this image")
    figure = render.heat_figure(heat.base, heat.layer, caption, bar if heat.vmax > 0 else "")
    return render.card("Images", figure + others)


def _report_card(ctx: AppContext, st: dict, f: int | None) -> str:
    """The report text, its tokens coloured by feature ``f`` when it has recorded tokens."""
    toks = queries.study_tokens(ctx, st["study_id"], f)
    header = queries.feature_header(ctx, f) if f is not None else None
    scale = float(header.get("max_act") or 0) if header else 0.0
    report = _report_html(toks, scale or 1.0) if toks else escape(_report_text(st))
    what = ""
    if f is not None and toks:
        what = f" (coloured by feature #{f}, scale 0 – {charts.fmt(scale)}: its run maximum)"
    return render.card("Report" + what, f'<div class="wb-report">{report}</div>')


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm")


def _other_images(ctx: AppContext, frontal: str | None, side: int = 200) -> str:
    """Thumbnails of the study's other images (lateral views): its folder in MIMIC layout."""
    path = pictures.resolve_image(ctx, frontal)
    if path is None:
        return ""
    thumbs = []
    for other in sorted(path.parent.iterdir()):
        safe = inside(other, ctx.image_roots)
        if safe is None or other == path or other.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        image = pictures.load(ctx, str(safe))
        if image is None:
            continue
        uri = heatmap.data_uri(heatmap.thumbnail(image, side))
        thumbs.append(render.image_block(uri, other.name))
    return f'<div class="wb-thumbs">{"".join(thumbs)}</div>' if thumbs else ""


def _report_html(toks: list[dict], scale: float) -> str:
    """The study's text tokens, one block per section, coloured by activation; placeholders
    (``</s>``, ``<image>``, a 'None.' section) are dropped unless the feature fires on them."""
    parts = []
    for section, group in itertools.groupby(toks, key=lambda t: t["section"] or t["kind"]):
        g = [t for t in group if t["value"] > 0 or not examples.is_placeholder(t["token"])]
        if not g or _is_none_section(g):
            continue
        text = render.highlight([t["token"] for t in g], [t["value"] for t in g], scale)
        label = f'<span class="wb-seclabel">{escape(section)}</span>'
        parts.append(f'<div class="wb-sec">{label}{text}</div>')
    return "".join(parts)


def _is_none_section(toks: list[dict]) -> bool:
    """A section whose text is only the prompt's 'None.' placeholder (and silent)."""
    text = "".join(render.token_text(t["token"]) for t in toks).strip()
    return text in ("None", "None.", "") and all(t["value"] <= 0 for t in toks)


def _header(ctx: AppContext, st: dict) -> str:
    """Study id, subject, split and the concepts labelled present."""
    sid = int(st["study_id"])
    positives = _positives(queries.study_positives(ctx, sid)) or "none"
    return (
        f'<div class="wb-head"><div class="wb-fid">study {sid}</div>'
        f'<div class="wb-meta">subject {st.get("subject_id")} · split {st.get("split") or "–"} · '
        f"labelled present: {escape(positives)}</div></div>"
    )


def _positives(rows: list[dict]) -> str:
    """Concepts labelled present, each normalised name once with the sources that say so:
    'pneumothorax (CheXpert, ground truth)'."""
    by_name: dict[str, list[str]] = {}
    for r in rows:
        where = lookup.SOURCES.get(r["source"], r["source"])
        by_name.setdefault(lookup.norm_concept(r["concept"]), []).append(where)
    return ", ".join(f"{n} ({', '.join(sorted(set(w)))})" for n, w in sorted(by_name.items()))


def _report_text(st: dict) -> str:
    parts = [(k.upper(), (st.get(k) or "").strip()) for k in ("findings", "impression")]
    return "\n\n".join(f"{k}: {v}" for k, v in parts if v and v not in ("None", "None."))


def _sections_html(rows: list[dict], feature: int | None) -> str:
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
