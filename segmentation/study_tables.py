"""The study's per-image rows -> tables with bootstrap intervals.

Rows (``per_image.jsonl``) carry the run (model, fraction, seed, train_set), the test set
(dataset, condition, strength), the image (id, sex, age_group, habitus) and its metrics
(dice, iou, hd95). A *cell* is every row of one run configuration and test set across seeds,
arranged as a ``[seeds, images]`` matrix over the images all seeds share, which is what
``segmentation.study_stats`` bootstraps. Every table row is a flat dict:

    analysis, model, fraction, train_set, dataset, condition, strength, subgroup, metric,
    value, low, high, n_images, n_seeds

``analysis`` is one of fractions, fraction_difference, robustness, robustness_drop,
robustness_clean (the clean Dice on the robustness runs' seeds), subgroups, subgroup_gap,
imbalance_gap_change, ood.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from segmentation import study_stats as B

METRICS = ("dice", "iou", "hd95")
ATTRIBUTES = ("sex", "age_group", "habitus")
CELL = ("model", "fraction", "train_set", "dataset", "condition", "strength")


class Cell(NamedTuple):
    seeds: list[int]
    ids: list[str]
    meta: dict[str, dict]
    """image id -> {sex, age_group, habitus}."""
    rows: dict[tuple[int, str], dict]
    """(seed, id) -> row."""

    def matrix(self, metric: str, ids: list[str] | None = None, seeds=None) -> np.ndarray:
        ids, seeds = ids or self.ids, seeds or self.seeds
        return np.array([[self.rows[(s, i)][metric] for i in ids] for s in seeds], float)


def load_rows(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def cells(rows: list[dict]) -> dict[tuple, Cell]:
    """Group rows by run configuration + test set; keep images scored for every seed."""
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        grouped[tuple(r[k] for k in CELL)].append(r)
    out = {}
    for key, rs in grouped.items():
        seeds = sorted({r["seed"] for r in rs})
        by = {(r["seed"], r["id"]): r for r in rs}
        ids = sorted({r["id"] for r in rs if all((s, r["id"]) in by for s in seeds)})
        meta = {r["id"]: {a: r.get(a) for a in ATTRIBUTES} for r in rs}
        out[key] = Cell(seeds, ids, meta, by)
    return out


def _row(analysis: str, key: tuple, subgroup: str, metric: str, iv: B.Interval) -> dict:
    base = dict(zip(CELL, key, strict=True))
    return {"analysis": analysis, **base, "subgroup": subgroup, "metric": metric,
            "value": iv.value, "low": iv.low, "high": iv.high,
            "n_images": iv.n_images, "n_seeds": iv.n_seeds}  # fmt: skip


def _paired(a: Cell, b: Cell, metric: str, n_boot: int) -> B.Interval:
    """a - b on the images and seed positions both cells have."""
    ids = sorted(set(a.ids) & set(b.ids))
    k = min(len(a.seeds), len(b.seeds))
    return B.paired_difference_ci(
        a.matrix(metric, ids, a.seeds[:k]), b.matrix(metric, ids, b.seeds[:k]), n_boot
    )


def fraction_rows(cs: dict, n_boot: int) -> tuple[list[dict], dict]:
    """Clean in-domain metrics per model and fraction, and the SemanticGAN - U-Net Dice."""
    out, verdicts = [], {}
    clean = {k: c for k, c in cs.items() if k[2:5] == ("full", "phantom-lungs", "clean")}
    for key, c in sorted(clean.items()):
        out += [_row("fractions", key, "all", m, B.mean_ci(c.matrix(m), n_boot)) for m in METRICS]
    for f in sorted({k[1] for k in clean}):
        gan = clean.get(("semantic-gan", f, "full", "phantom-lungs", "clean", 0.0))
        unet = clean.get(("unet", f, "full", "phantom-lungs", "clean", 0.0))
        if gan and unet:
            iv = _paired(gan, unet, "dice", n_boot)
            key = ("semantic-gan - unet", f, "full", "phantom-lungs", "clean", 0.0)
            out.append(_row("fraction_difference", key, "all", "dice", iv))
            verdicts[f"{f:g}"] = B.verdict(iv)
    return out, verdicts


def robustness_rows(cs: dict, n_boot: int) -> list[dict]:
    """Dice per perturbation and strength, and its drop from the same run's clean Dice; the
    clean point and the drop use the perturbed sets' images (``robustness_images``)."""
    out, clean_done = [], set()
    for key, c in sorted(cs.items()):
        model, f, ts, ds, cond, _ = key
        if ts != "full" or ds != "phantom-lungs" or cond == "clean":
            continue
        out.append(_row("robustness", key, "all", "dice", B.mean_ci(c.matrix("dice"), n_boot)))
        clean_key = (model, f, ts, ds, "clean", 0.0)
        if clean_key not in cs:
            continue
        clean, ids = cs[clean_key], set(c.ids)  # perturbed sets may use fewer images
        seeds = [s for s in clean.seeds if s in c.seeds]
        sub = Cell(seeds, [i for i in clean.ids if i in ids], clean.meta, clean.rows)
        out.append(_row("robustness_drop", key, "all", "dice", _paired(sub, c, "dice", n_boot)))
        if clean_key not in clean_done:  # the curves' clean point, on the same seeds and images
            clean_done.add(clean_key)
            iv = B.mean_ci(sub.matrix("dice"), n_boot)
            out.append(_row("robustness_clean", clean_key, "all", "dice", iv))
    return out


