"""How fast the app's pages render on a run of realistic size; the budget is 500 ms a page.

``python benchmarks/bench_app.py [--features 16384] [--studies 800] [--out DIR]``

Builds once (reused on later runs) a synthetic run through the real pipeline: the phantom
benchmark in MIMIC-CXR layout (512 px images, reports, label CSVs, ground truth), an
activation store (16x16 image patches, prompt and report words per study), a random
Matryoshka SAE with ``--features`` latents whose thresholds give about ``--fires`` active
latents per token (millions of sparse activations in all), and ``workbench.analyse`` over
them, so ``features.duckdb`` has exactly the schema and sizes the app meets. Then it times
the app's handlers in one process:

- *feature page* (``handlers.feature_view``: header, labels, histogram, examples, concept
  bars, neighbours, heatmap over the image) for random live features, against the peer:
  the ad-hoc notebook query a researcher would run without analyse's tables (histogram
  and top examples with context straight from ``feature_acts``);
- *features table* (default view, label search, concept filter), *study view*.

It prints median / 95th percentile / max per page and the ratios median / 500 ms budget and
feature page / ad-hoc peer.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workbench import db
from workbench.config import parse_config

BUDGET_MS = 500.0


@dataclass
class BenchAppConfig:
    """Time the app's handlers on a synthetic run of realistic size."""

    out: Path = Path("benchmarks/out/app-run")
    """Run directory to build (kept and reused; delete it to rebuild)."""
    features: int = 16384
    """SAE latents."""
    studies: int = 800
    """Phantom studies; each has 256 image, 6 prompt and about 60 report tokens."""
    d_model: int = 64
    """Width of the synthetic activations (small: only the SAE's outputs matter here)."""
    fires: int = 24
    """Average active latents per token."""
    repeats: int = 30
    """Pages timed per view."""
    seed: int = 0
    """Seed of data, SAE and the features timed."""


