"""Which ``feature_acts`` Parquet belongs to which ``features.duckdb``: one switch per analyse.

``analyse`` writes two outputs that only make sense together: the database and the sparse
activations Parquet. Two files cannot be replaced at once, so the database is the one pointer:

1. the Parquet is written to ``feature_acts-<run_id>.parquet.tmp`` and renamed to
   ``feature_acts-<run_id>.parquet`` when complete (a *generation file*; no reader uses it yet);
2. the database, whose ``analyse`` row in ``runs`` carries that ``run_id``, replaces
   ``features.duckdb`` with one ``os.replace``: this rename is the switch;
3. :func:`publish` points ``feature_acts.parquet`` (a relative symlink: the documented name for
   notebooks) at the new generation file and removes every other generation file.

A crash before step 2 leaves the old pair in force (plus an orphan file removed by the next
run); after it, the new pair. Readers (:func:`workbench.db.connect`) read the Parquet named by
the database they opened (:func:`resolve`), so they see one generation or, when its file is
gone, a clear error, never a new Parquet beside an old database. :func:`incomplete` is the
"already done?" check of the pipeline: it verifies the pair, not that a file exists.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.run import ACTS_NAME, DB_NAME

log = logging.getLogger("workbench.generations")

PREFIX = "feature_acts-"


class Generation(NamedTuple):
    """The analyse run a database belongs to and its Parquet (``problem`` says why not)."""

    run_id: str | None  # None: no analyse row (nothing expected)
    acts: Path | None  # the generation file to read, when it is there
    problem: str | None  # why the Parquet cannot be served, in words for the user


def acts_file(run_dir: Path, run_id: str) -> Path:
    """``feature_acts-<run_id>.parquet`` in ``run_dir``: the Parquet of one analyse run."""
    return Path(run_dir) / f"{PREFIX}{run_id}.parquet"


def analyse_run_id(con: duckdb.DuckDBPyConnection, catalog: str | None = None) -> str | None:
    """``run_id`` of the latest ``analyse`` row of ``runs`` (in ``catalog``), or None."""
    # (no local variable may be named ``runs``: DuckDB's replacement scan would read it as the
    # table when the database has none)
    table = f'"{catalog}".runs' if catalog else "runs"
    try:
        row = con.execute(
            f"SELECT run_id FROM {table} WHERE stage = 'analyse' ORDER BY finished_at DESC LIMIT 1"
        ).fetchone()
    except (duckdb.CatalogException, duckdb.BinderException):  # no (or a foreign) runs table
        return None
    return None if row is None else str(row[0])


def resolve(
    con: duckdb.DuckDBPyConnection, db_file: Path, catalog: str | None = None
) -> Generation:
    """The generation of the database open on ``con`` (attached as ``catalog``) at ``db_file``."""
    run_id = analyse_run_id(con, catalog)
    if run_id is None:
        return Generation(None, None, None)
    path = acts_file(db_file.parent, run_id)
    if path.is_file():
        return Generation(run_id, path, None)
    legacy = db_file.parent / ACTS_NAME
    if legacy.is_file() and not legacy.is_symlink():
        why = "was written before analyse recorded which database it belongs to"
    else:
        why = "is missing (analyse was interrupted, or a newer analyse replaced it)"
    return Generation(
        run_id,
        None,
        f"{path.name} (the activations of analyse run {run_id}, which wrote {db_file.name}) "
        f"{why}; rerun `python -m workbench analyse --run {db_file.parent}` to rebuild the pair",
    )


def create_view(con: duckdb.DuckDBPyConnection, gen: Generation) -> None:
    """The temporary view ``feature_acts`` over the generation's Parquet.

    Without its file the view still exists (same columns) but raises ``gen.problem`` when
    queried, so everything else in the database stays readable.
    """
    if gen.acts is not None:
        source = f"read_parquet('{_quote(gen.acts)}')"
        con.execute(f"CREATE TEMP VIEW feature_acts AS SELECT * FROM {source}")
    elif gen.problem is not None:
        log.warning("%s", gen.problem)
        problem = gen.problem.replace("'", "''")
        con.execute(
            "CREATE TEMP VIEW feature_acts AS SELECT NULL::BIGINT AS row, "
            f"NULL::INTEGER AS feature, NULL::REAL AS value WHERE error('{problem}')"
        )


def publish(run_dir: Path, run_id: str) -> None:
    """Point ``feature_acts.parquet`` at generation ``run_id``; remove the other generations.

    Runs right after the database switch, under the writers' lock (nothing else is writing
    a generation file then).
    """
    run_dir = Path(run_dir)
    target = acts_file(run_dir, run_id)
    link, tmp = run_dir / ACTS_NAME, run_dir / f".{ACTS_NAME}.link.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(target.name, tmp)
    except OSError:
        os.link(target, tmp)  # a file system without symlinks: a second name for the file
    os.replace(tmp, link)
    for old in run_dir.glob(f"{PREFIX}*.parquet*"):
        if old != target:
            old.unlink(missing_ok=True)


def incomplete(run: str | Path) -> str | None:
    """None when the run's database and Parquet form one complete generation, else why not.

    Checks that ``features.duckdb`` opens and has an ``analyse`` row, that its generation
    file exists with a readable Parquet footer, and that ``feature_acts.parquet`` names it.
    """
    run = Path(run)
    db_file = run if run.suffix == ".duckdb" else run / DB_NAME
    if not db_file.is_file():
        return f"{db_file} does not exist"
    try:
        con = duckdb.connect()
        try:
            con.execute(f"ATTACH '{_quote(db_file)}' AS f (READ_ONLY)")
            gen = resolve(con, db_file, "f")
        finally:
            con.close()
    except duckdb.Error as exc:
        return f"{db_file} cannot be opened: {exc}"
    if gen.run_id is None:
        return f"{db_file} has no analyse run"
    if gen.problem is not None:
        return gen.problem
    try:
        pq.read_metadata(gen.acts)
    except (OSError, pa.ArrowException) as exc:
        return f"{gen.acts} is not a readable Parquet file: {exc}"
    link = db_file.parent / ACTS_NAME
    if not link.exists() or not os.path.samefile(link, gen.acts):
        return f"{link} does not point at {gen.acts.name}"
    return None


def _quote(path: Path) -> str:
    return str(path.resolve()).replace("'", "''")
