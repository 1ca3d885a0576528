"""What holds a concept back: the weakest strength reaching the target, and the limits it breaks."""

from __future__ import annotations

from tests.unit.test_steer_metrics import row
from workbench.steer.held import broken_limits, format_held_back, held_back
from workbench.steer.report import Limits, summarise


def _arm(method: str, strength: float, n_success: int, n: int = 10, **kw) -> list[dict]:
    """``n`` eligible studies of one arm, the first ``n_success`` flipped."""
    return [row(method, strength, i < n_success, study_id=100 + i, **kw) for i in range(n)]


def _looping(rows: list[dict], study_id: int) -> list[dict]:
    """``rows`` with ``study_id``'s steered report repeating itself."""
    return [r | {"repeat_rate": 0.9} if r["study_id"] == study_id else r for r in rows]


def test_one_looping_report_is_named_as_what_holds_the_concept_back():
    rows = _arm("sae", 1.0, 7) + _looping(_arm("sae", 2.0, 9), 104)
    rows += _looping(_arm("sae", 3.0, 10), 104)  # stronger, also held: the weakest is shown
    rows += _arm("dim", 1.0, 9)  # reaches 80 % within the limits: not held back
    held = held_back(summarise(rows), Limits())
    assert [(h.method, h.strength, h.success) for h in held] == [("sae", 2.0, 0.9)]
    assert held[0].breaks == ("degenerate 1 of 10",)  # no rows given: no study named
    table = format_held_back(rows, summarise(rows), Limits()).splitlines()[1:]
    assert len(table) == 2 and table[1].split()[:5] == ["sae", "pacemaker", "add", "2", "90%"]
    assert table[1].endswith("degenerate 1 of 10 (study 104)")


def test_each_broken_limit_is_named_with_its_value():
    rows = _arm("sae", 1.0, 9, side=("nodule",), ppl=(10.0, 17.0))
    (s,) = summarise(rows)
    assert broken_limits(s, Limits()) == ("side effects 100% > 10%", "perplexity 1.70x > 1.5x")
    assert broken_limits(s, Limits(max_side_effects=1.0, max_ppl_ratio=2.0)) == ()
    over = Limits(over_null=True)
    assert broken_limits(s, over)[0].startswith("side effects above null 100%")


def test_side_effects_above_the_null_control_are_judged_as_the_operating_point_is():
    pushed = _arm("sae", 1.0, 9, side=("nodule",))
    null = _arm("random", 1.0, 0, side=("nodule",), features=[3])
    summaries = summarise(pushed + null)
    assert [h.breaks for h in held_back(summaries, Limits())] == [("side effects 100% > 10%",)]
    assert held_back(summaries, Limits(over_null=True)) == []  # admissible: nothing held back


def test_references_and_arms_below_the_target_are_left_out():
    rows = _arm("counterfactual", 1.0, 10, side=("nodule",)) + _arm("sae", 1.0, 7, side=("edema",))
    assert held_back(summarise(rows), Limits()) == []
    assert format_held_back(rows, summarise(rows), Limits()) == ""