def build_run(cfg: BenchAppConfig) -> None:
    """Dataset, store, random SAE and analyse under ``cfg.out`` (skipped when built)."""
    from workbench.analyse.run import AnalyseConfig, analyse
    from workbench.cxr.phantom.run import PhantomConfig, generate
    from workbench.models.hooks import resid_post_name
    from workbench.sae import MatryoshkaSAE, save_sae
    from workbench.store import StoreWriter
    from workbench.testing import tiny_run

    run = cfg.out
    if db.db_path(run).exists():
        return
    t0 = time.perf_counter()
    root = run / "phantom"
    if not (root / "phantom-summary.json").exists():
        generate(PhantomConfig(out=root, studies=cfg.studies, size=512, seed=cfg.seed, workers=2))
    g = torch.Generator().manual_seed(cfg.seed)
    hook = resid_post_name(tiny_run.LAYER)
    w = StoreWriter(
        run / "activations", model="bench", layer=1, hook_name=hook, d_model=cfg.d_model
    )
    for rec in tiny_run.studies(root):
        if rec.study_id in w.completed:
            continue
        _, meta = tiny_run.study_tokens(root, rec, grid=16)
        w.add(rec.study_id, torch.randn(len(meta), cfg.d_model, generator=g), meta)
    w.close()
    save_sae(_random_sae(cfg, g, hook, MatryoshkaSAE), run / "sae")
    print(f"phantom + store: {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    analyse(AnalyseConfig(run=run, data=root, device="cpu", batch_tokens=8192))
    print(f"analyse: {time.perf_counter() - t0:.0f} s", flush=True)


def _random_sae(cfg: BenchAppConfig, g: torch.Generator, hook: str, cls):
    """Random unit directions; per-latent bias spreads densities over orders of magnitude."""
    F = cfg.features
    sizes = (F // 16, F // 4 - F // 16, F - F // 4)
    sae = cls(cfg.d_model, F, k=cfg.fires, group_sizes=sizes, hook_name=hook)
    with torch.no_grad():
        W_DF = torch.randn(cfg.d_model, F, generator=g)
        W_DF /= W_DF.norm(dim=0, keepdim=True)
        sae.W_enc_DF.copy_(W_DF * cfg.d_model**0.5 / 8)
        sae.W_dec_FD.copy_(W_DF.T)
        sae.b_enc_F.copy_(torch.randn(F, generator=g) * 0.6)
        sae.b_dec_D.zero_()
        # threshold at the normal quantile that leaves ~fires of F latents active on average
        z = float(torch.distributions.Normal(0, 1).icdf(torch.tensor(1 - cfg.fires / F)))
        sae.threshold.fill_(z * (1 + 0.6**2) ** 0.5)
    return sae


def _time(fn, args_list) -> list[float]:
    out = []
    for args in args_list:
        t0 = time.perf_counter()
        fn(*args)
        out.append(1000 * (time.perf_counter() - t0))
    return out


def adhoc_page(con, feature: int) -> None:
    """The peer: histogram and top-20 examples with context straight from the activations."""
    con.execute(
        "SELECT floor(4 * log2(value)) AS b, count(*) FROM feature_acts WHERE feature = ? "
        "GROUP BY b ORDER BY b",
        [feature],
    ).fetchall()
    con.execute(
        """WITH top AS (SELECT row, value FROM feature_acts WHERE feature = ?
                        ORDER BY value DESC LIMIT 20)
           SELECT top.row, list(t.token ORDER BY t.row) FROM top JOIN tokens t
             ON t.row BETWEEN top.row - 5 AND top.row + 5 GROUP BY top.row""",
        [feature],
    ).fetchall()


def _line(name: str, ms: list[float], peer: list[float] | None = None) -> str:
    med = statistics.median(ms)
    p95 = float(np.percentile(ms, 95))
    text = f"| {name} | {med:.0f} | {p95:.0f} | {max(ms):.0f} | {med / BUDGET_MS:.2f} |"
    if peer:
        text += f" {statistics.median(peer):.0f} ms ({med / statistics.median(peer):.2f}x) |"
    else:
        text += " |"
    return text


def measure(cfg: BenchAppConfig) -> str:
    """Time every view on the built run and return the results as a Markdown table."""
    from workbench.ui import handlers, handlers_study, queries
    from workbench.ui.context import open_context

    ctx = open_context(cfg.out)
    rng = random.Random(cfg.seed)
    live = [r["feature"] for r in ctx.rows("SELECT feature FROM feature_stats WHERE NOT dead")]
    feats = [(ctx, f) for f in rng.sample(live, min(cfg.repeats, len(live)))]
    handlers.feature_view(*feats[0])  # warm the connection's caches once, like a live app
    page = _time(handlers.feature_view, feats)
    peer = _time(adhoc_page, [(ctx.con, f) for _, f in feats])
    table = _time(lambda c: handlers.feature_table(c), [(ctx,)] * 5)
    search = _time(lambda c, q: handlers.feature_table(c, search=q), [(ctx, "effusion")] * 5)
    concept = queries.concepts(ctx)[0]
    by_c = _time(lambda c: handlers.feature_table(c, concept=concept, sort="AUROC"), [(ctx,)] * 5)
    sids = [(ctx, s) for s in rng.sample(queries.study_list(ctx), min(10, cfg.studies))]
    study = _time(handlers_study.study_view, sids)
    n_acts = ctx.rows("SELECT count(*) AS n FROM feature_acts")[0]["n"]
    n_tok = ctx.rows("SELECT count(*) AS n FROM tokens")[0]["n"]
    head = (
        f"run: {len(live):,} live of {cfg.features:,} features, {n_tok:,} tokens, "
        f"{n_acts:,} sparse activations, {cfg.studies} studies (512 px images)\n\n"
        "| view | median ms | p95 ms | max ms | median / 500 ms | ad-hoc peer (ratio) |\n"
        "|---|---|---|---|---|---|"
    )
    rows = [
        _line("feature page", page, peer),
        _line("features table", table),
        _line("features: label search", search),
        _line(f"features: concept '{concept}' by AUROC", by_c),
        _line("study view", study),
    ]
    ctx.close()
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(BenchAppConfig, argv, prog="python benchmarks/bench_app.py")
    torch.manual_seed(cfg.seed)
    build_run(cfg)
    print(measure(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
