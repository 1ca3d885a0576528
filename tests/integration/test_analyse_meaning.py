"""analyse's meaning scores on a planted run: mentions, localisation, probe ceiling, report.

The run (:mod:`tests.integration.meaning_world`) plants a *lexical* feature (fires on the
word "effusion", also in "No pleural effusion.") and a *semantic* one (only in asserted
mentions); the study-level AUROC ranks both as effusion features, the mention scores must
tell them apart. Image features are planted inside and outside the phantom masks.
"""

from __future__ import annotations

import pytest

from tests.fixtures import meaning_world as w
from workbench import db
from workbench.analyse import AnalyseConfig, analyse, main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = w.make_run(tmp_path_factory.mktemp("meaning"))
    analyse(AnalyseConfig(run=run, device="cpu", top_k=4, per_quantile=1))
    return run


@pytest.fixture
def con(run):
    c = db.connect(run)
    yield c
    c.close()


def test_mentions_follow_the_report_text(con):
    rows = con.execute(
        "SELECT study_id, concept, status, text, row_lo, row_hi FROM mentions "
        "WHERE concept IN ('pleural_effusion', 'pacemaker') ORDER BY study_id, char_start"
    ).fetchall()
    expected = []  # a mention is the noun phrase, its pre-modifiers included
    effusion = "Small left pleural effusion"
    for i in range(w.N):
        if w.effusion(i):
            expected.append((w.sid(i), "pleural_effusion", "asserted", effusion))
        elif i % 4 == 1:
            expected.append((w.sid(i), "pleural_effusion", "negated", "pleural effusion"))
        if w.pacemaker(i):
            expected.append((w.sid(i), "pacemaker", "asserted", "Left chest wall pacemaker"))
        elif i % 3 == 1:
            expected.append((w.sid(i), "pacemaker", "negated", "pacemaker"))
    assert [r[:4] for r in rows] == expected
    toks = dict(con.execute("SELECT row, token FROM tokens").fetchall())
    for *_, text, lo, hi in rows:  # the mention's store rows are exactly its tokens
        assert " ".join(toks[r].strip() for r in range(lo, hi + 1)) == text


def test_mention_scores_tell_lexical_from_semantic(con):
    got = {
        r[0]: r[1:]
        for r in con.execute(
            "SELECT feature, n_fired, mean_asserted, mean_negated, mean_uncertain, selectivity "
            "FROM feature_mentions WHERE concept = 'pleural_effusion' AND feature IN (?, ?)",
            [w.LEXICAL, w.SEMANTIC],
        ).fetchall()
    }
    n_pos, n_neg = w.N // 2, w.N // 4
    assert got[w.LEXICAL] == (n_pos + n_neg, 1.5, 1.5, None, 0.5)
    assert got[w.SEMANTIC] == (n_pos, 1.5, 0.0, None, 1.0)
    # both look like effusion features at study level; only one of them means "present"
    auroc = dict(con.execute(
        "SELECT feature, auroc FROM feature_concepts WHERE source = 'phantom' "
        "AND concept = 'pleural_effusion' AND feature IN (?, ?)", [w.LEXICAL, w.SEMANTIC],
    ).fetchall())  # fmt: skip
    assert auroc[w.SEMANTIC] == 1.0 and auroc[w.LEXICAL] == pytest.approx(0.75)


