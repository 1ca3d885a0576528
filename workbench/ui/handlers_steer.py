"""The Steering tab's handlers: pure functions from the user's choices to HTML.

The generation itself is a :data:`workbench.ui.live.Work` (:func:`steer_work` at the recorded
block, :func:`workbench.ui.handlers_steer_image.image_work` at the image tokens; the site is
chosen per request, :func:`site_controls` gives each site's controls) run by a
:class:`workbench.ui.live.Job`; everything else here reads the database or formats text. No
Gradio import, so it is tested without a browser.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from html import escape
from typing import Any, NamedTuple

from workbench.steer.intervene import (
    SteerOutput,
    feature_steering,
    parse_positions,
)
from workbench.steer.metrics import JUDGED, readings
from workbench.ui import handlers_steer_image as si
from workbench.ui import pictures, queries, render
from workbench.ui import steer_sweep as sw
from workbench.ui.context import AppContext
from workbench.ui.live import (
    LiveModel,
    ModelUnavailableError,
    Progress,
    baseline_and_steered,
    progress_html,
    stream,
)

MAX_SLOTS = 4
POSITIONS = ("all", "image", "prompt", "generated", "image+generated")
MODES = ("add", "clamp")
_READING = {1: "stated", 0: "negated", -1: "uncertain", None: "—"}


class SteerRequest(NamedTuple):
    """A validated request: the study, feature -> strength (x max_act), where, how."""

    study_id: int
    strengths: dict[int, float]
    positions: str
    mode: str
    max_new_tokens: int


class SteerView(NamedTuple):
    """The tab's result panels."""

    baseline: str
    steered: str
    verdicts: str


class SiteControls(NamedTuple):
    """What the tab shows for a site: its notice, its feature list and slider unit."""

    note: str
    """HTML: where the tab steers (and why the image site is off, when it is)."""
    block_controls: bool
    """Whether positions and add/clamp apply (the recorded block only)."""
    strength_label: str
    """The sliders' label (their unit)."""
    choices: list[tuple[str, int]]
    """The features of the site's SAE, as dropdown choices."""


def site_controls(ctx: AppContext, site: str) -> SiteControls:
    """The controls for ``site``; the recorded block's when the image site is unavailable."""
    problem = si.image_site_problem(ctx.run_dir)
    if site == si.IMAGE_SITE and problem is None:
        nested = si.image_context(ctx)
        try:
            choices = feature_choices(nested) if nested.con else []
        finally:
            nested.close()
        note = si.site_note(si.IMAGE_SITE, None)
        return SiteControls(note, False, si.STRENGTH_LABEL[si.IMAGE_SITE], choices)
    note = si.site_note(si.BLOCK_SITE, sw.recorded_hook(ctx), problem)
    choices = feature_choices(ctx) if ctx.con else []
    return SiteControls(note, True, si.STRENGTH_LABEL[si.BLOCK_SITE], choices)


def feature_choices(ctx: AppContext, limit: int = 5000) -> list[tuple[str, int]]:
    """Live features as dropdown choices ``"12 · label"``, searchable by number or label.

    At most ``limit`` (a page holds four such lists), those with the best concept AUROC first;
    any other feature can still be typed by number.
    """
    if not ctx.has("feature_stats"):
        return []
    label_sql, joins, order = "NULL", "", "s.feature"
    if ctx.has("feature_labels"):
        joins += (
            " LEFT JOIN (SELECT feature, arg_max(label, CASE method WHEN 'human' THEN 3 WHEN "
            "'statistical' THEN 1 ELSE 2 END) AS label FROM feature_labels GROUP BY feature) l "
            "USING (feature)"
        )
        label_sql = "l.label"
    if ctx.has("feature_concepts"):
        joins += (
            " LEFT JOIN (SELECT feature, max(auroc) AS auroc FROM feature_concepts "
            "GROUP BY feature) c USING (feature)"
        )
        order = "c.auroc DESC NULLS LAST, s.feature"
    rows = ctx.rows(
        f"SELECT * FROM (SELECT s.feature, {label_sql} AS label FROM feature_stats s {joins} "
        f"WHERE NOT s.dead ORDER BY {order} LIMIT ?) ORDER BY feature",
        [limit],
    )
    return [(f"{r['feature']} · {r['label'] or 'unlabelled'}", int(r["feature"])) for r in rows]


