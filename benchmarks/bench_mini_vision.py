"""maira2-mini stage 1: cost of the input-size choices, and the gate table of a trained encoder.

``python benchmarks/bench_mini_vision.py speed [--sizes 128/16 192/16 256/16]``
    times stage-1 steps (encoder forward + backward + heads, batch 32) at each
    image_size/patch_size and prints images/s and the relative cost.
``python benchmarks/bench_mini_vision.py gate [--model data/maira2-mini] [--heads DIR]``
    the linear-probe AUROC and pointing-game table (:mod:`workbench.models.mini.probe`) of the
    model's frozen encoder on the phantom test split (``--split validate``: the validation
    split; probe fitted on the train split), with the stage-1 heads of ``--heads`` (e.g. a
    refit by ``python -m workbench.models.mini.refit --out DIR``) or the model's own.
``python benchmarks/bench_mini_vision.py capacity --towers 128x4 192x6 --steps 2000``
    capacity at equal steps: each tower (hidden x layers) trained from scratch by stage 1's
    own code on the same corpus (a stage-1 phantom + the evaluation train split) for the same
    steps and schedule, then its gate table; with the images/s and parameters of each.
``python benchmarks/bench_mini_vision.py nodules [--model data/maira2-mini]``
    every test nodule with its size, its area and local contrast-to-noise in the processor's
    input, and whether the gate's probe finds it (score above the 95th percentile of
    nodule-free images), then the share found per size and per contrast: where the
    encoder's nodule misses come from.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def time_size(image_size: int, patch: int, steps: int, batch: int) -> float:
    """Images/s of stage-1 training steps at one input size (random pixels and targets)."""
    from transformers import Dinov2Backbone

    from workbench.models.mini.config import MiniConfig, vision_config
    from workbench.models.mini.dense import DENSE_CHANNELS
    from workbench.models.mini.vision import VisionHeads, encoder_tokens

    cfg = vision_config(MiniConfig(image_size=image_size, patch_size=patch))  # shipped widths
    tower, heads = Dinov2Backbone(cfg), VisionHeads(cfg.hidden_size)
    opt = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=1e-4)
    grid = image_size // patch
    pixels = torch.randn(batch, 3, image_size, image_size)
    cover = torch.rand(batch, grid * grid, len(DENSE_CHANNELS))
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        dense, image = heads(encoder_tokens(tower, pixels))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(dense, cover) + image.mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return steps * batch / (time.perf_counter() - t0)


def speed(args) -> None:
    rows = []
    for spec in args.sizes:
        size, patch = (int(v) for v in spec.split("/"))
        rows.append((spec, (size // patch) ** 2, time_size(size, patch, args.steps, 32)))
    base = rows[0][2]
    print(f"threads {torch.get_num_threads()}, batch 32, {args.steps} timed steps each")
    print("| size/patch | tokens | images/s | cost per image vs first |")
    print("|---|---|---|---|")
    for spec, tokens, ips in rows:
        print(f"| {spec} | {tokens} | {ips:.0f} | {base / ips:.2f}x |")


def gate_splits(processor, phantom: Path, split: str = "test") -> tuple[list, list]:
    """The gate's frontal images with their targets: the phantom's train split and ``split``."""
    from workbench.cxr.studies import iter_studies
    from workbench.models.mini.dense import encode_frontals
    from workbench.models.mini.eval import read_phantom_labels

    truth = read_phantom_labels(phantom)
    return tuple(
        encode_frontals(processor, phantom, list(iter_studies(phantom, split=s)), truth)
        for s in ("train", split)
    )


def gate(args) -> None:
    from workbench.models.mini.probe import gate_markdown, gate_table
    from workbench.models.mini.vision import load_heads
    from workbench.models.registry import load_model

    adapter = load_model(str(args.model))
    tower, heads = adapter.model.vision_tower, load_heads(args.heads or args.model)
    train, test = gate_splits(adapter.processor, args.phantom, args.split)
    print(gate_markdown(gate_table(tower, heads, train, test)))


def capacity(args) -> None:
    from transformers import Dinov2Backbone

    from workbench.cxr.studies import iter_studies
    from workbench.models.mini.config import MiniConfig, vision_config
    from workbench.models.mini.dense import encode_frontals
    from workbench.models.mini.eval import read_phantom_labels
    from workbench.models.mini.probe import gate_markdown, gate_rows, probe_scores
    from workbench.models.mini.vision import pretrain_encoder
    from workbench.models.processor import Maira2Processor

    size = {"image_size": args.image_size} if args.image_size else {}
    processor = Maira2Processor.from_pretrained(args.model, **size)  # or the model's own
    train, test = gate_splits(processor, args.phantom)
    pre = args.corpus
    corpus = encode_frontals(processor, pre, list(iter_studies(pre)), read_phantom_labels(pre))
    for spec in args.towers:
        hidden, layers = (int(v) for v in spec.split("x"))
        cfg = MiniConfig(
            vision_hidden=hidden, vision_layers=layers, vision_steps=args.steps,
            vision_lr=args.lr, threads=args.threads, seed=0, image_size=processor.image_size,
            patch_size=processor.patch_size,
        )  # fmt: skip
        torch.manual_seed(0)
        tower = Dinov2Backbone(vision_config(cfg))
        t0 = time.perf_counter()
        heads, stats = pretrain_encoder(cfg, tower, corpus + train, args.out / spec)
        n_params = sum(p.numel() for p in tower.parameters())
        ips = args.steps * cfg.vision_batch / max(1e-9, stats["vision_seconds"])
        print(
            f"\n#### tower {spec}: {n_params:,} parameters, {args.steps} steps in "
            f"{time.perf_counter() - t0:.0f} s ({ips:.0f} images/s); final dense / image loss "
            f"{stats['vision_final_dense_loss']:.4f} / {stats['vision_final_image_loss']:.4f}\n"
        )
        scores, dense = probe_scores(tower, heads, train, test)  # one probe fit for both
        print(gate_markdown(gate_rows(scores, dense, test)), flush=True)
        print(nodule_summary(nodule_rows(scores, test, args.phantom)), flush=True)


def input_mask(mask_HW: np.ndarray, size: int) -> np.ndarray:
    """A square phantom mask at the processor's ``size`` (area resampling, > half covered)."""
    from PIL import Image

    if mask_HW.shape[0] != mask_HW.shape[1]:
        raise ValueError(f"expected a square phantom mask, got {mask_HW.shape}")
    img = Image.fromarray(mask_HW.astype(np.uint8) * 255).resize((size, size), Image.BOX)
    return np.asarray(img) > 127


