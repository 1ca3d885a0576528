"""The app's context: the run's paths and its read-only DuckDB connections, passed to handlers.

Nothing lives in module globals: :func:`open_context` builds one :class:`AppContext` per app
and every builder and handler receives it. Opening never raises for a run that is missing,
half-built or still training; it records what is missing in :class:`RunStatus` so each tab
can say so in plain words.

Two connections are opened on ``features.duckdb`` (both through :func:`workbench.db.connect`,
read-only, file access locked down by :func:`workbench.ui.safety.restrict`, each with its own
DuckDB ``memory_limit`` and ``threads``): one for the app's own parameterised queries and one
for the SQL box, each behind its own lock because a DuckDB connection must not be used from
two Gradio worker threads at once.

The connections read one generation of the run (the database and the Parquet of the same
analyse run, :mod:`workbench.generations`). When ``analyse``, ``label`` or ``steer`` replaces
the database while the app is open, the next query notices (:meth:`AppContext.refresh`),
reopens both connections and says so in the page: the app never pairs tables of one analyse
run with the activations of another.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import duckdb

from workbench import db
from workbench.run import RunLayout
from workbench.ui.safety import restrict

SAE_WEIGHTS = "sae_weights.safetensors"
DL_WEIGHTS = "ae.pt"  # a dictionary_learning SAE (workbench.sae.io.DL_WEIGHTS)


class RunStatus(NamedTuple):
    """What the run has so far; ``problems`` are shown to the user as they are."""

    exists: bool
    has_db: bool
    has_labels: bool
    sae_state: str  # "missing" | "training" | "trained"
    problems: tuple[str, ...]


class DbLimits(NamedTuple):
    """What one query of the app may take: DuckDB ``memory_limit`` and ``threads``."""

    memory_limit: str | None = "1GB"
    threads: int | None = 2


def db_stamp(run_dir: Path) -> tuple[int, ...] | None:
    """Identity of the run's database file (device, inode, size, mtime); None if absent."""
    try:
        st = os.stat(db.db_path(run_dir))
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class AppContext:
    """Everything a handler may use: paths, the read-only connections and the status."""

    run_dir: Path
    status: RunStatus
    con: duckdb.DuckDBPyConnection | None = None
    sql_con: duckdb.DuckDBPyConnection | None = None
    image_roots: tuple[Path, ...] = ()
    tables: frozenset[str] = frozenset()
    sql_row_limit: int = 1000
    sql_timeout_s: float = 20.0
    sae_dir: Path | None = None
    """The SAE the database was made from: ``<run>/sae``, or the ``--sae DIR`` analyse used."""
    limits: DbLimits = field(default_factory=DbLimits)
    stamp: tuple[int, ...] | None = None  # identity of the database file the connections read
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    sql_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def rows(self, sql: str, params: tuple | list | dict = ()) -> list[dict[str, Any]]:
        """Run one of the app's own parameterised queries (``?`` or ``$name``); rows as dicts.

        A query that fails because the database was replaced under it is run once more on
        the reopened database.
        """
        self.refresh()
        try:
            return self._rows(sql, params)
        except duckdb.Error:
            if not self.refresh():
                raise
            return self._rows(sql, params)

    def _rows(self, sql: str, params: tuple | list | dict) -> list[dict[str, Any]]:
        if self.con is None:
            raise RunNotReadyError(
                self.status.problems[0] if self.status.problems else "No database."
            )
        with self.lock:
            cur = self.con.execute(sql, params if isinstance(params, dict) else list(params))
            names = [d[0] for d in cur.description or []]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def refresh(self) -> bool:
        """Reopen the connections if the database file was replaced since they were opened.

        Returns True when it reopened; the status then starts with a line saying so, which
        the banner and every tab show.
        """
        if db_stamp(self.run_dir) == self.stamp:
            return False
        with self.lock, self.sql_lock:
            if db_stamp(self.run_dir) == self.stamp:  # another worker thread got here first
                return False
            fresh = open_context(self.run_dir, self.image_roots[1:], self.limits)
            for con in (self.con, self.sql_con):
                if con is not None:
                    con.close()
            self.con, self.sql_con, self.tables = fresh.con, fresh.sql_con, fresh.tables
            self.stamp, self.sae_dir = fresh.stamp, fresh.sae_dir
            when = datetime.now().strftime("%H:%M:%S")
            notice = (
                f"{db.DB_NAME} was replaced (analyse, label or steer wrote to this run); the "
                f"app reopened it at {when}, so views opened before then may be out of date."
            )
            self.status = fresh.status._replace(problems=(notice, *fresh.status.problems))
        return True

    def has(self, *tables: str) -> bool:
        """Whether every named table exists in the database."""
        return all(t in self.tables for t in tables)

    def close(self) -> None:
        for con in (self.con, self.sql_con):
            if con is not None:
                con.close()


