"""Fixtures shared by the unit tests of the model code: the tiny tokenizer."""

from __future__ import annotations

import pytest

from workbench.models.tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()
