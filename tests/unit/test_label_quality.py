"""What the labels say and how they are scored, on a planted run with negated mentions.

The planted run (``planted_run.build(..., negations=True)``) has a *semantic* effusion feature
(1: fires on "effusion" only where the report asserts it) and a *lexical* one (6: fires on
"effusion" in "No pleural effusion." too), so a label can be right or wrong about meaning.
"""

from __future__ import annotations

import logging
import shutil

import pytest

from workbench import db
from workbench.label import LabelConfig, main, run_label
from workbench.label.data import NegativePool, load_examples
from workbench.label.feature import judge, score_sets
from workbench.label.offline import OfflineBackend
from workbench.label.prompts import Example
from workbench.label.scoring import simulation_score
from workbench.label.text import names_concept, words
from workbench.label.truth import ground_truth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    from tests.fixtures import planted_run

    run = planted_run.build(tmp_path_factory.mktemp("neg") / "run", n_studies=12, negations=True)
    run_label(LabelConfig(run=run, top_n=0))
    return run


def rows(run, sql, params=()):
    con = db.connect(run)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def offline_labels(run) -> dict[int, str]:
    return dict(rows(run, "SELECT feature, label FROM feature_labels WHERE method = 'offline'"))


def test_offline_labels_lead_with_concept_and_polarity(labelled):
    labels = offline_labels(labelled)
    assert labels[1].startswith("pleural effusion (AUROC 1.00, asserted mentions); words")
    assert labels[0].startswith("pacemaker (AUROC 1.00")
    assert "asserted and negated mentions of pleural effusion" in labels[6]  # the lexical one


def test_offline_labels_quote_whole_words_not_pieces():
    pieces = (" Heart", " is", " cardi", "omeg", "aly", " .")
    ex = Example(1, "text", pieces, (0.0, 0.0, 0.0, 2.0, 0.0, 0.0), 3, 2.0)
    text = OfflineBackend().explain(0, [ex, ex._replace(study_id=2)], 2.0).text
    assert '"cardiomegaly"' in text and '"omeg"' not in text
    assert [w.text for w in words(pieces, ex.acts)] == ["Heart", "is", "cardiomegaly", "."]


def sets_of(run, feature, cfg=None):
    cfg = cfg or LabelConfig(run=run)
    con = db.connect(run)
    try:
        fx = load_examples(con, [feature], cfg.n_explain)[feature]
        pool = NegativePool(con, cfg.negative_windows, cfg.negative_studies, cfg.seed)
        return score_sets(fx, pool, cfg)[0]
    finally:
        con.close()


def test_hard_negatives_separate_a_semantic_label_from_a_lexical_one(labelled):
    sets = sets_of(labelled, 1)
    hard_items = [ex for ex, t in zip(*sets.hard) if not t]
    assert hard_items and all(
        "no pleural effusion" in "".join(ex.tokens or ()).lower() or "No pleural" in ex.findings
        for ex in hard_items
    )
    offline = OfflineBackend()
    semantic = offline_labels(labelled)[1]
    lexical = 'words "effusion"'

    def ba(label, pair):
        return judge(offline.detect, 1, label, *pair, 5).balanced_accuracy

    assert ba(semantic, sets.detection) == ba(semantic, sets.hard) == 1.0
    assert ba(lexical, sets.detection) > ba(lexical, sets.hard)
    assert ba(lexical, sets.hard) <= 0.75
    stored = rows(
        labelled,
        "SELECT value FROM feature_scores WHERE feature = 1 AND method = 'offline' "
        "AND scorer = 'detection_hard:offline' AND metric = 'balanced_accuracy'",
    )
    assert stored == [(1.0,)]


def test_simulation_correlates_a_right_label_better_than_a_wrong_one(labelled):
    sets = sets_of(labelled, 1)
    offline = OfflineBackend()

    def corr(label):
        predicted = [offline.simulate(1, label, ex) for ex in sets.simulation]
        return simulation_score([ex.acts for ex in sets.simulation], predicted).correlation

    right, wrong = corr(offline_labels(labelled)[1]), corr('words "pacemaker"')
    assert right > 0.9 and (wrong is None or wrong < 0.2)
    assert simulation_score([[0.0, 1.0], [0.0]], [[0, 10], [0]]).correlation == pytest.approx(1)
    assert simulation_score([[0.0, 1.0]], [[0, 0]]).correlation is None  # constant prediction


def test_ground_truth_metric(labelled):
    con = db.connect(labelled)
    try:
        (offline,) = ground_truth(con, ["offline"])
        assert (offline.n_features, offline.n_named, offline.fraction) == (2, 2, 1.0)
    finally:
        con.close()
    with db.rewrite(labelled) as con:
        con.execute(
            "INSERT INTO feature_labels VALUES (0, 'human', 'bright box in the upper chest', "
            "NULL, NULL, '{}', now()::TIMESTAMP), (1, 'human', 'pleural fluid at the lung base', "
            "NULL, NULL, '{}', now()::TIMESTAMP)"
        )
    con = db.connect(labelled)
    try:
        (human,) = ground_truth(con, ["human"])
    finally:
        con.close()
    assert (human.n_named, human.n_features) == (1, 2)  # a synonym (pleural fluid) counts
    assert human.misses == [(0, "pacemaker", "bright box in the upper chest")]


@pytest.mark.parametrize(
    ("label", "concept", "named"),
    [
        ("enlarged cardiac silhouette", "cardiomegaly", True),
        ("ICD generator and leads", "pacemaker", True),
        ("NG tube tip", "enteric_tube", True),
        ("no pleural effusion", "pleural_effusion", True),
        ("support devices", "pacemaker", False),
        ("pacemaker", "Support Devices", True),
        ("interval worsening", "change_increased", True),
        ("stable appearance", "change_unchanged", True),
        ("lungs are clear", "pneumothorax", False),
    ],
)
def test_names_concept_matcher(label, concept, named):
    assert names_concept(label, concept) is named


def test_cli_prints_progress_summary_and_ground_truth(labelled, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    shutil.copytree(labelled, run)
    caplog.set_level(logging.INFO, logger="workbench.label")
    argv = ["--run", str(run), "--features", "0,1,4", "--overwrite", "--progress-every", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "label: 3 done, 0 failed, 0 skipped, 0 cached; 3 labels and" in out
    assert "label: ground truth, offline: 2/2 labels name their phantom concept (100 %" in out
    progress = [r.getMessage() for r in caplog.records if "features (" in r.getMessage()]
    assert progress == ["2/3 features (0 failed)", "3/3 features (0 failed)"]
    assert main(["--run", str(run), "--features", "0,1,4"]) == 0
    assert "0 done, 0 failed, 0 skipped, 3 cached" in capsys.readouterr().out
