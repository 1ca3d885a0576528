"""Export handlers: a feature, or the features a table shows, as download links.

Built on demand (a button), not with every page, because an export reads all of a feature's
rows and, for the Neuronpedia format, counts its activations per quantile interval.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from workbench.run import RunLayout
from workbench.ui import export, queries, render
from workbench.ui import queries_feature as qf
from workbench.ui.context import AppContext, read_json
from workbench.ui.handlers import feature_table, guarded, missing_feature

MAX_FEATURES = 200
"""Most features in one export (the features table shows at most this many rows)."""


def _empty(msg: str) -> str:
    return msg


def run_meta(ctx: AppContext) -> dict[str, Any]:
    """What an export says about its run: name, model, hook, layer, sizes, time."""
    manifest = read_json(RunLayout(ctx.run_dir).activations / "manifest.json") or {}
    hook = manifest.get("hook_name") or ""
    layer = re.search(r"blocks\.(\d+)\.", hook)
    n = ctx.rows("SELECT count(*) AS n FROM studies")[0]["n"] if ctx.has("studies") else 0
    n_tok = manifest.get("n_tokens")
    cfg = qf.analyse_config(ctx)
    return {
        "run": ctx.run_dir.name,
        "model": manifest.get("model"),
        "hook_name": hook or None,
        "layer": int(layer.group(1)) if layer else None,
        "n_studies": n,
        "tokens_per_study": round(n_tok / n) if n and isinstance(n_tok, int) else None,
        "n_quantiles": cfg.get("n_quantiles"),
        "exported_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def export_files(ctx: AppContext, features: list[int], stem: str) -> list[tuple[str, str, str]]:
    """(file name, MIME type, text) of the three formats for ``features``."""
    data = qf.export_rows(ctx, features)
    meta = run_meta(ctx)
    recs = export.records(data, features, qf.tests_run(ctx))
    return [
        (f"{stem}.json", "application/json", export.to_json(recs, meta)),
        (f"{stem}.csv", "text/csv", export.to_csv(recs)),
        (
            f"{stem}.neuronpedia.json",
            "application/json",
            export.to_neuronpedia(recs, data["quantile_counts"], meta),
        ),
    ]


@guarded(_empty)
def export_feature(ctx: AppContext, feature) -> str:
    """Download links for one feature (the Feature tab's export button)."""
    if ctx.con is None:
        return render.messages(ctx.status.problems)
    f = render.as_int(feature)
    if f is None:
        return render.message("Open a feature first.", "info")
    if queries.feature_header(ctx, f) is None:
        return render.message(missing_feature(ctx, f), "error")
    files = export_files(ctx, [f], f"{ctx.run_dir.name}-feature-{f}")
    return export.download_links(files, "Formats: see docs/app.md (Export).")


@guarded(_empty)
def export_table(ctx: AppContext, *filters) -> str:
    """Download links for the features the table shows under ``filters`` (its inputs)."""
    if ctx.con is None:
        return render.messages(ctx.status.problems)
    view = feature_table(ctx, *filters, limit=MAX_FEATURES)
    features = [int(r[0]) for r in view.rows]
    if not features:
        return render.message("No features match these filters: nothing to export.", "info")
    files = export_files(ctx, features, f"{ctx.run_dir.name}-{len(features)}-features")
    note = f"{len(features)} features, in the order of the table"
    if len(features) == MAX_FEATURES:
        note += f" (the first {MAX_FEATURES}: narrow the filters for others)"
    return export.download_links(files, note + ". Formats: see docs/app.md (Export).")
