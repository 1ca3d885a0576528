"""Small helpers every stage shares, one copy of each.

- :func:`lazy_exports`: a package's public names, imported from their submodules on first use
  (so ``from workbench.analyse import analyse`` works without ``import workbench.analyse.stats``
  paying for the whole stage).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


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
