"""The app shows the meaning scores: mention bars, localisation, the "means present" filter."""

from __future__ import annotations

import pytest

from tests.fixtures import meaning_world as w
from workbench.analyse import AnalyseConfig, analyse
from workbench.ui import handlers
from workbench.ui.context import open_context


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    run = w.make_run(tmp_path_factory.mktemp("ui-meaning"))
    analyse(AnalyseConfig(run=run, device="cpu", top_k=4, per_quantile=1))
    c = open_context(run)
    yield c
    c.close()


def test_feature_page_shows_what_a_feature_fires_on(ctx):
    lexical = handlers.feature_view(ctx, w.LEXICAL).concepts
    assert "On report mentions" in lexical and "pleural_effusion · negated" in lexical
    assert "fires on: present / negated / uncertain" in lexical
    semantic = handlers.feature_view(ctx, w.SEMANTIC).concepts
    assert "pleural_effusion · present" in semantic
    image = handlers.feature_view(ctx, w.PACER_IMAGE).image
    assert "Localisation vs masks" in image and "pacemaker" in image
    assert "Localisation vs masks" not in handlers.feature_view(ctx, w.LEXICAL).image


def test_features_table_filters_meaning_not_words(ctx):
    col = list(handlers.FEATURE_COLUMNS).index("select.")
    rows = handlers.feature_table(ctx, concept="pleural_effusion", sort="AUROC").rows
    by_feature = {r[0]: r for r in rows}
    assert by_feature[w.LEXICAL][col] == 0.5 and by_feature[w.SEMANTIC][col] == 1.0
    kept = handlers.feature_table(ctx, concept="pleural_effusion", meaning=True).rows
    assert sorted(r[0] for r in kept) == [w.SEMANTIC, w.EFFUSION_IMAGE]
    pacer = handlers.feature_table(ctx, concept="pacemaker", meaning=True).rows
    assert [r[0] for r in pacer] == [w.PACER_IMAGE]  # by the pointing game, not the text
