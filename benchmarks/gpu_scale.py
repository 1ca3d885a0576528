"""The pipeline at MAIRA-2 scale on one GPU: record, train the SAE against SAELens, analyse.

A MAIRA-2-shaped model with random weights is built from config (no download): RAD-DINO-size
Dinov2 tower (768 wide, 12 blocks, 518 px, patch 14: 1369 image tokens per image), the 4-layer
projector and a Llama decoder (``--decoder 7b``: Vicuna-7B's 4096 x 32 blocks; ``3b``, ``1b``)
in bfloat16. Stages, each timed with its peak GPU memory and its fraction of the card's
matmul limit (a large square product, timed here in the stage's dtype):

1. phantom studies at 518 px (CPU; the data);
2. record block ``--layer`` (15, MAIRA-2's middle) with every image token, through the
   recorder's own loop (``workbench.record.run.run_items``), into a bf16 store; useful FLOPs
   of one stopped forward are counted with ``torch.utils.flop_counter``;
3. train our Matryoshka SAE (d_in = the decoder width, ``--d-sae`` 32k-64k, ``--k`` 64-128)
   and SAELens on the same store, step by step interleaved with the limit product
   (``bench_sae.train``); peak memory of each alone with ``--memory``;
4. ``workbench.analyse`` over the store with our SAE.

``--tiny`` shrinks every width (2-block Dinov2 at 56 px, a 3-block 48-wide Llama, a 256-latent
SAE) so the whole script runs on a CPU in the test suite.

    python benchmarks/gpu_scale.py --decoder 7b --studies 96 --d-sae 32768 --k 64 \\
        --sae-steps 60 --memory --out /tmp/gpu-scale --json gpu_scale.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_sae  # noqa: E402
import torch  # noqa: E402
from sae_measure import memory_report  # noqa: E402
from sae_peers import Shape, make_peers  # noqa: E402

DECODERS = {
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
               intermediate_size=11008),
    "3b": dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24,
               intermediate_size=8192),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16,
               intermediate_size=5632),
}  # fmt: skip
_GIB = 1024**3


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / _GIB if device.startswith("cuda") else None


def matmul_limit(device: str, dtype: torch.dtype, n: int) -> float:
    """FLOP/s of the best of five ``n x n`` products: the card's practical matmul limit."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def build_model(args, tokenizer):
    """The random MAIRA-2-shaped model and its config, built on the device in its dtype."""
    from transformers import LlamaConfig

    from workbench.models.maira2 import Maira2Config, Maira2ForConditionalGeneration
    from workbench.models.tiny import tiny_maira2

    if args.tiny:
        return tiny_maira2(tokenizer, n_layers=3).to(args.device)
    text = LlamaConfig(
        vocab_size=max(32000, len(tokenizer)), num_key_value_heads=None,
        max_position_embeddings=8192, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, **DECODERS[args.decoder],
    )  # fmt: skip
    text.num_key_value_heads = text.num_attention_heads
    config = Maira2Config(
        text_config=text.to_dict(), projector_n_layers=4, pad_token_id=0,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    before = torch.get_default_dtype()
    torch.set_default_dtype(args.model_dtype)
    try:
        with torch.device(args.device):
            model = Maira2ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(before)
    return model.eval()


def record_stage(model, tokenizer, phantom: Path, run: Path, args) -> dict:
    """Record the training and held-out stores; times the training one."""
    from torch.utils.flop_counter import FlopCounterMode

    from workbench.cxr.collection import Collection, load_collection
    from workbench.models.processor import Maira2Processor
    from workbench.models.registry import adapter_for
    from workbench.record.run import RecordConfig, run_items
    from workbench.store import StoreWriter

    adapter = adapter_for(model, tokenizer, "maira2-random",
                          Maira2Processor.for_model(model.config, tokenizer))  # fmt: skip
    layer = min(args.layer, adapter.n_layers - 1)
    items = load_collection(phantom).items
    held, train = items[: args.held_out_studies], items[args.held_out_studies :]
    dtype = "bfloat16" if args.model_dtype == torch.bfloat16 else "float32"
    rcfg = RecordConfig(model="maira2-random", layer=layer, image_tokens="all",
                        prompt_tokens="all", dtype=dtype, progress=False)  # fmt: skip
    inp = adapter.prepare(train[0].source, findings=train[0].findings)
    adapter.residual(inp, layer)  # warm-up
    with FlopCounterMode(display=False) as flops:
        adapter.residual(inp, layer)

    def write(path: Path, share: list) -> StoreWriter:
        w = StoreWriter(
            path, model=adapter.name, layer=layer, hook_name=adapter.hook_name(layer),
            d_model=adapter.d_model, dtype=dtype, shard_tokens=args.shard_tokens,
        )  # fmt: skip
        run_items(adapter, {layer: w}, Collection("studies", share, []), {layer: set()}, rcfg)
        w.close()
        return w

    reset_peak(args.device)
    sync(args.device)
    t0 = time.perf_counter()
    writer = write(run / "activations", train)
    sync(args.device)
    wall = time.perf_counter() - t0
    write(run / "heldout", held)
    per_study = flops.get_total_flops()
    return {
        "stage": "record", "layer": layer, "hook": adapter.hook_name(layer),
        "studies": len(train), "tokens": writer.n_tokens, "wall_s": wall,
        "tokens_per_s": writer.n_tokens / wall, "studies_per_s": len(train) / wall,
        "gpu_peak_gib": peak_gib(args.device), "flops_per_study": per_study,
        "fraction_of_matmul_limit": per_study * len(train) / wall / args.limit_model,
    }  # fmt: skip


def sae_stage(run: Path, args) -> dict:
    """Ours against SAELens on the recorded store, interleaved with the limit product."""
    from workbench.sae.data import StoreSource
    from workbench.store import ActivationStore

    source = StoreSource(run / "activations")
    held = torch.cat([x.float() for x, _ in ActivationStore(run / "heldout").iter_shards()])
    shape = Shape(source.d_in, args.d_sae, args.k, args.batch)
    steps = max(1, min(args.sae_steps, sum(source.shard_sizes()) // args.batch))
    ns = argparse.Namespace(
        max_steps=steps, eval_every=steps, until_flat=False, flat_window=3, flat_tol=0.01,
        thr_tol=0.02, device=args.device, dtype=args.sae_dtype, d_in=shape.d_in,
        d_sae=shape.d_sae, k=shape.k, batch=shape.batch, memory_steps=3,
        threads=torch.get_num_threads(), shard_tokens=args.shard_tokens,
    )  # fmt: skip
    reset_peak(args.device)
    peers = make_peers(args.peers.split(","), shape, source, steps, args.lr, args.device,
                       dtype=args.sae_dtype, out=run / "sae")  # fmt: skip
    result = bench_sae.train(peers, shape, held[: args.held_out_tokens], ns)
    peers[0].trainer.save_artefact()
    speed = bench_sae.speed(result["times"], shape)
    out = {
        "stage": "train_sae", "shape": vars(shape), "steps": steps,
        "wall_s": sum(t[0] for t in result["times"]["ours"].values()),
        "tokens_per_s": speed["ours"]["tokens_per_s"], "speed": speed,
        "fraction_of_matmul_limit": speed["ours"]["fraction_of_limit_wall"],
        "gpu_peak_gib_all_peers": peak_gib(args.device),
        "quality": bench_sae.quality(result["curves"], peers, held[: args.held_out_tokens], ns),
    }  # fmt: skip
    if args.memory:
        out["memory"] = memory_report(args.peers.split(","), ns)
    return out


def analyse_stage(run: Path, phantom: Path, args) -> dict:
    """``workbench.analyse`` over the store with our SAE."""
    from workbench.analyse.config import AnalyseConfig
    from workbench.analyse.run import analyse
    from workbench.sae import load_sae
    from workbench.store import ActivationStore

    store, sae = ActivationStore(run / "activations"), load_sae(run / "sae")
    cfg = AnalyseConfig(run=run, store=run / "activations", sae=run / "sae", data=phantom,
                        device=args.device, batch_tokens=args.batch)  # fmt: skip
    timings: dict[str, float] = {}
    reset_peak(args.device)
    t0 = time.perf_counter()
    analyse(cfg, timings)
    wall = time.perf_counter() - t0
    flops = 2 * store.n_tokens * sae.d_in * sae.d_sae
    return {
        "stage": "analyse", "tokens": store.n_tokens, "wall_s": wall,
        "tokens_per_s": store.n_tokens / wall, "gpu_peak_gib": peak_gib(args.device),
        "fraction_of_matmul_limit": flops / wall / args.limit_sae, "timings_cpu_s": timings,
    }  # fmt: skip


def table(report: dict) -> str:
    rows = ["| stage | tokens/s | wall s | GPU peak GiB | fraction of matmul limit |",
            "|---|---|---|---|---|"]  # fmt: skip
    for s in report["stages"]:
        gib = s.get("gpu_peak_gib", s.get("gpu_peak_gib_all_peers"))
        rows.append(
            f"| {s['stage']} | {s['tokens_per_s']:,.0f} | {s.get('wall_s', float('nan')):.1f} | "
            f"{'-' if gib is None else f'{gib:.1f}'} | {s['fraction_of_matmul_limit']:.2f} |"
        )
    return "\n".join(rows)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny widths: a CPU run for the tests")
    p.add_argument("--decoder", default="7b", choices=sorted(DECODERS))
    p.add_argument("--layer", type=int, default=15, help="decoder block recorded")
    p.add_argument("--studies", type=int, default=96, help="phantom studies (held out incl.)")
    p.add_argument("--held-out-studies", type=int, default=8)
    p.add_argument("--held-out-tokens", type=int, default=8192)
    p.add_argument("--d-sae", type=int, default=32768)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--sae-steps", type=int, default=60)
    p.add_argument("--sae-dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--peers", default="ours,saelens-best", help="see bench_sae.py --peers")
    p.add_argument("--shard-tokens", type=int, default=65536)
    p.add_argument("--memory", action="store_true", help="peak memory of each SAE peer alone")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/gpu-scale"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.tiny:
        args.studies, args.held_out_studies, args.d_sae, args.k = 6, 2, 256, 8
        args.batch, args.sae_steps, args.shard_tokens, args.lr = 128, 4, 512, 1e-3
        args.held_out_tokens = 256
    elif not args.device.startswith("cuda"):
        raise SystemExit("no GPU here: the full-size run needs one; --tiny runs on a CPU")
    cuda = args.device.startswith("cuda")
    args.model_dtype = torch.bfloat16 if cuda else torch.float32
    return args


def main(argv: list[str] | None = None) -> int:
    from workbench.cxr.phantom.run import PhantomConfig, generate
    from workbench.models.tiny import tiny_tokenizer

    args = parse(argv)
    torch.manual_seed(0)
    run = args.out
    n = 512 if args.tiny else 8192
    args.limit_model = matmul_limit(args.device, args.model_dtype, n)
    args.limit_sae = matmul_limit(args.device, torch.float32, n)
    cuda = args.device.startswith("cuda")
    report = {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__, "tiny": args.tiny,
        "decoder": None if args.tiny else args.decoder,
        "matmul_limit_tflops": {
            "model": args.limit_model / 1e12, "sae_fp32": args.limit_sae / 1e12,
        },
        "stages": [],
    }  # fmt: skip
    phantom = run / "phantom"
    t0 = time.perf_counter()
    if not (phantom / "phantom-summary.json").is_file():
        size = 64 if args.tiny else 518
        workers = 1 if args.tiny else min(8, os.cpu_count() or 1)
        generate(PhantomConfig(out=phantom, studies=args.studies, size=size, seed=7,
                               masks=False, workers=workers))  # fmt: skip
    report["phantom_s"] = time.perf_counter() - t0
    tokenizer = tiny_tokenizer()
    t0 = time.perf_counter()
    model = build_model(args, tokenizer)
    report["model"] = {"build_s": time.perf_counter() - t0, "parameters": sum(
        p.numel() for p in model.parameters()), "gpu_gib": peak_gib(args.device)}  # fmt: skip
    report["stages"].append(record_stage(model, tokenizer, phantom, run, args))
    del model
    if cuda:
        torch.cuda.empty_cache()
    report["stages"].append(sae_stage(run, args))
    report["stages"].append(analyse_stage(run, phantom, args))
    print(json.dumps(report, indent=2, default=str))
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
