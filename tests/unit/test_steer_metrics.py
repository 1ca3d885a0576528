"""How steered findings are judged and how the operating point is chosen (no model needed)."""

from __future__ import annotations

import pytest

from workbench.steer import metrics
from workbench.steer.peers import prompt_indication, with_indication
from workbench.steer.report import (
    Limits,
    admissible,
    format_report,
    format_side_effects,
    format_side_effects_by_study,
    format_sweep,
    operating_points,
    summarise,
)


def test_concept_readings_from_the_labeller():
    assert metrics.concept_value("Left chest wall pacemaker.", "pacemaker") == 1
    assert metrics.concept_value("No pacemaker.", "pacemaker") == 0
    assert metrics.concept_value("Heart size is normal.", "pacemaker") is None
    assert metrics.concept_value("Small left pleural effusion.", "Pleural Effusion") == 1
    r = metrics.readings("Small left pleural effusion. No pneumothorax.")
    assert r["pleural_effusion"] == 1 and r["pneumothorax"] == 0 and r["pacemaker"] is None
    assert set(r) == set(metrics.JUDGED) and len(metrics.JUDGED) == 13


@pytest.mark.parametrize(
    ("base", "steered", "direction", "expected"),
    [
        (None, 1, "add", (True, True)),
        (0, 1, "add", (True, True)),
        (0, -1, "add", (True, False)),  # uncertain is not stated
        (1, 1, "add", (False, False)),  # already stated: cannot flip
        (1, 0, "remove", (True, True)),
        (1, None, "remove", (True, True)),
        (1, 1, "remove", (True, False)),
        (None, None, "remove", (False, False)),
    ],
)
def test_flip(base, steered, direction, expected):
    assert metrics.flip(base, steered, direction) == expected


def test_side_effects_are_other_concepts_changing_state():
    base = metrics.readings("Small left pleural effusion. No pneumothorax.")
    steered = metrics.readings("Left chest wall pacemaker. Small right pneumothorax.")
    assert metrics.side_effects(base, steered, "pacemaker") == ["pleural_effusion", "pneumothorax"]
    assert metrics.side_effects(base, base, "pacemaker") == []


def test_repeat_rate_and_parsing():
    normal = "Heart size is normal. Lungs are clear. No pleural effusion or pneumothorax."
    assert metrics.repeat_rate(normal) == 0.0
    stuck = "The heart with with with with with with with with with with with with with"
    assert metrics.repeat_rate(stuck) > 0.7
    assert metrics.repeat_rate("") == 0.0
    assert metrics.parses(normal)
    assert not metrics.parses("")
    assert not metrics.parses(" ".join(["word"] * 45) + ".")  # a 45-word run-on
    j = metrics.judge(None, None, stuck)
    assert j.perplexity is None and metrics.degenerate(j)
    assert not metrics.degenerate(metrics.judge(None, None, normal))


def row(method, strength, success, side=(), ppl=(10.0, 11.0), repeat=0.0, parses=True, **kw):
    base = {
        "method": method,
        "concept": "pacemaker",
        "direction": "add",
        "features": [3] if method == "sae" else [],
        "unit": "max_act",
        "mode": "add",
        "positions": "all",
        "variant": "max_new_tokens=80",
        "strength": strength,
        "study_id": 1,
        "eligible": success is not None,
        "success": bool(success),
        "side_effects": list(side),
        "baseline_ppl": ppl[0],
        "steered_ppl": ppl[1],
        "repeat_rate": repeat,
        "parses": parses,
    }
    return base | kw