def local_cnr(pixels_HW: np.ndarray, mask_HW: np.ndarray) -> float:
    """How far a lesion stands out of its surroundings: (mean inside - mean of the ring around
    it) / the ring's standard deviation. The ring runs from one pixel outside the lesion to
    twice its radius beyond; negative when the surroundings (heart, diaphragm) are denser."""
    from scipy import ndimage

    if not mask_HW.any():
        raise ValueError("empty lesion mask")
    radius = max(2, int(np.sqrt(mask_HW.sum() / np.pi)))
    near = ndimage.binary_dilation(mask_HW, iterations=1)
    ring = ndimage.binary_dilation(mask_HW, iterations=2 * radius) & ~near
    around = pixels_HW[ring]
    return float((pixels_HW[mask_HW].mean() - around.mean()) / (around.std() + 1e-6))


def nodule_rows(scores: torch.Tensor, test: list, phantom: Path) -> list[tuple]:
    """(found, size mm, area px, CNR, zone) of every test nodule (see the module docstring),
    from the gate probe's logits on ``test`` (:func:`probe_scores`)."""
    import json

    from workbench.cxr.findings import RENDERED
    from workbench.cxr.layout import mask_dir
    from workbench.cxr.studies import iter_studies
    from workbench.models.mini.dense import read_mask

    k = RENDERED.index("nodule")
    score = scores[:, k].numpy()
    has = np.array([bool(e.concepts[k]) for e in test])
    cut = np.percentile(score[~has], 95)
    with open(phantom / "phantom-studies.jsonl") as f:
        drawn = {r["study_id"]: r["findings"].get("nodule") for r in map(json.loads, f)}
    recs = {r.study_id: r for r in iter_studies(phantom, split="test")}
    rows = []
    for i in np.flatnonzero(has):
        e, rec = test[i], recs[test[i].study_id]
        folder = mask_dir(phantom, rec.subject_id, rec.study_id, rec.frontal_path.stem)
        mask = input_mask(read_mask(folder / "nodule.png"), e.pixels.shape[-1])
        cnr = local_cnr(e.pixels.float().numpy(), mask)
        nod = drawn[e.study_id]
        rows.append((bool(score[i] >= cut), nod["size_mm"], int(mask.sum()), cnr, nod["zone"]))
    return rows


