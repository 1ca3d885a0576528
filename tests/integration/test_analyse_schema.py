"""Every example query of docs/schema.md runs against a freshly analysed run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.fixtures.analyse_world import make_run
from workbench import db
from workbench.analyse.run import AnalyseConfig, analyse

SCHEMA_MD = Path(__file__).resolve().parents[2] / "docs" / "schema.md"
QUERIES = re.findall(r"```sql\n(.*?)```", SCHEMA_MD.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("schema"))
    analyse(AnalyseConfig(run=run))
    c = db.connect(run)
    yield c
    c.close()


def test_docs_have_example_queries():
    assert len(QUERIES) >= 8


@pytest.mark.parametrize("sql", QUERIES, ids=[f"q{i}" for i in range(len(QUERIES))])
def test_documented_query_runs(con, sql):
    con.execute(sql).fetchall()


def test_pacemaker_query_finds_the_planted_feature(con):
    sql = next(q for q in QUERIES if "'pacemaker'" in q)
    rows = con.execute(sql).fetchall()
    assert rows[0][0] == 0 and rows[0][2] == 0  # feature 0, never on other studies


def test_effusion_query_finds_the_planted_feature(con):
    sql = next(q for q in QUERIES if "ILIKE '%effusion%'" in q)
    assert [r[0] for r in con.execute(sql).fetchall()] == [1]
