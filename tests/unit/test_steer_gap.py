"""The gap-share candidate rule and the report's one feature set per concept."""

from __future__ import annotations

import datetime as dt

import pytest
import torch

from tests.unit.test_steer_image import GRID, WIDTH, write_store
from workbench.steer.gap import choose_by_gap, gap_shares
from workbench.steer.image import PatchRegression, patch_regression
from workbench.steer.report import latest_feature_sets

pytestmark = pytest.mark.usefixtures("single_threaded")


def regression(coef_CPW: torch.Tensor, concepts=("a", "b")) -> PatchRegression:
    n_pos = {c: 5 for c in concepts}
    return PatchRegression(tuple(concepts), {"current_frontal": coef_CPW}, {"current_frontal": 9},
                           {"current_frontal": n_pos})  # fmt: skip


def test_shares_split_the_gap_over_the_features():
    W_FD = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    # concept a: feature 0 rises by 2 at patch 0, feature 3 falls by 1 at patch 1 (its absence
    # is part of the concept), feature 2 rises a little at patch 1
    b_PF = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, -1.0]])
    latent = regression(torch.stack([b_PF, torch.zeros(2, 4)]))
    dim = regression(torch.stack([b_PF @ W_FD, torch.ones(2, 3)]))
    shares = gap_shares(dim, latent, W_FD, "a")
    assert shares.sum().item() == pytest.approx(1.0)  # the reconstruction carries all of D
    # |D|^2 = |(2,0,0)|^2 + |(-1,-1,0.5)|^2 = 4 + 2.25
    torch.testing.assert_close(shares, torch.tensor([4.0, 0.0, 0.25, 2.0]) / 6.25)
    got = choose_by_gap(dim, latent, W_FD, ["a", "b"], n=2)
    assert [c.concept for c in got] == ["a"]  # b's features have no gap: no candidate
    assert got[0].features == (0, 3) and got[0].gap_share == pytest.approx(6.0 / 6.25)
    assert choose_by_gap(dim, latent, W_FD, ["a"], n=9)[0].features == (0, 3, 2)  # > 0 only


def test_shares_from_fits_on_a_store_of_exact_reconstructions(tmp_path):
    gen = torch.Generator().manual_seed(3)
    W_FD = torch.randn(3, WIDTH, generator=gen)  # 3 features spanning the 3-wide residual
    labels, acts = {}, {}
    for i in range(24):
        a, b = int(i % 2 == 0), int(i % 3 == 0)
        z_PF = torch.rand(GRID * GRID, 3, generator=gen)
        z_PF[:, 1] += 2.0 * a  # feature 1 carries concept a
        z_PF[:, 2] += 1.0 * b
        labels[200 + i] = {"a": a, "b": b}
        acts[200 + i] = z_PF @ W_FD
    write_store(tmp_path / "s", acts)
    dim = patch_regression(tmp_path / "s", labels, ["a", "b"])
    latent = patch_regression(tmp_path / "s", labels, ["a", "b"],
                              transform=lambda y: y @ torch.linalg.pinv(W_FD))  # fmt: skip
    shares = gap_shares(dim, latent, W_FD, "a")
    assert shares.sum().item() == pytest.approx(1.0, abs=1e-4)
    assert shares.argmax().item() == 1 and shares[1] > 0.9


def row(method, features, at, concept="edema", direction="add"):
    stamp = None if at is None else dt.datetime(2026, 12, 7, at)
    return {"method": method, "features": features, "concept": concept,
            "direction": direction, "created_at": stamp}  # fmt: skip


def test_the_report_takes_the_feature_set_stored_last():
    rows = [row("sae", [1, 2], 9), row("sae", [1, 2], 10), row("sae", [7], 11),
            row("dim", [], 8), row("sae", [1, 2], 12, direction="remove")]  # fmt: skip
    kept, left_out = latest_feature_sets(rows)
    assert left_out == 2
    assert [(r["method"], r["features"], r["direction"]) for r in kept] == [
        ("sae", [7], "add"), ("dim", [], "add"), ("sae", [1, 2], "remove")]  # fmt: skip
    # the null control matched to the SAE maps follows its own last set; an untimed row is
    # the oldest
    nulls = [row("random", [1, 2], 9), row("random", [7], 11), row("random", [], 9),
             row("random", [3], None)]  # fmt: skip
    kept, left_out = latest_feature_sets(nulls)
    assert left_out == 2 and [r["features"] for r in kept] == [[7], []]


