"""maira2-mini stage 1: cost of the input-size choices, and the gate table of a trained encoder.

``python benchmarks/bench_mini_vision.py speed [--sizes 128/16 192/16 256/16]``
    times stage-1 steps (encoder forward + backward + heads, batch 32) at each
    image_size/patch_size and prints images/s and the relative cost.
``python benchmarks/bench_mini_vision.py gate [--model data/maira2-mini]``
    the linear-probe AUROC and pointing-game table (:mod:`workbench.models.mini.probe`) of the
    model's frozen encoder on the phantom test split (probe fitted on the train split).
``python benchmarks/bench_mini_vision.py capacity --towers 128x4 192x6 --steps 2000``
    capacity at equal steps: each tower (hidden x layers) trained from scratch by stage 1's
    own code on the same corpus (a stage-1 phantom + the evaluation train split) for the same
    steps and schedule, then its gate table; with the images/s and parameters of each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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


def gate_splits(processor, phantom: Path) -> tuple[list, list]:
    """The gate's frontal images with their targets: the phantom's train and test splits."""
    from workbench.cxr.studies import iter_studies
    from workbench.models.mini.dense import encode_frontals
    from workbench.models.mini.eval import read_phantom_labels

    truth = read_phantom_labels(phantom)
    return tuple(
        encode_frontals(processor, phantom, list(iter_studies(phantom, split=s)), truth)
        for s in ("train", "test")
    )


def gate(args) -> None:
    from workbench.models.mini.probe import gate_markdown, gate_table
    from workbench.models.mini.vision import load_heads
    from workbench.models.registry import load_model

    adapter = load_model(str(args.model))
    tower, heads = adapter.model.vision_tower, load_heads(args.model)
    train, test = gate_splits(adapter.processor, args.phantom)
    print(gate_markdown(gate_table(tower, heads, train, test)))


def capacity(args) -> None:
    from transformers import Dinov2Backbone

    from workbench.cxr.studies import iter_studies
    from workbench.models.mini.config import MiniConfig, vision_config
    from workbench.models.mini.dense import encode_frontals
    from workbench.models.mini.eval import read_phantom_labels
    from workbench.models.mini.probe import gate_markdown, gate_table
    from workbench.models.mini.vision import pretrain_encoder
    from workbench.models.registry import load_model

    processor = load_model(str(args.model)).processor  # the shipped input geometry
    train, test = gate_splits(processor, args.phantom)
    pre = args.corpus
    corpus = encode_frontals(processor, pre, list(iter_studies(pre)), read_phantom_labels(pre))
    for spec in args.towers:
        hidden, layers = (int(v) for v in spec.split("x"))
        cfg = MiniConfig(
            vision_hidden=hidden, vision_layers=layers, vision_steps=args.steps,
            vision_lr=args.lr, threads=args.threads, seed=0,
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
        print(gate_markdown(gate_table(tower, heads, train, test)), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--sizes", nargs="+", default=["128/16", "192/16", "224/16", "256/16"])
    s.add_argument("--steps", type=int, default=5)
    g = sub.add_parser("gate")
    g.add_argument("--model", type=Path, default=ROOT / "data" / "maira2-mini")
    g.add_argument("--phantom", type=Path, default=ROOT / "runs" / "mini-train" / "phantom")
    c = sub.add_parser("capacity")
    c.add_argument("--towers", nargs="+", default=["128x4", "192x6"], help="hidden x layers")
    c.add_argument("--steps", type=int, default=2000)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--model", type=Path, default=ROOT / "data" / "maira2-mini")
    c.add_argument("--phantom", type=Path, default=ROOT / "runs" / "mini-train" / "phantom")
    c.add_argument("--corpus", type=Path, default=ROOT / "runs" / "mini-train" / "pretrain13")
    c.add_argument("--out", type=Path, default=ROOT / "runs" / "capacity")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"speed": speed, "gate": gate, "capacity": capacity}[args.cmd](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
