"""``features.duckdb``: its schema made in a database, readers' and writers' connections.

Every table and column is declared once, with its description, in :mod:`workbench.schema`
(re-exported here: ``db.TABLES``, ``db.TABLE``). :func:`create_schema` makes the DDL and the
``COMMENT ON`` text a notebook sees in ``duckdb_columns()`` from it, and
``python -m workbench.db --markdown`` prints the reference tables of ``docs/schema.md``.

Readers (notebooks, the app) call :func:`connect`; it attaches the file read-only inside a
private in-memory database, so every call sees the file as it is now (DuckDB's per-process
instance cache would otherwise hand back a stale copy after a rewrite) and a temporary view
``feature_acts`` reads the sparse activations Parquet of the same analyse run
(:mod:`workbench.generations`), never a newer or older one.

Writers never touch the live file: :func:`rewrite` builds ``features.duckdb.tmp`` (empty, or
a copy of the current database) and ``os.replace``-s it over the original on success, under
a lock file. A reader that is open meanwhile keeps its view of the old file. Every stage that
writes records itself in ``runs`` through :func:`insert_run_row`, and checks the tables it
reads with :func:`require_tables`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import duckdb

from workbench import generations
from workbench.config import to_dict
from workbench.generations import Generation
from workbench.run import ACTS_NAME, DB_NAME  # noqa: F401 (db.ACTS_NAME is public)
from workbench.schema import (  # noqa: F401 (public through db: db.TABLES, db.Table, ...)
    RETIRED,
    TABLE,
    TABLES,
    Column,
    Table,
    markdown,
)


def create_schema(con: duckdb.DuckDBPyConnection, names: tuple[str, ...] | None = None) -> None:
    """Create (if absent) the tables ``names`` (default: all), with column comments."""
    con.execute("BEGIN TRANSACTION")  # one commit, not one per statement
    for t in TABLES:
        if names is not None and t.name not in names:
            continue
        cols = ", ".join(f'"{c.name}" {c.type}' for c in t.columns)
        con.execute(f"CREATE TABLE IF NOT EXISTS {t.name} ({cols})")
        add_missing_columns(con, t.name)
        con.execute(f"COMMENT ON TABLE {t.name} IS {_lit(t.doc)}")
        for c in t.columns:
            con.execute(f'COMMENT ON COLUMN {t.name}."{c.name}" IS {_lit(c.doc)}')
    con.execute("COMMIT")


def create_indexes(con: duckdb.DuckDBPyConnection) -> None:
    """Index the tables on ``feature`` (after bulk loading; indexing first is slower)."""
    for t in TABLES:
        for col in t.index:
            con.execute(f'CREATE INDEX IF NOT EXISTS {t.name}_{col}_idx ON {t.name} ("{col}")')


def add_missing_columns(con: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    """Add the columns of table ``name`` that a database written by an older version lacks.

    Called by :func:`create_schema`, so a writer's rows fit a table that grew columns (the old
    rows get NULL in them). Returns the columns added.
    """
    have = {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ? "
            "AND database_name = current_database()",
            [name],
        ).fetchall()
    }
    added = []
    for c in TABLE[name].columns:
        if c.name not in have:
            con.execute(f'ALTER TABLE {name} ADD COLUMN "{c.name}" {c.type}')
            added.append(c.name)
    return added


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def db_path(run: str | Path) -> Path:
    """``features.duckdb`` of a run directory (or the path itself if it names a file)."""
    run = Path(run)
    return run if run.suffix == ".duckdb" else run / DB_NAME


def connect(
    run: str | Path,
    read_only: bool = True,
    memory_limit: str | None = None,
    threads: int | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open a run's ``features.duckdb`` for reading (notebooks, the app).

    The connection sees the tables by their plain names plus a temporary view
    ``feature_acts`` (row, feature, value) over the Parquet written by the same analyse run;
    when that file is missing the view raises an error saying why and what to run. Writers
    must use :func:`rewrite`; ``read_only=False`` is refused to keep the live file safe.
    ``memory_limit`` (e.g. ``'2GB'``) and ``threads`` bound what one query may take; a query
    over the limit fails with DuckDB's out-of-memory error and the connection stays usable.
    """
    return connect_pinned(run, read_only, memory_limit, threads)[0]


