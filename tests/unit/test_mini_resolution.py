"""maira2-mini stage 1 at a new input size: the tower's position embeddings are resampled."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import Dinov2Backbone

from workbench.models.mini.config import MiniConfig, vision_config
from workbench.models.mini.vision import encoder_tokens, resized_tower_state


def _tower(image_size: int) -> Dinov2Backbone:
    cfg = dataclasses.replace(
        MiniConfig(), image_size=image_size, vision_hidden=64, vision_layers=2
    )
    torch.manual_seed(0)
    return Dinov2Backbone(vision_config(cfg)).eval()


def test_a_resized_tower_computes_what_the_original_computes_on_the_larger_input():
    small = _tower(64)  # 4 x 4 patches
    with torch.no_grad():
        small.embeddings.position_embeddings.normal_()  # a non-trivial grid to resample
    large = _tower(96)  # 6 x 6 patches
    large.load_state_dict(resized_tower_state(small.state_dict(), grid=6))
    assert large.embeddings.position_embeddings.shape == (1, 37, 64)
    pixels = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = encoder_tokens(small, pixels)  # Dinov2 interpolates on the fly
        got = encoder_tokens(large, pixels)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    cls = "embeddings.position_embeddings"
    assert torch.equal(large.state_dict()[cls][:, 0], small.state_dict()[cls][:, 0])


def test_the_same_grid_is_left_alone_and_a_non_square_grid_is_refused():
    state = _tower(64).state_dict()
    assert resized_tower_state(state, grid=4) is state
    bad = {**state, "embeddings.position_embeddings": torch.zeros(1, 1 + 12, 64)}
    with pytest.raises(ValueError, match="position_embeddings: 12 patch positions"):
        resized_tower_state(bad, grid=6)
