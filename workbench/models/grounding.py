"""MAIRA-2's grounded outputs: strict parsing of ``<obj>...</obj>`` and box coordinates.

A grounded report is a sequence of ``<obj>phrase<box><xA><yB><xC><yD></box>...</obj>``
items (maira2.md section 3, "Post-processing"). Each of A..D is a bin in 0..99 of the
*centre-cropped square* image, and the box coordinate is the bin centre ``(bin + 0.5) / 100``.
Parsing is strict: any text outside the items, an unclosed delimiter, or a box that is not
exactly four coordinates raises ValueError naming the offending text.
"""

from __future__ import annotations

import re

BoxType = tuple[float, float, float, float]

PHRASE_START, PHRASE_END = "<obj>", "</obj>"
BOX_START, BOX_END = "<box>", "</box>"
_BOX = re.compile(r"<x(\d+)><y(\d+)><x(\d+)><y(\d+)>")


def split_delimited(text: str, start: str, end: str) -> list[str]:
    """The bodies of consecutive ``start body end`` items that make up all of ``text``."""
    bodies = []
    rest = text
    while rest:
        if not rest.startswith(start):
            raise ValueError(f"expected {start!r} at {rest[:40]!r} in grounded output {text!r}")
        stop = rest.find(end)
        if stop == -1:
            raise ValueError(f"unclosed {start!r} in grounded output {text!r}")
        bodies.append(rest[len(start) : stop])
        rest = rest[stop + len(end) :]
    return bodies


def parse_box(box_text: str, num_bins: int = 100) -> BoxType:
    """``<xA><yB><xC><yD>`` -> (x1, y1, x2, y2), each the bin centre in [0, 1]."""
    match = _BOX.fullmatch(box_text)
    if match is None:
        raise ValueError(f"invalid box {box_text!r}: expected <xA><yB><xC><yD>")
    bins = [int(g) for g in match.groups()]
    if any(b >= num_bins for b in bins):
        raise ValueError(f"invalid box {box_text!r}: coordinate bins must be < {num_bins}")
    x1, y1, x2, y2 = ((b + 0.5) / num_bins for b in bins)
    return (x1, y1, x2, y2)


def parse_grounded(
    text: str, num_box_coord_bins: int = 100
) -> str | list[tuple[str, list[BoxType] | None]]:
    """``convert_output_to_plaintext_or_grounded_sequence``: plain text or grounded phrases.

    Text without any of ``<obj> </obj> <box> </box>`` comes back stripped. Otherwise every
    phrase becomes ``(phrase, boxes)`` where boxes is None for an ungrounded phrase.
    """
    text = text.strip()
    if not any(tok in text for tok in (PHRASE_START, PHRASE_END, BOX_START, BOX_END)):
        return text
    phrases: list[tuple[str, list[BoxType] | None]] = []
    for body in split_delimited(text, PHRASE_START, PHRASE_END):
        if BOX_START not in body and BOX_END not in body:
            phrases.append((body.lstrip(), None))
            continue
        first = body.find(BOX_START)
        if first == -1:
            raise ValueError(f"{BOX_END!r} without {BOX_START!r} in phrase {body!r}")
        boxes = [
            parse_box(b, num_box_coord_bins)
            for b in split_delimited(body[first:], BOX_START, BOX_END)
        ]
        phrases.append((body[:first].strip(), boxes))
    return phrases


def adjust_box_for_original_image_size(box: BoxType, width: int, height: int) -> BoxType:
    """Re-express a box on the centre-cropped square relative to the original image.

    The processor crops the resized image to a square of the short side, centred; this
    undoes that crop (same integer pixel rounding as the original).
    """
    side = min(width, height)
    x_off = (width - side) // 2
    y_off = (height - side) // 2
    x1, y1, x2, y2 = box
    return (
        int(x1 * side + x_off) / width,
        int(y1 * side + y_off) / height,
        int(x2 * side + x_off) / width,
        int(y2 * side + y_off) / height,
    )
