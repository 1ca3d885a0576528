"""The Feature tab's handler: one feature's labels, histogram, image, concepts, logits, examples.

Same rules as :mod:`workbench.ui.handlers`: plain rows in, HTML out, known failures shown as
messages, no Gradio import. What the page claims is what the data says:

- the headline is the label with the best score, every score named by its test and every
  blank explained (:mod:`workbench.ui.labels`);
- the heatmap shows the study where the feature peaks on *image* tokens, coloured on that
  image's own scale (stated in the caption, with a colour bar), beside a strip of the next
  image studies on one shared scale; a feature that fires on any image token says how often,
  instead of "text only";
- examples are sentences, folded when identical, and image examples are crops of the
  radiograph (:mod:`workbench.ui.examples`).
"""

from __future__ import annotations

from typing import NamedTuple

from workbench.ui import charts, examples, heatmap, labels, pictures, queries, render
from workbench.ui import queries_feature as qf
from workbench.ui.context import AppContext
from workbench.ui.handlers import concept_name, guarded, missing_feature
from workbench.ui.render import card

EXAMPLE_ORDER = "example_group = 'top' DESC, quantile DESC, rank"
STRIP = 6
"""Studies in the top-image-studies strip (the first is the big heatmap)."""


class FeatureView(NamedTuple):
    """The feature page, one HTML string per panel."""

    title: str
    histogram: str
    image: str
    concepts: str
    logits: str
    neighbors: str
    examples: str


def _empty_feature(msg: str) -> FeatureView:
    return FeatureView(msg, "", "", "", "", "", "")


@guarded(_empty_feature)
def feature_view(ctx: AppContext, feature: int | float | str | None) -> FeatureView:
    """The feature page for ``feature``."""
    if ctx.con is None:
        return _empty_feature(render.messages(ctx.status.problems))
    f = render.as_int(feature)
    if f is None:
        return _empty_feature(
            render.message(
                "Click a row in the Features tab, or type a feature number above.", "info"
            )
        )
    header = queries.feature_header(ctx, f)
    if header is None:
        return _empty_feature(render.message(missing_feature(ctx, f), "error"))
    cards = labels.cards(
        qf.labels(ctx, f), qf.label_scores(ctx, f), qf.tests_run(ctx),
        bool(header.get("dead")),
    )  # fmt: skip
    ex = queries.by_feature(ctx, "feature_examples", f, EXAMPLE_ORDER)
    scale = float(header.get("max_act") or 0) or max((r["activation"] or 0 for r in ex), default=1)
    return FeatureView(
        title=render.feature_title(f, header, cards, labels.why_leads(cards)),
        histogram=_histogram(queries.by_feature(ctx, "feature_histograms", f, "bin")),
        image=image_panel(ctx, f, header) + _localisation_panel(qf.localisation(ctx, f)),
        concepts=_concepts_panel(
            queries.by_feature(ctx, "feature_concepts", f, "auroc DESC NULLS LAST", 12)
        )
        + _mentions_panel(qf.mention_scores(ctx, f)),
        logits=_logits_panel(queries.by_feature(ctx, "feature_logits", f, "direction, rank", 40)),
        neighbors=card("Nearest features", render.neighbors(queries.neighbors(ctx, f))),
        examples=card("Examples", examples_panel(ctx, f, ex, scale)),
    )


def _histogram(hist: list[dict]) -> str:
    bins = [(r["bin"], r["bin_lo"], r["bin_hi"], r["count"]) for r in hist]
    return card(
        "Activation histogram",
        charts.histogram(bins, f"{sum(b[3] for b in bins):,} firing tokens")
        + render.details("numbers", render.table(hist, ["bin_lo", "bin_hi", "count"])),
    )


def image_panel(ctx: AppContext, f: int, header: dict) -> str:
    """The image-peak study's heatmap with its scale, and the next image studies as a strip."""
    summary, studies = qf.image_overview(ctx, f, STRIP)
    if not summary["n_image"]:
        text = "Never fires on an image token: all its activation is on text."
        if header.get("dead"):
            text = "Dead: it never fires, on images or text."
        elif not summary["n_total"]:
            text = "This run recorded no image tokens."
        return card("On the image", f'<p class="wb-empty">{text}</p>')
    sid = int(studies[0]["study_id"])
    share = summary["n_image"] / summary["n_total"] if summary["n_total"] else 0.0
    intro = (
        f'<p class="wb-meta">Fires on {_share(share)} of image tokens ({summary["n_image"]:,} '
        f"patches in {summary['n_studies']:,} studies); peak {charts.fmt(summary['peak'])} in "
        f"{render.study_link(sid, f)}.</p>"
    )
    painted = pictures.paint(ctx, [int(s["study_id"]) for s in studies], f)
    if sid not in painted:
        return card("On the image", intro)
    heat = pictures.heat_of(painted[sid])
    strip = image_strip(studies, painted, f)
    return card("On the image", intro + _heat_block(heat, sid, header, studies[0]) + strip)


def _share(x: float) -> str:
    return f"{100 * x:.2g}%" if x < 0.1 else f"{100 * x:.0f}%"


