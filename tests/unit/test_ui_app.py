"""The app is assembled and launched with the safe settings (no browser, launch patched)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.testing.tiny_run import build

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("ui") / "run")


def test_analytics_off_before_gradio():
    """Importing any part of the app turns analytics off, even when the shell enabled it."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "True"}
    code = "import os, workbench.ui.safety; print(os.environ['GRADIO_ANALYTICS_ENABLED'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_uploads_go_to_a_private_directory():
    """Gradio's upload folder is set before Gradio is imported, readable by this user only."""
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    code = "import os, workbench.ui; print(os.environ['GRADIO_TEMP_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    path = Path(out.stdout.strip())
    assert path.is_dir() and path.stat().st_mode & 0o077 == 0, out.stderr


@pytest.mark.slow  # imports Gradio and builds every tab
def test_serve_binds_loopback_never_shares(run, monkeypatch):
    import gradio as gr

    from workbench.ui import links
    from workbench.ui.app import AppConfig, serve

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    app, ctx = serve(AppConfig(run=run, port=7999), block=False)
    try:
        assert seen["server_name"] == "127.0.0.1" and seen["server_port"] == 7999
        assert seen["share"] is False and seen["allowed_paths"] == []
        assert isinstance(app, gr.Blocks) and ctx.status.problems == ()
        assert seen["max_file_size"] == "20mb"
        tabs = [b for b in app.blocks.values() if isinstance(b, gr.Tab)]
        assert [t.label for t in tabs] == [
            "Features", "Feature", "Study", "Steering", "Try a study", "Segmentation", "Runs", "SQL"
        ]  # fmt: skip
        assert tuple(t.id for t in tabs) == links.TABS  # every tab has its ?tab= address
    finally:
        ctx.close()


def test_missing_run_still_builds_with_message(tmp_path, monkeypatch):
    import gradio as gr

    from workbench.ui.app import AppConfig, serve

    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: None)
    app, ctx = serve(AppConfig(run=tmp_path / "missing"), block=False)
    banner = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "wb-banner")
    assert "No run at" in banner.value


def test_docs_show_every_tab_and_every_link_form():
    """docs/app.md shows a small screenshot of each tab (written by the browser tests with
    WB_DOC_SHOTS=1) and lists each tab's address."""
    from workbench.ui import links

    docs = ROOT / "docs"
    text = (docs / "app.md").read_text()
    for tab in links.TABS:
        image = docs / "images" / f"app-{tab}.png"
        assert f"](images/app-{tab}.png)" in text and image.is_file(), tab
        assert image.stat().st_size < 150_000, f"{image}: keep the docs' screenshots small"
        assert f"`{tab}`" in text or f"`/?tab={tab}`" in text, tab
    for form in ("`/?feature=N`", "`/?study=S&feature=N`", "`/?tab=features&q=effusion`"):
        assert form in text


def test_cli_parses_flags():
    from workbench.config import parse_config
    from workbench.ui.app import AppConfig

    cfg = parse_config(AppConfig, ["--run", "runs/x", "--port", "8000", "--open-feature", "3"])
    assert cfg.run == Path("runs/x") and cfg.port == 8000 and cfg.open_feature == 3
    assert cfg.host == "127.0.0.1"
