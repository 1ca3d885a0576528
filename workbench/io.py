"""Small helpers every stage shares, one copy of each.

- Atomic writes (:func:`atomic_path`, :func:`write_text`, :func:`write_bytes`,
  :func:`write_json`): the file is written beside its destination as ``<name>.tmp`` and
  ``os.replace``-d over it, so a reader (or a resumed run) never sees a torn file; on an error
  the partial file is removed and the old one stays. The finished file gets the mode a plain
  ``open()`` would give it (``0o666`` less the umask): some writers (safetensors) create private
  ``0o600`` files, which a team's shared run directory could not read.
- :func:`torch_threads`: run a block on a given number of torch intra-op threads and restore
  the previous count, whatever happens inside.
- :func:`lazy_exports`: a package's public names, imported from their submodules on first use
  (so ``from workbench.analyse import analyse`` works without ``import workbench.analyse.stats``
  paying for the whole stage).

Nothing here imports torch at module level: package ``__init__`` files import this module.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, mkdir: bool = True) -> Iterator[Path]:
    """Yield ``<path>.tmp`` to write to; it replaces ``path`` when the block succeeds.

    The caller may write with any library (``torch.save``, ``safetensors``, Parquet, csv); an
    exception inside the block removes the temporary file and leaves ``path`` untouched.
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _umask() -> int:
    """The process umask (read without changing it where Linux exposes it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set-and-restore, the only portable read
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes, mkdir: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders made unless ``mkdir=False``)."""
    with atomic_path(path, mkdir) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, mkdir: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"), mkdir)


def write_json(path: str | Path, obj: Any, indent: int | None = 2, sort_keys: bool = True) -> Path:
    """Write ``obj`` as JSON with a final newline, atomically (the project's one JSON style)."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on ``n`` torch intra-op threads (None: unchanged), then restore the count.

    Small tensors gain nothing from threads, and on a shared CPU oversubscribed threads make
    them many times slower; callers narrow the count around such work.
    """
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that resolves ``exports`` (name -> submodule).

    The submodule is given relative to the package (``"run"`` for ``package.run``) and is
    imported only when one of its names is first asked for; an unknown name raises the
    ``AttributeError`` Python expects from a module.
    """
    table = dict(exports)

    def resolve(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{table[name]}"), name)

    return resolve
