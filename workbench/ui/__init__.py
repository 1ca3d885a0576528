"""The Gradio app: one builder per tab, handlers as pure functions over plain data.

Importing this package turns Gradio's analytics off before anything can import Gradio
(medical data: nothing leaves the machine). :func:`launch_line` has no Gradio import so the
pipeline can print the command that opens a run without paying for it.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


def _private_upload_dir() -> None:
    """Gradio keeps uploads in GRADIO_TEMP_DIR (read when Gradio is imported): make it a
    directory only this user can read, so an uploaded radiograph is never world-readable."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        return
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = Path(tempfile.gettempdir()) / f"workbench-gradio-{uid}"
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.stat()
    if st.st_uid != uid or st.st_mode & 0o077:
        path = Path(tempfile.mkdtemp(prefix="workbench-gradio-"))
    os.environ["GRADIO_TEMP_DIR"] = str(path)


_private_upload_dir()


def launch_line(run_dir: str | Path) -> str:
    """The shell command that opens ``run_dir`` in the app (path relative to cwd if inside)."""
    path = Path(run_dir).resolve()
    try:
        shown = path.relative_to(Path.cwd().resolve())
    except ValueError:
        shown = path
    return f"python app.py --run {shlex.quote(str(shown))}"
