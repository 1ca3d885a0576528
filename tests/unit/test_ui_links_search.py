"""Pure pieces of the app: deep links, search tiers, concept names, label scores."""

from __future__ import annotations

import json

import pytest

from workbench.ui import labels, links, search


@pytest.mark.parametrize(
    ("query", "expect"),
    [
        ({}, links.Route("features")),
        ({"feature": "12"}, links.Route("feature", feature=12)),
        ({"study": "5", "feature": "3"}, links.Route("study", feature=3, study=5)),
        ({"study": "5"}, links.Route("study", study=5)),
        ({"tab": "sql"}, links.Route("sql")),
        ({"tab": "SQL "}, links.Route("sql")),
        ({"tab": "features", "q": " effusion "}, links.Route("features", search="effusion")),
    ],
)
def test_route_opens_the_named_view(query, expect):
    assert links.route(query) == expect


def test_route_says_what_it_could_not_read():
    bad = links.route({"feature": "abc", "tab": "nope"})
    assert bad.tab == "features" and bad.feature is None
    assert "?feature=abc is not a feature number" in bad.problem
    assert "?tab=nope is not a tab (tabs: features, feature, study, steering, try, " in bad.problem
    assert links.route({"feature": "-3"}).problem == "?feature=-3 is not a feature number"
    assert links.route({"feature": "1.5"}).problem == "?feature=1.5 is not a feature number"
    assert links.route({}, open_feature=7) == links.Route("feature", feature=7)
    assert links.route({"tab": "steer"}, tabs=("features", "steer")).tab == "steer"


def test_query_round_trips_through_route():
    for tab, f, s, q in [
        ("feature", 4, None, ""),
        ("study", 2, 9, ""),
        ("runs", None, None, ""),
        ("features", None, None, "no effusion"),
        ("features", None, None, ""),
    ]:
        url = links.query(tab, f, s, q)
        params = dict(p.split("=", 1) for p in url.lstrip("?").split("&") if p)
        params = {k: v.replace("+", " ") for k, v in params.items()}
        assert links.route(params) == links.Route(tab, f if tab != "runs" else None, s, q)
    assert links.query("features") == ""


@pytest.mark.parametrize(
    ("phrase", "negated"),
    [("No pneumothorax", True), ("or pneumothorax.", True), ("without pneumothorax", True),
     ("there is no focal pneumothorax", True), ("small pneumothorax", False),
     ("pneumothorax", False), ("for pneumothorax", False)],
)  # fmt: skip
def test_negated_phrases(phrase, negated):
    assert search.is_negated(phrase, "pneumothorax") is negated


def test_match_tiers():
    known = {"label": 'effusion (AUROC 0.99); report: "No effusion"', "method": "statistical"}
    assert search.match_reason("effusion", 3, known, [known]).tier == 1
    other = {"label": "fluid in the pleural space: effusion", "method": "llm:x"}
    quoted = {"label": 'report: "small effusion"', "method": "statistical"}
    assert search.match_reason("effusion", 3, quoted, [quoted, other]).tier == 2
    assert search.match_reason("effusion", 3, quoted, [quoted]).why == (
        "only in report phrase “small effusion”"
    )
    neg = {"label": 'report: "No effusion", "or effusion"', "method": "statistical"}
    assert search.match_reason("effusion", 3, neg, [neg]).tier == 4
    assert search.match_reason("3", 3, neg, []).tier == 0
    rows = [
        {"feature": 1, "label": neg["label"], "method": "statistical", "matched": [neg],
         "frequency": 0.5},
        {"feature": 2, "label": known["label"], "method": "statistical", "matched": [known],
         "frequency": 0.01},
        {"feature": 3, "label": known["label"], "method": "statistical", "matched": [known],
         "frequency": None},
    ]  # fmt: skip
    ranked = search.rank(rows, "effusion", "frequency", descending=True)
    assert [r["feature"] for r in ranked] == [2, 3, 1]  # tier first; missing values last


def test_concept_names_and_values():
    assert search.norm_concept("Pleural_Effusion ") == "pleural effusion"
    assert search.concept_display("Pleural Effusion", "chexpert") == "pleural effusion · CheXpert"
    assert search.concept_display("cardiomegaly", "phantom") == "cardiomegaly · ground truth"
    known = [{"concept": "Cardiomegaly", "source": "chexpert"},
             {"concept": "cardiomegaly", "source": "phantom"},
             {"concept": "heart: big", "source": "user"}]  # fmt: skip
    assert search.parse_concept("chexpert:Cardiomegaly", known) == ("chexpert", "Cardiomegaly")
    assert search.parse_concept("user:heart: big", known) == ("user", "heart: big")
    assert search.parse_concept("Cardiomegaly", known) == ("chexpert", "Cardiomegaly")  # exact
    assert search.parse_concept("CARDIOMEGALY", known) == ("phantom", "cardiomegaly")  # truth
    assert search.parse_concept("pacemaker", known) is None


def _label(method, text, score=None, concept=None):
    details = json.dumps({"best_concept": concept}) if concept else None
    return {"method": method, "label": text, "score": score, "details": details}


def test_named_scores_and_blank_reasons():
    stat = _label("statistical", "effusion (AUROC 0.97); mostly image tokens", 0.97, "effusion")
    rows = [
        {"method": "statistical", "scorer": "detection:offline", "metric": "balanced_accuracy",
         "value": 0.8, "n_examples": 20},
        {"method": "statistical", "scorer": "detection:llm:x", "metric": "balanced_accuracy",
         "value": 0.9, "n_examples": 20},
        {"method": "statistical", "scorer": "detection:offline", "metric": "f1", "value": 0.1,
         "n_examples": 20},
        {"method": "llm:x", "scorer": "fuzz:llm:x", "metric": "balanced_accuracy", "value": 0.7,
         "n_examples": 10},
    ]  # fmt: skip
    scores = labels.named_scores(stat, rows)
    assert [s.text() for s in scores] == [
        "concept AUROC 0.97",
        "detection balanced accuracy 0.85",  # two judges averaged
    ]
    blanks = labels.blank_reasons(stat, scores, {"detection", "fuzz"}, dead=False)
    assert "fuzzing: not scored for this label (see the label notes in the Runs tab)" in blanks
    assert "simulation: not run on this database (`label --simulation`)" in blanks
    weak = _label("statistical", "mostly prompt tokens", 0.55, "effusion")
    assert labels.named_scores(weak, []) == []  # the label names no concept: no AUROC claim
    assert "below the threshold" in labels.blank_reasons(weak, [], set(), dead=False)[0]
    assert "not run yet" in labels.blank_reasons(weak, [], set(), dead=False)[1]
    assert labels.blank_reasons(weak, [], set(), dead=True)[0].startswith("no scores")


def test_why_a_label_leads():
    card = labels.LabelCard("llm:x", "a", None, 0.9, [], [])
    assert labels.why_leads([card]) == "the only label of this feature"
    assert "highest score of 2 labels: 0.90" in labels.why_leads([card, card])
    human = card._replace(method="human", rank_score=None)
    assert "person" in labels.why_leads([human, card])
    assert "no label is scored yet" in labels.why_leads([card._replace(rank_score=None), card])
