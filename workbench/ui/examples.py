"""A feature's examples as a reader needs them: whole sentences, no duplicates, real patches.

analyse stores each example with a few tokens of context (``feature_examples``). The page
widens a text example to its sentence (:func:`sentence`, from the token windows read by
:func:`workbench.ui.queries_feature.context_windows`), drops tokenizer placeholders
(``</s>``, ``<image>``, ...) that carry no activation, and folds examples whose sentence reads
the same ("No pneumothorax." in twenty studies) into one card that counts them. Image examples
are crops of the radiograph around the patch (made by the handler, passed in as data URIs).
Pure functions: rows in, HTML out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any, NamedTuple

from workbench.ui.charts import fmt
from workbench.ui.render import highlight, study_link, token_text

Row = dict[str, Any]

PLACEHOLDERS = frozenset(
    {"</s>", "<s>", "<image>", "<pad>", "<unk>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>"}
)
"""Tokenizer markers shown to nobody: they are dropped from displayed text when silent."""
_SENTENCE_END = re.compile(r"[.!?]\s*$")
MAX_SIDE = 30
"""Most tokens shown on each side of the example token (a long sentence is cut)."""


class TextExample(NamedTuple):
    """A text example widened to its sentence."""

    tokens: list[str]
    acts: list[float]
    center: int
    study_id: int
    section: str
    activation: float


def is_placeholder(token: str | None) -> bool:
    """A tokenizer marker, or a 'None' section placeholder, rather than report text."""
    text = token_text(token).strip()
    return text in PLACEHOLDERS or text in ("None", "None.")


def sentence(example: Row, window: Sequence[Row], acts: Mapping[int, float]) -> TextExample:
    """The sentence around the example token, from the token rows of its window.

    Bounded by the example's study and section and by sentence ends ('.', '!', '?'); at most
    :data:`MAX_SIDE` tokens each side. Falls back to analyse's stored context when the window
    does not hold the example's row (a run without ``tokens``).
    """
    row = example.get("row")
    pos = next((i for i, t in enumerate(window) if t["row"] == row), None)
    if pos is None:
        return _stored(example)
    me = window[pos]
    same = lambda t: t["study_id"] == me["study_id"] and t["section"] == me["section"]  # noqa: E731
    lo = pos
    while lo > 0 and pos - lo < MAX_SIDE and same(window[lo - 1]):
        if window[lo - 1]["row"] != window[lo]["row"] - 1 or _ends(window[lo - 1]["token"]):
            break
        lo -= 1
    hi = pos
    while hi + 1 < len(window) and hi - pos < MAX_SIDE and not _ends(window[hi]["token"]):
        nxt = window[hi + 1]
        if not same(nxt) or nxt["row"] != window[hi]["row"] + 1:
            break
        hi += 1
    span = window[lo : hi + 1]
    keep = [i for i, t in enumerate(span) if i == pos - lo or not _silent_marker(t, acts)]
    return TextExample(
        tokens=[span[i]["token"] for i in keep],
        acts=[acts.get(span[i]["row"], 0.0) for i in keep],
        center=keep.index(pos - lo),
        study_id=int(example["study_id"]),
        section=example.get("section") or example.get("kind") or "",
        activation=float(example.get("activation") or 0.0),
    )


def _ends(token: str | None) -> bool:
    return bool(_SENTENCE_END.search(token_text(token)))


def _silent_marker(tok: Row, acts: Mapping[int, float]) -> bool:
    return is_placeholder(tok["token"]) and acts.get(tok["row"], 0.0) <= 0


def _stored(example: Row) -> TextExample:
    """The example with analyse's stored context (placeholders that are silent dropped)."""
    toks = example.get("context_tokens") or [example.get("token") or ""]
    acts = example.get("context_acts") or [example.get("activation") or 0.0]
    center = example.get("center") if example.get("context_tokens") else 0
    keep = [i for i, t in enumerate(toks) if i == center or not (is_placeholder(t) and not acts[i])]
    return TextExample(
        tokens=[toks[i] for i in keep],
        acts=[float(acts[i] or 0.0) for i in keep],
        center=keep.index(center),
        study_id=int(example["study_id"]),
        section=example.get("section") or example.get("kind") or "",
        activation=float(example.get("activation") or 0.0),
    )


