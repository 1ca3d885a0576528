"""The guards work: an install attempt fails the test that makes it, even when swallowed,
and :func:`workbench.interop.refuse_installs` refuses installs inside library calls."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest

from tests.conftest import PackageInstallError
from workbench.interop.guard import InstallRefusedError, is_install_command, refuse_installs


def test_pip_install_is_refused(no_package_installs):
    with pytest.raises(PackageInstallError):
        subprocess.run([sys.executable, "-m", "pip", "install", "torchvision"], check=False)
    assert len(no_package_installs) == 1  # recorded: the test fails at teardown unless cleared
    no_package_installs.clear()


def test_other_subprocesses_still_run():
    out = subprocess.run([sys.executable, "-c", "print(2 + 2)"], capture_output=True, text=True)
    assert out.stdout.strip() == "4"


def test_install_commands_are_recognised():
    assert is_install_command([sys.executable, "-m", "pip", "install", "torchvision", "-q"])
    assert is_install_command(["uv", "pip", "install", "torchvision"])
    assert is_install_command("/usr/bin/pip3 install x")
    assert is_install_command([b"conda", b"install", b"pytorch"])
    assert not is_install_command([sys.executable, "-m", "pip", "list"])
    assert not is_install_command(["echo", "install"])


def test_refuse_installs_records_swallowed_attempts_and_restores_popen():
    before = subprocess.Popen.__init__
    with refuse_installs() as attempts:
        with contextlib.suppress(Exception):  # what TransformerLens does: ignore a failure
            subprocess.check_call([sys.executable, "-m", "pip", "install", "torchvision"])
        with pytest.raises(InstallRefusedError):
            subprocess.run(["uv", "pip", "install", "x"], check=False)
        out = subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, text=True)
    assert out.stdout.strip() == "1"
    assert len(attempts) == 2 and "torchvision" in attempts[0]
    assert subprocess.Popen.__init__ is before
