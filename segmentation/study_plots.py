"""The study's three figures (matplotlib, Agg backend, small PNGs beside the tables).

- ``fractions.png``: Dice against the labelled fraction (log axis), one line per model with
  its 95 % interval as error bars.
- ``robustness.png``: one panel per perturbation, Dice against strength (the clean point at
  the identity strength), one line per model and labelled fraction.
- ``subgroups.png``: Dice per subgroup (sex, age band, habitus) for each model and training
  set, with intervals, so gaps can be read off.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from segmentation.perturb import PERTURBATIONS  # noqa: E402

IDENTITY = {name: p.identity for name, p in PERTURBATIONS.items()} | {"scanner": 0.0}


def _yerr(rows: list[dict]) -> list[list[float]]:
    """Matplotlib's ``yerr`` of rows with an interval: [below, above] each ``value``."""
    return [[r["value"] - r["low"] for r in rows], [r["high"] - r["value"] for r in rows]]


def _errorbar(ax, xs, rows, label, **kw):
    ys = [r["value"] for r in rows]
    ax.errorbar(xs, ys, yerr=_yerr(rows), label=label, capsize=3, marker="o", ms=4, **kw)


def _save(fig, path: Path, dpi: int) -> Path:
    """Lay out ``fig``, write it to ``path`` and free it; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_fractions(rows: list[dict], path: Path) -> Path | None:
    dice = [r for r in rows if r["analysis"] == "fractions" and r["metric"] == "dice"]
    if not dice:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for model in sorted({r["model"] for r in dice}):
        rs = sorted((r for r in dice if r["model"] == model), key=lambda r: r["fraction"])
        _errorbar(ax, [r["fraction"] for r in rs], rs, model)
    ax.set_xscale("log")
    ax.set_xlabel("labelled fraction of the training split")
    ax.set_ylabel("Dice (test)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path, dpi=110)


def plot_robustness(rows: list[dict], path: Path) -> Path | None:
    rob = [r for r in rows if r["analysis"] == "robustness"]
    clean = {(r["model"], r["fraction"]): r for r in rows if r["analysis"] == "robustness_clean"}
    conditions = sorted({r["condition"] for r in rob})
    if not conditions:
        return None
    cols = min(4, len(conditions))
    nrows = -(-len(conditions) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False)
    for ax, cond in zip(axes.flat, conditions, strict=False):
        series = defaultdict(list)
        for r in rob:
            if r["condition"] == cond:
                series[(r["model"], r["fraction"])].append(r)
        for (model, f), rs in sorted(series.items()):
            base = clean.get((model, f))
            pts = sorted(rs, key=lambda r: r["strength"])
            xs = [r["strength"] for r in pts]
            if base is not None:
                pts, xs = [base, *pts], [IDENTITY.get(cond, 0.0), *xs]
                order = sorted(range(len(xs)), key=xs.__getitem__)
                pts, xs = [pts[i] for i in order], [xs[i] for i in order]
            _errorbar(ax, xs, pts, f"{model} f={f:g}")
        ax.set_title(cond)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(conditions) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supylabel("Dice")
    return _save(fig, path, dpi=100)


def plot_subgroups(rows: list[dict], path: Path) -> Path | None:
    subs = [r for r in rows if r["analysis"] == "subgroups"]
    if not subs:
        return None
    runs = sorted({(r["model"], r["train_set"], r["fraction"]) for r in subs})
    groups = sorted({r["subgroup"] for r in subs})
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(groups) * len(runs) / 2), 3.8))
    width = 0.8 / len(runs)
    for k, run in enumerate(runs):
        by = {r["subgroup"]: r for r in subs if (r["model"], r["train_set"], r["fraction"]) == run}
        xs = [i + k * width for i, g in enumerate(groups) if g in by]
        rs = [by[g] for g in groups if g in by]
        label = f"{run[0]} {run[1]} f={run[2]:g}"
        ax.bar(xs, [r["value"] for r in rs], width, yerr=_yerr(rs), label=label, capsize=2)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups, rotation=45)
    ax.set_ylabel("Dice (test)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path, dpi=100)


def write_plots(tables: dict, out: Path) -> list[Path]:
    """All figures that the tables have data for; returns the paths written."""
    rows = tables["rows"]
    made = [
        plot_fractions(rows, out / "fractions.png"),
        plot_robustness(rows, out / "robustness.png"),
        plot_subgroups(rows, out / "subgroups.png"),
    ]
    return [p for p in made if p is not None]