def test_along_dim_pushes_as_far_along_the_concept_as_dim():
    from workbench.steer.intervene import SteeringError
    from workbench.steer.maps import along, projection

    gen = torch.Generator().manual_seed(5)
    dim = {"current_frontal": torch.randn(4, 3, generator=gen), "current_lateral": torch.ones(4, 3)}
    sae = {"current_frontal": 0.2 * dim["current_frontal"] + torch.randn(4, 3, generator=gen)}
    share = projection(sae, dim)
    rescaled = along(sae, dim, "edema")
    assert projection(rescaled, dim) == pytest.approx(1.0)
    torch.testing.assert_close(rescaled["current_frontal"], sae["current_frontal"] / share)
    assert projection(dim, dim) == pytest.approx(1.0) and projection(dim, {}) == 0.0
    with pytest.raises(SteeringError, match="edema: the features' map does not point along"):
        along({"current_frontal": -dim["current_frontal"]}, dim, "edema")


def test_a_latent_fit_of_other_features_is_refused():
    W_FD = torch.eye(3)
    latent = regression(torch.zeros(2, 2, 2))  # two columns: a fit of a feature subset
    dim = regression(torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match=r"\[2\] columns for the SAE's 3 features"):
        gap_shares(dim, latent, W_FD, "a")


def test_the_null_control_has_the_norm_of_dim_at_every_patch_and_a_random_direction():
    from workbench.steer.maps import random_like

    gen = torch.Generator().manual_seed(2)
    dim = {
        "current_frontal": torch.randn(6, 8, generator=gen),
        "current_lateral": torch.zeros(6, 8),
    }
    dim["current_lateral"][0, 0] = 3.0
    null = random_like(dim, seed=11)
    for section, m in dim.items():
        torch.testing.assert_close(null[section].norm(dim=-1), m.norm(dim=-1))
    cos = torch.nn.functional.cosine_similarity(null["current_frontal"], dim["current_frontal"])
    assert cos.abs().max() < 0.95  # not the concept's direction
    torch.testing.assert_close(
        random_like(dim, seed=11)["current_frontal"], null["current_frontal"]
    )
    assert not torch.equal(random_like(dim, seed=12)["current_frontal"], null["current_frontal"])
    assert null["current_lateral"][1:].abs().sum() == 0  # zero where dim is zero


def test_the_null_table_lists_side_effects_by_strength():
    from workbench.steer.report import Summary, format_null

    def summ(method, strength, side, features=()):
        return Summary(method, "edema", "add", features, "matched_norm", "add", "image", "v",
                       strength, 20, 20, 0.05, side, 1.1, 0.0, 1.0, 0.0)  # fmt: skip

    rows = [summ("random", 1.0, 0.15), summ("random", 3.0, 0.4), summ("dim", 1.0, 0.9),
            summ("random", 1.0, 0.05, (7, 8))]  # fmt: skip
    text = format_null(rows)
    assert text.startswith("null control")
    lines = [line.split() for line in text.splitlines()[2:]]
    assert lines == [["edema", "add", "dim", "15%", "(5%)", "40%", "(5%)"],
                     ["edema", "add", "sae", "5%", "(5%)", "-"]]  # fmt: skip
    assert format_null([summ("dim", 1.0, 0.9)]) == ""


