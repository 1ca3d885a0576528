"""Fixtures shared by the unit tests of the model code: one thread, the tiny tokenizer."""

from __future__ import annotations

import pytest

from workbench.models.tiny import single_thread, tiny_tokenizer


@pytest.fixture(scope="module")
def single_threaded():
    """Tiny models run ~20x faster on one thread when the 2 cores are shared.

    Use with ``pytestmark = pytest.mark.usefixtures("single_threaded")``.
    """
    with single_thread():
        yield


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()
