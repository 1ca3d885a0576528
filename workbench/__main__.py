"""``python -m workbench <stage> [flags]``: one thin CLI per stage of the pipeline.

Every stage is a module with a ``main(argv)`` that parses its config dataclass and calls a
library function; ``python -m workbench <stage> --help`` explains every field.
"""

from __future__ import annotations

import importlib
import sys

# stage name -> (module with main(argv), one-line description). Order follows the data flow.
STAGES: dict[str, tuple[str, str]] = {
    "demo": ("workbench.demo", "run the whole pipeline on the embedded phantom benchmark"),
    "phantom": ("workbench.cxr.phantom.run", "generate the phantom chest X-ray benchmark"),
    "label-reports": (
        "workbench.cxr.labeller.run",
        "label report texts (CheXpert + phantom concepts) and score them against ground truth",
    ),
    "train-mini": ("workbench.models.mini.ensure", "train maira2-mini on the phantom benchmark"),
    "record": ("workbench.record.run", "record residual-stream activations into a store"),
    "train-sae": ("workbench.train_sae", "train a Matryoshka BatchTopK SAE on a store"),
    "analyse": ("workbench.analyse.run", "SAE over the store -> features.duckdb"),
    "label": (
        "workbench.label.run",
        "explain features with an LLM (or offline) and score the labels",
    ),
    "steer": ("workbench.steer.run", "steer generation with SAE features and evaluate the effect"),
    "app": ("workbench.ui.app", "serve the browser app for a run on 127.0.0.1"),
    "seg-train": ("segmentation.train", "train a U-Net / SSN / SemanticGAN segmentation model"),
    "seg-evaluate": ("segmentation.evaluate", "evaluate segmentation models (GED, Dice, ...)"),
    "seg-study": (
        "segmentation.study",
        "SemanticGAN vs U-Net: labelled fractions, robustness, subgroups, out of domain",
    ),
}


def usage() -> str:
    width = max(len(s) for s in STAGES)
    lines = ["usage: python -m workbench <stage> [--help] [flags]", "", "stages:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in STAGES.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"unknown stage '{stage}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(STAGES[stage][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