def test_side_effects_above_the_null_control():
    from workbench.steer.report import Limits, Summary, above_null, operating_points

    def summ(method, strength, success, side, features=()):
        return Summary(method, "edema", "add", features, "u", "add", "image", "v", strength,
                       20, 20, success, side, 1.1, 0.0, 1.0, 0.0)  # fmt: skip

    rows = [summ("dim", 1.0, 0.9, 0.30), summ("random", 1.0, 0.0, 0.25),
            summ("dim", 2.0, 1.0, 0.50), summ("random", 2.0, 0.1, 0.30),
            summ("sae", 1.0, 0.8, 0.11, (4, 5)), summ("random", 1.0, 0.0, 0.02, (4, 5)),
            summ("prompt", 1.0, 0.5, 0.2)]  # fmt: skip
    net = {(s.method, s.strength, s.features): s.side_effects for s in above_null(rows)}
    assert net[("dim", 1.0, ())] == pytest.approx(0.05) and net[("dim", 2.0, ())] == pytest.approx(
        0.2
    )
    assert net[("sae", 1.0, (4, 5))] == pytest.approx(0.09)  # against its own norm's null
    assert net[("prompt", 1.0, ())] == 0.2  # no control of its kind: unchanged
    raw = operating_points(rows, Limits())
    assert raw[("dim", "edema", "add")] is None and raw[("sae", "edema", "add")] is None
    over = operating_points(rows, Limits(over_null=True))
    assert over[("dim", "edema", "add")].strength == 1.0
    assert over[("sae", "edema", "add")].success == 0.8


def test_the_orthogonal_map_has_no_part_along_the_other_maps():
    from workbench.steer.maps import orthogonal_to, projection

    gen = torch.Generator().manual_seed(3)
    shape = (6, 8)
    a = {"current_frontal": torch.randn(shape, generator=gen),
         "current_lateral": torch.randn(shape, generator=gen)}  # fmt: skip
    b = {"current_frontal": torch.randn(shape, generator=gen)}  # no lateral: zero there
    c = {"current_frontal": a["current_frontal"] + torch.randn(shape, generator=gen),
         "current_lateral": torch.randn(shape, generator=gen)}  # fmt: skip
    out = orthogonal_to(a, [b, c])
    assert set(out) == set(a) and out["current_lateral"].shape == shape
    for other in (b, c):
        assert abs(projection(out, other)) < 1e-5
    # what was taken away lies in the span of b and c: a second pass changes nothing
    again = orthogonal_to(out, [b, c])
    for s in a:
        torch.testing.assert_close(again[s], out[s], atol=1e-5, rtol=1e-5)
    # a map already orthogonal to the others is returned as it is
    lateral_only = {"current_lateral": torch.randn(shape, generator=gen)}
    kept = orthogonal_to(lateral_only, [b])
    torch.testing.assert_close(kept["current_lateral"], lateral_only["current_lateral"])
    assert orthogonal_to(a, [])["current_frontal"].equal(a["current_frontal"])


def test_each_concept_is_made_orthogonal_to_the_others_it_has_a_map_of():
    from workbench.steer.maps import _orthogonal, projection

    gen = torch.Generator().manual_seed(4)
    coef = torch.randn(3, 4, 5, generator=gen)
    reg = regression(coef, concepts=("a", "b", "c"))
    reg.n_pos["current_frontal"]["c"] = 0  # no study with c: c has no map to avoid
    out = _orthogonal(reg, "a", reg.concept_map("a"))
    assert abs(projection(out, reg.concept_map("b"))) < 1e-5
    assert abs(projection(out, {"current_frontal": coef[2]})) > 1e-3  # c left alone


def test_a_zero_or_repeated_other_map_takes_nothing_more_away():
    from workbench.steer.maps import orthogonal_to

    gen = torch.Generator().manual_seed(9)
    a = {"current_frontal": torch.randn(4, 3, generator=gen)}
    b = {"current_frontal": torch.randn(4, 3, generator=gen)}
    zero = {"current_frontal": torch.zeros(4, 3)}
    once = orthogonal_to(a, [b])["current_frontal"]
    for others in ([b, zero], [b, b], [zero, b, {"current_frontal": 2 * b["current_frontal"]}]):
        torch.testing.assert_close(orthogonal_to(a, others)["current_frontal"], once)
    torch.testing.assert_close(orthogonal_to(a, [zero])["current_frontal"], a["current_frontal"])
