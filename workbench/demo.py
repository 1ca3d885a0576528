"""``python -m workbench demo``: the whole pipeline on the embedded default.

Phantom benchmark -> maira2-mini -> activations -> Matryoshka SAE -> features.duckdb ->
segmentation -> the line that opens the app. Each step writes its artefact under the run
directory and is skipped when that artefact is already complete, so an interrupted demo
resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.config import parse_config, save_config

log = logging.getLogger("workbench.demo")


@dataclass
class DemoConfig:
    """Run every stage on the phantom benchmark with sizes that fit 2 CPU cores."""

    run: Path = Path("runs/demo")
    """Run directory; every stage writes its artefacts below it."""
    studies: int = 300
    """Number of phantom studies to generate."""
    size: int = 256
    """Side of the phantom radiographs in pixels."""
    seed: int = 0
    """Seed for the phantom benchmark and every training step."""


def step_phantom(cfg: DemoConfig) -> str:
    """Generate the phantom benchmark (skipped when its summary already exists)."""
    from workbench.cxr.phantom import PhantomConfig, generate, summarize

    out = cfg.run / "phantom"
    if not (out / "phantom-summary.json").exists():
        generate(PhantomConfig(out=out, studies=cfg.studies, size=cfg.size, seed=cfg.seed))
    return summarize(out)


STEPS = (("phantom benchmark", step_phantom),)


def run_demo(cfg: DemoConfig) -> None:
    """Run the steps in order, printing what each produced and how long it took."""
    cfg.run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.run / "demo-cfg.json")
    for name, step in STEPS:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        print(step(cfg), flush=True)
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_demo(parse_config(DemoConfig, argv, prog="python -m workbench demo"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
