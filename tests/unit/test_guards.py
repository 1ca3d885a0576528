"""The suite's own guards work: an install attempt fails the test that makes it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import PackageInstallError


def test_pip_install_is_refused():
    with pytest.raises(PackageInstallError):
        subprocess.run([sys.executable, "-m", "pip", "install", "torchvision"], check=False)


def test_other_subprocesses_still_run():
    out = subprocess.run([sys.executable, "-c", "print(2 + 2)"], capture_output=True, text=True)
    assert out.stdout.strip() == "4"
