"""From stored rows to the answer: per strength rates, operating points, the comparison table.

A :class:`Summary` holds the rates of one arm over its studies. The **operating point** of a
method for a (concept, direction) is the strength with the highest success among those whose

- side-effect rate (studies where another finding/device flipped) is <= ``max_side_effects``,
- perplexity ratio (geometric mean of steered over baseline perplexity, both under the
  unsteered model) is <= ``max_ppl_ratio``,
- degenerate share (reports repeating themselves or no longer parsing) is <= ``max_degenerate``;

ties go to the weaker strength. Without an admissible strength there is no operating point
(shown as ``-``), which is itself a result: the method does not steer this concept within the
limits.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import duckdb

from workbench.steer.metrics import DEGENERATE_REPEAT

GROUP = ("method", "concept", "direction", "features", "unit", "mode", "positions", "variant")
_ROW_SQL = (
    "SELECT method, concept, direction, features, unit, mode, positions, "
    "json_extract_string(details, '$.variant') AS variant, strength, study_id, eligible, "
    "success, side_effects, baseline_ppl, steered_ppl, repeat_rate, parses, created_at "
    "FROM steering_results WHERE method IS NOT NULL"
)


class Limits(NamedTuple):
    """The constraints an operating point must meet."""

    max_side_effects: float = 0.10
    max_ppl_ratio: float = 1.5
    max_degenerate: float = 0.0
    over_null: bool = False
    """Count an SAE or dim arm's side effects above its null control's (method random, the
    same map norm and strength), where the control was run."""


class Summary(NamedTuple):
    """Rates of one arm over its studies."""

    method: str
    concept: str
    direction: str
    features: tuple[int, ...]
    unit: str
    mode: str
    positions: str
    variant: str
    strength: float
    n: int
    n_eligible: int
    success: float | None
    side_effects: float
    ppl_ratio: float | None
    repeat: float
    parse_rate: float
    degenerate: float


def load_rows(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Every stored row of this version's schema, as dicts (texts left out)."""
    cur = con.execute(_ROW_SQL)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def latest_feature_sets(rows: Sequence[dict]) -> tuple[list[dict], int]:
    """The rows with, for every arm that steers SAE features (the SAE method and the null
    control matched to its maps), only the feature set stored last for each (method, concept,
    direction), and how many rows were left out. Sets chosen by another ``n_candidates`` or
    candidate rule are other arms; their rates would otherwise mix into one operating point
    (the best strength of either). Rows without a time count as the oldest."""
    last: dict[tuple[str, str, str], tuple] = {}
    for r in rows:
        if r["features"]:
            key = (r["method"], r["concept"], r["direction"])
            stamp = (r.get("created_at") is not None, r.get("created_at"))
            if key not in last or stamp > last[key][0]:
                last[key] = (stamp, tuple(r["features"]))
    kept = [
        r
        for r in rows
        if not r["features"]
        or tuple(r["features"]) == last[(r["method"], r["concept"], r["direction"])][1]
    ]
    return kept, len(rows) - len(kept)


def _geo_mean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None and v > 0]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else None


def arm_key(r: dict) -> tuple:
    """A stored row's arm and strength: the first nine fields of its :class:`Summary`."""
    key = tuple(tuple(r[g] or ()) if g == "features" else r[g] for g in GROUP)
    return (*key, float(r["strength"]))


def is_degenerate(r: dict) -> bool:
    """Whether a stored steered report repeats itself or no longer parses."""
    return (r["repeat_rate"] or 0) > DEGENERATE_REPEAT or not r["parses"]