def connect_pinned(
    run: str | Path,
    read_only: bool = True,
    memory_limit: str | None = None,
    threads: int | None = None,
) -> tuple[duckdb.DuckDBPyConnection, Generation]:
    """:func:`connect`, and the generation (analyse run and Parquet) the connection reads."""
    if not read_only:
        raise ValueError("connect() is read-only; write through workbench.db.rewrite(run)")
    path = db_path(run).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no features database; run `python -m workbench.analyse`")
    config: dict[str, str | int] = {}
    if memory_limit:
        config["memory_limit"] = memory_limit
    if threads:
        config["threads"] = int(threads)
    con = duckdb.connect(config=config)
    con.execute(f"ATTACH {_lit(str(path))} AS features (READ_ONLY)")
    con.execute("USE features")
    gen = generations.resolve(con, path)
    generations.create_view(con, gen)
    return con, gen


@contextlib.contextmanager
def rewrite(
    run: str | Path, fresh: bool = False, on_replaced: Callable[[], None] | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Yield a read-write connection on a private copy; replace the live file on success.

    ``fresh=True`` starts from an empty database (analyse), otherwise from a copy of the
    current one (label, steer append to it). A lock file serialises concurrent writers;
    on an exception the copy is discarded and the live database is untouched.
    ``on_replaced`` runs right after the switch, still under the lock (analyse publishes
    its Parquet there: :func:`workbench.generations.publish`).
    """
    path = db_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    wal = tmp.with_name(tmp.name + ".wal")  # a killed writer's WAL would be replayed: remove
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tmp.unlink(missing_ok=True)
        wal.unlink(missing_ok=True)
        if not fresh and path.exists():
            shutil.copyfile(path, tmp)
        con = duckdb.connect(str(tmp))
        try:
            create_schema(con)
            yield con
            con.execute("CHECKPOINT")
        except BaseException:
            con.close()
            tmp.unlink(missing_ok=True)
            wal.unlink(missing_ok=True)
            raise
        con.close()
        os.replace(tmp, path)
        if on_replaced is not None:
            on_replaced()


class RunRow(NamedTuple):
    """The ``runs`` row of one execution of a stage (:func:`run_row` fills the id)."""

    run_id: str
    stage: str
    started_at: datetime
    config: str
    notes: list[str]


class Provenance(NamedTuple):
    """What a run read: analyse states it, later stages copy it from the latest analyse row."""

    store_path: str
    sae_path: str
    sae_fingerprint: str
    hook_name: str
    n_tokens: int
    n_studies: int
    d_sae: int


def utc_now() -> datetime:
    """The current UTC time as the naive TIMESTAMP the ``runs`` table stores."""
    return datetime.now(UTC).replace(tzinfo=None)


def run_row(stage: str, started_at: datetime, cfg: Any, notes: list[str]) -> RunRow:
    """A fresh ``runs`` row for ``stage`` with its resolved config ``cfg`` as JSON."""
    return RunRow(uuid.uuid4().hex, stage, started_at, json.dumps(to_dict(cfg)), list(notes))


def insert_run_row(con, row: RunRow, provenance: Provenance | None = None) -> None:
    """Insert ``row`` (finished now); without ``provenance``, copy the latest analyse row's."""
    head = [row.run_id, row.stage, row.started_at, utc_now(), row.config]
    if provenance is not None:
        con.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [*head, *provenance, json.dumps(row.notes)],
        )
        return
    con.execute(
        """INSERT INTO runs
           SELECT ?, ?, ?, ?, ?, a.store_path, a.sae_path, a.sae_fingerprint, a.hook_name,
                  a.n_tokens, a.n_studies, a.d_sae, ?
           FROM (SELECT 1) LEFT JOIN (
               SELECT * FROM runs WHERE stage = 'analyse' ORDER BY finished_at DESC LIMIT 1
           ) a ON true""",
        [*head, json.dumps(row.notes)],
    )


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the connected database has table ``name`` (an older run may lack a newer one)."""
    row = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name])
    return row.fetchall()[0][0] > 0


def require_tables(con, names: tuple[str, ...], run) -> None:
    """A clear error when ``analyse`` has not written the tables a stage reads."""
    have = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(
            f"{run}: features.duckdb lacks {', '.join(missing)}; run `python -m workbench.analyse`"
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m workbench.db --markdown`` prints the schema reference for docs/schema.md."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv != ["--markdown"]:
        print("usage: python -m workbench.db --markdown", file=sys.stderr)
        return 2
    print(markdown(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