def test_summaries_and_the_operating_point():
    rows = [
        row("sae", 1.0, True, study_id=1),
        row("sae", 1.0, False, study_id=2),
        row("sae", 4.0, True, study_id=1),
        row("sae", 4.0, True, study_id=2, side=["nodule"]),  # 50 % side effects
        row("sae", 2.0, True, study_id=1, ppl=(10.0, 40.0)),  # perplexity 4x
        row("sae", 2.0, True, study_id=2, ppl=(10.0, 40.0)),
        row("dim", 0.5, True, study_id=1),
        row("dim", 0.5, True, study_id=2, repeat=0.9),  # degenerate
        row("prompt", 1.0, None, study_id=1),  # baseline already stated: not eligible
        row("prompt", 1.0, True, study_id=2),
    ]
    summaries = summarise(rows)
    by = {(s.method, s.strength): s for s in summaries}
    assert by[("sae", 1.0)].success == 0.5 and by[("sae", 1.0)].n == 2
    assert by[("sae", 4.0)].side_effects == 0.5
    assert by[("sae", 2.0)].ppl_ratio == pytest.approx(4.0)
    assert by[("dim", 0.5)].degenerate == 0.5
    assert by[("prompt", 1.0)].n_eligible == 1 and by[("prompt", 1.0)].success == 1.0
    limits = Limits()
    assert admissible(by[("sae", 1.0)], limits)
    assert not admissible(by[("sae", 4.0)], limits)
    assert admissible(by[("sae", 4.0)], limits._replace(max_side_effects=0.5))
    points = operating_points(summaries, limits)
    assert points[("sae", "pacemaker", "add")].strength == 1.0
    assert points[("dim", "pacemaker", "add")] is None
    assert points[("prompt", "pacemaker", "add")].success == 1.0
    table = format_report(summaries, limits)
    assert "pacemaker" in table and "side effects <= 10%" in table
    assert "SAE >= 80% success at its operating point for 0 of 1" in table
    assert "difference of means for 1 of 1" in table  # 50 % >= none
    sweep = format_sweep(summaries).splitlines()
    assert sweep[0].split()[:3] == ["method", "concept", "dir"] and len(sweep) == 6


def test_side_effects_by_concept_are_shares_of_each_methods_reports():
    rows = [
        row("sae", 1.0, True, side=["nodule", "edema"]),
        row("sae", 2.0, True, side=["nodule"]),
        row("sae", 3.0, False),
        row("sae", 4.0, False),
        row("counterfactual", 1.0, True, side=["edema"]),
        row("counterfactual", 1.0, True, study_id=2),
    ]
    lines = format_side_effects(rows).splitlines()
    assert lines[1].split() == ["flipped", "concept", "sae", "counterfactual"]
    assert lines[2].split() == ["reports", "4", "2"]
    table = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert table == {"nodule": ["50%", "0%"], "edema": ["25%", "50%"]}
    assert list(table) == ["edema", "nodule"]  # most frequent over all methods first
    assert "no other concept flipped" in format_side_effects([row("sae", 1.0, True)])


def test_side_effects_by_study_tell_a_fragile_study_from_a_general_push():
    fragile = [row("sae", s, True, side=["nodule"], study_id=1) for s in (1.0, 2.0, 3.0)]
    calm = [row("sae", 1.0, True, study_id=i) for i in (2, 3, 4, 5)]
    everywhere = [row("dim", 1.0, True, side=["edema"], study_id=i) for i in (1, 2, 3, 4)]
    lines = format_side_effects_by_study(fragile + calm + everywhere, top=1).splitlines()
    assert lines[1].split() == ["method", "reports", "studies", "side", "top", "1", "share",
                                "side", "without", "them"]  # fmt: skip
    table = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert table["sae"] == ["7", "5", "43%", "100%", "0%"]  # one study carries every flip
    assert table["dim"] == ["4", "4", "100%", "25%", "100%"]  # the push flips everywhere
    assert list(table) == ["sae", "dim"]


def test_ties_go_to_the_weaker_strength():
    rows = [row("sae", 10.0, True), row("sae", 2.0, True), row("sae", 4.0, True)]
    summaries = summarise(rows)
    assert [s.strength for s in summaries] == [2.0, 4.0, 10.0]  # numeric order
    points = operating_points(summaries, Limits())
    assert points[("sae", "pacemaker", "add")].strength == 2.0


def test_prompt_baseline_names_the_concept():
    add = prompt_indication("71-year-old woman with cough", "pacemaker", "add")
    assert add == "71-year-old woman with pacemaker, evaluate lead position"
    assert prompt_indication(None, "cardiomegaly", "add") == "Patient, evaluate for cardiomegaly"
    assert prompt_indication("71-year-old man, fall", "pleural_effusion", "remove") == (
        "71-year-old man, no pleural effusion"
    )
    assert "pacemaker" in prompt_indication("", "pacemaker", "add").lower()
    assert with_indication({"indication": "x", "frontal": 1}, "y") == {
        "indication": "y",
        "frontal": 1,
    }
