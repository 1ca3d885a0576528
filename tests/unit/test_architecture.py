"""The architecture rules of docs/architecture.md, checked on the source (nothing is imported).

The import graph is read from every ``import`` statement of ``workbench`` and ``segmentation``,
including imports inside functions (a lazy import still ties two modules together), so a
circle or a forbidden dependency shows up here before it shows up as an ImportError at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("workbench", "segmentation")

# Modules that make artefacts (training, recording, analysing, labelling): the app reads their
# outputs through the database, the run layout and the images, never by importing them.
WRITERS = (
    "workbench.demo",
    "workbench.record",
    "workbench.train_sae",
    "workbench.sae.trainer",
    "workbench.sae.step",
    "workbench.analyse",
    "workbench.label",
    "workbench.models.mini.train",
    "workbench.testing",
    "segmentation.train",
    "segmentation.semantic_gan.train",
    "segmentation.study",
    "segmentation.study_jobs",
)


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the two packages."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports anywhere in its source."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path.name == "__init__.py", node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m in known and m != module}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {m: imports_of(m, p, known) for m, p in files.items() if not m.endswith("__main__")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module ``start`` imports, directly or not -> the module that imports it."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt not in seen and nxt != start:
                seen[nxt] = node
                todo.append(nxt)
    return seen


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_graph_sees_known_edges():
    graph = import_graph()
    assert "workbench.analyse.inputs" in graph["workbench.analyse.run"]
    assert "workbench.models.mini.train" in graph["workbench.models.mini.ensure"]  # lazy import
    assert "segmentation.readers" in graph["segmentation.data"]


def test_find_cycle_reports_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_ui_never_imports_artefact_writers():
    graph = import_graph()
    for module in (m for m in graph if _under(m, ("workbench.ui",))):
        bad = {m: via for m, via in reachable(graph, module).items() if _under(m, WRITERS)}
        assert not bad, f"{module} imports {sorted(bad)} (via {bad})"


def test_steer_writes_through_db_not_the_label_stage():
    graph = import_graph()
    for module in (m for m in graph if _under(m, ("workbench.steer",))):
        assert not any(_under(m, ("workbench.label",)) for m in graph[module]), module
    assert "workbench.db" in graph["workbench.steer.run"]


def test_only_db_writes_the_runs_row():
    writers = [
        m
        for m, path in module_files().items()
        if "INSERT INTO runs" in path.read_text() and m not in ("workbench.db",)
    ]
    assert writers == ["workbench.analyse.carry"], writers  # carry copies old rows on rerun


# What lies below ``models`` in the flow: a model module never reaches into these stages.
LATER_THAN_MODELS = (
    "workbench.record",
    "workbench.store",
    "workbench.sae",
    "workbench.train_sae",
    "workbench.analyse",
    "workbench.db",
    "workbench.label",
    "workbench.steer",
    "workbench.ui",
    "workbench.demo",
    "workbench.testing",
)


def test_models_never_import_a_later_stage():
    graph = import_graph()
    for module in (m for m in graph if _under(m, ("workbench.models",))):
        bad = {m: v for m, v in reachable(graph, module).items() if _under(m, LATER_THAN_MODELS)}
        assert not bad, f"{module} imports {sorted(bad)} (via {bad})"


def test_shared_statistics_import_no_project_module():
    assert import_graph()["workbench.stats"] == set()  # usable from every stage
