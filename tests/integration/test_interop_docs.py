"""docs/interop.md runs: its ``python`` cells are executed in order, in an empty directory.

The page is the notebook-style walkthrough of the three round trips (TransformerLens,
SAELens both ways, MAIRA-2); executing it here keeps every snippet and every claim in it true.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "interop.md"
CELL = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

pytestmark = pytest.mark.usefixtures("single_threaded")


def cells(text: str) -> list[tuple[int, str]]:
    """(first line number, source) of every ``python`` cell."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in CELL.finditer(text)]


def test_cells_are_found():
    found = cells("x\n```python\na = 1\n```\ntext\n```bash\nls\n```\n```python\nb = 2\n```\n")
    assert found == [(3, "a = 1\n"), (10, "b = 2\n")]


def test_walkthrough_runs(tmp_path, monkeypatch):
    text = DOC.read_text()
    found = cells(text)
    assert len(found) >= 8, "docs/interop.md lost its cells"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "interop_walkthrough"}
    for line, source in found:
        # padded so a traceback names the line of docs/interop.md
        code = compile("\n" * (line - 1) + source, str(DOC), "exec")
        exec(code, namespace)  # noqa: S102 (the cells are this repository's own docs)
    assert namespace["losses"].n_tokens > 0
