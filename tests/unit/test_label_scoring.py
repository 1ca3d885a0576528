"""Detection metrics on hand-computed cases; prompt rendering and answer parsing."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest

from workbench.label import prompts
from workbench.label.backends import LabelError, PrivacyError, check_endpoint, is_local
from workbench.label.prompts import Example, MalformedAnswerError
from workbench.label.scoring import chunks, detection_metrics, shuffled


def test_detection_metrics_hand_computed():
    # truth    1 1 1 1 0 0 0 0 0 0
    # predict  1 1 0 0 1 0 0 0 0 0  -> tp 2, fn 2, fp 1, tn 5
    truth = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    pred = [1, 1, 0, 0, 1, 0, 0, 0, 0, 0]
    m = detection_metrics(truth, pred)
    assert (m.n, m.n_active) == (10, 4)
    assert m.accuracy == pytest.approx(0.7)
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(0.5)
    assert m.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))  # 4/7
    assert m.balanced_accuracy == pytest.approx((0.5 + 5 / 6) / 2)
    assert m.auroc is None
    assert dict(m.rows())["f1"] == pytest.approx(4 / 7)
    assert "auroc" not in dict(m.rows())


def test_metrics_not_computable_are_none():
    m = detection_metrics([1, 1], [0, 0])  # no predicted positive, no negative class
    assert m.precision is None and m.balanced_accuracy is None
    assert m.recall == 0.0 and m.f1 == 0.0
    with pytest.raises(ValueError, match="2 truths but 1"):
        detection_metrics([1, 0], [1])


def test_detection_auroc_with_ties_matches_pair_counting():
    truth = [1, 0, 1, 0, 1, 0]
    scores = [0.9, 0.9, 0.4, 0.1, 0.4, 0.6]
    pairs = [(p, n) for p, t in zip(scores, truth) if t for n, u in zip(scores, truth) if not u]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert detection_metrics(truth, [1, 1, 0, 0, 0, 1], scores).auroc == pytest.approx(expected)


def test_shuffle_keeps_truth_aligned_and_chunks():
    items, truth = shuffled(["a", "b", "c"], ["x", "y"], seed=3)
    assert sorted(items) == ["a", "b", "c", "x", "y"]
    assert all((it in "abc") == bool(t) for it, t in zip(items, truth))
    assert shuffled(["a", "b", "c"], ["x", "y"], seed=3) == (items, truth)
    assert chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]


def test_mark_tokens_merges_runs_and_keeps_spaces_outside():
    tokens = (" Small", " left", " pleural", " effusion", " .")
    acts = (0.0, 0.0, 0.8, 1.5, 0.0)
    assert prompts.mark_tokens(tokens, acts, 0.0) == " Small left <<pleural effusion>> ."
    assert prompts.mark_tokens((" a", " b"), (1.0, 0.0), 0.0) == " <<a>> b"
    assert prompts.mark_tokens((" a", " b"), (0.0, 2.0), 0.0) == " a <<b>>"


def test_levels_and_rendering():
    assert [prompts.level(a, 2.0) for a in (0.0, 0.19, 0.2, 1.0, 2.0, 9.0)] == [0, 0, 1, 5, 10, 10]
    text = Example(1, "text", (" left", " pacemaker"), (0.0, 2.0), 1, 2.0)
    rendered = prompts.render_for_explainer(text, max_act=2.0)
    assert "left <<pacemaker>>" in rendered and '("pacemaker", 10)' in rendered
    assert prompts.render_for_judge(text) == "left pacemaker"
    image = Example(2, "image", ("<image>",), (1.0,), 0, 1.0, findings="Pacemaker.", patch=(0, 2))
    rendered = prompts.render_for_explainer(image, max_act=2.0)
    assert "row 0, column 2" in rendered and "activation 5/10" in rendered
    assert "Pacemaker." in rendered and "<image>" not in prompts.render_for_judge(image)


def test_parse_explanation():
    answer = "Step 1: look.\n[EXPLANATION]: Cardiac pacemaker devices\n"
    assert prompts.parse_explanation(answer) == "Cardiac pacemaker devices"
    assert prompts.parse_explanation("just one line") == "just one line"
    assert prompts.parse_explanation('**[EXPLANATION]: "effusion"**') == "effusion"
    for bad in ("", "  \n "):
        with pytest.raises(MalformedAnswerError):
            prompts.parse_explanation(bad)
    from workbench.label.text import clean_label

    with pytest.raises(MalformedAnswerError, match="500 characters"):
        clean_label(prompts.parse_explanation("x" * 500))  # the length bound is clean_label's


def test_parse_detection():
    assert prompts.parse_detection("Reasoning [1]. Answer: [1, 0, 1]", 3) == [1, 0, 1]
    assert prompts.parse_detection("['1','0']", 2) == [1, 0]
    for bad in ("[1, 0]", "[1, 2, 0]", "no list", None):
        with pytest.raises(MalformedAnswerError, match="list of 3"):
            prompts.parse_detection(bad, 3)


def _tok(token, alts):
    return SimpleNamespace(
        token=token,
        logprob=alts[token],
        top_logprobs=[SimpleNamespace(token=t, logprob=lp) for t, lp in alts.items()],
    )


def test_detection_probabilities_from_logprobs():
    content = [
        _tok("[", {"[": 0.0}),
        _tok("1", {"1": math.log(0.6), "0": math.log(0.2)}),
        _tok(",", {",": 0.0}),
        _tok(" 0", {" 0": math.log(0.9), " 1": math.log(0.1)}),
        _tok("]", {"]": 0.0}),
    ]
    assert prompts.detection_probabilities(content, 2) == pytest.approx([0.75, 0.1])
    assert prompts.detection_probabilities(content, 3) is None
    assert prompts.detection_probabilities(None, 2) is None


def test_local_endpoints_only_unless_allowed():
    for url in ("http://127.0.0.1:8000/v1", "http://localhost:11434/v1", "http://[::1]:80/v1"):
        assert is_local(url)
        check_endpoint(url, allow_remote=False)
    for url in ("https://api.openai.com/v1", "http://10.0.0.5:8000/v1", "http://127.0.0.1.evil.io"):
        assert not is_local(url)
        with pytest.raises(PrivacyError, match="--allow-remote"):
            check_endpoint(url, allow_remote=False)
        check_endpoint(url, allow_remote=True)
    with pytest.raises(LabelError, match="not an http"):
        check_endpoint("ftp://127.0.0.1/v1", allow_remote=True)


def test_label_presets_load():
    from pathlib import Path

    from workbench.config import load_config
    from workbench.label.run import LabelConfig

    root = Path(__file__).resolve().parents[2] / "configs"
    offline = load_config(LabelConfig, root / "label-offline.toml")
    assert offline.backend == "offline" and offline.top_n == 0
    llm = load_config(LabelConfig, root / "label-local-llm.toml")
    assert llm.backend == "openai" and llm.logprobs and llm.base_url.startswith("http://127.0.0.1")


def test_split_examples_never_scores_a_shown_token():
    from workbench.label.data import split_examples

    def ex(row, act):
        return Example(row, "text", (" a",), (act,), 0, act, row=row)

    top = [ex(r, 10 - r) for r in range(6)]  # rows 0..5, strongest first
    quantile = [(2, ex(1, 9.0)), (2, ex(7, 8.5)), (1, ex(8, 5.0)), (1, ex(9, 4.0)), (0, ex(10, 1))]
    shown, held = split_examples(top, quantile, n_explain=4)
    assert [e.row for e in shown] == [0, 1, 2, 3]
    # quantiles in turn, highest first, the shown row 1 dropped; then the unused top rows
    assert [e.row for e in held] == [7, 8, 10, 9, 4, 5]
    few_shown, few_held = split_examples(top[:3], [], n_explain=20)  # keep a third to score
    assert [e.row for e in few_shown] == [0, 1] and [e.row for e in few_held] == [2]
    assert split_examples([], [], n_explain=5) == ([], [])


def test_offline_backend_on_image_examples():
    from workbench.label.offline import OfflineBackend

    ex = Example(2, "image", ("<image>",), (1.0,), 0, 1.0, patch=(1, 1), labels=("Cardiomegaly",))
    assert "the study is labelled with: Cardiomegaly" in prompts.render_for_judge(ex)
    offline = OfflineBackend()
    shown = [ex, ex._replace(study_id=3, labels=("cardiomegaly", "Edema")), ex._replace(study_id=5)]
    expl = offline.explain(0, shown, 1.0)  # edema in 1 of 3 studies: not common enough
    assert expl.text == "image patches in studies with cardiomegaly"
    edema = ex._replace(labels=("Edema",))
    assert offline.detect(0, "cardiomegaly (AUROC 0.9)", [ex, edema]).predicted == [1, 0]
    effusion = ex._replace(findings="Small left pleural effusion.", labels=())
    assert offline.detect(0, "pleural_effusion (AUROC 1.00)", [effusion, ex]).predicted == [1, 0]
    text = Example(4, "text", (" No", " pleural", " effusion", "."), (0, 1.0, 2.0, 0), 2, 2.0)
    # a quoted token hits a text example even when the labeller reads the concept as negated
    assert offline.detect(0, 'report tokens "effusion"', [text]).predicted == [1]
    assert offline.detect(0, "pleural effusion", [text]).predicted == [0]


def test_fuzz_set_pairs_true_and_misplaced_marks():
    from workbench.label.scoring import fuzz_set, misplace_marks

    ex = Example(1, "text", (" a", " b", " c", " d"), (0.0, 2.0, 0.5, 0.0), 1, 2.0)
    moved = misplace_marks(ex, random.Random(0))
    assert sorted(moved.acts) == [0.0, 0.0, 1.0, 1.0]
    assert moved.acts[1] == moved.acts[2] == 0.0  # only silent tokens get the marks
    assert misplace_marks(ex._replace(acts=(1.0, 1.0, 1.0, 0.0)), random.Random(0)) is None
    image = Example(2, "image", ("<image>",), (1.0,), 0, 1.0)
    items, truth = fuzz_set([ex, image], seed=1)
    assert len(items) == 2 and sorted(truth) == [0, 1]
    assert items[truth.index(1)] == ex and items[truth.index(0)].tokens == ex.tokens
    msg = prompts.fuzz_messages("b tokens", items)[1]["content"]
    assert "Example 1:" in msg and "<<" in msg and "Return a list of 2 values" in msg
