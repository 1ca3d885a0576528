"""Issue 15, the app: one consistent generation across reruns, and bounded queries.

Before the fix the app kept its read-only connection on the old database while the
``feature_acts`` view read the Parquet by path, so after a rerun of analyse with another SAE
``feature_stats`` and ``feature_acts`` disagreed; and the SQL tab's connection had no memory
limit (one query reached 2.7 GB).
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.fixtures.analyse_world import make_run, planted_sae
from workbench import db
from workbench.analyse.run import AnalyseConfig, analyse
from workbench.sae import save_sae
from workbench.ui.context import DbLimits, open_context
from workbench.ui.runinfo import run_sql

DISAGREE = (
    "SELECT count(*) AS n FROM feature_stats s LEFT JOIN "
    "(SELECT feature, count(*) AS n FROM feature_acts GROUP BY 1) a USING (feature) "
    "WHERE s.n_fires <> coalesce(a.n, 0)"
)


@pytest.fixture
def run(tmp_path):
    run = make_run(tmp_path)
    analyse(AnalyseConfig(run=run))
    return run


def _other_sae(run) -> None:
    sae = planted_sae()
    with torch.no_grad():
        sae.b_enc_F.fill_(0.6)  # every feature fires on every token
    save_sae(sae, run / "sae")


def test_app_reopens_after_a_rerun_and_says_so(run):
    ctx = open_context(run)
    before = ctx.rows("SELECT sum(n_fires) AS n FROM feature_stats")[0]["n"]
    assert ctx.rows(DISAGREE)[0]["n"] == 0
    _other_sae(run)
    analyse(AnalyseConfig(run=run))
    assert ctx.rows(DISAGREE)[0]["n"] == 0  # tables and activations of the same analyse run
    assert ctx.rows("SELECT sum(n_fires) AS n FROM feature_stats")[0]["n"] > before
    assert "reopened" in ctx.status.problems[0]
    res = run_sql(ctx, DISAGREE)
    assert res.rows == [[0]]
    ctx.close()


def test_sql_tab_sees_the_new_generation_and_says_so(run):
    ctx = open_context(run)
    _other_sae(run)
    analyse(AnalyseConfig(run=run))
    res = run_sql(ctx, DISAGREE)
    assert res.rows == [[0]] and "reopened" in res.message
    ctx.close()


def test_app_keeps_the_old_pair_while_a_rerun_is_cut_short(run, monkeypatch):
    ctx = open_context(run)
    _other_sae(run)
    real = os.replace

    def killed_at_switch(src, dst):
        if str(dst).endswith(db.DB_NAME):
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_switch)
    with pytest.raises(KeyboardInterrupt):
        analyse(AnalyseConfig(run=run))
    monkeypatch.setattr(os, "replace", real)
    assert ctx.rows(DISAGREE)[0]["n"] == 0
    assert not any("reopened" in p for p in ctx.status.problems)  # nothing was switched
    ctx.close()


def test_missing_activations_are_said_and_hidden_from_the_tabs(run):
    for f in run.glob("feature_acts-*.parquet"):
        f.unlink()
    ctx = open_context(run)
    assert not ctx.has("feature_acts") and ctx.has("feature_stats")
    assert any("Token-level activations unavailable" in p for p in ctx.status.problems)
    ctx.close()


def test_a_large_query_fails_cleanly_under_the_memory_limit(run):
    ctx = open_context(run, limits=DbLimits("64MB", 1))
    setting = run_sql(ctx, "SELECT current_setting('memory_limit'), current_setting('threads')")
    assert setting.rows == [["61.0 MiB", 1]]
    res = run_sql(ctx, "SELECT length(list(i)) FROM range(30000000) t(i)")  # ~240 MB of list
    assert res.columns == [] and "Out of Memory" in res.message
    assert run_sql(ctx, "SELECT count(*) FROM features").rows == [[16]]  # still usable
    assert ctx.rows("SELECT current_setting('memory_limit') AS m")[0]["m"] == "61.0 MiB"
    ctx.close()


def test_app_config_carries_the_limits():
    from workbench.config import parse_config
    from workbench.ui.app import AppConfig

    default = AppConfig()
    assert default.db_memory_limit == "1GB" and default.db_threads == 2
    cfg = parse_config(AppConfig, ["--db-memory-limit", "512MB", "--db-threads", "1"])
    assert (cfg.db_memory_limit, cfg.db_threads) == ("512MB", 1)