def nodule_summary(rows: list[tuple]) -> str:
    """Nodules found per size and local contrast, as a markdown table."""
    lines = ["| nodules | found |", "|---|---|"]
    for name, keep in (
        ("< 14 mm", lambda r: r[1] < 14), (">= 14 mm", lambda r: r[1] >= 14),
        (">= 14 mm, CNR < 0.5", lambda r: r[1] >= 14 and r[3] < 0.5),
        (">= 14 mm, CNR >= 0.5", lambda r: r[1] >= 14 and r[3] >= 0.5),
    ):  # fmt: skip
        sel = [r for r in rows if keep(r)]
        lines.append(f"| {name} | {sum(r[0] for r in sel)} of {len(sel)} |")
    return "\n".join(lines)


def nodules(args) -> None:
    from workbench.models.mini.probe import probe_scores
    from workbench.models.mini.vision import load_heads
    from workbench.models.registry import load_model

    adapter = load_model(str(args.model))
    train, test = gate_splits(adapter.processor, args.phantom)
    scores, _ = probe_scores(adapter.model.vision_tower, load_heads(args.model), train, test)
    rows = sorted(nodule_rows(scores, test, args.phantom), key=lambda r: (r[1], r[3]))
    print("| found | size mm | area px at the input | local CNR | zone |\n|---|---|---|---|---|")
    for found, size, area, cnr, zone in rows:
        print(f"| {'yes' if found else '**no**'} | {size:.1f} | {area} | {cnr:.2f} | {zone} |")
    print("\n" + nodule_summary(rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--sizes", nargs="+", default=["128/16", "192/16", "224/16", "256/16"])
    s.add_argument("--steps", type=int, default=5)
    g = sub.add_parser("gate")
    g.add_argument("--model", type=Path, default=ROOT / "data" / "maira2-mini")
    g.add_argument("--phantom", type=Path, default=ROOT / "runs" / "mini-train" / "phantom")
    g.add_argument("--heads", type=Path, default=None, help="stage-1 heads dir (default: model)")
    g.add_argument("--split", choices=("test", "validate"), default="test")
    c = sub.add_parser("capacity")
    c.add_argument("--towers", nargs="+", default=["128x4", "192x6"], help="hidden x layers")
    c.add_argument("--steps", type=int, default=2000)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--model", type=Path, default=ROOT / "data" / "maira2-mini")
    c.add_argument("--phantom", type=Path, default=ROOT / "runs" / "mini-train" / "phantom")
    c.add_argument("--corpus", type=Path, default=ROOT / "runs" / "mini-train" / "pretrain13")
    c.add_argument("--out", type=Path, default=ROOT / "runs" / "capacity")
    c.add_argument("--image-size", type=int, default=0, help="input side (0: the model's)")
    n = sub.add_parser("nodules")
    n.add_argument("--model", type=Path, default=ROOT / "data" / "maira2-mini")
    n.add_argument("--phantom", type=Path, default=ROOT / "runs" / "mini-train" / "phantom")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"speed": speed, "gate": gate, "capacity": capacity, "nodules": nodules}[args.cmd](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
