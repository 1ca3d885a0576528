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


def study_link(study_id: int) -> str:
    """A clickable study id that opens the study view."""
    return f'<a class="wb-study" data-study="{int(study_id)}" href="#">study {int(study_id)}</a>'


def feature_title(feature: int, header: Row | None, labels: Sequence[Row]) -> str:
    """The page's head: preferred label, its method and score, other labels, key numbers."""
    if header is None:
        return message(f"Feature {feature} does not exist in this run.", "error")
    if labels:
        top = labels[0]
        name = escape(top["label"] or "")
        model = f" ({escape(top['model'])})" if top.get("model") else ""
        meta = f"{escape(top['method'] or '')}{model}" + (
            f" · score {fmt(top['score'])}" if top.get("score") is not None else ""
        )
        if top.get("scored"):
            meta += f" · {escape(top['scored'])}"
    else:
        name, meta = "(not labelled yet)", "run `python -m workbench label` to name it"
    others = "".join(
        f"<li><b>{escape(r['method'] or '')}</b>: {escape(r['label'] or '')}"
        + (f" <i>({fmt(r['score'])})</i>" if r.get("score") is not None else "")
        + "</li>"
        for r in labels[1:]
    )
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
    more = f"<details><summary>other labels</summary><ul>{others}</ul></details>" if others else ""
    return (
        f'<div class="wb-head"><div class="wb-fid">feature {int(feature)}</div>'
        f'<div class="wb-label">{name}</div><div class="wb-meta">{meta}</div>'
        f'<div class="wb-stats">{chips}</div>{more}{dead}</div>'
    )


def _pct(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.3g}%"


def examples(rows: Sequence[Row], scale: float, grid: tuple[int, int] | None = None) -> str:
    """Top and quantile examples under headings: text as highlighted context, image patches as
    small patch-grid cards (``grid`` = n_rows, n_cols of the image) in a row."""
    if not rows:
        return '<p class="wb-empty">No examples recorded.</p>'
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(_group_name(r), []).append(r)
    parts = []
    for name, members in groups.items():
        texts = [_text_card(r, scale) for r in members if not _is_patch(r)]
        patches = [_patch_card(r, scale, grid) for r in members if _is_patch(r)]
        parts.append(f'<h4 class="wb-group">{escape(name)}</h4>')
        if patches:
            parts.append('<div class="wb-patches">' + "".join(patches) + "</div>")
        parts += texts
    return '<div class="wb-examples">' + "".join(parts) + "</div>"


def _is_patch(r: Row) -> bool:
    return r.get("kind") == "image" and r.get("patch_row") is not None


def _group_name(r: Row) -> str:
    if r.get("example_group") == "top":
        return "Top activations"
    q = r.get("quantile")
    return f"Quantile {q}" if q is not None else "Quantile examples"


def _text_card(r: Row, scale: float) -> str:
    where = escape(r.get("section") or r.get("kind") or "")
    body = highlight(
        r.get("context_tokens") or [r.get("token") or ""],
        r.get("context_acts") or [r.get("activation") or 0.0],
        scale,
        r.get("center") if r.get("context_tokens") else 0,
    )
    return (
        f'<div class="wb-ex"><div class="wb-exmeta">{study_link(r["study_id"])} · {where} · '
        f'<b>{fmt(r.get("activation"))}</b></div><div class="wb-extext">{body}</div></div>'
    )


def _patch_card(r: Row, scale: float, grid: tuple[int, int] | None) -> str:
    row, col = int(r["patch_row"]), int(r["patch_col"])
    n_rows, n_cols = grid if grid else (row + 1, col + 1)
    strength = min(1.0, (r.get("activation") or 0.0) / scale) if scale > 0 else 1.0
    picture = patch_grid(n_rows, n_cols, row, col, strength)
    return (
        f'<div class="wb-patch" title="image patch (row {row}, col {col})">{picture}'
        f"<div>{study_link(r['study_id'])}</div><b>{fmt(r.get('activation'))}</b></div>"
    )


def patch_grid(n_rows: int, n_cols: int, row: int, col: int, strength: float) -> str:
    """A small picture of the image's patch grid with the example's patch filled."""
    cell = max(2.0, 56 / max(n_rows, n_cols))
    w, h = cell * n_cols, cell * n_rows
    mark = (
        f'<rect x="{col * cell:.1f}" y="{row * cell:.1f}" width="{cell:.1f}" height="{cell:.1f}" '
        f'fill="rgba(232,89,12,{0.35 + 0.65 * strength:.2f})"/>'
    )
    return (
        f'<svg viewBox="0 0 {w:.1f} {h:.1f}" width="{w:.0f}" height="{h:.0f}">'
        f'<rect width="{w:.1f}" height="{h:.1f}" fill="#495057" rx="3"/>{mark}</svg>'
    )


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