def parse_feature(value: Any) -> int | None:
    """A dropdown value (a feature number, or typed text starting with one) -> feature."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return int(value)
    match = re.match(r"\s*#?(\d+)", str(value))
    return int(match.group(1)) if match else None


def request(
    study: Any,
    features: Sequence[Any],
    strengths: Sequence[float | None],
    positions: str,
    mode: str,
    max_new_tokens: int,
    d_sae: int | None = None,
) -> SteerRequest:
    """Check the tab's inputs; ValueError with a plain message when something is off."""
    sid = render.as_int(study)
    if sid is None:
        raise ValueError("Pick a study first.")
    chosen: dict[int, float] = {}
    for value, strength in zip(features, strengths):
        f = parse_feature(value)
        if f is None:
            continue
        if d_sae is not None and not 0 <= f < d_sae:
            raise ValueError(f"Feature {f} does not exist (the SAE has {d_sae} features).")
        chosen[f] = chosen.get(f, 0.0) + float(strength or 0.0)
    if not chosen:
        raise ValueError("Add at least one feature to steer.")
    parse_positions(positions)
    if mode not in MODES:
        raise ValueError(f"Mode must be one of {MODES}.")
    return SteerRequest(sid, chosen, positions, mode, max(1, int(max_new_tokens)))


def typical(ctx: AppContext, features: Sequence[int]) -> dict[int, float | None]:
    """Each feature's max activation (the sliders' unit)."""
    if not features or not ctx.has("feature_stats"):
        return {}
    rows = ctx.rows(
        "SELECT feature, max_act FROM feature_stats WHERE feature IN (SELECT unnest(?))",
        [list(features)],
    )
    return {int(r["feature"]): r["max_act"] for r in rows}


def steer_work(
    study: Any, req: SteerRequest, unit_of: Mapping[int, float | None], baseline: str | None
):
    """The job: the baseline findings (unless already known) and the steered findings."""

    def work(adapter, sae, monitor_for) -> SteerOutput:
        steering = feature_steering(
            sae, req.strengths, mode=req.mode, unit="max_act", typical=unit_of,
            positions=req.positions,
        )  # fmt: skip
        return baseline_and_steered(adapter, study, steering, monitor_for,
                                    max_new_tokens=req.max_new_tokens, baseline=baseline,
                                    sae=sae)  # fmt: skip

    return work


def word_diff(a: str, b: str) -> tuple[str, str]:
    """Both texts as HTML with the words that differ marked (removed in ``a``, added in ``b``)."""
    wa, wb = a.split(), b.split()
    out_a, out_b = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_opcodes():
        left, right = escape(" ".join(wa[i1:i2])), escape(" ".join(wb[j1:j2]))
        if op == "equal":
            out_a.append(left)
            out_b.append(right)
            continue
        if left:
            out_a.append(f'<del class="wb-del" style="background:#ffe3e3">{left}</del>')
        if right:
            out_b.append(f'<ins class="wb-ins" style="background:#d3f9d8">{right}</ins>')
    return " ".join(p for p in out_a if p), " ".join(p for p in out_b if p)


def verdicts(baseline: str, steered: str) -> str:
    """The labeller's reading of every finding/device mentioned in either text, flips marked."""
    before, after = readings(baseline, JUDGED), readings(steered, JUDGED)
    rows = []
    for c in JUDGED:
        if before[c] is None and after[c] is None:
            continue
        flipped = (before[c] == 1) != (after[c] == 1)
        mark = "<b>flipped</b>" if flipped else ("changed" if before[c] != after[c] else "")
        rows.append(
            f"<tr><td>{escape(c.replace('_', ' '))}</td><td>{_READING[before[c]]}</td>"
            f"<td>{_READING[after[c]]}</td><td>{mark}</td></tr>"
        )
    if not rows:
        return '<p class="wb-empty">Neither text mentions a finding or device.</p>'
    head = "<tr><th>concept</th><th>baseline</th><th>steered</th><th></th></tr>"
    body = "".join(rows)
    return f'<table class="wb-table wb-verdicts"><thead>{head}</thead><tbody>{body}</tbody></table>'