def summarise(rows: Iterable[dict]) -> list[Summary]:
    """One summary per arm (group columns + strength), ordered by arm then strength."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[arm_key(r)].append(r)
    out = []
    for key, rs in sorted(groups.items(), key=lambda kv: (tuple(map(str, kv[0][:-1])), kv[0][-1])):
        n = len(rs)
        eligible = [r for r in rs if r["eligible"]]
        base = _geo_mean(r["baseline_ppl"] for r in rs)
        steered = _geo_mean(r["steered_ppl"] for r in rs)
        degenerate = sum(map(is_degenerate, rs))
        out.append(
            Summary(
                *key,
                n=n,
                n_eligible=len(eligible),
                success=sum(bool(r["success"]) for r in eligible) / len(eligible)
                if eligible
                else None,
                side_effects=sum(1 for r in rs if r["side_effects"]) / n,
                ppl_ratio=steered / base if base and steered else None,
                repeat=sum(r["repeat_rate"] or 0.0 for r in rs) / n,
                parse_rate=sum(bool(r["parses"]) for r in rs) / n,
                degenerate=degenerate / n,
            )
        )
    return out


class Breach(NamedTuple):
    """One limit an arm breaks: which, the arm's value (None: not measured) and the bound."""

    limit: str
    value: float | None
    bound: float


def breaches(s: Summary, limits: Limits) -> list[Breach]:
    """The side-effect, fluency and degeneracy limits ``s`` breaks (empty: it meets them)."""
    out = []
    if s.side_effects > limits.max_side_effects:
        out.append(Breach("side_effects", s.side_effects, limits.max_side_effects))
    if s.ppl_ratio is None or s.ppl_ratio > limits.max_ppl_ratio:
        out.append(Breach("ppl_ratio", s.ppl_ratio, limits.max_ppl_ratio))
    if s.degenerate > limits.max_degenerate:
        out.append(Breach("degenerate", s.degenerate, limits.max_degenerate))
    return out


def admissible(s: Summary, limits: Limits) -> bool:
    """Whether an arm has a success rate and meets the side-effect, fluency and degeneracy
    limits."""
    return s.success is not None and not breaches(s, limits)


def above_null(summaries: Sequence[Summary]) -> list[Summary]:
    """The summaries with each SAE and dim arm's side-effect rate less its null control's
    (method random with the same concept, direction, strength and features: the map of the
    same norm in a random direction), floored at 0; arms without a control are unchanged."""
    null = {(s.concept, s.direction, abs(s.strength), s.features): s.side_effects
            for s in summaries if s.method == "random"}  # fmt: skip
    out = []
    for s in summaries:
        floor = null.get((s.concept, s.direction, abs(s.strength), s.features))
        if s.method in ("sae", "dim") and floor is not None:
            s = s._replace(side_effects=max(0.0, s.side_effects - floor))
        out.append(s)
    return out


def operating_points(
    summaries: Sequence[Summary], limits: Limits
) -> dict[tuple[str, str, str], Summary | None]:
    """(method, concept, direction) -> the best admissible summary, or None (side effects
    above the null control's with ``limits.over_null``)."""
    best: dict[tuple[str, str, str], Summary | None] = {}
    for s in above_null(summaries) if limits.over_null else summaries:
        key = (s.method, s.concept, s.direction)
        best.setdefault(key, None)
        if not admissible(s, limits):
            continue
        cur = best[key]
        if cur is None or (s.success, -abs(s.strength)) > (cur.success, -abs(cur.strength)):
            best[key] = s
    return best


def pct(x: float | None) -> str:
    """A rate as a whole percentage ('-' when there is none)."""
    return "-" if x is None else f"{100 * x:.0f}%"


def format_sweep(summaries: Sequence[Summary]) -> str:
    """Every arm's rates, one line per (method, concept, direction, strength)."""
    head = ("method", "concept", "dir", "features", "strength", "n", "elig", "success")
    head += ("side", "ppl_x", "repeat", "parses")
    cells = [list(head)]
    for s in summaries:
        feats = ",".join(map(str, s.features)) or "-"
        ppl = "-" if s.ppl_ratio is None else f"{s.ppl_ratio:.2f}"
        cells.append(
            [s.method, s.concept, s.direction, feats, f"{s.strength:g}", str(s.n),
             str(s.n_eligible), pct(s.success), pct(s.side_effects), ppl,
             f"{s.repeat:.2f}", pct(s.parse_rate)]
        )  # fmt: skip
    return text_table(cells)


