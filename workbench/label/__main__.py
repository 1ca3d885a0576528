"""``python -m workbench.label``: the same as ``python -m workbench label``."""

from workbench.label import main

if __name__ == "__main__":
    raise SystemExit(main())