def test_localisation_against_the_masks(con):
    got = {
        (r[0], r[1]): r[2:]
        for r in con.execute(
            "SELECT feature, concept, n_studies, pointing_game, patch_auroc, mean_inside, "
            "mean_outside FROM feature_localisation"
        ).fetchall()
    }
    assert {f for f, _ in got} == {w.PACER_IMAGE, w.CORNER, w.EFFUSION_IMAGE}  # image features
    n_pacer = sum(w.pacemaker(i) for i in range(w.N))
    n_pace, point, auc, inside, outside = got[(w.PACER_IMAGE, "pacemaker")]
    assert (n_pace, point, auc, inside) == (n_pacer, 1.0, 1.0, 2.0)
    assert outside == pytest.approx(1.0 / 15)
    n_corner, point, auc, _, _ = got[(w.CORNER, "pacemaker")]
    assert point == 0.0 and auc == pytest.approx(0.5 * 14 / 15)  # fires, but off the device
    assert got[(w.EFFUSION_IMAGE, "pleural_effusion")][1:3] == (1.0, 1.0)
    assert got[(w.PACER_IMAGE, "pleural_effusion")][1] == 0.0


def test_probe_ceiling_against_the_best_feature(con):
    rows = {
        (r[0], r[1]): r[2:]
        for r in con.execute(
            "SELECT concept, source, n_pos, n_neg, probe_auroc, best_feature, pooling, "
            "feature_auroc, ratio, study_max_auroc, inputs, n_folds FROM concept_probes"
        ).fetchall()
    }
    n_pos, n_neg, probe, best, pooling, feat, ratio, study_max, inputs, folds = rows[
        ("pleural_effusion", "phantom")
    ]
    assert (n_pos, n_neg, feat, study_max, folds) == (w.N // 2, w.N // 2, 1.0, 1.0, 5)
    assert probe >= 0.95 and ratio == pytest.approx(feat / probe)
    # ties (EFFUSION_IMAGE also has 1.0 by its image max) go to the lower index; the
    # semantic feature fires on report tokens only, so the probe's report max reads it
    assert (best, pooling) == (w.SEMANTIC, "report max")
    assert inputs == "image max, image mean, report max, report mean"
    assert rows[("pacemaker", "phantom")][2] >= 0.95
    assert rows[("nodule", "phantom")][2] is None  # no positives: not probed
    assert rows[("nodule", "phantom")][3:6] == (None, None, None)  # nor a best feature


def test_sparse_probes_of_every_probed_concept(con):
    rows = con.execute(
        "SELECT s.concept, s.k, s.auroc, s.ratio, s.features, s.poolings, p.probe_auroc "
        "FROM concept_sparse_probes s JOIN concept_probes p USING (concept, source) "
        "ORDER BY s.concept, s.k"
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [
        (c, k) for c in ("pacemaker", "pleural_effusion") for k in (1, 2, 5)
    ]
    for _, k, auc, ratio, feats, pools, probe in rows:
        assert 1 <= len(feats) <= k and len(pools) == len(feats)
        assert ratio == pytest.approx(auc / probe)
    by = {(r[0], r[1]): r for r in rows}
    # the best single feature on all studies heads every list; one planted feature reads it
    assert by[("pleural_effusion", 1)][4:6] == ([w.SEMANTIC], ["report max"])
    assert by[("pleural_effusion", 5)][4][0] == w.SEMANTIC
    assert by[("pleural_effusion", 1)][2] == 1.0 and by[("pacemaker", 1)][2] >= 0.95


def test_report_prints_meaning_and_probe_tables(run, capsys):
    assert main(["--run", str(run), "--reuse", "--report"]) == 0
    out = capsys.readouterr().out
    meaning = out.split("features that mean the concept", 1)[1].split("probe ceiling", 1)[0]
    rows = {ln.split()[0]: ln.split()[1:] for ln in meaning.splitlines()[2:] if ln.strip()}
    assert rows["pleural_effusion"][2:] == [str(w.SEMANTIC), "1.000", "1.000", "-"]
    assert rows["pacemaker"][2:] == [str(w.PACER_IMAGE), "1.000", "-", "1.000"]
    assert "with meaning: 1 of the 1 most common findings, 1 of 1 devices" in meaning
    probes, sparse, quality = out.split("probe ceiling", 1)[1].split("\n\n", 2)
    assert [ln.split()[0] for ln in probes.splitlines()[2:-1]] == ["pacemaker", "pleural_effusion"]
    effusion = next(ln for ln in probes.splitlines() if ln.startswith("pleural_effusion"))
    assert effusion.split()[2:7] == ["20", "20", str(w.SEMANTIC), "report", "max"]
    assert "best feature >= 0.95 x probe: 1 of 1 concepts with >= 20 positives" in probes
    assert sparse.startswith("k-sparse probes")
    effusion = next(ln for ln in sparse.splitlines() if ln.startswith("pleural_effusion"))
    assert effusion.split()[1:5] == ["phantom", "1.000", "1.000", "1.000"]
    assert "5 features >= 0.95 x probe: 1 of 1 concepts with >= 20 positives" in sparse
    assert quality.startswith("SAE quality on 8 stored (not held-out) studies")
    assert "CE loss recovered by the whole SAE: not measured (no model)" in quality


def test_documented_meaning_queries_find_the_planted_features(con):
    from tests.integration.test_analyse_schema import QUERIES

    present = next(q for q in QUERIES if "m.selectivity >= 0.9" in q)
    assert [r[0] for r in con.execute(present).fetchall()] == [w.SEMANTIC]
    negated = next(q for q in QUERIES if "m.status = 'negated'" in q)
    assert con.execute(negated.replace("a.feature = 1", "a.feature = 0")).fetchall()  # lexical
    assert con.execute(negated).fetchall() == []  # the semantic feature never fires there
    pointing = next(q for q in QUERIES if "FROM feature_localisation" in q)
    top = {r[0]: r[1] for r in con.execute(pointing).fetchall() if r[3] == 1.0}
    assert top["pacemaker"] == w.PACER_IMAGE and top["pleural_effusion"] == w.EFFUSION_IMAGE


def test_user_labels_are_scored_but_never_ground_truth(tmp_path, caplog):
    run = w.make_run(tmp_path)  # its own run: the module's run stays without user labels
    csv = tmp_path / "my-labels.csv"
    lines = ["study_id,my_effusion,left_side"]
    lines += [f"{w.sid(i)},{int(w.effusion(i))},{'' if i % 5 else 1}" for i in range(w.N)]
    lines.append("99999999,1,0")  # not in the store
    csv.write_text("\n".join(lines) + "\n")
    cfg = AnalyseConfig(run=run, device="cpu", top_k=4, per_quantile=1, labels=csv)
    analyse(cfg)
    con = db.connect(run)
    try:
        counts = con.execute(
            "SELECT concept, n_pos, n_neg, n_missing FROM concepts WHERE source = 'user' ORDER BY 1"
        ).fetchall()
        assert counts == [("left_side", w.N // 5, 0, w.N - w.N // 5), ("my_effusion", 20, 20, 0)]
        best = con.execute(
            "SELECT feature, auroc FROM feature_concepts WHERE source = 'user' "
            "AND concept = 'my_effusion' ORDER BY auroc DESC, feature LIMIT 1"
        ).fetchone()
        assert best == (w.SEMANTIC, 1.0)
        assert (
            con.execute(
                "SELECT count(*) FROM concept_recovery "
                "WHERE concept IN ('my_effusion', 'left_side')"
            ).fetchone()[0]
            == 0
        )
        probe = con.execute(
            "SELECT probe_auroc FROM concept_probes "
            "WHERE source = 'user' AND concept = 'my_effusion'"
        ).fetchone()[0]
        assert probe >= 0.95
        notes = con.execute("SELECT notes FROM runs WHERE stage = 'analyse'").fetchone()[0]
    finally:
        con.close()
    assert "1 of 41 study ids are not in the store" in notes
    assert "column 'left_side' lacks positives or negatives" in notes
    csv.write_text("study_id,bad\n" + f"{w.sid(0)},maybe\n")
    assert main(["--run", str(run), "--labels", str(csv)]) == 1
    assert "1 values are not 1 / 0 / -1 / blank (line 2: 'maybe')" in caplog.text
