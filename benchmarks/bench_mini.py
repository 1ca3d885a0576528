"""maira2-mini quality: labeller F1 of generated FINDINGS on the phantom test split.

``python benchmarks/bench_mini.py [--model maira2-mini] [--phantom runs/mini-train/phantom]``

The model generates findings (greedy, MAIRA-2 prompt) for every test study; the project's
labeller reads them; each rendered concept (FINDINGS + DEVICES) is scored against the
phantom's ground truth (:mod:`workbench.models.mini.eval`). The peer is the labeller on the
reference findings (the ceiling the labeller itself allows). Prints a JSON summary and a
Markdown table for ``benchmarks/RESULTS.md``; ``--out`` keeps the generated texts.

``--ablations`` proves the model reads the image: the test split again with every image
replaced by flat grey (blank) and by the images of another study (swapped), each with the
full prompt and with an image-only prompt (indication, comparison and prior report N/A),
in a table of macro F1 (issue 11: image-only blank/swapped <= 0.25, real >= 0.6).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def markdown(report, reference_scores) -> str:
    """Per-concept table: support, precision, recall, F1 of generated vs reference findings."""
    ref = {s.concept: s for s in reference_scores}
    lines = [
        "| concept | support | precision | recall | F1 | F1 of reference findings |",
        "|---|---|---|---|---|---|",
    ]
    for s in report.scores:
        lines.append(
            f"| {s.concept} | {s.support} | {s.precision:.2f} | {s.recall:.2f} | "
            f"{s.f1:.2f} | {ref[s.concept].f1:.2f} |"
        )
    lines.append(
        f"| **macro** | | | | **{report.macro_f1:.3f}** | {report.reference_macro_f1:.3f} |"
    )
    return "\n".join(lines)


def ablation_table(macro: dict[tuple[str, bool], float]) -> str:
    """Macro F1 per (prompt, image condition)."""
    lines = ["| prompt | real images | blank images | swapped images |", "|---|---|---|---|"]
    for image_only, name in ((False, "full"), (True, "image-only (N/A text)")):
        cells = [f"{macro[(c, image_only)]:.3f}" for c in ("real", "blank", "swapped")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_ablations(adapter, args, real_full: float) -> dict[tuple[str, bool], float]:
    """Macro F1 of every (image condition, image-only prompt) pair on the split.

    ``real_full`` is the main run's macro F1 (real images, full prompt), not generated again.
    """
    from workbench.models.mini.eval import evaluate_split

    macro = {("real", False): real_full}
    for image_only in (False, True):
        for condition in ("real", "blank", "swapped"):
            if (condition, image_only) in macro:
                continue
            report = evaluate_split(
                adapter.model, adapter.processor, args.phantom, args.split, args.limit,
                condition=condition, image_only=image_only,
            )  # fmt: skip
            macro[(condition, image_only)] = report.macro_f1
            print(f"{condition} images, image_only={image_only}: macro F1 {report.macro_f1:.3f}")
    return macro


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="maira2-mini")
    p.add_argument("--phantom", type=Path, default=ROOT / "runs" / "mini-train" / "phantom")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=0, help="first N studies (0: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write generated findings (JSON)")
    p.add_argument("--ablations", action="store_true", help="blank/swapped x full/image-only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from workbench.cxr.studies import iter_studies
    from workbench.models.mini.eval import evaluate_split, positives, read_phantom_labels, score
    from workbench.models.registry import load_model

    if not (args.phantom / "phantom-summary.json").is_file():
        raise SystemExit(
            f"{args.phantom}: no phantom benchmark; make it with `python -m workbench.cxr.phantom "
            "--out runs/mini-train/phantom --studies 2500 --size 256 --seed 1`"
        )
    adapter = load_model(args.model)
    t0 = time.perf_counter()
    report = evaluate_split(adapter.model, adapter.processor, args.phantom, args.split, args.limit)
    secs = time.perf_counter() - t0
    truth = read_phantom_labels(args.phantom)
    records = [r for r in iter_studies(args.phantom, split=args.split) if r.study_id in truth]
    records = records[: args.limit] if args.limit else records
    reference = score({r.study_id: positives(r.findings or "") for r in records}, truth)
    summary = {
        "model": args.model, "split": args.split, "studies": report.n_studies,
        "macro_f1": report.macro_f1, "reference_macro_f1": report.reference_macro_f1,
        "seconds": secs, "per_concept": {s.concept: s._asdict() for s in report.scores},
    }  # fmt: skip
    print(json.dumps(summary, indent=2))
    print(markdown(report, reference))
    if args.out:
        args.out.write_text(json.dumps({str(k): v for k, v in report.generated.items()}, indent=1))
    if args.ablations:
        print(ablation_table(run_ablations(adapter, args, report.macro_f1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