def text_table(cells: list[list[str]]) -> str:
    """Rows of cells as right-aligned columns (the first row is the header)."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def _point(p: Summary | None, with_strength: bool = True) -> list[str]:
    if p is None:
        return ["-", "-", "-", "-"] if with_strength else ["-", "-", "-"]
    ppl = "-" if p.ppl_ratio is None else f"{p.ppl_ratio:.2f}"
    head = [f"{p.strength:g}"] if with_strength else []
    return head + [pct(p.success), pct(p.side_effects), ppl]


def format_report(summaries: Sequence[Summary], limits: Limits) -> str:
    """SAE feature vs difference of means vs prompt at their operating points, per concept;
    then the same without the side-effect limit, beside the counterfactual (the concept drawn
    into the phantom image, :mod:`workbench.steer.counterfactual`) when it was run.

    ``elig`` is the number of studies that could flip (the same for every method: it depends
    on the unsteered findings only).
    """
    points = operating_points(summaries, limits)
    above = " above the null control's" if limits.over_null else ""
    rule = (
        f"operating point: best success with side effects{above} <= "
        f"{pct(limits.max_side_effects)}, "
        f"perplexity <= {limits.max_ppl_ratio:g}x baseline, degenerate reports <= "
        f"{pct(limits.max_degenerate)} ('-': no strength meets the limits)"
    )
    out = [rule, _comparison(summaries, points), *verdicts(points)]
    loose = limits._replace(max_side_effects=1.0)
    if any(admissible(s, loose) and not admissible(s, limits) for s in summaries):
        free = operating_points(summaries, loose)
        title = "without the side-effect limit (cf: the concept drawn into the image, unlimited)"
        out += ["", title, _comparison(summaries, free, with_counterfactual=True)]
        out += verdicts(free)
    return "\n".join(out)


def _comparison(summaries, points, with_counterfactual: bool = False) -> str:
    eligible: dict[tuple[str, str], int] = {}
    drawn: dict[tuple[str, str], Summary] = {}
    for s in summaries:
        key = (s.concept, s.direction)
        eligible[key] = max(eligible.get(key, 0), s.n_eligible)
        if s.method == "counterfactual":
            drawn[key] = s
    head = ["concept", "dir", "elig", "sae@", "sae", "side", "ppl_x", "dim@", "dim", "side"]
    head += ["ppl_x", "prompt", "side", "ppl_x"]
    with_counterfactual = with_counterfactual and bool(drawn)
    head += ["cf", "side", "ppl_x"] if with_counterfactual else []
    cells = [head]
    for concept, direction in sorted(eligible):
        cells.append(
            [concept, direction, str(eligible[(concept, direction)])]
            + _point(points.get(("sae", concept, direction)))
            + _point(points.get(("dim", concept, direction)))
            + _point(points.get(("prompt", concept, direction)), with_strength=False)
            + (_point(drawn.get((concept, direction)), False) if with_counterfactual else [])
        )
    return text_table(cells)


def format_null(summaries: Sequence[Summary]) -> str:
    """The null control's rates (method ``random``: a random patch map with the norm of dim's
    map, or of the SAE map, at every patch): side effects (success) per concept, direction,
    matched map and strength, the floor of side effects that any push of that size brings on
    this model; '' without it."""
    null = [s for s in summaries if s.method == "random"]
    if not null:
        return ""
    strengths = sorted({abs(s.strength) for s in null})
    rates: dict[tuple[str, str, str], dict[float, Summary]] = defaultdict(dict)
    for s in null:
        rates[(s.concept, s.direction, "sae" if s.features else "dim")][abs(s.strength)] = s
    cells = [["concept", "dir", "norm of", *(f"{x:g}" for x in strengths)]]
    for key, by in sorted(rates.items()):
        row = list(key)
        for x in strengths:
            s = by.get(x)
            row.append("-" if s is None else f"{pct(s.side_effects)} ({pct(s.success)})")
        cells.append(row)
    title = "null control (random map of the method's norm per patch): side effects (success)"
    return f"{title} by strength\n{text_table(cells)}"


METHODS_COMPARED = ("sae", "dim", "prompt")


def _method_order(present) -> list[str]:
    """The methods in ``present`` (any container of names): the compared ones and the
    counterfactual first, in that order, then the rest (e.g. random) by name."""
    known = [m for m in (*METHODS_COMPARED, "counterfactual") if m in present]
    return known + sorted(set(present) - set(known))


def format_side_effects(rows: Sequence[dict], top: int = 8) -> str:
    """Which concepts flip as side effects: per method, the share of its steered reports
    (every concept, direction and strength) in which each other concept's stated/not-stated
    reading changed. The counterfactual column (the concept drawn into the image for real) is
    the floor a steering method cannot be expected to beat: what the model rereads whenever its
    image changes. The ``top`` most frequent concepts over all methods are shown."""
    n: dict[str, int] = defaultdict(int)
    hits: dict[tuple[str, str], int] = defaultdict(int)
    for r in rows:
        n[r["method"]] += 1
        for c in r["side_effects"] or ():
            hits[(r["method"], c)] += 1
    if not hits:
        return "side effects: no other concept flipped in any steered report"
    methods = _method_order(n)
    rate = {k: v / n[k[0]] for k, v in hits.items()}
    totals: dict[str, float] = defaultdict(float)
    for (_, c), v in rate.items():
        totals[c] += v
    concepts = sorted(totals, key=lambda c: (-totals[c], c))[:top]
    cells = [["flipped concept", *methods], ["reports", *(str(n[m]) for m in methods)]]
    cells += [[c, *(pct(rate.get((m, c), 0.0)) for m in methods)] for c in concepts]
    return "side effects by concept (share of each method's steered reports)\n" + text_table(cells)


def format_side_effects_by_study(rows: Sequence[dict], top: int = 10) -> str:
    """Where the side effects come from: per method, the share of its steered reports with a
    side effect that its ``top`` most affected studies carry, and the rate over the other
    studies. A study whose unsteered report sits at a finding's decision boundary flips under
    any push (RESULTS.md, "Where the side effects come from"); this tells such a floor from a
    steering direction that moves other findings everywhere."""
    per: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in rows:
        got = per[r["method"]][r["study_id"]]
        got[0] += 1
        got[1] += bool(r["side_effects"])
    cells = [["method", "reports", "studies", "side", f"top {top} share", "side without them"]]
    for m in _method_order(per):
        studies = sorted(per[m].values(), key=lambda v: -v[1])
        n, side = sum(v[0] for v in studies), sum(v[1] for v in studies)
        top_n, top_side = sum(v[0] for v in studies[:top]), sum(v[1] for v in studies[:top])
        rest = (side - top_side) / (n - top_n) if n > top_n else None
        share = top_side / side if side else None
        cells.append([m, str(n), str(len(studies)), pct(side / n), pct(share), pct(rest)])
    return "side effects by study (the most affected studies of each method)\n" + text_table(cells)


def _success(p: Summary | None) -> float:
    return (p.success or 0.0) if p is not None else 0.0


def verdicts(points: dict[tuple[str, str, str], Summary | None]) -> list[str]:
    """The issue's targets, counted: >= 80 % SAE success, SAE vs difference of means."""
    lines = []
    for direction in ("add", "remove"):
        concepts = sorted({c for m, c, d in points if d == direction and m == "sae"})
        if not concepts:
            continue
        sae = {c: points.get(("sae", c, direction)) for c in concepts}
        dim = {c: points.get(("dim", c, direction)) for c in concepts}
        good = [c for c in concepts if sae[c] and (sae[c].success or 0) >= 0.8]
        compared = [c for c in concepts if dim.get(c) is not None or sae[c] is not None]
        ge = [
            c
            for c in compared
            if (sae[c].success if sae[c] else 0) >= (dim[c].success if dim[c] else 0)
        ]
        best = [
            c
            for c in concepts
            if max(_success(points.get((m, c, direction))) for m in METHODS_COMPARED) >= 0.8
        ]
        lines.append(
            f"{direction}: SAE >= 80% success at its operating point for {len(good)} of "
            f"{len(concepts)} concepts ({', '.join(good) or 'none'}); SAE success >= "
            f"difference of means for {len(ge)} of {len(compared)}; any method >= 80%: "
            f"{len(best)} ({', '.join(best) or 'none'})"
        )
    return lines
