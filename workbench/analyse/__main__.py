"""``python -m workbench.analyse``: the same as ``python -m workbench analyse``."""

from workbench.analyse import main

if __name__ == "__main__":
    raise SystemExit(main())
