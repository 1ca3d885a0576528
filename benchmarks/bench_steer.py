"""What steering costs: one steered generation of a demo study against the unsteered one.

``python benchmarks/bench_steer.py --run runs/demo [--repeats 5] [--max-new-tokens 120]``

Loads the run's model and SAE (``--run``; or ``--model``/``--sae``; without an SAE a random one
of the model's width at its middle layer is used, which costs the same), takes the first study
of ``<run>/phantom`` (``--split``) and times, each ``--repeats`` times after one warm-up:

- the unsteered greedy findings (the peer: plain ``generate``);
- ``add`` at every position (one vector added per forward);
- ``add`` at generated positions only (a position mask per cached step);
- ``clamp`` at every position (an SAE encode per forward: the dearest intervention);
- a patch map added to the image-token embeddings (site image, the evaluation's and the app's
  default; one addition per image when the prompt is encoded).

Steered texts differ in length from the unsteered one, so the ratio is reported both per
generation and per generated token (each forward is one token; the steering monitor counts
them). Target (issue 13): a steered generation takes <= 2x the unsteered one.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from workbench.steer.image import ImageSteering, image_sections
from workbench.steer.intervene import GenerationMonitor, feature_steering, generate


class Timing(NamedTuple):
    name: str
    seconds: float
    tokens: int

    @property
    def per_token(self) -> float:
        return self.seconds / max(1, self.tokens)


def _timed(adapter, inp, max_new_tokens: int, repeats: int, **kw) -> tuple[float, int]:
    """Median seconds and generated tokens of ``repeats`` generations (after one warm-up)."""
    generate(adapter, inp, max_new_tokens=max_new_tokens, **kw)
    secs, tokens = [], 0
    for _ in range(repeats):
        monitor = GenerationMonitor()
        t0 = time.perf_counter()
        generate(adapter, inp, max_new_tokens=max_new_tokens, monitor=monitor, **kw)
        secs.append(time.perf_counter() - t0)
        tokens = monitor.steps
    return statistics.median(secs), tokens


def measure(adapter, sae, study: Any, max_new_tokens: int, repeats: int, feature: int = 0):
    """Timings of the unsteered generation and of each intervention on ``study``."""
    inp = adapter.prepare(study)
    n_patches = adapter.model.config.image_tokens_per_image
    gen = torch.Generator().manual_seed(0)
    maps = {s: 0.05 * torch.randn(n_patches, adapter.d_model, generator=gen)
            for s in image_sections(inp.tokens)}  # fmt: skip
    cases = {
        "unsteered": None,
        "patch maps, image tokens (site image)": ImageSteering(maps),
        "add, all positions": feature_steering(sae, {feature: 4.0}),
        "add, generated only": feature_steering(sae, {feature: 4.0}, positions="generated"),
        "clamp, all positions": feature_steering(sae, {feature: 4.0}, mode="clamp"),
    }
    out = []
    for name, steering in cases.items():
        kw = {} if steering is None else {"steering": steering, "sae": sae}
        secs, tokens = _timed(adapter, inp, max_new_tokens, repeats, **kw)
        out.append(Timing(name, secs, tokens))
    return out


def table(timings: list[Timing]) -> str:
    """Markdown rows: seconds, tokens, ms per token, and both ratios to the unsteered run."""
    base = timings[0]
    lines = ["| generation | s | tokens | ms/token | x unsteered | x per token |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for t in timings:
        lines.append(
            f"| {t.name} | {t.seconds:.3f} | {t.tokens} | {1000 * t.per_token:.2f} | "
            f"{t.seconds / base.seconds:.2f} | {t.per_token / base.per_token:.2f} |"
        )
    return "\n".join(lines)


def _load(args):
    from workbench.models.registry import load_model
    from workbench.run import RunLayout
    from workbench.sae import MatryoshkaSAE, load_sae

    layout = RunLayout(args.run) if args.run else None
    adapter = load_model(args.model or (layout.model if layout else "maira2-mini"), args.device)
    sae_path = args.sae or (layout.sae if layout else None)
    if sae_path is not None and Path(sae_path).is_dir():
        return adapter, load_sae(sae_path, device=args.device)
    torch.manual_seed(0)
    layer = (adapter.n_layers - 1) // 2
    sae = MatryoshkaSAE(adapter.d_model, 4 * adapter.d_model, k=32,
                        hook_name=adapter.hook_name(layer)).to(args.device)  # fmt: skip
    return adapter, sae


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=None, help="run directory (model, sae, phantom)")
    p.add_argument("--model", default=None, help="model (default: <run>/model or maira2-mini)")
    p.add_argument("--sae", type=Path, default=None, help="SAE (default: <run>/sae)")
    p.add_argument("--data", type=Path, default=None, help="dataset (default: <run>/phantom)")
    p.add_argument("--split", default="test")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=120)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from workbench.cxr.studies import iter_studies

    data = args.data or (args.run / "phantom" if args.run else None)
    if data is None or not data.is_dir():
        raise SystemExit("give --run DIR (with phantom/) or --data DIR: a study to generate for")
    study = next(iter(iter_studies(data, split=args.split, require_findings=False)))
    adapter, sae = _load(args)
    print(f"model {adapter.name} (d_model {adapter.d_model}), SAE at {sae.hook_name}, "
          f"study {study.study_id}, device {args.device}, {args.threads} thread(s)")  # fmt: skip
    print(table(measure(adapter, sae, study, args.max_new_tokens, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
