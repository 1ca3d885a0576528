"""What a rerun of analyse keeps from the database it replaces (other stages' rows).

Analyse rebuilds ``features.duckdb`` from scratch (:func:`workbench.db.rewrite` with
``fresh=True``), so whatever label, steer or seg-evaluate wrote into the previous file has to
be carried over explicitly: :func:`carry_over` copies unknown tables and other stages' ``runs``
rows, and keeps or retires the feature-keyed rows depending on whether the SAE is the same one
(:func:`sae_fingerprint`). Nothing is dropped silently; see docs/schema.md.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from workbench import db

log = logging.getLogger("workbench.analyse")


def sae_fingerprint(sae) -> str:
    """Short hash of the SAE's weights: decides whether labels of a previous run still apply."""
    h = hashlib.sha1()
    for t in (sae.W_enc_DF, sae.b_enc_F, sae.W_dec_FD, sae.b_dec_D, sae.threshold):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def carry_over(con, old: Path, fingerprint: str, notes: list[str]) -> None:
    """Keep what other stages wrote into the previous database.

    Tables the schema does not know (e.g. ``segmentation_results``) and other stages' ``runs``
    rows are copied as they are. Feature-keyed rows (LLM labels, scores, steering results)
    stay in place while the SAE is the same one; rows of another SAE (another SAE's feature
    12 is another thing) are moved to the ``retired_*`` tables under that SAE's fingerprint,
    with a WARNING, and come back when that SAE is analysed again (:func:`_carry_feature_rows`).
    """
    if not old.exists():
        return
    try:
        con.execute(f"ATTACH {db._lit(str(old.resolve()))} AS old (READ_ONLY)")
    except duckdb.Error as exc:
        notes.append(f"previous {old.name} unreadable, nothing carried over: {exc}")
        log.warning("%s", notes[-1])
        return
    try:
        old_tables = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = 'old'"
            ).fetchall()
        }
        for name in sorted(old_tables - set(db.TABLE)):
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM old."{name}"')
            notes.append(f"table {name} kept from the previous database")
        if "runs" not in old_tables:  # a file only another stage wrote (seg-evaluate --db)
            return
        con.execute("INSERT INTO runs BY NAME SELECT * FROM old.runs WHERE stage <> 'analyse'")
        for name in db.RETIRED:
            if f"retired_{name}" in old_tables:
                con.execute(f"INSERT INTO retired_{name} BY NAME SELECT * FROM old.retired_{name}")
        _carry_feature_rows(con, fingerprint, notes)
    finally:
        con.execute("DETACH old")


# rows of each feature-keyed table that other stages wrote (analyse rebuilds the rest)
_THEIRS = {
    "feature_labels": "method <> 'statistical'",
    "feature_scores": "true",
    "steering_results": "true",
}


def _carry_feature_rows(con, fingerprint: str, notes: list[str]) -> None:
    """Same SAE: keep the rows. Another SAE: retire them under its fingerprint, loudly.

    Rows are copied by column name: a table that grew columns since the old database was
    written (``steering_results``) takes the old rows with NULL in the new columns.

    Rows retired earlier under *this* SAE's fingerprint are restored (analysing an SAE,
    then another, then the first again loses nothing).
    """
    prev = con.execute(
        "SELECT sae_fingerprint FROM old.runs WHERE stage = 'analyse' "
        "ORDER BY finished_at DESC LIMIT 1"
    ).fetchone()
    prev_fp = None if prev is None else prev[0]
    counts = {
        t: con.execute(f"SELECT count(*) FROM old.{t} WHERE {w}").fetchone()[0]
        for t, w in _THEIRS.items()
    }
    if prev_fp == fingerprint:
        for t, where in _THEIRS.items():
            con.execute(f"INSERT INTO {t} BY NAME SELECT * FROM old.{t} WHERE {where}")
        if sum(counts.values()):
            notes.append(f"{sum(counts.values())} label/score/steering rows kept (same SAE)")
    elif sum(counts.values()):
        now = datetime.now(UTC).replace(tzinfo=None)
        for t, where in _THEIRS.items():
            con.execute(
                f"INSERT INTO retired_{t} BY NAME SELECT *, ? AS sae_fingerprint, ? AS retired_at "
                f"FROM old.{t} WHERE {where}",
                [prev_fp, now],
            )
        detail = ", ".join(f"{n} {t}" for t, n in counts.items() if n)
        notes.append(
            f"SAE changed ({prev_fp} -> {fingerprint}): {sum(counts.values())} rows of the "
            f"previous SAE moved to the retired_* tables ({detail})"
        )
        log.warning("%s; they come back if that SAE is analysed again", notes[-1])
    _restore_retired(con, fingerprint, notes)


def _restore_retired(con, fingerprint: str, notes: list[str]) -> None:
    """Move rows retired under ``fingerprint`` back into their tables."""
    restored = {}
    for t in _THEIRS:
        n = con.execute(
            f"SELECT count(*) FROM retired_{t} WHERE sae_fingerprint = ?", [fingerprint]
        ).fetchone()[0]
        if n:
            con.execute(
                f"INSERT INTO {t} BY NAME SELECT * EXCLUDE (sae_fingerprint, retired_at) "
                f"FROM retired_{t} WHERE sae_fingerprint = ?",
                [fingerprint],
            )
            con.execute(f"DELETE FROM retired_{t} WHERE sae_fingerprint = ?", [fingerprint])
            restored[t] = n
    if restored:
        detail = ", ".join(f"{n} {t}" for t, n in restored.items())
        notes.append(f"rows retired earlier under this SAE ({fingerprint}) restored: {detail}")
        log.warning("%s", notes[-1])
