"""Fixtures shared by the unit tests: the tiny tokenizer; the tiny MAIRA-2 with a Matryoshka
SAE at its block 1 that the steering tests share; and the app context over a module's ``run``
fixture that the UI handler tests share."""

from __future__ import annotations

import pytest
import torch

from workbench.models.hooks import resid_post_name
from workbench.models.registry import adapter_for
from workbench.models.tiny import tiny_maira2, tiny_tokenizer
from workbench.sae import MatryoshkaSAE

STEER_LAYER = 1


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def adapter():
    """A random MAIRA-2 of hidden size 48 built from config (seeded)."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    return adapter_for(tiny_maira2(tokenizer), tokenizer, "tiny-maira2")


@pytest.fixture(scope="module")
def sae():
    """A random Matryoshka SAE (16 latents, k 4) at ``blocks.STEER_LAYER.hook_resid_post``."""
    torch.manual_seed(1)
    return MatryoshkaSAE(48, 16, k=4, group_sizes=(4, 12), hook_name=resid_post_name(STEER_LAYER))


@pytest.fixture(scope="module")
def ctx(run):
    """An app context opened on the requesting module's ``run`` fixture, closed afterwards."""
    from workbench.ui.context import open_context  # only the UI tests pay for duckdb

    c = open_context(run)
    yield c
    c.close()
