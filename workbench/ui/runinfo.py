"""The Runs and SQL tabs' handlers: what the run was made from, and the read-only query box.

Run facts come from the artefacts themselves: the activation store's manifest, the SAE's
``cfg.json``, the ``runs`` and ``sae_quality`` tables of the database (FVU, L0, dead and dense
fractions and CE loss recovered on held-out studies, per Matryoshka prefix), and the SAE
trainer's JSON-lines log(s) in ``runs/<name>/sae/`` whose numeric columns (FVU, L0, dead
fraction, loss) become curves, so a run whose SAE is still training already shows how it is
going.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any, NamedTuple

import duckdb

from workbench.run import RunLayout
from workbench.ui import charts, render
from workbench.ui.context import AppContext, read_json
from workbench.ui.safety import UnsafeQueryError, check_sql, run_limited

# Curves worth plotting, matched as substrings of the log's keys, in display order.
CURVE_KEYS = ("fvu", "l0", "dead", "loss", "lr")
# The SAE trainer's log name (workbench.sae.trainer.LOG_FILE; importing the trainer here would
# cost the app seconds of start-up, a unit test keeps the two equal).
TRAIN_LOG = "train_log.jsonl"
_STEP_KEYS = ("step", "steps", "n_steps", "iteration")


class RunsView(NamedTuple):
    """Facts about the run (HTML) and its training curves (HTML)."""

    facts: str
    curves: str


class SQLResult(NamedTuple):
    """Column names, rows, and a message (refusal, error, or row count)."""

    columns: list[str]
    rows: list[list[Any]]
    message: str


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log, skipping lines that are not JSON objects."""
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def curves(records: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Numeric series worth plotting: key -> [(step, value)], step from the record or its index."""
    series: dict[str, list[tuple[float, float]]] = {}
    for i, rec in enumerate(records):
        step = next((rec[k] for k in _STEP_KEYS if isinstance(rec.get(k), int | float)), i)
        for key, value in rec.items():
            if key in _STEP_KEYS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if any(c in key.lower() for c in CURVE_KEYS):
                series.setdefault(key, []).append((float(step), float(value)))
    order = {k: next(i for i, c in enumerate(CURVE_KEYS) if c in k.lower()) for k in series}
    return dict(sorted(series.items(), key=lambda kv: (order[kv[0]], kv[0])))


def _tiles(pairs: list[tuple[str, Any]]) -> str:
    """Key numbers as big tiles (missing values left out)."""
    tiles = "".join(
        f'<div class="wb-tile"><i>{escape(k)}</i><b>{escape(_show(v))}</b></div>'
        for k, v in pairs
        if v is not None
    )
    return f'<div class="wb-tiles">{tiles}</div>'


def _show(v: Any) -> str:
    if isinstance(v, float):
        return charts.fmt(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list | tuple):
        return " + ".join(_show(x) for x in v)
    return str(v)


def _store_facts(run_dir: Path) -> list[tuple[str, Any]]:
    m = read_json(RunLayout(run_dir).activations / "manifest.json") or {}
    studies = m.get("studies_complete")  # format 1; format 2 counts them at close
    n_studies = len(studies) if isinstance(studies, list) else m.get("n_studies")
    n_skipped = len(m["skipped"]) if m.get("skipped") else m.get("n_skipped")
    return [
        ("model", m.get("model")),
        ("hook", m.get("hook_name")),
        ("d_model", m.get("d_model")),
        ("tokens recorded", m.get("n_tokens")),
        ("studies recorded", n_studies),
        ("skipped studies", n_skipped or None),
    ]


def _foreign_sae_facts(sae: Path) -> dict[str, Any]:
    """Width, k and Matryoshka widths of a SAELens ``cfg.json`` or a dictionary_learning
    ``config.json`` (SAEs trained elsewhere carry no ``workbench_sae.json``)."""
    lens = read_json(RunLayout.cfg(sae)) or {}
    details = (lens.get("metadata") or {}).get("training_architecture_details") or {}
    trainer = (read_json(sae / "config.json") or {}).get("trainer") or {}
    widths = details.get("matryoshka_widths")
    groups = [b - a for a, b in zip([0, *widths[:-1]], widths)] if widths else None
    return {
        "d_in": lens.get("d_in", trainer.get("activation_dim")),
        "d_sae": lens.get("d_sae", trainer.get("dict_size")),
        "k": details.get("k", trainer.get("k")),
        "group_sizes": groups or trainer.get("group_sizes"),
        "trained_with": (lens.get("metadata") or {}).get("trained_with")
        or ("SAELens" if lens else "dictionary_learning" if trainer else None),
    }


def _sae_facts(sae: Path) -> list[tuple[str, Any]]:
    ours = read_json(sae / "workbench_sae.json") or {}
    theirs = _foreign_sae_facts(sae)
    final = ours.get("final_metrics") or {}
    d_in, d_sae = ours.get("d_in", theirs["d_in"]), ours.get("d_sae", theirs["d_sae"])
    return [
        ("SAE width", f"{d_in} → {d_sae}" if d_in and d_sae else None),
        ("SAE trained with", "workbench" if ours else theirs["trained_with"]),
        ("k", ours.get("k", theirs["k"])),
        ("Matryoshka groups", ours.get("group_sizes", theirs["group_sizes"])),
        ("trained on tokens", ours.get("tokens")),
        ("steps", ours.get("steps")),
        ("final FVU", final.get("fvu")),
        ("final L0", final.get("l0")),
        ("dead in the last training window", final.get("dead_fraction")),
    ]


def dead_features(ctx: AppContext) -> tuple[int, int] | None:
    """(dead, total) features over every stored token, the Features tab's count."""
    if ctx.con is None or not ctx.has("feature_stats"):
        return None
    row = ctx.rows(
        "SELECT count(*) FILTER (WHERE coalesce(frequency, 0) = 0) AS dead, count(*) AS n "
        "FROM feature_stats"
    )[0]
    return int(row["dead"]), int(row["n"])


def _dead_facts(ctx: AppContext) -> list[tuple[str, Any]]:
    """The dead fraction as the Features tab counts it (never fires on any stored token)."""
    got = dead_features(ctx)
    if got is None or not got[1]:
        return []
    dead, n = got
    return [("dead features (analysis)", f"{dead:,} of {n:,} ({100 * dead / n:.3g}%)")]


def _db_runs(ctx: AppContext) -> str:
    """The stages that wrote the database, each stage's notes folded as a small table."""
    if not ctx.has("runs"):
        return ""
    rows = ctx.rows(
        "SELECT stage, started_at, finished_at, sae_path, hook_name, n_tokens, n_studies, d_sae,"
        " notes "
        "FROM runs ORDER BY started_at"
    )
    cols = ["stage", "started_at", "finished_at", "sae_path", "hook_name", "n_tokens",
            "n_studies", "d_sae"]  # fmt: skip
    head = "".join(f"<th>{escape(c)}</th>" for c in [*cols, "notes"])
    body = "".join(
        "<tr>"
        + "".join(f"<td>{escape(_show(r[c]) if r[c] is not None else '')}</td>" for c in cols)
        + f"<td>{notes_html(r['notes'])}</td></tr>"
        for r in rows
    )
    return (
        '<table class="wb-table"><caption>stages that wrote features.duckdb</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def notes_html(notes: str | None) -> str:
    """A stage's notes (a JSON list of strings) as a folded table; plain text if not JSON."""
    if not notes:
        return ""
    try:
        items = json.loads(notes)
    except ValueError:
        items = [notes]
    if not isinstance(items, list):
        items = [items]
    if not items:
        return ""
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{escape(str(x))}</td></tr>" for i, x in enumerate(items)
    )
    word = "note" if len(items) == 1 else "notes"
    return (
        f'<details class="wb-numbers"><summary>{len(items)} {word}</summary>'
        f'<table class="wb-table"><tbody>{rows}</tbody></table></details>'
    )


QUALITY_COLUMNS = (
    "n_groups", "n_latents", "fvu", "l0", "dead_frac", "dense_frac",
    "ce_clean", "ce_spliced", "ce_zero_ablated", "ce_recovered",
)  # fmt: skip


def quality_caption(row: dict[str, Any]) -> str:
    """Where analyse measured the SAE quality: held-out or stored studies, model or store."""
    where = "held-out studies" if row["held_out"] else "stored studies (the SAE trained on them)"
    how = "through the recorded model" if row["source"] == "model" else "from the store, no CE"
    return f"SAE quality per Matryoshka prefix on {row['n_studies']} {where}, {how}"


def quality_view(ctx: AppContext) -> str:
    """Tiles for the whole SAE and a table per Matryoshka prefix (analyse's ``sae_quality``)."""
    if not ctx.has("sae_quality"):
        return ""
    rows = ctx.rows("SELECT * FROM sae_quality ORDER BY n_groups")
    if not rows:
        return ""
    full = rows[-1]
    tag = "held-out" if full["held_out"] else "stored"
    tiles = _tiles(
        [
            (f"FVU ({tag})", full["fvu"]),
            (f"L0 ({tag})", full["l0"]),
            ("dead latents", full["dead_frac"]),
            ("dense latents", full["dense_frac"]),
            ("CE loss recovered", full["ce_recovered"]),
        ]
    )
    return tiles + render.table(rows, QUALITY_COLUMNS, caption=quality_caption(full))


def log_files(run_dir: Path) -> list[Path]:
    """The SAE training logs under ``sae/``: the trainer's own log last, else newest last."""
    sae = RunLayout(run_dir).sae
    if not sae.is_dir():
        return []
    logs = sae.rglob("*.jsonl")
    return sorted(logs, key=lambda p: (p.name == TRAIN_LOG, p.stat().st_mtime))


def runs_view(ctx: AppContext) -> RunsView:
    """The Runs tab: model, layer, SAE, token counts, and the training curves."""
    facts = [("run", ctx.run_dir.name), ("SAE", ctx.status.sae_state)]
    sae_dir = ctx.sae_dir or RunLayout(ctx.run_dir).sae
    facts += _store_facts(ctx.run_dir) + _dead_facts(ctx) + _sae_facts(sae_dir)
    try:
        db_html = quality_view(ctx) + _db_runs(ctx) if ctx.con is not None else ""
    except duckdb.Error as exc:
        db_html = render.message(f"Cannot read the runs table: {exc}", "error")
    where = render.message(f"run directory: {ctx.run_dir}", "info")
    head = render.messages(ctx.status.problems) + _tiles(facts) + where + db_html
    logs = log_files(ctx.run_dir)
    if not logs:
        return RunsView(head, render.message("No SAE training log found under sae/.", "info"))
    series = curves(read_log(logs[-1]))
    plots = "".join(
        f'<div class="wb-curve">{charts.line(pts, key, log_y=key.lower().startswith("loss"))}</div>'
        for key, pts in series.items()
    )
    title = f"Training curves from {logs[-1].relative_to(ctx.run_dir)}"
    return RunsView(head, render.card(title, f'<div class="wb-curves">{plots}</div>'))


def run_sql(ctx: AppContext, sql: str) -> SQLResult:
    """The SQL tab: one read-only statement, at most ``ctx.sql_row_limit`` rows back."""
    try:
        text = check_sql(sql)
    except UnsafeQueryError as exc:
        return SQLResult([], [], render.message(str(exc), "error"))
    reopened = ctx.refresh()  # the database may have been replaced since the last query
    if ctx.sql_con is None:
        return SQLResult([], [], render.messages(ctx.status.problems or ["No database."]))
    try:
        res = _sql(ctx, text)
    except duckdb.Error as exc:
        if not ctx.refresh():
            return SQLResult([], [], render.message(f"Query failed: {exc}", "error"))
        reopened = True
        try:
            res = _sql(ctx, text)
        except duckdb.Error as exc2:
            return SQLResult([], [], render.message(f"Query failed: {exc2}", "error"))
    rows = [[_plain(v) for v in r] for r in res.rows]
    note = f"{len(rows):,} row{'s' if len(rows) != 1 else ''}"
    if res.truncated:
        note = f"more than {ctx.sql_row_limit:,} rows: the first {ctx.sql_row_limit:,} are shown"
    message = render.message(note, "info")
    if reopened:
        message = render.message(ctx.status.problems[0], "info") + message
    return SQLResult(res.columns, rows, message)


def _sql(ctx: AppContext, text: str):
    """One checked statement on the SQL tab's connection, under its lock."""
    with ctx.sql_lock:
        return run_limited(ctx.sql_con, text, ctx.sql_row_limit, ctx.sql_timeout_s)


def _plain(v: Any) -> Any:
    """A cell value the table can show (lists and timestamps as text)."""
    if v is None or isinstance(v, int | float | str | bool):
        return v
    return str(v)


# Result columns whose integer values are feature / study ids (rendered as links).
FEATURE_ID_COLUMNS = ("feature", "neighbor", "best_feature")
STUDY_ID_COLUMNS = ("study_id",)


def sql_html(res: SQLResult) -> str:
    """The result as a table that scrolls sideways (wide cells scroll on their own), with
    feature and study ids as links that open their pages."""
    if not res.columns:
        return ""
    kinds = [_id_kind(c) for c in res.columns]
    head = "".join(f"<th>{escape(c)}</th>" for c in res.columns)
    body = "".join(
        "<tr>" + "".join(_sql_cell(v, k) for v, k in zip(row, kinds)) + "</tr>" for row in res.rows
    )
    return (
        f'<div class="wb-sqlwrap"><table class="wb-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _id_kind(column: str) -> str | None:
    name = column.lower()
    if name in FEATURE_ID_COLUMNS or name.endswith("_feature"):
        return "feature"
    return "study" if name in STUDY_ID_COLUMNS else None


def _sql_cell(v: Any, kind: str | None) -> str:
    if kind == "feature" and isinstance(v, int) and not isinstance(v, bool):
        inner = render.feature_link(v, f"#{v}")
    elif kind == "study" and isinstance(v, int) and not isinstance(v, bool):
        inner = render.study_link(v).replace(f">study {v}<", f">{v}<")
    elif isinstance(v, float):
        inner = escape(charts.fmt(v, 4))
    else:
        inner = escape("" if v is None else str(v))
    return f'<td><div class="wb-cell">{inner}</div></td>'