def dedupe_key(ex: TextExample) -> str:
    """What makes two examples the same to a reader: the sentence and the marked word, case,
    spacing and numbers aside ("3.0 cm nodule" and "2.5 cm nodule" read the same)."""
    text = "".join(token_text(t) for t in ex.tokens)
    word = token_text(ex.tokens[ex.center]) if ex.tokens else ""
    key = re.sub(r"\d+(\.\d+)?", "#", f"{text}|{word}")
    return re.sub(r"\s+", " ", key).strip().lower()


def collapse(examples: Sequence[TextExample]) -> list[tuple[TextExample, list[int]]]:
    """Examples that read the same folded into the first (strongest) one, with every study."""
    groups: dict[str, tuple[TextExample, list[int]]] = {}
    for ex in examples:
        key = dedupe_key(ex)
        if key in groups:
            groups[key][1].append(ex.study_id)
        else:
            groups[key] = (ex, [ex.study_id])
    return list(groups.values())


def text_card(ex: TextExample, studies: Sequence[int], scale: float, feature: int) -> str:
    """One text example (or several that read alike) with its sentence highlighted."""
    body = highlight(ex.tokens, ex.acts, scale, ex.center)
    links = " ".join(study_link(s, feature) for s in dict.fromkeys(studies))
    more = f' · <span class="wb-dupes">×{len(studies)} alike</span>' if len(studies) > 1 else ""
    return (
        f'<div class="wb-ex"><div class="wb-exmeta">{links} · {escape(ex.section)} · '
        f"<b>{fmt(ex.activation)}</b>{more}</div>"
        f'<div class="wb-extext">{body}</div></div>'
    )


def patch_card(r: Row, crop_uri: str | None, feature: int) -> str:
    """An image example: the radiograph around the patch (outlined), its study and value."""
    row, col = int(r["patch_row"]), int(r["patch_col"])
    where = f"patch row {row}, col {col}"
    picture = (
        f'<img src="{crop_uri}" alt="{where}">'
        if crop_uri
        else f'<div class="wb-nocrop">{where}<br>(image not available)</div>'
    )
    return (
        f'<div class="wb-patch" title="{where}">{picture}'
        f"<div>{study_link(r['study_id'], feature)}</div><b>{fmt(r.get('activation'))}</b></div>"
    )


def is_patch(r: Row) -> bool:
    return r.get("kind") == "image" and r.get("patch_row") is not None


def group_name(r: Row) -> str:
    if r.get("example_group") == "top":
        return "Top activations"
    q = r.get("quantile")
    return f"Quantile {q}" if q is not None else "Quantile examples"


def panel(
    rows: Sequence[Row],
    texts: Mapping[int, TextExample],
    crops: Mapping[int, str | None],
    scale: float,
    feature: int,
) -> str:
    """Every example group under its heading: patch crops in a row, then text cards with
    sentences that read alike folded. ``texts`` and ``crops`` are keyed by the example's index."""
    if not rows:
        return '<p class="wb-empty">No examples recorded.</p>'
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(group_name(r), []).append(i)
    parts = []
    for name, members in groups.items():
        parts.append(f'<h4 class="wb-group">{escape(name)}</h4>')
        patches = [patch_card(rows[i], crops.get(i), feature) for i in members if is_patch(rows[i])]
        if patches:
            parts.append('<div class="wb-patches">' + "".join(patches) + "</div>")
        folded = collapse([texts[i] for i in members if i in texts])
        parts += [text_card(ex, studies, scale, feature) for ex, studies in folded]
    return '<div class="wb-examples">' + "".join(parts) + "</div>"
