"""What holds a concept back: the strengths that reach the success target but break a limit.

The operating point (:mod:`workbench.steer.report`) keeps only the strengths that meet every
limit, so a concept that reaches 80 % success at a stronger push shows ``-`` or a lower success
without saying why. This table names, for every arm whose operating point stays below the
target, the weakest strength that reaches it and each limit that strength breaks, with the
studies of its degenerate reports: one study whose steered report loops to the token limit can
hold a whole concept back (benchmarks/RESULTS.md, "A finer and longer sweep"), and the
researcher should be able to read that report, not rerun SQL to find it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from workbench.steer.report import (
    METHODS_COMPARED,
    Limits,
    Summary,
    above_null,
    arm_key,
    breaches,
    is_degenerate,
    operating_points,
    pct,
    text_table,
)

TARGET = 0.8
"""The success an operating point should reach (issue 13's target)."""


class HeldBack(NamedTuple):
    """The weakest strength of an arm that reaches the target, and why it is not admissible."""

    method: str
    concept: str
    direction: str
    strength: float
    success: float
    breaks: tuple[str, ...]


def degenerate_studies(rows: Sequence[dict]) -> dict[tuple, list[int]]:
    """Arm and strength (:func:`arm_key`) -> the studies whose steered report is degenerate."""
    out: dict[tuple, list[int]] = defaultdict(list)
    for r in rows:
        if is_degenerate(r):
            out[arm_key(r)].append(int(r["study_id"]))
    return out


def broken_limits(s: Summary, limits: Limits, degenerate: Sequence[int] = ()) -> tuple[str, ...]:
    """Each limit ``s`` breaks (:func:`breaches`), with its value and the bound, in words."""
    above = " above null" if limits.over_null else ""
    out = []
    for b in breaches(s, limits):
        if b.limit == "side_effects":
            out.append(f"side effects{above} {pct(b.value)} > {pct(b.bound)}")
        elif b.limit == "ppl_ratio":
            ppl = "unknown" if b.value is None else f"{b.value:.2f}x"
            out.append(f"perplexity {ppl} > {b.bound:g}x")
        else:
            shown = ", ".join(map(str, sorted(degenerate)[:3]))
            shown += ", ..." if len(degenerate) > 3 else ""
            named = f" (study {shown})" if shown else ""
            out.append(f"degenerate {round(s.degenerate * s.n)} of {s.n}{named}")
    return tuple(out)


def held_back(
    summaries: Sequence[Summary],
    limits: Limits,
    degenerate: dict[tuple, list[int]] | None = None,
    target: float = TARGET,
) -> list[HeldBack]:
    """Per (method, concept, direction) of the compared methods (SAE, dim, prompt) whose
    operating point is below ``target`` or absent: the weakest strength whose success reaches
    it, and the limits it breaks."""
    points = operating_points(summaries, limits)
    judged = above_null(summaries) if limits.over_null else summaries
    degenerate = degenerate or {}
    first: dict[tuple[str, str, str], Summary] = {}
    for s in judged:
        if s.method not in METHODS_COMPARED:  # the counterfactual and null control: references
            continue
        key = (s.method, s.concept, s.direction)
        point = points.get(key)
        if (point is not None and (point.success or 0) >= target) or (s.success or 0) < target:
            continue
        if key not in first or abs(s.strength) < abs(first[key].strength):
            first[key] = s
    return [
        HeldBack(*key, s.strength, s.success or 0.0,
                 broken_limits(s, limits, degenerate.get(tuple(s[:9]), ())))
        for key, s in sorted(first.items())
    ]  # fmt: skip


def format_held_back(rows: Sequence[dict], summaries: Sequence[Summary], limits: Limits) -> str:
    """The :func:`held_back` table of stored ``rows`` ('' when nothing is held back)."""
    held = held_back(summaries, limits, degenerate_studies(rows))
    if not held:
        return ""
    cells = [["method", "concept", "dir", "strength", "success", "breaks"]]
    for h in held:
        cells.append([h.method, h.concept, h.direction, f"{h.strength:g}", pct(h.success),
                      "; ".join(h.breaks)])  # fmt: skip
    title = (
        f"held back by the limits (the weakest strength reaching {pct(TARGET)} success where "
        "the operating point does not, and what it breaks)"
    )
    return f"{title}\n{text_table(cells)}"
