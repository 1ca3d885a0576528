"""The SQL box and the image reader refuse everything but read-only access inside the run."""

from __future__ import annotations

import duckdb
import pytest

from workbench.ui.safety import UnsafeQueryError, check_sql, inside, restrict, run_limited


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  select * from t;  ",
        "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
        "FROM t",
        "DESCRIBE t",
        "SHOW TABLES",
        "SUMMARIZE t",
        "EXPLAIN SELECT 1",
    ],
)
def test_read_only_statements_pass(sql):
    assert check_sql(sql) == sql.strip().rstrip(";").strip()


@pytest.mark.parametrize(
    "sql, word",
    [
        ("INSERT INTO t VALUES (1)", "INSERT"),
        ("update t set a = 1", "UPDATE"),
        ("DELETE FROM t", "DELETE"),
        ("DROP TABLE t", "DROP"),
        ("CREATE TABLE x AS SELECT 1", "CREATE"),
        ("ATTACH 'x.duckdb' AS x", "ATTACH"),
        ("COPY t TO 'out.csv'", "COPY"),
        ("SET enable_external_access = true", "SET"),
        ("PRAGMA table_info('t')", "PRAGMA"),
        ("INSTALL httpfs", "LOAD"),
        ("SELECT 1; DROP TABLE t", "One statement"),
        ("", "Type a query"),
        ("SELEC 1", "Cannot parse"),
    ],
)
def test_everything_else_is_refused(sql, word):
    with pytest.raises(UnsafeQueryError, match=word):
        check_sql(sql)


@pytest.fixture
def locked(tmp_path):
    path = tmp_path / "f.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t AS SELECT range AS a FROM range(100)")
    con.close()
    (tmp_path / "ok.csv").write_text("x\n1\n")
    (tmp_path / "secret.csv").write_text("x\n42\n")
    con = duckdb.connect()
    con.execute(f"ATTACH '{path}' AS features (READ_ONLY)")
    con.execute("USE features")
    restrict(con, [tmp_path / "ok.csv"])
    yield con, tmp_path
    con.close()


def test_restricted_connection_reads_only_allowed_files(locked):
    con, tmp = locked
    assert con.execute(f"SELECT x FROM read_csv('{tmp / 'ok.csv'}')").fetchall() == [(1,)]
    with pytest.raises(duckdb.PermissionException):
        con.execute(f"SELECT * FROM read_csv('{tmp / 'secret.csv'}')")
    with pytest.raises(duckdb.Error):
        con.execute("SELECT * FROM '/etc/passwd'")  # not even looked up as a file
    with pytest.raises(duckdb.Error):
        con.execute("SET enable_external_access = true")
    with pytest.raises(duckdb.Error):
        con.execute("INSERT INTO t VALUES (1)")


def test_run_limited_truncates_and_interrupts(locked):
    con, _ = locked
    res = run_limited(con, "SELECT a FROM t ORDER BY a", limit=10, timeout_s=5)
    assert res.columns == ["a"] and len(res.rows) == 10 and res.truncated
    assert run_limited(con, "SELECT count(*) FROM t", 10, 5).rows == [(100,)]
    slow = "SELECT count(*) FROM range(1000000000000) a, range(10) b WHERE a.range % 7 = b.range"
    with pytest.raises(duckdb.InterruptException):
        run_limited(con, slow, limit=10, timeout_s=0.3)


def test_inside_resolves_before_checking(tmp_path):
    run = tmp_path / "run"
    (run / "img").mkdir(parents=True)
    (run / "img" / "a.jpg").write_bytes(b"x")
    (tmp_path / "outside.jpg").write_bytes(b"x")
    (run / "img" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    assert inside(run / "img" / "a.jpg", [run]) == (run / "img" / "a.jpg").resolve()
    assert inside(run / "img" / ".." / ".." / "outside.jpg", [run]) is None
    assert inside(run / "img" / "link.jpg", [run]) is None
    assert inside("/etc/passwd", [run]) is None