def _heat_block(heat: pictures.StudyHeat, sid: int, header: dict, best: dict) -> str:
    """The big heatmap: caption states the colour scale and how it relates to other maxima."""
    caption = (
        f"study {sid} · colour scale 0 – {charts.fmt(heat.vmax)} = this image's maximum "
        f"(the feature's peak on images); its maximum on any token is "
        f"{charts.fmt(header.get('max_act'))}"
    )
    if float(best["image_max"]) > heat.vmax * 1.001:
        caption += f"; its peak in this study ({charts.fmt(best['image_max'])}) is on another image"
    if not heat.has_image:
        caption += " · image file not found: the patch grid alone"
    bar = charts.colour_bar(heatmap.ANCHORS.tolist(), heat.vmax, "activation on this image")
    return render.heat_figure(heat.base, heat.layer, caption, bar)


def image_strip(studies: list[dict], painted: dict[int, pictures.Painted], f: int) -> str:
    """Thumbnails of the top image studies on one shared scale (the feature's image peak)."""
    if len(studies) < 2:
        return ""
    vmax = float(studies[0]["image_max"])
    items = [
        (
            int(s["study_id"]),
            pictures.overlay_of(painted[int(s["study_id"])], vmax, side=150)
            if int(s["study_id"]) in painted
            else None,
            f"study {s['study_id']} · max {charts.fmt(s['image_max'])}",
        )
        for s in studies
    ]
    title = f"Top image studies · shared colour scale 0 – {charts.fmt(vmax)} · click to open"
    return f'<h4 class="wb-group">{title}</h4>' + render.thumb_strip(items, f)


def examples_panel(ctx: AppContext, f: int, rows: list[dict], scale: float) -> str:
    """Examples: text widened to sentences and folded, image patches as radiograph crops."""
    text_idx = [i for i, r in enumerate(rows) if not examples.is_patch(r)]
    window, acts = qf.context_windows(ctx, f, [int(rows[i]["row"]) for i in text_idx])
    texts = {i: examples.sentence(rows[i], window, acts) for i in text_idx}
    shape = qf.patch_grid_shape(ctx) if any(examples.is_patch(r) for r in rows) else None
    crops = pictures.patch_crops(ctx, rows, shape)
    return examples.panel(rows, texts, crops, scale, f)


def _concepts_panel(rows: list[dict]) -> str:
    items = [(concept_name(r), r["auroc"]) for r in rows if r["auroc"] is not None]
    chart = charts.hbars(items, 0.0, 1.0, ref=0.5, title="AUROC of study max activation")
    numbers = render.table(rows, ["concept", "source", "auroc", "rank"])
    return card("Concepts", chart + render.details("numbers", numbers))


_STATUS_BARS = (("mean_asserted", "present"), ("mean_negated", "negated"),
                ("mean_uncertain", "uncertain"))  # fmt: skip


def _mentions_panel(rows: list[dict]) -> str:
    """ "Fires on: present / negated / uncertain" bars for the concepts it fires on most."""
    if not rows:
        return ""
    items = [
        (f"{r['concept']} · {name}", r[key])
        for r in rows[:3]
        for key, name in _STATUS_BARS
        if r[key] is not None
    ]
    top = max((v for _, v in items), default=0.0) or 1.0
    chart = charts.hbars(items, 0.0, top, title="fires on: present / negated / uncertain")
    cols = ["concept", "n_fired", "mean_asserted", "mean_negated", "mean_uncertain",
            "mean_historical", "selectivity"]  # fmt: skip
    note = (
        '<p class="wb-empty">Mean activation over the concept\'s report mentions by status; '
        "selectivity = AUROC of present vs negated mentions (0.5: the word, 1: the meaning)."
        "</p>"
    )
    return card("On report mentions", chart + note + render.details(
        "numbers", render.table(rows, cols)))  # fmt: skip


def _localisation_panel(rows: list[dict]) -> str:
    """Pointing game and patch AUROC against the ground-truth masks (phantom runs)."""
    if not rows:
        return ""
    items = [(r["concept"], r["pointing_game"]) for r in rows]
    chart = charts.hbars(items, 0.0, 1.0, title="pointing game: peak patch inside the mask")
    numbers = render.table(rows, ["concept", "n_studies", "pointing_game", "patch_auroc"])
    return card("Localisation vs masks", chart + render.details("numbers", numbers))


def _logits_panel(rows: list[dict]) -> str:
    up = [r for r in rows if r["direction"] == "promote"][:10]
    down = [r for r in rows if r["direction"] == "suppress"][:10]
    if not up and not down:
        return card("Logit effects", '<p class="wb-empty">Not computed for this run.</p>')
    items = [
        (render.token_text(r["token"]).strip() or repr(r["token"]), r["effect"]) for r in up + down
    ]
    bound = max(abs(v) for _, v in items) or 1.0
    chart = charts.hbars(
        items, -bound, bound, 0.0, charts.GREEN, title="promoted ↑ / suppressed ↓ tokens",
        narrow=True,
    )  # fmt: skip
    numbers = render.table(rows, ["direction", "rank", "token", "effect"])
    return card("Logit effects", chart + render.details("numbers", numbers))
