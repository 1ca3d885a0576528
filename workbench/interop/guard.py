"""Keep third-party code from installing packages: a guard around TransformerLens calls.

TransformerLens 3 (``TransformerBridge.boot_transformers``) runs ``pip install torchvision``
in a subprocess when it wraps a multimodal model whose processor it cannot load and
torchvision does not import. On the project's machines that replaced the CPU torch wheel with
a multi-GB CUDA build (``docs/interop.md``). Library code never installs packages, so every
call into TransformerLens made by :mod:`workbench.interop` runs inside :func:`refuse_installs`:
starting ``pip``/``uv`` with ``install`` raises :class:`InstallRefusedError` instead, and the
attempt is recorded and logged. TransformerLens swallows that exception (its install is
wrapped in ``except Exception``), which is why the attempts are recorded, not only raised.

:func:`torch_install` identifies the installed torch on disk, so a test can prove that a
call left it untouched.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

log = logging.getLogger("workbench.interop")
_INSTALLERS = frozenset({"pip", "pip3", "uv", "conda", "mamba"})


class InstallRefusedError(RuntimeError):
    """Code tried to start a package installer inside :func:`refuse_installs`."""


def is_install_command(args: str | bytes | Sequence) -> bool:
    """Whether ``args`` (a Popen argument list or a shell string) runs a package install."""
    if isinstance(args, (str, bytes)):
        words = os.fsdecode(args).split()
    else:
        words = [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args]
    names = {os.path.basename(w) for w in words}
    return bool(names & _INSTALLERS) and "install" in words


@contextmanager
def refuse_installs() -> Iterator[list]:
    """Refuse every package install started in the block; yields the list of attempts.

    Patches ``subprocess.Popen.__init__`` (which ``run``, ``call`` and ``check_call`` go
    through) for the duration of the block, process-wide; other subprocesses run unchanged.
    """
    attempts: list = []
    real_init = subprocess.Popen.__init__

    def guarded(self, args, *a, **kw):
        if is_install_command(args):
            attempts.append(args)
            raise InstallRefusedError(f"refused to run a package installer: {args}")
        real_init(self, args, *a, **kw)

    subprocess.Popen.__init__ = guarded
    try:
        yield attempts
    finally:
        subprocess.Popen.__init__ = real_init
        for args in attempts:
            log.warning("a library tried to install packages and was refused: %s", args)


class TorchInstall(NamedTuple):
    """The installed torch distribution as found on disk now."""

    version: str
    """``torch``'s version from its installed metadata (e.g. ``2.13.0+cpu``)."""
    location: str
    """The site-packages directory it is installed in."""
    record_sha256: str
    """SHA-256 of its ``RECORD`` file (every installed file with its hash)."""


def torch_install() -> TorchInstall:
    """Read torch's installed metadata afresh from disk (not from the imported module)."""
    dist = importlib.metadata.distribution("torch")
    record = dist.read_text("RECORD") or ""
    location = str(dist.locate_file(""))
    return TorchInstall(dist.version, location, hashlib.sha256(record.encode()).hexdigest())
