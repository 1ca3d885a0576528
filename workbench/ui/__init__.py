"""The Gradio app: one builder per tab, handlers as pure functions over plain data.

Importing this package turns Gradio's analytics off before anything can import Gradio
(medical data: nothing leaves the machine). :func:`launch_line` has no Gradio import so the
pipeline can print the command that opens a run without paying for it.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


def launch_line(run_dir: str | Path) -> str:
    """The shell command that opens ``run_dir`` in the app (path relative to cwd if inside)."""
    path = Path(run_dir).resolve()
    try:
        shown = path.relative_to(Path.cwd().resolve())
    except ValueError:
        shown = path
    return f"python app.py --run {shlex.quote(str(shown))}"
