"""The study's outputs: ``tables.json``, ``summary.md``, PNG plots and DuckDB tables.

DuckDB gets two things: every table row in ``segmentation_study`` (one row per analysis,
run configuration, test set, subgroup and metric, with its interval; a rerun replaces the
study's rows), and each in-domain clean run's per-subgroup means in ``segmentation_results``
(model name ``<model>[<train_set>,f=<fraction>,s=<seed>]``), so the app lists the study's runs
beside the models evaluated with ``seg-evaluate``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from pathlib import Path

import duckdb
from PIL import Image

from segmentation.evaluate import aggregate
from segmentation.results_db import write_results
from segmentation.study_jobs import RunKey
from segmentation.study_plots import write_plots
from segmentation.study_tables import ATTRIBUTES, METRICS, all_tables, load_rows

TABLE = "segmentation_study"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    study      VARCHAR NOT NULL,  -- study directory
    analysis   VARCHAR NOT NULL,  -- fractions, fraction_difference, robustness, ...
    model      VARCHAR NOT NULL,  -- unet, semantic-gan, or 'semantic-gan - unet'
    fraction   DOUBLE,            -- labelled fraction of the training split
    train_set  VARCHAR,           -- full, imbalanced, balanced
    dataset    VARCHAR,           -- phantom-lungs, jsrt, montgomery, shenzhen
    condition  VARCHAR,           -- clean, noise, gamma, ..., scanner
    strength   DOUBLE,            -- perturbation strength (0 for clean)
    subgroup   VARCHAR,           -- all, sex=F, age_group=40-59, habitus=obese, or the
                                  -- attribute of a gap row
    metric     VARCHAR NOT NULL,  -- dice, iou, hd95
    value      DOUBLE,            -- point estimate (mean, difference or gap)
    low        DOUBLE,            -- lower 95 % bootstrap bound
    high       DOUBLE,            -- upper 95 % bootstrap bound
    n_images   INTEGER,
    n_seeds    INTEGER,
    created_at TIMESTAMP NOT NULL
)
"""
COLUMNS = ("analysis", "model", "fraction", "train_set", "dataset", "condition", "strength",
           "subgroup", "metric", "value", "low", "high", "n_images", "n_seeds")  # fmt: skip


def write_study_table(db: Path, study: str, rows: list[dict]) -> int:
    """Replace ``study``'s rows of ``segmentation_study`` with ``rows``."""
    db.parent.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    con = duckdb.connect(str(db))
    try:
        con.execute(SCHEMA)
        con.execute("BEGIN TRANSACTION")
        con.execute(f"DELETE FROM {TABLE} WHERE study = ?", [study])
        con.executemany(
            f"INSERT INTO {TABLE} VALUES ({', '.join(['?'] * (len(COLUMNS) + 2))})",
            [[study, *(r[c] for c in COLUMNS), now] for r in rows],
        )
        con.execute("COMMIT")
    finally:
        con.close()
    return len(rows)


def write_run_results(db: Path, per_image: list[dict]) -> None:
    """Per-subgroup means of each in-domain clean run into ``segmentation_results``."""
    runs: dict[tuple, list[dict]] = defaultdict(list)
    for r in per_image:
        if r["dataset"] == "phantom-lungs" and r["condition"] == "clean":
            runs[(r["model"], r["train_set"], r["fraction"], r["seed"])].append(r)
    for (model, ts, f, seed), rs in runs.items():
        items = [
            {
                "meta": {"sex": r.get("sex"), "age_group": r.get("age_group"),
                         "habitus": r.get("habitus")},
                "metrics": {m: r[m] for m in METRICS},
            }
            for r in rs
        ]  # fmt: skip
        name = f"{model}[{ts},f={f:g},s={seed}]"
        write_results(db, name, "phantom-lungs", aggregate(items), "test", 1, None)


def _fmt(r: dict | None, digits: int = 3) -> str:
    if r is None:
        return "-"
    return f"{r['value']:.{digits}f} [{r['low']:.{digits}f}, {r['high']:.{digits}f}]"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in body]


def _fractions_md(by: dict, verdicts: dict) -> list[str]:
    cell = defaultdict(dict)
    for r in by["fractions"]:
        cell[(r["model"], r["fraction"])][r["metric"]] = r
    body = [
        [model, f"{f:g}", _fmt(ms["dice"]), _fmt(ms["iou"]), _fmt(ms["hd95"], 2),
         f"{ms['dice']['n_seeds']} x {ms['dice']['n_images']}"]
        for (model, f), ms in sorted(cell.items())
    ]  # fmt: skip
    diffs = [
        [f"{r['fraction']:g}", _fmt(r), verdicts[f"{r['fraction']:g}"]]
        for r in sorted(by["fraction_difference"], key=lambda r: r["fraction"])
    ]
    head = ["model", "fraction", "Dice", "IoU", "HD95 (px)", "seeds x images"]
    return (
        ["## Labelled fractions (phantom lungs, clean test split)", ""]
        + _table(head, body)
        + ["", "SemanticGAN minus U-Net Dice (paired, 95 % hierarchical bootstrap):", ""]
        + _table(["fraction", "difference", "verdict"], diffs)
    )


