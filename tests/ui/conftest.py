"""Fixtures for the browser tests: a tiny analysed run, the app serving it on 127.0.0.1,
Chromium, and the screenshots (tests/ui/screenshots/, and with ``WB_DOC_SHOTS=1`` the small
per-tab PNGs that docs/app.md shows, docs/images/app-<tab>.png)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).parent / "screenshots"
DOC_SHOTS = ROOT / "docs" / "images"
DOC_WIDTH = 960  # px: the docs' PNGs are scaled to this width and a 128-colour palette


def shot(page, name: str, doc: bool = False) -> None:
    """A full-page screenshot in tests/ui/screenshots/<name>.png for a person to look at; with
    ``doc`` and ``WB_DOC_SHOTS=1`` also the viewport as a small docs/images/app-<name>.png."""
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SHOTS / f"{name}.png", full_page=True)
    if doc and os.environ.get("WB_DOC_SHOTS") == "1":
        from PIL import Image

        page.wait_for_timeout(1500)  # let pending spinners settle: a picture, not a check
        img = Image.open(io.BytesIO(page.screenshot(full_page=False)))
        img = img.resize((DOC_WIDTH, round(img.height * DOC_WIDTH / img.width)), Image.LANCZOS)
        img.convert("P", palette=Image.ADAPTIVE, colors=128).save(
            DOC_SHOTS / f"app-{name}.png", optimize=True
        )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run built by the real pipeline (dataset, store, planted SAE, analyse) in seconds, with
    labels of several methods, a feature whose image peak its examples do not show, and a
    random tiny model of its width for the live tabs."""
    from tests.fixtures.ui_run import build

    return build(tmp_path_factory.mktemp("ui") / "run", model=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"app did not answer on {url} within {timeout} s")


@contextmanager
def serve_app(*app_args: str) -> Iterator[str]:
    """``python app.py <app_args> --port P`` in a subprocess for the block; yields its URL."""
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "app.py"), *app_args, "--port", str(port)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait(url, proc, timeout=90)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def app_url(tiny_run: Path):
    """``python app.py --run <tiny run>`` in a subprocess; yields its URL."""
    with serve_app("--run", str(tiny_run)) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright (never a downloaded browser)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield b
        b.close()
