"""``python -m workbench.cxr.phantom``: the same as ``python -m workbench phantom``."""

from workbench.cxr.phantom import main

if __name__ == "__main__":
    raise SystemExit(main())
