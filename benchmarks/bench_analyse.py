"""Whole analysis vs the bare cost of encoding the same store with the same SAE, one run.

``python benchmarks/bench_analyse.py [--shape demo|maira2-small|maira2-64k|all] [--out DIR]``

For each shape it writes a synthetic activation store (studies of image, prompt and report
tokens, in the store's real format) and a random Matryoshka SAE whose threshold gives about
``k`` active latents per token, then times, side by side in one process:

1. *bare encoding*: read every shard and ``sae.encode`` it batch by batch (what any use of
   the SAE over the store costs at least), once before and once after step 2 (their mean);
2. ``workbench.analyse.analyse`` on the same store and SAE (with labels), step by step.

It prints the ratio analysis / bare encoding in CPU seconds of the process (all its threads,
DuckDB's included: ``time.process_time``), which stays meaningful on a shared, busy machine
where wall time mostly measures the neighbours; wall times are printed too. The issue's
target is a ratio of at most 1.5.
Shapes: ``demo`` is the phantom demo (maira2-mini d_model 256, 4x SAE, k 16);
``maira2-small`` and ``maira2-64k`` have MAIRA-2's SAE proportions at half width (d 2048,
8192 latents, k 64) over 16k and 64k tokens.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

from workbench.analyse.run import AnalyseConfig, analyse
from workbench.cxr.findings import concept_names
from workbench.sae import MatryoshkaSAE, save_sae
from workbench.store import ActivationStore, StoreWriter

HOOK = "blocks.2.hook_resid_post"


class Shape(NamedTuple):
    d_model: int
    d_sae: int
    k: int
    studies: int
    tokens_per_study: tuple[int, int, int]  # image, prompt, report


SHAPES = {
    # the embedded demo: maira2-mini (d_model 256), configs/sae-demo.toml (4x, k 16), 300 studies
    "demo": Shape(256, 1024, 16, 300, (192, 100, 60)),
    # MAIRA-2's SAE proportions at half width, a store of 16k tokens (fixed costs dominate)
    "maira2-small": Shape(2048, 8192, 64, 40, (300, 60, 40)),
    # the same SAE over 4x the tokens: per-feature costs amortise, per-token ones remain
    "maira2-64k": Shape(2048, 8192, 64, 160, (300, 60, 40)),
}


def make_store(path: Path, shape: Shape, seed: int = 0) -> None:
    """Random activations with a few directions shared by "positive" studies."""
    g = torch.Generator().manual_seed(seed)
    n_img, n_prompt, n_rep = shape.tokens_per_study
    concepts = torch.randn(8, shape.d_model, generator=g) * 3
    w = StoreWriter(
        path, model="bench", layer=2, hook_name=HOOK, d_model=shape.d_model, shard_tokens=65536
    )
    for s in range(shape.studies):
        n = n_img + n_prompt + n_rep
        acts = torch.randn(n, shape.d_model, generator=g)
        for c in range(8):
            if (s >> c) & 1:
                acts[: n_img // 4] += concepts[c]
        kinds = ["image"] * n_img + ["prompt"] * n_prompt + ["report"] * n_rep
        words = [" small", " left", " effusion", " no", " pneumothorax", "."]
        meta = {
            "subject_id": [1000 + s // 3] * n,
            "position": list(range(n)),
            "token_id": [7] * n,
            "token": ["<image>"] * n_img
            + ["tok"] * n_prompt
            + [words[i % len(words)] for i in range(n_rep)],
            "kind": kinds,
            "section": [None] * n_img + ["prompt"] * n_prompt + ["findings"] * n_rep,
            "patch_row": [i // 16 for i in range(n_img)] + [None] * (n - n_img),
            "patch_col": [i % 16 for i in range(n_img)] + [None] * (n - n_img),
        }
        w.add(50_000_000 + s, acts, meta)
    w.close()


def make_labels(data: Path, shape: Shape) -> None:
    """phantom-labels.csv: concept c present in study s when bit c of s is set."""
    data.mkdir(parents=True, exist_ok=True)
    names = concept_names()
    with open(data / "phantom-labels.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["subject_id", "study_id", *names])
        for s in range(shape.studies):
            out.writerow(
                [
                    1000 + s // 3,
                    50_000_000 + s,
                    *[int(j < 8 and (s >> j) & 1) for j in range(len(names))],
                ]
            )


def make_sae(path: Path, store: ActivationStore, shape: Shape) -> MatryoshkaSAE:
    """Random SAE whose threshold is set so that about ``k`` latents fire per token."""
    sae = MatryoshkaSAE(
        shape.d_model, shape.d_sae, shape.k, (shape.d_sae // 4,) * 4, hook_name=HOOK
    )
    shard = store.shard(0)
    sample = shard[:: max(1, shard.shape[0] // 4096)].float()  # spread over studies and kinds
    with torch.no_grad():
        pre = sae.pre_acts(sample).flatten()
        n_above = shape.k * sample.shape[0]  # the (k * tokens)-th largest pre-activation
        sae.threshold.fill_(float(pre.topk(n_above).values[-1]))
    save_sae(sae, path)
    return sae


@torch.no_grad()
def bare_encoding(store: ActivationStore, sae: MatryoshkaSAE, batch: int) -> tuple[float, ...]:
    """CPU and wall seconds to read and encode every token; and the mean L0 seen."""
    t0, w0 = time.process_time(), time.perf_counter()
    fired = 0
    for i in range(store.num_shards):
        acts = store.shard(i)
        for b0 in range(0, acts.shape[0], batch):
            lat = sae.encode(acts[b0 : b0 + batch].float())
            fired += int((lat > 0).sum())
    return time.process_time() - t0, time.perf_counter() - w0, fired / store.n_tokens


def bench(name: str, root: Path) -> dict:
    shape = SHAPES[name]
    run = root / name
    make_store(run / "activations", shape)
    make_labels(run / "phantom", shape)
    store = ActivationStore(run / "activations")
    sae = make_sae(run / "sae", store, shape)
    cfg = AnalyseConfig(run=run, device="cpu")
    before = bare_encoding(store, sae, cfg.batch_tokens)
    timings: dict[str, float] = {}
    t0, w0 = time.process_time(), time.perf_counter()
    analyse(cfg, timings)
    total, wall = time.process_time() - t0, time.perf_counter() - w0
    after = bare_encoding(store, sae, cfg.batch_tokens)  # before and after: drift on a busy box
    bare, bare_wall, l0 = ((a + b) / 2 for a, b in zip(before, after))
    result = {
        "shape": name,
        "tokens": store.n_tokens,
        "d_model": shape.d_model,
        "d_sae": shape.d_sae,
        "l0": round(l0, 1),
        "bare_encoding_cpu_s": round(bare, 2),
        "bare_runs_cpu_s": [round(before[0], 2), round(after[0], 2)],
        "analyse_cpu_s": round(total, 2),
        "ratio_cpu": round(total / bare, 2),
        "bare_encoding_wall_s": round(bare_wall, 2),
        "analyse_wall_s": round(wall, 2),
        "ratio_wall": round(wall / bare_wall, 2),
        "steps_cpu_s": {k: round(v, 2) for k, v in timings.items()},
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args(argv)
    root = args.out or Path(tempfile.mkdtemp(prefix="bench_analyse_"))
    try:
        for name in SHAPES if args.shape == "all" else [args.shape]:
            bench(name, root)
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
