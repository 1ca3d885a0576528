"""``python -m workbench.models.mini``: the same as ``python -m workbench train-mini``."""

from workbench.models.mini import main

if __name__ == "__main__":
    raise SystemExit(main())
