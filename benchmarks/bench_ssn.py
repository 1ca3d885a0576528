"""SSN: sampling speed against torch.distributions, and GED on the phantom nodules.

``speed``: 100 logit-map samples for one 128 x 128 image (C = 2, R = 10) from the same SSN
parameters, by ``segmentation.ssn.sample_logits`` and by
``torch.distributions.LowRankMultivariateNormal.rsample`` (with and without building the
distribution, which factorises the R x R capacitance matrix), side by side in one process.

``ged``: the deterministic U-Net, the low-rank SSN and the diagonal SSN trained for the same
number of steps on the phantom's nodule crops (four disagreeing annotators) and scored on the
test split: GED, sample diversity vs the annotators' own, HM-IoU, Dice. Fixed steps rather
than a time budget, so the table does not depend on how busy the machine is.

    .venv/bin/python benchmarks/bench_ssn.py speed
    .venv/bin/python benchmarks/bench_ssn.py ged --phantom runs/ssn-phantom --steps 900 \
        --warmup 300 --threads 1 --phantom-studies 2500 --phantom-seed 1 --write-results
    .venv/bin/python benchmarks/bench_ssn.py all --phantom runs/demo/phantom --write-results
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from segmentation.evaluate import EvalConfig, evaluate
from segmentation.ssn import SSNConfig, SSNHead, sample_logits, to_torch_distribution
from segmentation.train import TrainConfig, train

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Segmentation (SSN)"


def _median_times(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable, timed in turn (interleaved) so load drifts hit all."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_speed(repeats: int = 20, side: int = 128, samples: int = 100) -> dict:
    """Seconds for ``samples`` samples of one image: ours, torch rsample, torch build+rsample."""
    torch.manual_seed(0)
    head = SSNHead(32, 2, SSNConfig(rank=10))
    with torch.no_grad():
        out = head(torch.relu(torch.randn(1, 32, side, side)))
        dist = to_torch_distribution(out)
        t = _median_times(
            {
                "ours": lambda: sample_logits(out, samples),
                "torch": lambda: dist.rsample((samples,)),
                "torch_full": lambda: to_torch_distribution(out).rsample((samples,)),
            },
            repeats,
        )
    ours, torch_rsample, torch_full = t["ours"], t["torch"], t["torch_full"]
    return {
        "side": side,
        "samples": samples,
        "rank": 10,
        "threads": torch.get_num_threads(),
        "ours_s": ours,
        "torch_rsample_s": torch_rsample,
        "torch_build_rsample_s": torch_full,
        "ratio_torch_over_ours": torch_rsample / ours,
        "ratio_torch_build_over_ours": torch_full / ours,
    }


def ensure_phantom(root: Path, studies: int, seed: int) -> Path:
    """Generate the phantom (with masks) at ``root`` unless it is already there."""
    if (root / "masks").is_dir():
        return root
    from workbench.cxr.phantom.run import PhantomConfig, generate

    generate(PhantomConfig(out=root, studies=studies, size=256, seed=seed, workers=1, masks=True))
    return root


def bench_ged(phantom: Path, work: Path, args) -> dict:
    """Train the three models for ``args.steps`` steps each; evaluate on the test split.

    All three start with ``args.warmup`` steps of cross-entropy on the (mean) logits, so the
    SSN models differ from the U-Net only in what they learn afterwards. Regularisation
    (weight decay, gradient clipping) is the same for all three.
    """
    table = {}
    for model in args.models:
        out = work / model
        cfg = TrainConfig(
            model=model,
            data=phantom,
            dataset="phantom-nodules",
            out=out,
            steps=args.steps,
            mean_warmup_steps=args.warmup,
            image_size=args.size,
            crop_size=args.crop,
            channels=(8, 16, 32, 64),
            batch_size=8,
            lr=2e-3,
            rank=args.rank,
            factor_init_scale=args.factor_init_scale,
            use_roi=args.use_roi,
            weight_decay=args.weight_decay,
            grad_clip=args.grad_clip,
            seed=args.seed,
            progress=False,
            checkpoint_every=100,
            resume=False,
        )
        t0 = time.perf_counter()
        res = train(cfg)
        train_s = time.perf_counter() - t0
        ev = evaluate(
            EvalConfig(
                model_dir=out,
                data=phantom,
                dataset="phantom-nodules",
                split="test",
                num_samples=args.samples,
            )
        )
        row = {r["metric"]: r["value"] for r in ev["rows"] if r["subgroup"] == "all"}
        row.update(
            steps=res.steps,
            train_s=train_s,
            n_images=next(r["n_images"] for r in ev["rows"] if r["subgroup"] == "all"),
        )
        table[model] = row
    return table


SPEED_TITLE = "### Sampling speed"
GED_TITLE = "### GED on the phantom nodules (U-Net vs SSN vs diagonal SSN)"


def markdown_speed(speed: dict, repeats: int) -> str:
    return "\n".join(
        [
            SPEED_TITLE,
            "",
            f"{speed['samples']} logit-map samples for one {speed['side']}x{speed['side']} image "
            f"(C=2, R={speed['rank']}), {speed['threads']} CPU threads, median of {repeats} "
            "(`python benchmarks/bench_ssn.py speed --write-results`):",
            "",
            "| sampler | seconds | torch / ours |",
            "|---|---|---|",
            f"| segmentation.ssn.sample_logits | {speed['ours_s']:.4f} | 1.00 |",
            f"| LowRankMultivariateNormal.rsample (built) | {speed['torch_rsample_s']:.4f} | "
            f"{speed['ratio_torch_over_ours']:.2f} |",
            f"| LowRankMultivariateNormal(...) + rsample | {speed['torch_build_rsample_s']:.4f} | "
            f"{speed['ratio_torch_build_over_ours']:.2f} |",
            "",
        ]
    )


ANNOTATORS = 4
"""Annotator masks per phantom nodule."""


def _distinct(v_stat: float, n: int) -> float:
    """Mean distance over distinct pairs from the mean over all n^2 ordered pairs (the
    self-pairs add n zeros): the V-statistic times n/(n-1). With 4 annotators the GED's
    E[d(Y,Y')] is 3/4 of the distance between two different annotators; with 100 samples the
    correction is 1 %, so the two are compared fairly only after it."""
    return v_stat * n / (n - 1)


def _extra_flags(args) -> str:
    """The non-default training flags of this run, for the reproducible command line."""
    flags = [
        ("--warmup", args.warmup, 100),
        ("--rank", args.rank, 10),
        ("--factor-init-scale", args.factor_init_scale, 1.0),
        ("--weight-decay", args.weight_decay, 0.0),
        ("--grad-clip", args.grad_clip, None),
        ("--seed", args.seed, 0),
        ("--samples", args.samples, 100),
    ]
    text = "".join(f" {name} {value}" for name, value, default in flags if value != default)
    if args.use_roi:
        text += " --use-roi"
    return text + f" --phantom-studies {args.phantom_studies} --phantom-seed {args.phantom_seed}"


def markdown_ged(ged: dict, args) -> str:
    anyrow = next(iter(ged.values()))
    lines = [
        GED_TITLE,
        "",
        f"Test split ({anyrow['n_images']} crops, {args.size} px from {args.crop} px crops), "
        f"{args.steps} training steps each (batch 8, the first {args.warmup} cross-entropy on "
        f"the mean), {args.samples} samples per image (`python benchmarks/bench_ssn.py ged "
        f"--phantom {args.phantom} --steps {args.steps} --crop {args.crop} --size {args.size} "
        f"--threads {torch.get_num_threads()}{_extra_flags(args)} --write-results`, on the "
        "shared 2-core machine). The annotators' own diversity E[d(Y,Y')] is "
        f"{anyrow['annotator_diversity']:.3f} over all 4x4 ordered pairs (the GED term, "
        f"self-pairs included) and {_distinct(anyrow['annotator_diversity'], ANNOTATORS):.3f} "
        "over distinct pairs; the last column is the samples' diversity over distinct pairs.",
        "",
        "| model | GED (lower better) | sample diversity | HM-IoU | Dice | ECE | train s "
        "| diversity, distinct pairs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in ged.items():
        lines.append(
            f"| {name} | {r['ged']:.3f} | {r['sample_diversity']:.3f} | "
            f"{r['hm_iou']:.3f} | {r['dice']:.3f} | {r['ece']:.3f} | "
            f"{r['train_s']:.0f} | {_distinct(r['sample_diversity'], args.samples):.3f} |"
        )
    return "\n".join(lines) + "\n"


def _replace_block(text: str, title: str, block: str) -> str | None:
    """Replace the block from ``title`` to the next ``##``/``###`` heading; None if absent."""
    start = text.find(title)
    if start < 0:
        return None
    stops = [text.find(h, start + len(title)) for h in ("\n## ", "\n### ")]
    stops = [i for i in stops if i >= 0]
    end = min(stops) + 1 if stops else len(text)
    return text[:start] + block.rstrip("\n") + "\n\n" + text[end:].lstrip("\n")


def write_section(title: str, block: str) -> None:
    """Put ``block`` under this benchmark's section of RESULTS.md, leaving others alone."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if SECTION not in old:
        old = old.rstrip("\n") + f"\n\n{SECTION}\n\nBy `benchmarks/bench_ssn.py`.\n\n"
    new = _replace_block(old, title, block)
    if new is None:  # insert at the end of our section
        start = old.find(SECTION)
        nxt = old.find("\n## ", start + len(SECTION))
        end = nxt + 1 if nxt >= 0 else len(old)
        new = old[:end].rstrip("\n") + "\n\n" + block.rstrip("\n") + "\n\n" + old[end:]
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(new.rstrip("\n") + "\n")
    tmp.replace(RESULTS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("speed", "ged", "all"))
    p.add_argument("--phantom", type=Path, default=Path("runs/demo/phantom"))
    p.add_argument("--work", type=Path, default=Path("runs/bench-ssn"))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--size", type=int, default=32, help="network input side in px")
    p.add_argument("--crop", type=int, default=64, help="nodule crop in phantom px")
    p.add_argument("--warmup", type=int, default=100, help="mean-only CE steps first")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--models", nargs="+", default=["unet", "ssn", "ssn-diag"])
    p.add_argument("--rank", type=int, default=10, help="SSN covariance rank")
    p.add_argument("--factor-init-scale", type=float, default=1.0)
    p.add_argument("--use-roi", action="store_true", help="mask SSN covariance to the lungs")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--phantom-studies", type=int, default=2500, help="if --phantom is absent")
    p.add_argument("--phantom-seed", type=int, default=1, help="if --phantom is absent")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    speed = bench_speed(args.repeats) if args.what in ("speed", "all") else None
    ged = None
    if args.what in ("ged", "all"):
        phantom = ensure_phantom(args.phantom, args.phantom_studies, args.phantom_seed)
        ged = bench_ged(phantom, args.work, args)
    print(json.dumps({"speed": speed, "ged": ged}, indent=1))
    blocks = []
    if speed:
        blocks.append((SPEED_TITLE, markdown_speed(speed, args.repeats)))
    if ged:
        blocks.append((GED_TITLE, markdown_ged(ged, args)))
    for title, block in blocks:
        print(block)
        if args.write_results:
            write_section(title, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
