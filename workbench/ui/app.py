"""Assemble the tabs into one Gradio app and launch it on 127.0.0.1.

``python app.py --run runs/<name>`` lands here (:func:`main`). The app never shares a
tunnel, keeps analytics off (set by :mod:`workbench.ui` before Gradio is imported), and
serves no file from disk: images reach the page inline, so ``allowed_paths`` is empty and
the browser cannot name a path at all.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import gradio as gr

from workbench.config import parse_config
from workbench.ui import links, render
from workbench.ui.context import AppContext, DbLimits, open_context
from workbench.ui.live import LiveModel
from workbench.ui.render import as_int
from workbench.ui.style import CLICK_JS, CSS, HEAD, URL_JS
from workbench.ui.tabs import (
    feature_page,
    features,
    runs,
    segmentation,
    sql,
    steering,
    study,
    try_study,
)

log = logging.getLogger("workbench.ui")


@dataclass
class AppConfig:
    """Serve the workbench for one run directory on this machine."""

    run: Path = Path("runs/demo")
    """Run directory (holds features.duckdb, sae/, activations/, phantom/)."""
    host: str = "127.0.0.1"
    """Interface to bind; keep the loopback address unless you know who can reach the port."""
    port: int = 7860
    """TCP port to serve on."""
    image_roots: tuple[Path, ...] = field(default_factory=tuple)
    """Extra directories images may be read from (e.g. a MIMIC-CXR-JPG copy outside the run)."""
    sql_row_limit: int = 1000
    """Most rows the SQL tab returns."""
    sql_timeout_s: float = 20.0
    """A query running longer than this is interrupted."""
    open_feature: int | None = None
    """Feature page to show first (default: the Features tab)."""
    db_memory_limit: str = "1GB"
    """DuckDB memory_limit of each of the app's two connections: a query needing more fails
    with an out-of-memory message instead of growing the app ('' : DuckDB's default, 80% of
    RAM)."""
    db_threads: int = 2
    """DuckDB threads of each of the app's connections (0: DuckDB's default, all cores)."""
    refresh_s: float = 10.0
    """How often an open page checks whether features.duckdb was replaced (a rerun of analyse,
    label or steer) and says so in its banner; 0: only when a query runs."""
    device: str = "cpu"
    """torch device of the live model (Steering and Try-a-study tabs), loaded on first use."""


def _clickables() -> tuple[list[gr.HTML], type[gr.HTML]]:
    """A factory of HTML panels whose chips navigate, and the list of panels it made."""
    made: list[gr.HTML] = []

    def make(**kwargs) -> gr.HTML:
        comp = gr.HTML(js_on_load=CLICK_JS, **kwargs)
        made.append(comp)
        return comp

    return made, make  # type: ignore[return-value]


def _navigate(ctx: AppContext, page, tab, evt: gr.EventData) -> list:
    """Open the feature or study a chip names (a study chip keeps its feature); leave the
    other tab untouched; the last value is the view's address."""
    data = evt._data or {}
    skip_f = [gr.skip()] * len(page.outputs)
    skip_s = [gr.skip()] * len(tab.outputs)
    if data.get("study") is not None:
        sid, f = data["study"], data.get("feature")
        return [gr.Tabs(selected="study"), *skip_f, *study.show(ctx, sid, f), study.url_of(sid, f)]
    if data.get("feature") is not None:
        f = data["feature"]
        shown = feature_page.show(ctx, f)
        return [gr.Tabs(selected="feature"), *shown, *skip_s, links.query("feature", as_int(f))]
    return [gr.skip(), *skip_f, *skip_s, gr.skip()]


def _open_row(ctx: AppContext, page, evt: gr.SelectData) -> list:
    """A click on a row of the features table opens that feature."""
    row = evt.row_value or []
    if not row:
        return [gr.skip()] * (len(page.outputs) + 2)
    url = links.query("feature", as_int(row[0]))
    return [gr.Tabs(selected="feature"), *feature_page.show(ctx, row[0]), url]


def _open_url(ctx: AppContext, route: links.Route, page, tab, table) -> list:
    """The views a page load opens from its address (see :mod:`workbench.ui.links`)."""
    skip_f = [gr.skip()] * len(page.outputs)
    skip_s = [gr.skip()] * len(tab.outputs)
    shown_f = feature_page.show(ctx, route.feature) if route.feature is not None else skip_f
    shown_s = study.show(ctx, route.study, route.feature) if route.study is not None else skip_s
    problem = render.message(route.problem, "error") if route.problem else ""
    search = route.search if route.search else gr.skip()
    # the Features tab is where a page opens anyway: leave alone a tab the user already chose
    tabs = gr.skip() if route.tab == "features" else gr.Tabs(selected=route.tab)
    return [tabs, *shown_f, *shown_s, search, problem]


def _banner(ctx: AppContext) -> str:
    name = escape(ctx.run_dir.name)
    head = f'<div class="wb-fid">radiology interpretability workbench · run <b>{name}</b></div>'
    return head + render.messages(ctx.status.problems)


