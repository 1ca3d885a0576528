"""SemanticGAN vs U-Net on the phantom lungs: the study's benchmark run, and a cost estimate.

``timing`` measures, at the presets' sizes and on one torch thread, seconds per SemanticGAN
GAN iteration, encoder iteration and test-time-optimised image (at the study's TTO steps), per
U-Net step and U-Net image, per training image loaded, per scanner-shift re-render and per
phantom study generated, then plays the study's jobs through its ``workers`` (longest first,
as ``segmentation.study_jobs`` starts them) to estimate the study's wall time (a few
iterations only: safe on a shared machine). Both wall time and the process's CPU time are
reported: on a busy machine the CPU-time estimate is closer to what an idle one takes.

``study`` generates the phantom if it is absent (2,500 studies, seed 1, as bench_ssn), runs
``python -m workbench seg-study`` with the preset (default ``configs/seg-study-cpu.toml``,
~30 min on 2 cores), writes the section *Segmentation (SemanticGAN vs U-Net)* of
``benchmarks/RESULTS.md`` (the CPU budget, the labelled-fraction table with intervals and the
verdict at each fraction, the largest robustness drops, subgroup gaps) and copies the study's
sample grid (full-label seed-0 SemanticGAN) to ``docs/images/semantic-gan-samples.png``.

    .venv/bin/python benchmarks/bench_semgan.py timing [--preset configs/seg-study-cpu.toml]
    .venv/bin/python benchmarks/bench_semgan.py study --write-results
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from segmentation.study import StudyConfig, jobs, run_study
from segmentation.study_jobs import image_size, order, robustness_strengths
from workbench.config import from_dict, load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Segmentation (SemanticGAN vs U-Net)"
STUDY_PRESET = ROOT / "configs" / "seg-study-cpu.toml"
SAMPLES_PNG = ROOT / "docs" / "images" / "semantic-gan-samples.png"


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
    tto_steps = gan_cfg.tto_steps if study.tto_steps is None else study.tto_steps
    with tempfile.TemporaryDirectory() as tmp:
        root = write_phantom_fixture(Path(tmp) / "ph", studies=40, size=gan_cfg.image_size)
        d = to_dict(gan_cfg) | {"data": root, "out": Path(tmp) / "g", "progress": False}
        run, _ = sg._setup(from_dict(SemanticGANConfig, d | {"threads": 1}))
        gan_s = _per_call(lambda i: sg.gan_iteration(run, i), iters)
        enc_s = _per_call(lambda i: sg.encoder_step(run, i), max(2, iters // 4))
        seg = SemanticGANSegmenter(gan_cfg.spec())
        seg.inference.steps = tto_steps
        x = torch.rand(study.batch_size, 1, gan_cfg.image_size, gan_cfg.image_size)
        tto_s = _scaled(_per_call(lambda i: seg.segment(x), 1), 1 / study.batch_size)
        unet = to_dict(load_config(TrainConfig, ROOT / study.unet_preset))
        unet |= {"data": root, "progress": False, "steps": 2 * iters, "threads": 1}

        def unet_run(i: int) -> None:  # a fresh run directory per call: no resuming
            train(from_dict(TrainConfig, unet | {"out": Path(tmp) / f"u{i}"}))

        unet_s = _scaled(_per_call(unet_run, 1), 0.5 / iters)
    return {"gan_iter_s": gan_s, "enc_iter_s": enc_s, "tto_image_s": tto_s,
            "unet_step_s": unet_s, **_phantom_costs(gan_cfg.image_size),
            "threads": torch.get_num_threads(), "tto_steps": tto_steps}  # fmt: skip


def _phantom_costs(size: int, n: int = 12) -> dict:
    """Seconds per phantom study generated (256 px), per image loaded at ``size`` and per
    scanner-shift re-render."""
    from segmentation.data import load_dataset
    from segmentation.perturb import scanner_shift
    from workbench.cxr.phantom.run import PhantomConfig, generate

    with tempfile.TemporaryDirectory() as tmp:
        gen = _per_call(lambda i: generate(
            PhantomConfig(out=Path(tmp) / f"p{i}", studies=n, size=256, seed=0)), 1)  # fmt: skip
        root = Path(tmp) / "p1"
        images = load_dataset("phantom-lungs", root, None, size)
        load = _per_call(lambda i: load_dataset("phantom-lungs", root, None, size), 2)
        render = _per_call(lambda i: scanner_shift(root, images, size, 1.0), 1)
    return {"phantom_study_s": _scaled(gen, 1 / n), "load_image_s": _scaled(load, 1 / len(images)),
            "render_image_s": _scaled(render, 1 / len(images))}  # fmt: skip


def job_costs(study: StudyConfig, cost: dict, test_images: int, train_images: int) -> list:
    """(job, seconds) for each run of the study, in the order the study starts them."""
    from segmentation.semantic_gan.config import SemanticGANConfig
    from segmentation.train import TrainConfig

    gan = load_config(SemanticGANConfig, ROOT / study.semgan_preset)
    unet = load_config(TrainConfig, ROOT / study.unet_preset)
    gan_train = (study.gan_steps or gan.steps) * cost["gan_iter_s"]
    gan_train += (study.enc_steps or gan.enc_steps) * cost["enc_iter_s"]
    unet_train = (study.unet_steps or unet.steps) * cost["unet_step_s"]
    n_img = min(test_images, study.max_test_images or test_images)
    n_rob = min(n_img, study.robustness_images or n_img)
    n_sets = sum(len(robustness_strengths(study, p)) for p in study.robustness)
    render = len(study.scanner_strengths) * n_rob * cost["render_image_s"]
    out = []
    for job in order(jobs(study, imbalanced_size=1)):
        scored = n_img + (n_sets * n_rob if job.robust else 0)
        gan_job = job.key.model == "semantic-gan"
        t = train_images * cost["load_image_s"] + (render if job.robust else 0.0)
        t += (gan_train + scored * cost["tto_image_s"]) if gan_job else unet_train
        out.append((job, t))
    return out


def estimate(study: StudyConfig, cost: dict, test_images: int, train_images: int,
             studies: int) -> dict:  # fmt: skip
    """Time estimate (s) of the study from unit costs (one clock): the jobs played through
    ``workers`` longest first (each to the worker free first), plus the phantom."""
    costs = job_costs(study, cost, test_images, train_images)
    free = [0.0] * study.workers
    for _, t in costs:
        heapq.heappush(free, heapq.heappop(free) + t)
    gan = [t for j, t in costs if j.key.model == "semantic-gan"]
    phantom = studies * cost["phantom_study_s"] / study.workers
    unet = sum(t for j, t in costs if j.key.model == "unet")
    return {"runs": len(costs), "semantic_gan_run_s": [round(t) for t in gan],
            "unet_runs_s": round(unet), "worker_busy_s": [round(t) for t in sorted(free)],
            "phantom_s": round(phantom), "study_wall_s": round(max(free)),
            "total_wall_s": round(max(free) + phantom)}  # fmt: skip


def ensure_phantom(root: Path, studies: int, seed: int, workers: int = 1) -> Path:
    """Generate the study's phantom unless it is there (its bytes do not depend on workers)."""
    if not (root / "masks").is_dir():
        from workbench.cxr.phantom.run import PhantomConfig, generate

        generate(PhantomConfig(out=root, studies=studies, size=256, seed=seed, workers=workers))
    return root