def report_html(elem_id: str, body: str) -> str:
    """Generated text (already escaped) in the report style; long runs of letters wrap."""
    return f'<div class="wb-report" style="overflow-wrap:anywhere" id="{elem_id}">{body}</div>'


def result_view(out: SteerOutput) -> SteerView:
    """Side by side findings with the differences marked, and the verdicts."""
    a, b = word_diff(out.baseline_text, out.steered_text)
    same = out.baseline_text == out.steered_text
    note = render.message("The steered findings are the same as the baseline.") if same else ""
    return SteerView(
        render.card("Baseline findings", report_html("wb-base-text", a)),
        render.card("Steered findings", report_html("wb-steer-text", b)) + note,
        render.card(
            "What the report labeller reads", verdicts(out.baseline_text, out.steered_text)
        ),
    )


def study_panel(ctx: AppContext, study_id: Any) -> str:
    """The study's frontal image (and its stored findings) above the controls."""
    sid = render.as_int(study_id)
    if sid is None:
        return '<p class="wb-empty">Pick a study.</p>'
    uri = pictures.frontal_uri(ctx, sid)
    return render.image_block(uri, f"study {sid}" if uri else f"study {sid}: image not available")


def study_input(ctx: AppContext, live: LiveModel, study_id: int) -> Any:
    """What the model reads for a stored study (its dataset record, else its frontal image)."""
    row = queries.study(ctx, study_id) if ctx.con is not None else None
    frontal = pictures.resolve_image(ctx, row.get("frontal_path") if row else None)
    return live.study(study_id, frontal)


def updates(
    ctx: AppContext,
    live: LiveModel,
    study: Any,
    features: Sequence[Any],
    strengths: Sequence[float | None],
    positions: str,
    mode: str,
    max_new_tokens: int,
    cache: dict | None,
    site: str = si.BLOCK_SITE,
) -> Iterator[tuple]:
    """The Generate button: (progress, baseline, steered, verdicts, cache) per update.

    ``site`` is one of :data:`~workbench.ui.handlers_steer_image.SITES` (at the image site,
    ``positions`` and ``mode`` are ignored). ``None`` leaves a panel as it is. ``cache`` holds
    the last baseline findings so that moving a slider on the same study regenerates only the
    steered findings (the baseline is unsteered, the same at both sites).
    """
    problem = live.problem()
    if site == si.IMAGE_SITE and not problem:
        problem = si.image_site_problem(ctx.run_dir)
    if problem:
        yield (render.message(problem, "error"), None, None, None, None)
        return
    if site not in si.SITES:
        yield (render.message(f"Site must be one of {si.SITES}.", "warn"), None, None, None, None)
        return
    try:
        req = request(study, features, strengths, positions, mode, max_new_tokens)
        record = study_input(ctx, live, req.study_id)
        plan = si.image_plan(ctx, list(req.strengths)) if site == si.IMAGE_SITE else None
    except (ValueError, ModelUnavailableError) as exc:
        yield (render.message(str(exc), "warn"), None, None, None, None)
        return
    key = [req.study_id, req.max_new_tokens]
    baseline = (cache or {}).get("text") if (cache or {}).get("key") == key else None
    if plan is None:
        work = steer_work(record, req, typical(ctx, list(req.strengths)), baseline)
    else:
        work = si.image_work(live, record, req.strengths, plan, req.max_new_tokens, baseline)

    def show(p: Progress) -> tuple:
        if not p.done.is_set():
            return (progress_html(p), None, None, None, None)
        if p.error:
            return (render.message(p.error, "error"), None, None, None, None)
        view = result_view(p.result)
        return ("", *view, {"key": key, "text": p.result.baseline_text})

    yield from stream(live, work, show)
