"""SemanticGAN vs U-Net on the phantom lungs: the study's benchmark run, and a cost estimate.

``timing`` measures, at the presets' sizes and on one torch thread, seconds per SemanticGAN
GAN iteration, encoder iteration and test-time-optimised image, per U-Net step, and per
scanner-shift re-render, then multiplies them by the study preset's counts to estimate the
study's wall time (a few iterations only: safe on a shared machine). Both wall time and the
process's CPU time are reported: on a busy machine the CPU-time estimate is what an idle
machine would take (one thread, so CPU time ~ wall time when nothing else runs).

``study`` generates the phantom if it is absent (2,500 studies, seed 1, as bench_ssn), runs
``python -m workbench seg-study`` with ``configs/seg-study.toml``, writes the section
*Segmentation (SemanticGAN vs U-Net)* of ``benchmarks/RESULTS.md`` (the CPU budget, the
labelled-fraction table with intervals and the verdict at each fraction, the largest
robustness drops, subgroup gaps) and copies the full-label seed-0 sample grid to
``docs/img/semantic-gan-samples.png``.

    .venv/bin/python benchmarks/bench_semgan.py timing
    .venv/bin/python benchmarks/bench_semgan.py study --write-results
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from segmentation.study import StudyConfig, run_study
from workbench.config import from_dict, load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Segmentation (SemanticGAN vs U-Net)"
STUDY_PRESET = ROOT / "configs" / "seg-study.toml"
SAMPLES_PNG = ROOT / "docs" / "img" / "semantic-gan-samples.png"


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
"""The two clocks every unit cost is measured with."""


def _per_call(fn, n: int) -> dict:
    """Mean wall and CPU seconds per call of ``fn(i)`` over ``n`` calls after a warm-up."""
    fn(0)
    t0 = {k: c() for k, c in CLOCK.items()}
    for i in range(n):
        fn(i + 1)
    return {k: (c() - t0[k]) / n for k, c in CLOCK.items()}


def _scaled(cost: dict, k: float) -> dict:
    return {clock: v * k for clock, v in cost.items()}


def measure(study: StudyConfig, iters: int) -> dict:
    """Seconds per unit of work at the presets' sizes (fixture phantom, same tensor shapes)."""
    from segmentation.fixtures import write_phantom_fixture
    from segmentation.semantic_gan import train as sg
    from segmentation.semantic_gan.config import SemanticGANConfig
    from segmentation.semantic_gan.inference import SemanticGANSegmenter
    from segmentation.train import TrainConfig, train

    gan_cfg = load_config(SemanticGANConfig, ROOT / study.semgan_preset)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_phantom_fixture(Path(tmp) / "ph", studies=40, size=gan_cfg.image_size)
        d = to_dict(gan_cfg) | {"data": root, "out": Path(tmp) / "g", "progress": False}
        run, _ = sg._setup(from_dict(SemanticGANConfig, d))
        gan_s = _per_call(lambda i: sg.gan_iteration(run, i), iters)
        enc_s = _per_call(lambda i: sg.encoder_step(run, i), max(2, iters // 4))
        seg = SemanticGANSegmenter(gan_cfg.spec())
        x = torch.rand(study.batch_size, 1, gan_cfg.image_size, gan_cfg.image_size)
        tto_s = _scaled(_per_call(lambda i: seg.segment(x), 1), 1 / study.batch_size)
        unet = to_dict(load_config(TrainConfig, ROOT / study.unet_preset))
        unet |= {"data": root, "progress": False, "steps": 2 * iters}

        def unet_run(i: int) -> None:  # a fresh run directory per call: no resuming
            train(from_dict(TrainConfig, unet | {"out": Path(tmp) / f"u{i}"}))

        unet_s = _scaled(_per_call(unet_run, 1), 0.5 / iters)
    return {"gan_iter_s": gan_s, "enc_iter_s": enc_s, "tto_image_s": tto_s,
            "unet_step_s": unet_s, "render_image_s": _render_cost(),
            "threads": torch.get_num_threads(), "tto_steps": gan_cfg.tto_steps}  # fmt: skip


def _render_cost(n: int = 3) -> float:
    """Seconds to re-render one 256 px phantom study (the scanner shift)."""
    from segmentation.data import load_dataset
    from segmentation.perturb import scanner_shift
    from workbench.cxr.phantom.run import PhantomConfig, generate

    with tempfile.TemporaryDirectory() as tmp:
        generate(PhantomConfig(out=Path(tmp), studies=n, size=256, seed=0))
        clean = load_dataset("phantom-lungs", Path(tmp), None, 64)
        cost = _per_call(lambda i: scanner_shift(Path(tmp), clean, 64, 1.0), 1)
        return _scaled(cost, 1 / len(clean))


def estimate(study: StudyConfig, cost: dict, test_images: int) -> dict:
    """Time estimate (s) of the study from unit costs (one clock) and the preset's counts."""
    from segmentation.perturb import PERTURBATIONS
    from segmentation.semantic_gan.config import SemanticGANConfig
    from segmentation.train import TrainConfig

    gan = load_config(SemanticGANConfig, ROOT / study.semgan_preset)
    unet = load_config(TrainConfig, ROOT / study.unet_preset)
    gan_steps, enc_steps = study.gan_steps or gan.steps, study.enc_steps or gan.enc_steps
    runs = len(study.fractions) * len(study.seeds) + (
        2 * len(study.seeds) if study.imbalance else 0
    )
    n_img = min(test_images, study.max_test_images or test_images)
    strengths = sum(
        len(study.scanner_strengths) if p == "scanner" else len(PERTURBATIONS[p].strengths)
        for p in study.robustness
    )
    robust_runs = len(study.robustness_fractions) * len(study.robustness_seeds)
    gan_train = runs * (gan_steps * cost["gan_iter_s"] + enc_steps * cost["enc_iter_s"])
    gan_eval = (runs + robust_runs * strengths) * n_img * cost["tto_image_s"]
    unet_train = runs * (study.unet_steps or unet.steps) * cost["unet_step_s"]
    render = len(study.scanner_strengths) * n_img * cost["render_image_s"]
    parts = {"semantic_gan_training_s": gan_train, "semantic_gan_scoring_s": gan_eval,
             "unet_training_s": unet_train, "scanner_render_s": render}  # fmt: skip
    return parts | {"total_s": sum(parts.values()), "runs_per_model": runs}


def ensure_phantom(root: Path, studies: int, seed: int) -> Path:
    if not (root / "masks").is_dir():
        from workbench.cxr.phantom.run import PhantomConfig, generate

        generate(PhantomConfig(out=root, studies=studies, size=256, seed=seed, workers=1))
    return root


def fmt(r: dict) -> str:
    return f"{r['value']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def _row(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def markdown(study: StudyConfig, tables: dict, elapsed_s: float, args) -> str:
    """The RESULTS.md section: budget, fractions with verdicts, robustness, subgroups."""
    rows, f0 = tables["rows"], min(study.fractions)
    lines = [
        SECTION, "",
        f"`python benchmarks/bench_semgan.py study --phantom {args.phantom} --write-results` "
        f"(preset `configs/seg-study.toml`), phantom of {args.phantom_studies} studies (seed "
        f"{args.phantom_seed}), 64 px lungs, {len(study.seeds)} seeds, "
        f"{study.max_test_images} test images, one torch thread: {elapsed_s / 3600:.1f} h of "
        "wall time on the 2-core machine in all. Full tables and plots: "
        f"`{study.out}/summary.md`, `fractions.png`, `robustness.png`, `subgroups.png`.", "",
        "| fraction | U-Net Dice | SemanticGAN Dice | SemanticGAN - U-Net | verdict |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for f in sorted(study.fractions):
        u = _row(rows, analysis="fractions", model="unet", fraction=f, metric="dice")
        g = _row(rows, analysis="fractions", model="semantic-gan", fraction=f, metric="dice")
        d = _row(rows, analysis="fraction_difference", fraction=f)
        if u and g and d:
            verdict = tables["verdicts"][f"{f:g}"]
            lines.append(f"| {f:g} | {fmt(u[0])} | {fmt(g[0])} | {fmt(d[0])} | {verdict} |")
    verdict0 = tables["verdicts"].get(f"{f0:g}", "not measured")
    lines += [
        "",
        f"At the smallest labelled fraction ({f0:g}) the intervals say: **{verdict0}** "
        '("helps" only if the SemanticGAN - U-Net interval lies above 0).',
        "",
        "Largest robustness drop per model (Dice, clean minus perturbed):",
        "",
    ]
    for model in study.models:
        drops = _row(rows, analysis="robustness_drop", model=model)
        if drops:
            worst = max(drops, key=lambda r: r["value"])
            lines.append(f"- {model} (f={worst['fraction']:g}): {worst['condition']} "
                         f"{worst['strength']:g}: {fmt(worst)}")  # fmt: skip
    lines += ["", "Subgroup gaps (best minus worst Dice) and their change under imbalance:", ""]
    for r in _row(rows, analysis="imbalance_gap_change"):
        lines.append(f"- {r['model']}, {r['subgroup']}: gap change {fmt(r)}")
    return "\n".join(lines) + "\n"


def write_section(block: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + block
    else:
        nxt = old.find("\n## ", start + len(SECTION))
        new = old[:start] + block + ("\n" + old[nxt + 1 :] if nxt >= 0 else "")
    RESULTS.write_text(new.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("timing", "study"))
    p.add_argument("--phantom", type=Path, default=Path("runs/seg-study/phantom"))
    p.add_argument("--phantom-studies", type=int, default=2500)
    p.add_argument("--phantom-seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="study directory (default: preset)")
    p.add_argument("--iters", type=int, default=8, help="timing: iterations per measurement")
    p.add_argument("--test-images", type=int, default=250, help="timing: test split size")
    p.add_argument("--write-results", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    study = load_config(StudyConfig, STUDY_PRESET)
    if args.what == "timing":
        cost = measure(study, args.iters)
        per_clock = {c: {k: v[c] if isinstance(v, dict) else v for k, v in cost.items()}
                     for c in CLOCK}  # fmt: skip
        est = {c: estimate(study, per_clock[c], args.test_images) for c in CLOCK}
        print(json.dumps({"unit_costs": per_clock, "estimate": est}, indent=1))
        return 0
    ensure_phantom(args.phantom, args.phantom_studies, args.phantom_seed)
    study = from_dict(StudyConfig, to_dict(study) | {"data": args.phantom} |
                      ({"out": args.out} if args.out else {}))  # fmt: skip
    t0 = time.monotonic()
    tables = run_study(study)
    block = markdown(study, tables, time.monotonic() - t0, args)
    print(block)
    if args.write_results:
        write_section(block)
        grid = study.out / "runs" / "semantic-gan" / "full" / f"f{max(study.fractions):g}-s0"
        SAMPLES_PNG.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(grid / "samples.png", SAMPLES_PNG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
