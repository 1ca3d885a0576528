"""What the browser may touch: one read-only SQL statement, files inside the allowed roots.

The SQL box is guarded twice. :func:`check_sql` parses the text with DuckDB's own parser and
accepts exactly one ``SELECT`` (which covers ``WITH``, ``FROM``-first, ``DESCRIBE``, ``SHOW``,
``SUMMARIZE``) or ``EXPLAIN``; everything else is refused with a message before it runs. Then
the connection itself cannot write or read files even if a statement slipped through:
:func:`restrict` attaches nothing writable, turns off DuckDB's file system access except for
the run's own Parquet, and locks the configuration so no query can turn it back on.

Images are read by the server, never linked: :func:`inside` resolves a path (following
symlinks and ``..``) and only then checks it lies under one of the allowed roots.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import duckdb

ALLOWED_STATEMENTS = ("SELECT", "EXPLAIN")


class UnsafeQueryError(ValueError):
    """A query that is not a single read-only statement."""


def check_sql(sql: str) -> str:
    """``sql`` stripped if it is one read-only statement, else :class:`UnsafeQueryError`."""
    text = (sql or "").strip().rstrip(";").strip()
    if not text:
        raise UnsafeQueryError("Type a query first, e.g. SELECT * FROM features LIMIT 10")
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as exc:
        raise UnsafeQueryError(f"Cannot parse the query: {exc}") from None
    if len(statements) != 1:
        raise UnsafeQueryError(f"One statement at a time, please (got {len(statements)}).")
    kind = statements[0].type.name
    if kind not in ALLOWED_STATEMENTS:
        raise UnsafeQueryError(
            f"Refused: {kind} statements are not allowed here; this box runs read-only "
            "queries only (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)."
        )
    return text


def restrict(con: duckdb.DuckDBPyConnection, allowed_files: Sequence[Path] = ()) -> None:
    """Forbid file access (except ``allowed_files``) and lock the connection's configuration."""
    files = [str(Path(p).resolve()) for p in allowed_files]
    if files:
        listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.execute(f"SET allowed_paths = [{listed}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")


class QueryResult(NamedTuple):
    """Column names, at most ``limit`` rows, and whether more rows were left out."""

    columns: list[str]
    rows: list[tuple]
    truncated: bool


def run_limited(
    con: duckdb.DuckDBPyConnection, sql: str, limit: int, timeout_s: float
) -> QueryResult:
    """Run a checked query, keep ``limit`` rows, interrupt it after ``timeout_s`` seconds."""
    timer = threading.Timer(timeout_s, con.interrupt)
    timer.start()
    try:
        cur = con.execute(sql)
        rows = cur.fetchmany(limit + 1)
        columns = [d[0] for d in (cur.description or [])]
    finally:
        timer.cancel()
    return QueryResult(columns, rows[:limit], len(rows) > limit)


def inside(path: str | Path, roots: Sequence[Path]) -> Path | None:
    """The resolved ``path`` if it lies within one of ``roots`` (both resolved), else None."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):
        return None
    for root in roots:
        if resolved.is_relative_to(Path(root).resolve()):
            return resolved
    return None
