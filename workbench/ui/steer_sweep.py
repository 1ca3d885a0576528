"""The Steering tab's stored-sweep panel and its site notice.

``python -m workbench steer`` writes ``steering_results`` into the database of the run it
steered with: the run itself at ``--site layer`` (the recorded block) and the nested
image-token run ``<run>/image-tokens`` at ``--site image`` (the default: the image-token
embeddings). :func:`sweep_rows` reads both into plain dicts, each tagged with its site;
:func:`sweep_chart` is a pure function of plain data (the tab's site notice is
:func:`workbench.ui.handlers_steer_image.site_note`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import duckdb

from workbench import db
from workbench.run import RunLayout
from workbench.ui import charts, render
from workbench.ui.context import AppContext

SITES = {
    "image": "image embeddings",
    "layer": "recorded block",
}
"""Site -> how the panel names it (``steer --site``)."""
MAX_BARS = 40
"""Bars drawn per site; the numbers drawer lists every arm."""

_SWEEP_SQL = (
    "SELECT method, concept, direction, strength, features, unit, positions, "
    "count(*) FILTER (WHERE eligible) AS n, "
    "avg(success::INT) FILTER (WHERE eligible) AS success, "
    "avg((len(side_effects) > 0)::INT) AS side_effects "
    "FROM steering_results WHERE method IS NOT NULL "
    "GROUP BY method, concept, direction, strength, features, unit, positions, "
    "json_extract_string(details, '$.variant') "
    "ORDER BY concept, direction, method, strength"
)
_HAS_METHOD_SQL = (
    "SELECT count(*) AS n FROM duckdb_columns() WHERE table_name = 'steering_results' "
    "AND column_name = 'method'"
)


def _tagged(rows: Sequence[Mapping[str, Any]], site: str) -> list[dict[str, Any]]:
    return [{**r, "site": site, "features": list(r["features"] or [])} for r in rows]


def _image_site_rows(ctx: AppContext) -> list[dict[str, Any]]:
    """The image-token run's stored rows (none when it has no database or no results)."""
    nested = RunLayout(ctx.run_dir).image_tokens
    if not db.db_path(nested).is_file():
        return []
    con = db.connect(nested, True, ctx.limits.memory_limit, ctx.limits.threads)
    try:
        if not con.execute(_HAS_METHOD_SQL).fetchone()[0]:
            return []
        cur = con.execute(_SWEEP_SQL)
        names = [d[0] for d in cur.description]
        return _tagged([dict(zip(names, r)) for r in cur.fetchall()], "image")
    except duckdb.Error:  # being replaced by a writer, or an older schema: show nothing
        return []
    finally:
        con.close()


def sweep_rows(ctx: AppContext) -> list[dict[str, Any]]:
    """Every stored arm of ``steer`` (success and side-effect rates over its studies), from
    the run (``site`` 'layer') and from its image-token run (``site`` 'image')."""
    out: list[dict[str, Any]] = []
    if ctx.con is not None and ctx.has("steering_results") and ctx.rows(_HAS_METHOD_SQL)[0]["n"]:
        out += _tagged(ctx.rows(_SWEEP_SQL), "layer")
    return out + _image_site_rows(ctx)


def _shown(rows: Sequence[Mapping[str, Any]], feature: int | None) -> list[Mapping[str, Any]]:
    """Rows with an eligible study; at the recorded block only the SAE arms that steered
    ``feature`` (a feature of the run's SAE) when one is given. The image site's SAE is
    another SAE, so its rows are all kept."""
    if feature is None:
        return [r for r in rows if r["success"] is not None]
    keep = []
    for r in rows:
        other_feature = r["method"] != "sae" or int(feature) not in r["features"]
        if r["success"] is None or (r["site"] == "layer" and other_feature):
            continue
        keep.append(r)
    return keep


def _label(r: Mapping[str, Any]) -> str:
    return f"{r['method']} {r['concept']} {r['direction']} {float(r['strength']):+g}"


def _site_card(site: str, rows: Sequence[Mapping[str, Any]], feature: int | None) -> str:
    items = [(_label(r), float(r["success"])) for r in rows[:MAX_BARS]]
    title = f"{SITES[site]}: success rate"
    if site == "layer" and feature is not None:
        title = f"{SITES[site]}, feature {int(feature)}: success rate"
    more = (
        render.message(f"First {MAX_BARS} of {len(rows)} arms drawn; the numbers list all.")
        if len(rows) > MAX_BARS
        else ""
    )
    table = render.table(
        [
            {
                "site": SITES[r["site"]],
                "method": r["method"],
                "concept": r["concept"],
                "direction": r["direction"],
                "strength": f"{float(r['strength']):+g}",
                "unit": r.get("unit") or "—",
                "features": ",".join(map(str, r["features"])) or "—",
                "studies": int(r["n"]),
                "success": f"{float(r['success']):.2f}",
                "side effects": f"{float(r['side_effects'] or 0.0):.2f}",
            }
            for r in rows
        ]
    )
    chart = charts.hbars(items, 0.0, 1.0, title=title, narrow=True)
    note = ""
    if site == "image":
        note = (
            '<p class="wb-note">Steered at the image-token embeddings with the SAE of '
            "<code>image-tokens/</code>: its feature numbers are not the sliders' features.</p>"
        )
    drawer = render.details("every arm (numbers)", table)
    return render.card(f"Stored sweep (steer), site: {SITES[site]}", chart + more + note + drawer)


def sweep_chart(rows: Sequence[Mapping[str, Any]], feature: int | None) -> str:
    """The stored sweep (:func:`sweep_rows`) as one chart and table per site; ``feature`` (of
    the run's SAE) narrows the recorded block's rows to the SAE arms that steered it."""
    if not rows:
        return (
            '<p class="wb-empty">No stored steering sweep (run `python -m workbench steer`; '
            "its default site writes to &lt;run&gt;/image-tokens).</p>"
        )
    shown = _shown(rows, feature)
    parts = [
        _site_card(site, [r for r in shown if r["site"] == site], feature)
        for site in SITES
        if any(r["site"] == site for r in shown)
    ]
    if feature is not None and not any(r["site"] == "layer" for r in shown):
        parts.insert(
            0,
            f'<p class="wb-empty">No stored sweep at the {SITES["layer"]} for feature '
            f"{int(feature)}.</p>",
        )
    return "".join(parts) or '<p class="wb-empty">No stored sweep with an eligible study.</p>'


def recorded_hook(ctx: AppContext) -> str | None:
    """The hook the run's SAE reads (the latest analyse row), where the recorded-block site
    steers."""
    if ctx.con is None or not ctx.has("runs"):
        return None
    rows = ctx.rows(
        "SELECT hook_name FROM runs WHERE stage = 'analyse' AND hook_name IS NOT NULL "
        "ORDER BY finished_at DESC LIMIT 1"
    )
    return rows[0]["hook_name"] if rows else None