class RunNotReadyError(RuntimeError):
    """The run lacks what a view needs; the message says what to run."""


def sae_state(run_dir: Path, sae_dir: Path | None = None) -> str:
    """'trained' when the SAE artefact is complete (ours, SAELens or a dictionary_learning
    ``ae.pt``), 'training' when only logs/state exist; ``sae_dir`` defaults to ``<run>/sae``."""
    sae_dir = sae_dir or RunLayout(run_dir).sae
    if (sae_dir / SAE_WEIGHTS).exists() and (sae_dir / "cfg.json").exists():
        return "trained"
    if (sae_dir / DL_WEIGHTS).exists():
        return "trained"
    if sae_dir.is_dir() and any(sae_dir.iterdir()):
        return "training"
    return "missing"


def analysed_sae_dir(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The SAE directory of the latest ``analyse`` row (``analyse --sae DIR``), if it exists."""
    try:
        row = con.execute(
            "SELECT sae_path FROM runs WHERE stage = 'analyse' ORDER BY finished_at DESC LIMIT 1"
        ).fetchone()
    except duckdb.Error:
        return None
    if not row or not row[0]:
        return None
    path = Path(row[0])
    path = path.parent if path.name == DL_WEIGHTS else path
    return path if path.is_dir() else None


def _open(run_dir: Path, limits: DbLimits) -> tuple[duckdb.DuckDBPyConnection, str | None]:
    """A locked-down reader and, when its Parquet cannot be served, the reason."""
    con, gen = db.connect_pinned(run_dir, True, limits.memory_limit, limits.threads)
    restrict(con, [gen.acts] if gen.acts is not None else [])
    return con, gen.problem


def _table_names(con: duckdb.DuckDBPyConnection) -> frozenset[str]:
    names = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = 'features' "
        "UNION SELECT view_name FROM duckdb_views() WHERE NOT internal"
    ).fetchall()
    return frozenset(n for (n,) in names)


def _has_labels(con: duckdb.DuckDBPyConnection, tables: frozenset[str]) -> bool:
    if "feature_labels" not in tables:
        return False
    return con.execute("SELECT count(*) FROM feature_labels").fetchone()[0] > 0


def open_context(
    run_dir: str | Path, image_roots: tuple[Path, ...] = (), limits: DbLimits | None = None
) -> AppContext:
    """Open a run for the app; never raises for a missing or unfinished run."""
    run_dir = Path(run_dir).resolve()
    limits = limits or DbLimits()
    stamp = db_stamp(run_dir)
    problems: list[str] = []
    sae = sae_state(run_dir)
    if not run_dir.is_dir():
        problems.append(
            f"No run at {run_dir}. Build one with `python -m workbench demo --run {run_dir}`."
        )
        status = RunStatus(False, False, False, sae, tuple(problems))
        return AppContext(run_dir=run_dir, status=status)
    if sae == "training":
        problems.append("The SAE is still training: the Runs tab shows its curves so far.")
    con = sql_con = None
    tables: frozenset[str] = frozenset()
    has_labels = False
    if not db.db_path(run_dir).exists():
        problems.append(
            f"No features database yet ({db.DB_NAME}). When the SAE is trained, run "
            f"`python -m workbench analyse --run {run_dir}`."
        )
    else:
        try:
            (con, acts_problem), (sql_con, _) = _open(run_dir, limits), _open(run_dir, limits)
            tables = _table_names(con)
            if acts_problem is not None:  # the tabs treat the activations as absent
                problems.append(f"Token-level activations unavailable: {acts_problem}")
                tables = tables - {"feature_acts"}
            has_labels = _has_labels(con, tables)
        except duckdb.Error as exc:
            problems.append(f"Cannot open {db.db_path(run_dir)}: {exc}")
            con = sql_con = None
    if con is not None and not has_labels:
        problems.append(
            "No labels yet: features show their statistics only. "
            f"Run `python -m workbench label --run {run_dir}` to name them."
        )
    sae_dir = RunLayout(run_dir).sae
    if sae == "missing" and con is not None:  # analysed with --sae DIR: show that SAE
        used = analysed_sae_dir(con)
        if used is not None:
            sae_dir, sae = used, sae_state(run_dir, used)
    status = RunStatus(True, con is not None, has_labels, sae, tuple(problems))
    roots = (run_dir, *(Path(r).resolve() for r in image_roots))
    return AppContext(
        run_dir, status, con, sql_con, roots, tables, sae_dir=sae_dir, limits=limits, stamp=stamp
    )


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
