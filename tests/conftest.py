"""Suite-wide guards: offline, no analytics, and no test may install packages.

TransformerLens runs ``pip install torchvision`` by itself when it wraps a multimodal model
without a local processor, which here replaced the CPU torch with a multi-GB CUDA build
(see the stack notes). Library code must never do that, so every test runs with a guard that
turns any attempt to start ``pip install`` into a failure.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from workbench.interop.guard import is_install_command
from workbench.models.tiny import single_thread

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class PackageInstallError(AssertionError):
    """Raised when code under test tries to run a package installer."""


@pytest.fixture(autouse=True)
def no_package_installs(monkeypatch):
    """Refuse ``pip``/``uv`` installs; fail the test even when the caller swallowed the error
    (TransformerLens wraps its ``pip install torchvision`` in ``except Exception``)."""
    real_init = subprocess.Popen.__init__
    attempts: list = []

    def guarded(self, args, *a, **kw):
        if is_install_command(args):
            attempts.append(args)
            raise PackageInstallError(f"code under test tried to install packages: {args}")
        real_init(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
    yield attempts
    if attempts:
        pytest.fail(f"code under test tried to install packages: {attempts}", pytrace=False)


@pytest.fixture(scope="module")
def single_threaded():
    """Tiny models run ~20x faster on one thread when the 2 cores are shared.

    Use with ``pytestmark = pytest.mark.usefixtures("single_threaded")``.
    """
    with single_thread():
        yield


def pytest_addoption(parser):
    parser.addoption(
        "--soak",
        action="store_true",
        help="also run the long fault-injection loops (tests marked soak)",
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked ``soak`` run only with ``--soak`` or WORKBENCH_SOAK=1 (minutes each)."""
    if config.getoption("--soak") or os.environ.get("WORKBENCH_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak or WORKBENCH_SOAK=1")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
