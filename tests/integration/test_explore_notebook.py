"""docs/explore.ipynb runs top to bottom on the tiny planted run (nbclient + ipykernel).

The notebook is what a researcher starts from; executing it here on a fresh run keeps every
cell working as the schema changes. The kernel imports this checkout's ``workbench``
(``PYTHONPATH``) and reads the run named by ``WORKBENCH_RUN``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.testing.tiny_run import build

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "docs" / "explore.ipynb"

pytestmark = pytest.mark.slow


def _text(cell) -> str:
    """Everything a cell printed or displayed, as text (HTML tables included)."""
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        data = out.get("data", {})
        parts.append(data.get("text/plain", "") + data.get("text/html", ""))
    return "".join(parts)


def test_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 7
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)


def test_notebook_runs_on_the_tiny_run(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    run = build(tmp_path / "run", n_studies=16, size=64)
    monkeypatch.setenv("WORKBENCH_RUN", str(run))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(  # the kernel listens on 127.0.0.1 only (the default)
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the cell on any error
    outputs = [_text(c) for c in nb.cells if c.cell_type == "code"]
    text = "\n".join(outputs)
    assert "sae_quality" in outputs[0] and "feature_acts" not in outputs[0]  # tables, not views
    assert "pneumothorax" in text and "endotracheal_tube" in text  # the recovery table
    probes = next(o for o in outputs if "k5_ratio" in o)  # probe ceiling vs k-sparse probes
    assert "best_feature" in probes and "phantom" in probes  # rows, not only the header
    assert "[[" in text  # examples in context
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the heatmap and the histograms
    assert "has no image example" not in text
