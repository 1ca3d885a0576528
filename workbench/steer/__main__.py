"""``python -m workbench.steer``: the same as ``python -m workbench steer``."""

from workbench.steer import main

if __name__ == "__main__":
    raise SystemExit(main())
