"""``python -m workbench.cxr.labeller``: the same as ``python -m workbench label-reports``."""

from workbench.cxr.labeller import main

if __name__ == "__main__":
    raise SystemExit(main())