def fmt(r: dict) -> str:
    return f"{r['value']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def _row(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def markdown(study: StudyConfig, tables: dict, elapsed_s: float, args) -> str:
    """The RESULTS.md section: budget, fractions with verdicts, robustness, subgroups."""
    rows, f0 = tables["rows"], min(study.fractions)
    threads = study.threads or max(1, 2 // study.workers)
    lines = [
        SECTION, "",
        f"`python benchmarks/bench_semgan.py study --preset {args.preset} --phantom "
        f"{args.phantom} --write-results`, phantom of {args.phantom_studies} studies (seed "
        f"{args.phantom_seed}), {image_size(study)} px lungs, seeds {list(study.seeds)}, "
        f"{study.max_test_images or 'all'} test images ({study.robustness_images or 'all'} for "
        f"the perturbations), {study.workers} worker(s) x {threads} torch thread(s): "
        f"{elapsed_s / 60:.0f} min of wall time on the 2-core machine, phantom included. Full "
        f"tables and plots: `{study.out}/summary.md`, `fractions.png`, `robustness.png`, "
        "`subgroups.png`; sample grid `docs/images/semantic-gan-samples.png`.", "",
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
    p.add_argument("--preset", type=Path, default=STUDY_PRESET.relative_to(ROOT))
    p.add_argument("--phantom", type=Path, default=Path("runs/seg-study/phantom"))
    p.add_argument("--phantom-studies", type=int, default=2500)
    p.add_argument("--phantom-seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="study directory (default: preset)")
    p.add_argument("--iters", type=int, default=8, help="timing: iterations per measurement")
    p.add_argument("--test-images", type=int, default=250, help="timing: test split size")
    p.add_argument("--train-images", type=int, default=2000, help="timing: train split size")
    p.add_argument("--write-results", action="store_true")
    args = p.parse_args(argv)
    study = load_config(StudyConfig, ROOT / args.preset)
    if args.what == "timing":
        torch.set_num_threads(1)
        cost = measure(study, args.iters)
        per_clock = {c: {k: v[c] if isinstance(v, dict) else v for k, v in cost.items()}
                     for c in CLOCK}  # fmt: skip
        est = {c: estimate(study, per_clock[c], args.test_images, args.train_images,
                           args.phantom_studies) for c in CLOCK}  # fmt: skip
        print(json.dumps({"unit_costs": per_clock, "estimate": est}, indent=1))
        return 0
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt)
    t0 = time.monotonic()
    ensure_phantom(args.phantom, args.phantom_studies, args.phantom_seed, study.workers)
    study = from_dict(StudyConfig, to_dict(study) | {"data": args.phantom} |
                      ({"out": args.out} if args.out else {}))  # fmt: skip
    tables = run_study(study)
    block = markdown(study, tables, time.monotonic() - t0, args)
    print(block)
    if args.write_results:
        write_section(block)
        grid = study.out / "semantic-gan-samples.png"
        if grid.exists():
            SAMPLES_PNG.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(grid, SAMPLES_PNG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
