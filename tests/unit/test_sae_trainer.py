"""Trainer pieces: plan resolution and refusals, learning-rate schedule, geometric median."""

from __future__ import annotations

import pytest
import torch

from workbench.config import ConfigError
from workbench.sae.config import TrainSAEConfig
from workbench.sae.data import DataError, TensorSource, geometric_median
from workbench.sae.plan import lr_factor, make_plan


def test_plan_resolves_defaults():
    src = TensorSource(torch.zeros(10_000, 32))
    plan = make_plan(TrainSAEConfig(batch_size=1000, warmup_steps=1000), src, 10_000)
    assert (plan.d_in, plan.d_sae, plan.steps, plan.k_aux) == (32, 128, 10, 16)
    assert plan.group_sizes == (8, 24, 96) and sum(plan.group_sizes) == 128
    assert plan.lr == pytest.approx(2e-4 / (128 / 2**14) ** 0.5)
    assert plan.warmup == 1  # capped at a tenth of a 10-step run


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (TrainSAEConfig(d_in=31), "width 32"),
        (TrainSAEConfig(expansion_factor=0.5, k=17), "k=17"),
        (TrainSAEConfig(batch_size=20_000), "smaller than one batch"),
        (TrainSAEConfig(d_sae=64, group_sizes=(8, 8)), "sum to 16"),
    ],
)
def test_plan_refuses(cfg, match):
    with pytest.raises((DataError, ValueError), match=match):
        make_plan(cfg, TensorSource(torch.zeros(10_000, 32)), 10_000)


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="k=40 is larger than d_sae=32"):
        TrainSAEConfig(d_sae=32, k=40).validate()
    with pytest.raises(ConfigError, match="decay_start"):
        TrainSAEConfig(decay_start=0).validate()


def test_lr_schedule_warms_up_holds_and_decays():
    src = TensorSource(torch.zeros(100_000, 8))
    plan = make_plan(TrainSAEConfig(batch_size=1000, warmup_steps=5), src, 100_000)
    f = [lr_factor(s, plan, decay_start=0.8) for s in range(plan.steps)]
    assert f[0] == pytest.approx(0.2) and f[4] == 1.0 and f[50] == 1.0
    assert f[80] == 1.0 and f[90] == pytest.approx(0.5) and f[99] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(f[5:], f[6:]))


def test_geometric_median_ignores_outliers():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(200, 3, generator=g) * 0.1 + torch.tensor([1.0, 2.0, 3.0])
    pts[:20] = 1000.0  # the mean would move far; the median stays
    med = geometric_median(pts)
    torch.testing.assert_close(med, torch.tensor([1.0, 2.0, 3.0]), atol=0.05, rtol=0)
