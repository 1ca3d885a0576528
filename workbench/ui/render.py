"""HTML for the app's views: pure functions from plain rows to escaped HTML strings.

Anything that came from the database or a report is passed through :func:`html.escape`;
elements the user can click carry ``data-feature`` / ``data-study`` attributes that the
page's small click script turns into Gradio events (see :mod:`workbench.ui.app`).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from workbench.ui.charts import fmt
from workbench.ui.labels import LabelCard

Row = dict[str, Any]

# Tokenizer word markers shown as what they mean (SentencePiece, GPT-2 BPE).
_MARKERS = (("▁", " "), ("Ġ", " "), ("Ċ", "\n"), ("ĉ", "\t"))


def as_int(value) -> int | None:
    """A number typed or clicked in the browser as an int, or None if it is not one."""
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def message(text: str, kind: str = "info") -> str:
    """A coloured notice box: kind is 'info', 'warn' or 'error'."""
    return f'<div class="wb-msg wb-{kind}">{escape(text)}</div>'


def messages(texts: Sequence[str], kind: str = "warn") -> str:
    """Several notices, or nothing."""
    return "".join(message(t, kind) for t in texts)


def token_text(token: str | None) -> str:
    """The token as it reads in the text (word-start markers turned into spaces)."""
    text = token or ""
    for marker, plain in _MARKERS:
        text = text.replace(marker, plain)
    return text


def highlight(
    tokens: Sequence[str], acts: Sequence[float], scale: float, center: int | None = None
) -> str:
    """Tokens as text with a background whose strength is the activation over ``scale``.

    The example's own token (``center``) is underlined; hovering any token shows its value.
    """
    out = []
    for i, (tok, act) in enumerate(zip(tokens, acts)):
        text = escape(token_text(tok)).replace("\n", "<br>")
        act = float(act or 0.0)
        if act <= 0 and i != center:
            out.append(f"<span>{text}</span>")
            continue
        alpha = min(1.0, act / scale) if scale > 0 else 0.0
        cls = ' class="wb-center"' if i == center else ""
        out.append(
            f'<span{cls} style="background:rgba(232,89,12,{0.1 + 0.8 * alpha:.2f})" '
            f'title="{fmt(act)}">{text}</span>'
        )
    return "".join(out)


def feature_link(feature: int, text: str | None = None, suffix: str = "", width: int = 48) -> str:
    """A clickable chip that opens the feature's page; a long ``text`` is shortened (full on
    hover), ``suffix`` (a number) always shows."""
    full = text if text is not None else f"#{feature}"
    short = full if len(full) <= width else full[: width - 1].rstrip() + "…"
    return (
        f'<a class="wb-chip" data-feature="{int(feature)}" href="#" title="{escape(full)}">'
        f"{escape(short + suffix)}</a>"
    )


def study_link(study_id: int, feature: int | None = None) -> str:
    """A clickable study id that opens the study view (coloured by ``feature`` when given)."""
    keep = f' data-feature="{int(feature)}"' if feature is not None else ""
    return (
        f'<a class="wb-study" data-study="{int(study_id)}"{keep} href="#">study {int(study_id)}</a>'
    )


def feature_title(feature: int, header: Row, cards: Sequence[LabelCard], why: str = "") -> str:
    """The page's head: the label the feature is known by, who wrote it and every score named
    by its test, why it leads, why scores are blank, the other labels, and key numbers."""
    if cards:
        top = cards[0]
        name = escape(top.label)
        model = f" ({escape(top.model)})" if top.model else ""
        scores = top.scores_text() or "no scores"
        meta = f"{escape(top.method)}{model} · {escape(scores)}"
        if why:
            meta += f'<div class="wb-why">leads: {escape(why)}</div>'
        if top.blanks:
            meta += '<div class="wb-why">blank: ' + escape(" · ".join(top.blanks)) + "</div>"
    else:
        name, meta = "(not labelled yet)", "run `python -m workbench label` to name it"
    stats = [
        ("frequency", _pct(header.get("frequency"))),
        ("max act", fmt(header.get("max_act"))),
        ("mean act", fmt(header.get("mean_act"))),
        ("studies", fmt(header.get("n_studies"))),
        ("on image", _pct(header.get("frac_image"))),
        ("group", fmt(header.get("matryoshka_group"))),
    ]
    chips = "".join(f'<span class="wb-stat"><i>{k}</i> {v}</span>' for k, v in stats)
    dead = message("This feature never fires (dead).", "warn") if header.get("dead") else ""
    return (
        f'<div class="wb-head"><div class="wb-fid">feature {int(feature)}</div>'
        f'<div class="wb-label">{name}</div><div class="wb-meta">{meta}</div>'
        f'<div class="wb-stats">{chips}</div>{_all_labels(cards)}{dead}</div>'
    )


def _all_labels(cards: Sequence[LabelCard]) -> str:
    """Every label with its named scores and blank reasons, folded under the headline."""
    if len(cards) < 2:
        return ""
    rows = "".join(
        f"<tr><td>{i + 1}</td><td><b>{escape(c.method)}</b></td><td>{escape(c.label)}</td>"
        f"<td>{escape(c.scores_text() or '–')}</td><td>{escape(' · '.join(c.blanks))}</td></tr>"
        for i, c in enumerate(cards)
    )
    head = "<tr><th>#</th><th>method</th><th>label</th><th>scores</th><th>blank because</th></tr>"
    return (
        f'<details class="wb-labels"><summary>all {len(cards)} labels, ranked by score'
        f'</summary><table class="wb-table"><thead>{head}</thead><tbody>{rows}</tbody>'
        "</table></details>"
    )


def _pct(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.3g}%"


def neighbors(rows: Sequence[Row]) -> str:
    """Nearest features as clickable chips with their cosine and label."""
    if not rows:
        return '<p class="wb-empty">No neighbours computed.</p>'
    chips = "".join(
        feature_link(
            r["neighbor"], f"#{r['neighbor']} {r.get('label') or ''}", f" · {r['cosine']:.2f}"
        )
        for r in rows
    )
    return f'<div class="wb-chips">{chips}</div>'


def table(rows: Sequence[Row], columns: Sequence[str] | None = None, caption: str = "") -> str:
    """A plain numbers table (for the 'numbers' drawers one click away)."""
    if not rows:
        return ""
    cols = list(columns or rows[0].keys())
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows
    )
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return (
        f'<table class="wb-table">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return fmt(v, 4)
    if isinstance(v, list | tuple):
        return escape(" ".join(token_text(str(x)) for x in v))
    return escape("" if v is None else str(v))


def details(summary: str, inner: str) -> str:
    """A collapsed drawer: the numbers behind a chart, one click away."""
    if not inner:
        return ""
    return f'<details class="wb-numbers"><summary>{escape(summary)}</summary>{inner}</details>'


def card(title: str, inner: str) -> str:
    """A titled panel."""
    return f'<section class="wb-card"><h3>{escape(title)}</h3>{inner}</section>'


def image_block(uri: str | None, caption: str) -> str:
    """An inline image with a caption, or a note when there is none."""
    if not uri:
        return f'<p class="wb-empty">{escape(caption)}</p>'
    return (
        f'<figure class="wb-fig"><img src="{uri}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def heat_figure(base_uri: str, layer_uri: str, caption: str, bar: str, opacity: int = 80) -> str:
    """A radiograph with a heat layer over it, an overlay on/off toggle, an opacity slider
    (the page's script, :data:`workbench.ui.style.CLICK_JS`, applies both), the colour bar and
    a caption stating the colour scale."""
    return (
        f'<figure class="wb-fig wb-heat"><div class="wb-stack">'
        f'<img class="wb-base" src="{base_uri}" alt="radiograph">'
        f'<img class="wb-layer" src="{layer_uri}" alt="activation heatmap" '
        f'style="opacity:{opacity / 100:.2f}"></div>'
        '<div class="wb-heatctl"><label><input type="checkbox" class="wb-toggle" checked> '
        "overlay</label><label>opacity "
        f'<input type="range" class="wb-opacity" min="0" max="100" value="{opacity}"></label>'
        f"</div>{bar}<figcaption>{escape(caption)}</figcaption></figure>"
    )


def thumb_strip(items: Sequence[tuple[int, str | None, str]], feature: int) -> str:
    """Thumbnails (study id, data URI, caption) in a row; a click opens the study coloured by
    ``feature``."""
    cells = "".join(
        f'<a class="wb-thumb" data-study="{int(sid)}" data-feature="{int(feature)}" href="#" '
        f'title="open study {int(sid)} coloured by feature {int(feature)}">'
        + (f'<img src="{uri}" alt="study {int(sid)}">' if uri else '<div class="wb-nocrop">'
           "image not available</div>")
        + f"<span>{escape(caption)}</span></a>"
        for sid, uri, caption in items
    )  # fmt: skip
    return f'<div class="wb-strip">{cells}</div>'