def _live_banner(ctx: AppContext) -> str:
    """The banner after checking whether the database was replaced (reopened if so)."""
    ctx.refresh()
    return _banner(ctx)


def build_app(
    ctx: AppContext,
    open_feature: int | None = None,
    refresh_s: float = 0.0,
    live: LiveModel | None = None,
) -> gr.Blocks:
    """The whole app for one context: Features, Feature, Study, Steering, Try a study,
    Segmentation, Runs and SQL tabs, every view reachable by its address.

    ``refresh_s`` > 0 re-checks the run that often and updates the banner (a rerun of
    analyse is then announced without waiting for a click). ``live`` is the model the live
    tabs share (loaded on first use, never here).
    """
    live = live or LiveModel(ctx.run_dir)
    made, html = _clickables()
    with gr.Blocks(title=f"workbench · {ctx.run_dir.name}") as app:
        banner = gr.HTML(_banner(ctx), elem_id="wb-banner")
        if refresh_s > 0:
            timer = gr.Timer(refresh_s)
            timer.tick(lambda: _live_banner(ctx), None, banner, show_progress="hidden")
        note = gr.HTML(elem_id="wb-linknote")
        url = gr.Textbox(visible="hidden", elem_id="wb-url")
        with gr.Tabs(selected="features") as tabs:
            with gr.Tab("Features", id="features") as t_features:
                table = features.build(ctx, html)
            with gr.Tab("Feature", id="feature") as t_feature:
                page = feature_page.build(ctx, html, url)
            with gr.Tab("Study", id="study") as t_study:
                tab = study.build(ctx, html, url)
            with gr.Tab("Steering", id="steering") as t_steer:
                steering.build(ctx, live, html)
            with gr.Tab("Try a study", id="try") as t_try:
                try_study.build(ctx, live, html)
            with gr.Tab("Segmentation", id="segmentation") as t_seg:
                segmentation.build(ctx, html)
            with gr.Tab("Runs", id="runs") as t_runs:
                runs.build(ctx)
            with gr.Tab("SQL", id="sql") as t_sql:
                sql.build(ctx, html)
        every = (t_features, t_feature, t_study, t_steer, t_try, t_seg, t_runs, t_sql)
        tab_ids = tuple(t.id for t in every)
        _wire(ctx, app, made, (tabs, page, tab, table, url, note), (open_feature, tab_ids))
    return app


def _wire(ctx, app, made, parts, opening) -> None:
    """Chips, table rows and the page's address open views; the address follows (a click on
    a tab header updates it in the browser alone: :data:`workbench.ui.style.HEAD`)."""
    tabs, page, tab, table, url, note = parts
    open_feature, tab_ids = opening
    nav_out = [tabs, *page.outputs, *tab.outputs, url]

    def navigate(evt: gr.EventData) -> list:
        return _navigate(ctx, page, tab, evt)

    def open_row(evt: gr.SelectData) -> list:
        return _open_row(ctx, page, evt)

    def open_url(request: gr.Request) -> list:
        params = dict(request.query_params) if request is not None else {}
        return _open_url(ctx, links.route(params, open_feature, tab_ids), page, tab, table)

    for comp in made:
        comp.click(navigate, None, nav_out).then(None, [url], None, js=URL_JS)
    table.table.select(open_row, None, [tabs, *page.outputs, url]).then(
        None, [url], None, js=URL_JS
    )
    load_out = [tabs, *page.outputs, *tab.outputs, table.search, note]
    app.load(open_url, None, load_out, show_progress="hidden")


def _check_host(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        log.warning("binding %s: anyone who can reach this port sees the run's data", host)


def serve(cfg: AppConfig, block: bool = True) -> tuple[gr.Blocks, AppContext]:
    """Open the run, build the app and launch it (never shared, no file routes)."""
    _check_host(cfg.host)
    limits = DbLimits(cfg.db_memory_limit or None, cfg.db_threads or None)
    ctx = open_context(cfg.run, tuple(cfg.image_roots), limits)
    ctx.sql_row_limit, ctx.sql_timeout_s = cfg.sql_row_limit, cfg.sql_timeout_s
    app = build_app(ctx, cfg.open_feature, cfg.refresh_s, LiveModel(ctx.run_dir, cfg.device))
    app.launch(
        server_name=cfg.host,
        server_port=cfg.port,
        share=False,
        allowed_paths=[],
        max_file_size="20mb",
        css=CSS,
        head=HEAD,
        footer_links=[],
        prevent_thread_lock=not block,
        quiet=not block,
        mcp_server=False,
        pwa=False,
        ssr_mode=False,
    )
    return app, ctx


def main(argv: list[str] | None = None) -> int:
    """``python app.py --run runs/<name> [--port N]``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(AppConfig, argv, prog="python app.py")
    print(
        f"workbench: serving {Path(cfg.run).resolve()} on http://{cfg.host}:{cfg.port}", flush=True
    )
    serve(cfg)
    return 0
