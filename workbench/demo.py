"""``python -m workbench demo``: the whole pipeline on the embedded default.

Phantom benchmark -> maira2-mini -> activations -> Matryoshka SAE -> features.duckdb ->
segmentation -> an SAE on the nodule SSN's latents (<run>/seg-latents) -> the line that opens
the app. Each step writes its artefact under the run
directory and is skipped when that artefact is already complete, so an interrupted demo
resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.config import parse_config, save_config
from workbench.io import torch_threads
from workbench.run import RunLayout

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
    layer: int = 4
    """Decoder block recorded. maira2-mini has 6; block 4 separates findings from their
    negations better than the middle block 2 (see benchmarks/RESULTS.md, phantom recovery)."""


CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def step_phantom(cfg: DemoConfig) -> str:
    """Generate the phantom benchmark (skipped when its summary already exists)."""
    from workbench.cxr.phantom.run import PhantomConfig, generate, summarize

    out = RunLayout(cfg.run).phantom
    if not (out / "phantom-summary.json").exists():
        generate(
            PhantomConfig(out=out, studies=cfg.studies, size=cfg.size, seed=cfg.seed, workers=2)
        )
    return summarize(out)


def step_model(cfg: DemoConfig) -> str:
    """Point the run at maira2-mini: the shipped weights, or train them if absent."""
    from workbench.models.mini.ensure import ensure_mini

    path = ensure_mini().resolve()
    model_dir = RunLayout(cfg.run).model
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "pointer.txt").write_text(f"{path}\n")
    return f"maira2-mini at {path}"


def step_record(cfg: DemoConfig) -> str:
    """Record the middle decoder block over every phantom study (resumes a partial store)."""
    from workbench.record.run import RecordConfig, record
    from workbench.store import ActivationStore

    layout = RunLayout(cfg.run)
    out = layout.activations
    if not _store_complete(out):
        record(
            RecordConfig(
                model=str(layout.model),
                data=layout.phantom,
                out=out,
                layer=cfg.layer,
                image_tokens="all",
                progress=False,
            )
        )
    store = ActivationStore(out)
    skipped = len(store.manifest["skipped"])
    return (
        f"{store.n_tokens} tokens of {store.hook_name} (d_model {store.d_model}) from "
        f"{len(store.manifest['studies_complete'])} studies, {skipped} skipped"
    )


def _store_complete(path: Path) -> bool:
    from workbench.store import ActivationStore, StoreError

    try:
        return bool(ActivationStore(path).manifest.get("complete"))
    except StoreError:
        return False


def step_sae(cfg: DemoConfig) -> str:
    """Train the Matryoshka BatchTopK SAE with the demo preset (resumes from checkpoints)."""
    layout = RunLayout(cfg.run)
    sae = _train_demo_sae(layout.activations, layout.sae, cfg.seed, "sae-demo.toml")
    return f"SAE {sae.d_in} -> {sae.d_sae} latents, k={sae.k}, groups {list(sae.group_sizes)}"


def _train_demo_sae(store: Path, out: Path, seed: int, preset_name: str):
    """Train the SAE of ``configs/<preset_name>`` on ``store`` into ``out`` unless a whole
    save is there."""
    from workbench.config import from_dict, load_config, to_dict
    from workbench.sae import load_sae
    from workbench.sae.config import TrainSAEConfig
    from workbench.sae.io import sae_incomplete
    from workbench.sae.trainer import train

    if sae_incomplete(out) is not None:  # a whole save, not just a weights file
        preset = to_dict(load_config(TrainSAEConfig, CONFIGS / preset_name))
        preset.update(store=store, out=out, seed=seed, progress=False)
        train(from_dict(TrainSAEConfig, preset))
    return load_sae(out)


def step_analyse(cfg: DemoConfig) -> str:
    """Feature statistics into features.duckdb, then the phantom recovery table."""
    from workbench.analyse.run import AnalyseConfig, analyse, recovery_report
    from workbench.generations import incomplete

    why = incomplete(cfg.run)  # the database and its Parquet as one generation, not a file
    if why is not None:
        log.info("analyse needed: %s", why)
        analyse(AnalyseConfig(run=cfg.run, seed=cfg.seed))
    return recovery_report(cfg.run)


def step_image_tokens(cfg: DemoConfig) -> str:
    """The image-token embeddings (projector output) -> store -> SAE -> analyse, in
    <run>/image-tokens: where ``steer`` acts by default (docs/steering.md). Each part is
    skipped when its artefact is complete, so an interrupted step resumes."""
    from workbench.analyse.run import AnalyseConfig, analyse, recovery_report
    from workbench.generations import incomplete
    from workbench.models.hooks import VISION_PROJECTOR
    from workbench.record.run import RecordConfig, record

    layout = RunLayout(cfg.run)
    nested = RunLayout(layout.image_tokens)
    if not _store_complete(nested.activations):
        with torch_threads(1):
            record(RecordConfig(model=str(layout.model), data=layout.phantom,
                                hook=VISION_PROJECTOR, out=nested.activations,
                                image_tokens="all", progress=False))  # fmt: skip
    _train_demo_sae(nested.activations, nested.sae, cfg.seed, "sae-image-tokens.toml")
    if incomplete(nested.root) is not None:
        with torch_threads(1):
            analyse(AnalyseConfig(run=nested.root, data=layout.phantom, seed=cfg.seed))
    return recovery_report(nested.root)


def step_label(cfg: DemoConfig) -> str:
    """Offline labels and detection scores for every live feature (resumes its journal)."""
    from workbench.label.run import demo_step

    return demo_step(cfg.run)


def step_steer(cfg: DemoConfig) -> str:
    """Steer the features that recovered phantom concepts; count concepts made to appear."""
    from workbench.steer.run import demo_step

    return demo_step(cfg.run)


def step_segmentation(cfg: DemoConfig) -> str:
    """Small U-Net, SemanticGAN and SSN on the phantom lungs and nodules, into features.duckdb."""
    from segmentation.demo import run as run_segmentation

    out = cfg.run / "segmentation"
    summary = out / "summary.json"
    if summary.exists():
        metrics = json.loads(summary.read_text())
    else:
        metrics = run_segmentation(
            cfg.run / "phantom", out, db=cfg.run / "features.duckdb", seed=cfg.seed
        )
    shown = {k: v for k, v in metrics.items() if k != "skipped"}
    return "\n".join(f"{k:>34}: {v}" for k, v in shown.items())


def step_seg_latents(cfg: DemoConfig) -> str:
    """The nodule SSN's pre-head features -> store -> SAE -> analyse, in <run>/seg-latents."""
    from workbench import db
    from workbench.analyse.run import AnalyseConfig, analyse
    from workbench.analyse.token_concepts import token_concept_report
    from workbench.config import from_dict, load_config, to_dict
    from workbench.generations import incomplete
    from workbench.models.hooks import SEG_FEATURES
    from workbench.record.run import RecordConfig, record
    from workbench.sae.config import TrainSAEConfig
    from workbench.sae.io import sae_incomplete
    from workbench.sae.trainer import train

    layout = RunLayout(cfg.run)
    latent = RunLayout(layout.seg_latents)
    ssn = layout.segmentation / "nodules-ssn"
    if not (ssn / "model.pt").is_file():
        return f"skipped: no nodule SSN at {ssn}"
    if not _store_complete(latent.activations):
        record(RecordConfig(model=f"segmentation:{ssn}", hook=SEG_FEATURES, run=latent.root,
                            progress=False))  # fmt: skip
    if sae_incomplete(latent.sae) is not None:
        preset = to_dict(load_config(TrainSAEConfig, CONFIGS / "sae-seg-latents.toml"))
        preset.update(run=latent.root, seed=cfg.seed, progress=False)
        train(from_dict(TrainSAEConfig, preset))
    if incomplete(latent.root) is not None:
        analyse(AnalyseConfig(run=latent.root, seed=cfg.seed))
    con = db.connect(latent.root)
    try:
        return token_concept_report(con)
    finally:
        con.close()


# (name, step, torch threads). maira2-mini forwards a few hundred tokens at a time, where a
# second thread only adds synchronisation: on a busy 2-core machine one thread made recording
# and steering ~10x faster. SAE training keeps every thread for its dense encoder product.
STEPS = (
    ("phantom benchmark", step_phantom, 1),
    ("model", step_model, 1),
    ("record activations", step_record, 1),
    ("train SAE", step_sae, 0),
    ("analyse features", step_analyse, 1),
    ("image-token SAE", step_image_tokens, 0),
    ("label features", step_label, 1),
    ("steer features", step_steer, 1),
    ("segmentation", step_segmentation, 1),
    ("segmentation latents", step_seg_latents, 0),
)


def run_demo(cfg: DemoConfig) -> None:
    """Run the steps in order, printing what each produced and how long it took."""
    cfg.run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.run / "demo-cfg.json")
    for name, step, threads in STEPS:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        with torch_threads(threads or None):  # 0: all threads
            print(step(cfg), flush=True)
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
    from workbench.ui import launch_line

    print(f"\nOpen the run in the app:\n  {launch_line(cfg.run)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_demo(parse_config(DemoConfig, argv, prog="python -m workbench demo"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
