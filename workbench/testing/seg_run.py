"""A tiny run with segmentation models and an SAE on their latents, for the app's tests.

Built by the real stages in seconds on a CPU: a phantom-layout fixture with graded nodules
(:func:`segmentation.fixtures.write_phantom_fixture`), a U-Net and an SSN (background / lung
field / nodule, as the demo's) on the nodule crops and a U-Net on the lungs (a few steps each:
they show the pipeline, not a segmentation), their test metrics in ``segmentation_results``,
the SSN's pre-head features recorded into ``<run>/seg-latents``
(:data:`workbench.run.RunLayout.seg_latents`), a small SAE trained on them and ``analyse``
over it. The app can serve either directory: ``<run>`` (models, with the
latent run nested) or ``<run>/seg-latents`` (the latent run, whose feature pages are its own).
"""

from __future__ import annotations

from pathlib import Path

from workbench.models.hooks import SEG_FEATURES
from workbench.run import RunLayout

TINY = ["--image-size", "32", "--crop-size", "32", "--channels", "4,8", "--batch-size", "4",
        "--recomb-channels", "8", "--no-progress", "--threads", "1", "--mc-samples", "4",
        "--rank", "2"]  # fmt: skip
SAE = ["--d-sae", "16", "--k", "4", "--group-sizes", "4,12", "--batch-size", "256",
       "--warmup-steps", "5", "--threshold-start-step", "5", "--log-every", "5",
       "--no-progress", "--device", "cpu", "--norm-batches", "2", "--buffer-tokens", "2000",
       "--tokens", "4000"]  # fmt: skip
MODELS = (("nodules-ssn", "ssn", "phantom-nodules"), ("nodules-unet", "unet", "phantom-nodules"),
          ("lungs-unet", "unet", "phantom-lungs"))  # fmt: skip
# Per-model flags: the SSN also labels the lung field, as the demo's (segmentation.demo).
OPTIONS = {"nodules-ssn": ["--lung-class", "--num-classes", "3"]}


def build(root: str | Path, steps: int = 20) -> Path:
    """Phantom, models, metrics, latent store, SAE and features.duckdb under ``root``.

    Each step is skipped when its artefact exists, so a second build is cheap.
    """
    from segmentation import evaluate, train
    from segmentation.fixtures import write_phantom_fixture
    from workbench.analyse.run import main as analyse_main
    from workbench.record.run import RecordConfig, record
    from workbench.train_sae import main as train_sae_main

    run = RunLayout(Path(root))
    latent = RunLayout(run.seg_latents)
    if not run.phantom.is_dir():
        write_phantom_fixture(run.phantom, studies=8, size=48)
    for name, model, dataset in MODELS:
        out = run.segmentation / name
        if not (out / "model.pt").is_file():
            argv = ["--model", model, "--data", str(run.phantom), "--dataset", dataset,
                    *OPTIONS.get(name, [])]  # fmt: skip
            if train.main([*argv, *TINY, "--steps", str(steps), "--out", str(out)]) != 0:
                raise RuntimeError(f"training {name} failed")
    if not latent.database.is_file():
        latent.root.mkdir(parents=True, exist_ok=True)
        for name, _, dataset in MODELS:
            evaluate.evaluate(evaluate.EvalConfig(
                model_dir=run.segmentation / name, data=run.phantom, dataset=dataset,
                num_samples=8, model_name=name, db=latent.database))  # fmt: skip
    if not (latent.activations / "manifest.json").is_file():
        record(RecordConfig(model=f"segmentation:{run.segmentation / 'nodules-ssn'}",
                            hook=SEG_FEATURES, run=latent.root, pool=2, samples=8,
                            progress=False))  # fmt: skip
    trained = (latent.sae / "cfg.json").is_file()
    if not trained and train_sae_main(["--run", str(latent.root), *SAE]) != 0:
        raise RuntimeError("SAE training failed")
    if analyse_main(["--run", str(latent.root), "--device", "cpu"]) != 0:
        raise RuntimeError("analyse failed")
    return run.root
