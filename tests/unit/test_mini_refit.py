"""Stage 1b: the dense head refitted on frozen tokens (localisation loss, fit, config)."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.config import ConfigError
from workbench.models.mini.probe import pointing_game
from workbench.models.mini.refit import RefitConfig, localisation_loss, refit_dense


def test_localisation_loss_is_the_cross_entropy_against_the_normalised_mask():
    cover_BPK = torch.zeros(1, 4, 2)
    cover_BPK[0, 1, 0] = 0.5  # channel 0: half of patch 1 and all of patch 2
    cover_BPK[0, 2, 0] = 1.0  # channel 1: no mask, left out of the mean
    logits_BPK = torch.tensor([[[0.0, 5.0], [1.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])
    log_p = torch.log_softmax(logits_BPK[0, :, 0], dim=0)
    expected = -(log_p[1] / 3 + 2 * log_p[2] / 3)
    assert localisation_loss(logits_BPK, cover_BPK).item() == pytest.approx(expected.item())
    peaked_inside = torch.zeros(1, 4, 2)
    peaked_inside[0, 2, 0] = 4.0
    peaked_outside = torch.zeros(1, 4, 2)
    peaked_outside[0, 3, 0] = 4.0
    assert localisation_loss(peaked_inside, cover_BPK) < localisation_loss(
        peaked_outside, cover_BPK
    )


def test_localisation_loss_is_zero_with_a_gradient_when_no_image_has_a_mask():
    logits = torch.randn(2, 4, 3, requires_grad=True)
    loss = localisation_loss(logits, torch.zeros(2, 4, 3))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def synthetic_tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens whose lesion patch carries a faint direction under much larger noise; channel 0
    covers that one patch in every image."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, 16, 8, generator=gen)
    cover = torch.zeros(n, 16, 1)
    where = torch.randint(0, 16, (n,), generator=gen)
    tokens[torch.arange(n), where, 0] += 4.0
    cover[torch.arange(n), where, 0] = 1.0
    return tokens.to(torch.float16), cover.to(torch.float16)


def test_refit_learns_a_head_that_points_at_the_lesion():
    tokens, cover = synthetic_tokens(256, seed=0)
    test_tokens, test_cover = synthetic_tokens(128, seed=1)
    torch.manual_seed(0)
    dense = torch.nn.Linear(8, 1)
    with torch.no_grad():
        dense.weight.copy_(torch.tensor([[-1.0, 1, 0, 0, 0, 0, 0, 0]]))  # points away at first
    before, _ = pointing_game(dense(test_tokens.float()).detach(), test_cover.float(), 0)
    history = refit_dense(dense, tokens, cover, RefitConfig(epochs=10, batch=32, lr=5e-2))
    after, n = pointing_game(dense(test_tokens.float()).detach(), test_cover.float(), 0)
    assert n == 128 and before < 0.2 and after > 0.85
    assert history[-1] < history[0] and all(math.isfinite(h) for h in history)


def test_refit_is_deterministic_for_a_seed():
    tokens, cover = synthetic_tokens(64, seed=2)
    heads = []
    for _ in range(2):
        torch.manual_seed(0)
        dense = torch.nn.Linear(8, 1)
        refit_dense(dense, tokens, cover, RefitConfig(epochs=2, batch=16, seed=3))
        heads.append(dense.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0),
        ("batch", 0),
        ("lr", 0.0),
        ("localisation_weight", -1.0),
        ("pos_weight_cap", 0.5),
    ],
)
def test_refit_config_names_the_bad_field(field, value):
    with pytest.raises(ConfigError, match=field):
        RefitConfig(**{field: value}).validate()


def test_refit_never_writes_over_the_models_own_heads(tmp_path):
    with pytest.raises(ConfigError, match="'out'"):
        RefitConfig(model=tmp_path, out=tmp_path).validate()
