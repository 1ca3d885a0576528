"""``python -m workbench.record``: the same as ``python -m workbench record``."""

from workbench.record import main

if __name__ == "__main__":
    raise SystemExit(main())