def _groups(c: Cell, attribute: str) -> list:
    return [c.meta[i].get(attribute) for i in c.ids]


def subgroup_rows(cs: dict, n_boot: int) -> list[dict]:
    """Dice per subgroup and the best-worst gap per attribute, for every in-domain clean run
    configuration; plus how much the imbalanced training set widens each model's gap."""
    out = []
    for key, c in sorted(cs.items()):
        if key[3:5] != ("phantom-lungs", "clean"):
            continue
        m = c.matrix("dice")
        for attr in ATTRIBUTES:
            groups = _groups(c, attr)
            names = sorted({g for g in groups if g is not None})
            for name in names:
                cols = [j for j, g in enumerate(groups) if g == name]
                iv = B.mean_ci(m[:, cols], n_boot)
                out.append(_row("subgroups", key, f"{attr}={name}", "dice", iv))
            if len(names) >= 2:
                iv = B.gap_ci(m, groups, n_boot)
                out.append(_row("subgroup_gap", key, attr, "dice", iv))
    for key, imb in cs.items():
        bal = cs.get((key[0], key[1], "balanced", *key[3:]))
        if key[2] != "imbalanced" or bal is None:
            continue
        ids = sorted(set(imb.ids) & set(bal.ids))
        k = min(len(imb.seeds), len(bal.seeds))
        for attr in ATTRIBUTES:
            groups = [imb.meta[i].get(attr) for i in ids]
            if len({g for g in groups if g is not None}) < 2:
                continue
            iv = B.gap_difference_ci(
                imb.matrix("dice", ids, imb.seeds[:k]),
                bal.matrix("dice", ids, bal.seeds[:k]),
                groups,
                n_boot,
            )
            out.append(_row("imbalance_gap_change", key, attr, "dice", iv))
    return out


def ood_rows(cs: dict, n_boot: int) -> list[dict]:
    """Clean metrics on every out-of-domain dataset."""
    out = []
    for key, c in sorted(cs.items()):
        if key[3] != "phantom-lungs" and key[4] == "clean":
            out += [_row("ood", key, "all", m, B.mean_ci(c.matrix(m), n_boot)) for m in METRICS]
    return out


def all_tables(rows: list[dict], n_boot: int = B.DEFAULT_BOOT) -> dict:
    """{'rows': [...every table row...], 'verdicts': {fraction: verdict}}."""
    cs = cells(rows)
    frac, verdicts = fraction_rows(cs, n_boot)
    table = frac + robustness_rows(cs, n_boot) + subgroup_rows(cs, n_boot) + ood_rows(cs, n_boot)
    return {"rows": table, "verdicts": verdicts}