def _robustness_md(by: dict) -> list[str]:
    def key(r):
        return (r["model"], r["fraction"], r["condition"], r["strength"])

    drops = {key(r): r for r in by["robustness_drop"]}
    body = [
        [r["model"], f"{r['fraction']:g}", r["condition"], f"{r['strength']:g}", _fmt(r),
         _fmt(drops.get(key(r)))]
        for r in by["robustness"]
    ]  # fmt: skip
    head = ["model", "fraction", "perturbation", "strength", "Dice", "drop from clean"]
    return ["## Robustness", ""] + _table(head, body)


def _subgroups_md(by: dict) -> list[str]:
    subs = defaultdict(list)
    for r in by["subgroups"]:
        subs[(r["model"], r["train_set"], r["fraction"], r["subgroup"].split("=")[0])].append(r)
    body = []
    for r in by["subgroup_gap"]:
        key = (r["model"], r["train_set"], r["fraction"], r["subgroup"])
        groups = ", ".join(f"{s['subgroup'].split('=')[1]} {s['value']:.3f}" for s in subs[key])
        row = [r["model"], r["train_set"], f"{r['fraction']:g}", r["subgroup"], _fmt(r), groups]
        body.append(row)
    head = ["model", "train set", "fraction", "attribute", "gap (best - worst)", "subgroup Dice"]
    lines = ["## Subgroups (Dice)", ""] + _table(head, body)
    if by["imbalance_gap_change"]:
        change = [[r["model"], r["subgroup"], _fmt(r)] for r in by["imbalance_gap_change"]]
        lines += ["", "Gap on the imbalanced minus the balanced training set (same size):", ""]
        lines += _table(["model", "attribute", "gap change"], change)
    return lines


def _ood_md(by: dict) -> list[str]:
    if not by["ood"]:
        return []
    ood = defaultdict(dict)
    for r in by["ood"]:
        ood[(r["model"], r["fraction"], r["dataset"])][r["metric"]] = r
    body = [
        [model, f"{f:g}", ds, _fmt(ms["dice"]), _fmt(ms["hd95"], 2)]
        for (model, f, ds), ms in sorted(ood.items())
    ]
    return ["## Out of domain", ""] + _table(["model", "fraction", "dataset", "Dice", "HD95"], body)


def markdown(tables: dict, intro: str) -> str:
    """The study summary: one Markdown table per analysis."""
    by = defaultdict(list)
    for r in tables["rows"]:
        by[r["analysis"]].append(r)
    parts = [["# Segmentation study: SemanticGAN vs U-Net", "", intro]]
    parts += [_fractions_md(by, tables["verdicts"]), _robustness_md(by), _subgroups_md(by)]
    parts.append(_ood_md(by))
    return "\n\n".join("\n".join(p) for p in parts if p) + "\n"


SAMPLES = "semantic-gan-samples.png"
"""The study's copy of a SemanticGAN sample grid (generated images over their masks)."""


def copy_samples(cfg) -> Path | None:
    """The grid of the largest fraction's first-seed SemanticGAN run, as a 64-colour PNG in
    ``out`` (grey images and red outlines survive the palette; ~1/2 the bytes, for docs)."""
    if "semantic-gan" not in cfg.models:
        return None
    key = RunKey("semantic-gan", float(max(cfg.fractions)), int(cfg.seeds[0]), "full")
    src = cfg.out / "runs" / key.dirname() / "samples.png"
    if not src.exists():
        return None
    dst = cfg.out / SAMPLES
    with Image.open(src) as grid:
        grid.convert("RGB").quantize(64).save(dst, optimize=True)
    return dst


def _intro(cfg, samples: Path | None) -> str:
    fractions = ", ".join(f"{f:g}" for f in cfg.fractions)
    robust = f"the first {cfg.robustness_images}" if cfg.robustness_images else "all"
    tto = cfg.tto_steps if cfg.tto_steps is not None else "as in the SemanticGAN preset"
    text = (
        f"Models {', '.join(cfg.models)}; labelled fractions {fractions}; seeds "
        f"{', '.join(map(str, cfg.seeds))}; subgroup attributes {', '.join(ATTRIBUTES)}. "
        f"Test images: {f'up to {cfg.max_test_images}' if cfg.max_test_images else 'all'} "
        f"(perturbed sets: {robust} of them); "
        f"SemanticGAN test-time optimisation steps: {tto}. "
        f"Intervals: 95 % hierarchical bootstrap over seeds and images ({cfg.n_boot} draws)."
    )
    if samples is not None:
        text += (
            f"\n\n![SemanticGAN samples: generated images over their generated lung masks]"
            f"({samples.name})"
        )
    return text


def write_report(cfg) -> dict:
    """tables.json, summary.md, plots, the sample grid and (with ``cfg.db``) DuckDB; returns
    the tables."""
    per_image = load_rows(cfg.out / "per_image.jsonl")
    tables = all_tables(per_image, cfg.n_boot)
    (cfg.out / "tables.json").write_text(json.dumps(tables, indent=1) + "\n")
    (cfg.out / "summary.md").write_text(markdown(tables, _intro(cfg, copy_samples(cfg))))
    write_plots(tables, cfg.out)
    if cfg.db is not None:
        write_study_table(Path(cfg.db), str(cfg.out), tables["rows"])
        write_run_results(Path(cfg.db), per_image)
    return tables
