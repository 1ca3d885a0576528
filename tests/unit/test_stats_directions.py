"""Decoder geometry: logit effects and nearest neighbours against dense computations."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from workbench.analyse.directions import (
    Unembedding,
    logit_effects,
    matryoshka_groups,
    nearest_neighbors,
)


def _cat(tables) -> dict:
    return pa.concat_tables(list(tables)).to_pydict()


def test_logit_effects_top_and_bottom_tokens_in_blocks():
    g = torch.Generator().manual_seed(0)
    W_dec, W_U = torch.randn(7, 5, generator=g), torch.randn(5, 30, generator=g)
    tokens = [f"t{i}" for i in range(30)]
    got = _cat(logit_effects(W_dec, Unembedding(W_U, tokens), n=3, block=2))
    eff = (W_dec @ W_U).numpy()
    for f in range(7):
        for direction, order in (
            ("promote", np.argsort(-eff[f])),
            ("suppress", np.argsort(eff[f])),
        ):
            sel = [
                i
                for i, (ff, d) in enumerate(zip(got["feature"], got["direction"]))
                if ff == f and d == direction
            ]
            assert [got["rank"][i] for i in sel] == [1, 2, 3]
            assert [got["token_id"][i] for i in sel] == list(order[:3])
            assert [got["token"][i] for i in sel] == [tokens[j] for j in order[:3]]
            np.testing.assert_allclose(
                [got["effect"][i] for i in sel], eff[f, order[:3]], rtol=1e-5
            )


def test_logit_effects_refuse_a_mismatched_unembedding():
    with pytest.raises(ValueError, match="d_model 4 but the SAE decodes to 5"):
        list(logit_effects(torch.zeros(2, 5), Unembedding(torch.zeros(4, 3), ["a"] * 3), 2))


@pytest.mark.parametrize(("n", "block"), [(3, 4), (5, 2), (8, 9), (3, 1)])
def test_nearest_neighbors_match_dense_cosine_and_skip_self(n, block):
    g = torch.Generator().manual_seed(1)
    W = torch.randn(9, 4, generator=g) * torch.rand(9, 1, generator=g)  # unequal norms
    got = _cat(nearest_neighbors(W, n=n, block=block))
    Wn = W / W.norm(dim=1, keepdim=True)
    cos = (Wn @ Wn.T).numpy()
    np.fill_diagonal(cos, -np.inf)
    for f in range(9):
        sel = [i for i, ff in enumerate(got["feature"]) if ff == f]
        want = np.argsort(-cos[f])[:n]
        assert [got["neighbor"][i] for i in sel] == list(want)
        np.testing.assert_allclose([got["cosine"][i] for i in sel], cos[f, want], rtol=1e-5)


def test_neighbors_of_a_single_feature_is_empty():
    assert list(nearest_neighbors(torch.ones(1, 3), n=10)) == []


def test_matryoshka_groups():
    assert matryoshka_groups((2, 3, 1), 6).tolist() == [0, 0, 1, 1, 1, 2]
