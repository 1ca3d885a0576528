"""``python -m workbench.analyse``: one pass of an SAE over an activation store -> DuckDB.

Reads the run's activation store, SAE, dataset labels and (optionally) model, and writes
``features.duckdb`` and ``feature_acts.parquet`` beside them (schema: ``docs/schema.md``).

The only pass over the activations encodes each batch, keeps its non-zero latents, feeds
them to the streaming accumulators of :mod:`workbench.stats` and appends them to the
Parquet. Everything that needs a feature's whole distribution or a join with the tokens
(study maxima, quantile examples, context windows, n-grams) is SQL over that Parquet
(:mod:`workbench.feature_tables`); concept AUROCs come from :mod:`workbench.concepts`,
decoder geometry from :mod:`workbench.directions`. The database is built as a temporary
file and swapped in atomically (:func:`workbench.db.rewrite`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from workbench import db
from workbench import feature_tables as ft
from workbench.analyse_inputs import (
    AnalyseError,
    Inputs,
    carry_over,
    open_inputs,
    sae_fingerprint,
    write_studies_and_labels,
)
from workbench.analyse_meaning import write_meaning
from workbench.analyse_report import meaning_report
from workbench.concepts import LabelMatrix, recovery_report, write_feature_concepts, write_recovery
from workbench.config import parse_config, save_config, to_dict
from workbench.directions import logit_effects, matryoshka_groups, nearest_neighbors
from workbench.stats import (
    FeatureAccumulator,
    FeatureSummary,
    histogram_table,
    kind_codes,
    sparsify,
    stats_table,
)

log = logging.getLogger("workbench.analyse")

ACTS_SCHEMA = pa.schema([("row", pa.int64()), ("feature", pa.int32()), ("value", pa.float32())])


@dataclass
class AnalyseConfig:
    """Run an SAE over an activation store and write per-feature tables to features.duckdb."""

    run: Path = Path("runs/demo")
    """Run directory; features.duckdb and feature_acts.parquet are written here."""
    store: Path | None = None
    """Activation store (default: <run>/activations)."""
    sae: Path | None = None
    """SAE artefact, SAELens dir or dictionary_learning dir (default: <run>/sae)."""
    data: Path | None = None
    """Dataset root in MIMIC-CXR layout with label CSVs (default: <run>/phantom if present,
    else the dataset the store was recorded from)."""
    model: Path | None = None
    """Model for logit effects (default: <run>/model if present; none: logit effects skipped)."""
    batch_tokens: int = 4096
    """Tokens encoded per batch."""
    top_k: int = 20
    """Top activating examples kept per feature."""
    n_quantiles: int = 10
    """Activation intervals sampled for quantile examples."""
    per_quantile: int = 5
    """Examples drawn from each interval."""
    context: int = 5
    """Tokens stored on each side of an example."""
    bins_per_octave: int = 4
    """Histogram resolution: log-spaced bins per doubling of the activation."""
    n_neighbors: int = 10
    """Nearest features (decoder cosine) stored per feature."""
    n_logits: int = 10
    """Promoted and suppressed tokens stored per feature."""
    n_ngrams: int = 3
    """Report n-grams stored per feature (and quoted in its statistical label)."""
    label_min_auroc: float = 0.7
    """A statistical label names the best concept only if its AUROC reaches this."""
    recovery_threshold: float = 0.95
    """AUROC at which a phantom concept counts as recovered by a feature."""
    block: int = 1024
    """Features per block for AUROC, neighbours and logit effects (bounds memory)."""
    device: str = "auto"
    """Torch device for encoding: auto (cuda if available), cpu, cuda, cuda:1, ..."""
    seed: int = 0
    """Seed of the quantile example draw."""
    report: bool = False
    """Print the phantom recovery table (best feature per ground-truth concept)."""
    reuse: bool = False
    """Keep an existing features.duckdb instead of recomputing (e.g. with --report)."""
    labels: Path | None = None
    """Your own study labels: a CSV with study_id and concept columns (1 / 0 / -1 / blank),
    scored like the dataset's labels and stored as source 'user' (never as ground truth)."""
    mention_scores: bool = True
    """Score features on each concept mention of the report tokens: asserted vs negated."""
    localise: bool = True
    """Score image features against the dataset's masks (pointing game, patch AUROC)."""
    loc_min_image: float = 0.5
    """Localise only features with at least this share of their mass on image tokens."""
    loc_dilation: int = 1
    """Patches the mask is dilated by for the pointing game."""
    probe_folds: int = 5
    """Folds (split by subject) of the residual-stream probe ceiling; 0: no probes."""
    probe_max_studies: int = 2000
    """Studies pooled for the probes at most (a seeded sample beyond; bounds memory)."""

    def validate(self) -> None:
        for name in ("batch_tokens", "top_k", "n_quantiles", "per_quantile", "block"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("context", "n_neighbors", "n_logits", "n_ngrams", "loc_dilation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.loc_min_image <= 1.0:
            raise ValueError(f"loc_min_image must be in [0, 1], got {self.loc_min_image}")
        if self.probe_folds == 1 or self.probe_folds < 0 or self.probe_max_studies < 10:
            raise ValueError("probe_folds must be 0 or >= 2 and probe_max_studies >= 10")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextlib.contextmanager
def _single_thread(device: torch.device) -> Iterator[None]:
    """Run the per-batch bookkeeping on one CPU thread.

    Its ops are small (a few hundred thousand entries), and torch's intra-op threads cost
    more in synchronisation than they save there, badly so on a shared, busy CPU (measured
    10-25x slower with 2 threads under load, benchmarks/RESULTS.md). The matmul of
    ``encode`` keeps all threads.
    """
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@torch.no_grad()
def encode_pass(con, inp: Inputs, cfg: AnalyseConfig, acts_path: Path) -> FeatureSummary:
    """Encode every token once: accumulators, sparse Parquet and the ``tokens`` table."""
    device = _device(cfg.device)
    sae = inp.sae.to(device)
    acc = FeatureAccumulator(sae.d_sae, cfg.top_k, cfg.bins_per_octave, device=device)
    # no dictionary pages, delta-coded rows: 6x cheaper to write than pyarrow's defaults
    # and smaller (rows are sorted; features and values have too many distinct values)
    opts = {"use_dictionary": False, "column_encoding": {"row": "DELTA_BINARY_PACKED"}}
    with pq.ParquetWriter(acts_path, ACTS_SCHEMA, **opts) as writer:
        for i in range(inp.store.num_shards):
            acts_ND, meta = inp.store.shard(i), inp.store.metadata(i)
            rows = meta.column("row").to_numpy()
            r0 = int(rows[0]) if len(rows) else 0
            if len(rows) != acts_ND.shape[0] or not np.array_equal(rows, r0 + np.arange(len(rows))):
                raise AnalyseError(f"{inp.store.path}: shard {i} rows are not dense/aligned")
            codes = kind_codes(meta.column("kind").to_pylist(), f"{inp.store.path} shard {i}")
            codes = codes.to(device)
            ft.insert_tokens(con, meta)
            for b0 in range(0, acts_ND.shape[0], cfg.batch_tokens):
                x_BD = acts_ND[b0 : b0 + cfg.batch_tokens].to(device, torch.float32)
                lat_BF = sae.encode(x_BD)
                if lat_BF.shape != (x_BD.shape[0], sae.d_sae):
                    raise AnalyseError(f"SAE encode returned {tuple(lat_BF.shape)}")
                with _single_thread(device):
                    sb = sparsify(lat_BF, r0 + b0)
                    acc.update(sb, codes[sb.rows - r0], x_BD.shape[0])
                s_rows, s_feats, s_vals = (t.cpu().numpy() for t in sb)
                writer.write_table(
                    pa.table([s_rows, s_feats.astype(np.int32), s_vals], schema=ACTS_SCHEMA)
                )
            log.info("shard %d/%d encoded (%d tokens)", i + 1, inp.store.num_shards, len(rows))
    inp.sae.cpu()
    return acc.summary()


def _insert(con, table: str, rows: pa.Table, select: str = "SELECT * FROM _src") -> None:
    """``INSERT INTO table <select>`` where ``_src`` is the Arrow table ``rows``."""
    con.register("_src", rows)
    con.execute(f"INSERT INTO {table} {select}")
    con.unregister("_src")


def write_feature_tables(con, inp: Inputs, s: FeatureSummary) -> None:
    """``features``, ``feature_stats`` (with n_studies) and ``feature_histograms``."""
    sae, F = inp.sae, inp.sae.d_sae
    features = {
        "feature": np.arange(F, dtype=np.int32),
        "matryoshka_group": matryoshka_groups(tuple(sae.group_sizes), F),
        "encoder_bias": sae.b_enc_F.detach().float().cpu().numpy(),
        "decoder_norm": sae.W_dec_FD.detach().float().norm(dim=1).cpu().numpy(),
    }
    _insert(con, "features", pa.table(features))
    _insert(
        con,
        "feature_stats",
        stats_table(s),
        "SELECT s.*, coalesce(n.n, 0), s.n_fires = 0 FROM _src s "
        "LEFT JOIN (SELECT feature, count(*)::INTEGER AS n FROM study_features GROUP BY 1) n "
        "USING (feature) ORDER BY feature",
    )
    _insert(con, "feature_histograms", histogram_table(s))


def write_directions(con, inp: Inputs, cfg: AnalyseConfig) -> None:
    """``feature_neighbors`` and, when the model's unembedding is available, ``feature_logits``."""
    W_dec = inp.sae.W_dec_FD.detach().float().cpu()
    blocks = [("feature_neighbors", nearest_neighbors(W_dec, cfg.n_neighbors, cfg.block))]
    if inp.unembed is not None:
        blocks.append(
            ("feature_logits", logit_effects(W_dec, inp.unembed, cfg.n_logits, cfg.block))
        )
    for name, tables in blocks:
        for table in tables:
            _insert(con, name, table)


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t0, c0 = time.perf_counter(), time.process_time()
    yield
    cpu = time.process_time() - c0
    timings[name] = timings.get(name, 0.0) + cpu
    log.info("%s: %.2f s (%.2f CPU s)", name, time.perf_counter() - t0, cpu)


def _build(con, inp: Inputs, cfg: AnalyseConfig, sinks: tuple[Path, list, dict]) -> LabelMatrix:
    """Every analyse table, in dependency order, inside the writer connection ``con``."""
    acts, notes, timings = sinks  # sparse Parquet being written, run notes, step timings
    with _timed(timings, "encode pass"):
        summary = encode_pass(con, inp, cfg, acts)
    with _timed(timings, "study maxima + stats"):
        ft.build_study_features(con, acts)
        write_feature_tables(con, inp, summary)
    with _timed(timings, "examples"):
        ft.stage_top_examples(con, summary.top_vals, summary.top_rows)
        ft.stage_quantile_examples(con, acts, cfg.n_quantiles, cfg.per_quantile, cfg.seed)
        ft.build_examples(con, acts, cfg.context)
    with _timed(timings, "labels + AUROC"):
        labels = write_studies_and_labels(con, inp.data_root, notes, inp.user_labels)
        write_feature_concepts(con, labels, inp.sae.d_sae, cfg.block, notes)
        write_recovery(con, cfg.recovery_threshold)
    with _timed(timings, "mentions, localisation, probes"):
        write_meaning(con, inp, cfg, labels, (acts, notes))
    with _timed(timings, "n-grams + statistical labels"):
        if cfg.n_ngrams:
            ft.build_ngrams(con, acts, cfg.n_ngrams)
        ft.build_statistical_labels(con, cfg.label_min_auroc)
    with _timed(timings, "neighbours + logits"):
        write_directions(con, inp, cfg)
    return labels


def analyse(cfg: AnalyseConfig, timings: dict[str, float] | None = None) -> Path:
    """Analyse the run's SAE over its store; returns the path of ``features.duckdb``.

    ``timings``, if given, receives the CPU seconds spent in each step (for benchmarks).
    """
    timings = {} if timings is None else timings
    cfg.validate()
    path = db.db_path(cfg.run)
    if cfg.reuse and path.exists():
        log.info("%s exists and reuse=True: not recomputed", path)
        return path
    notes: list[str] = []
    inp = open_inputs(cfg, notes)
    started = datetime.now(UTC).replace(tzinfo=None)
    fingerprint = sae_fingerprint(inp.sae)
    acts = path.parent / db.ACTS_NAME
    acts_tmp = acts.with_name(acts.name + ".tmp")
    try:
        with db.rewrite(cfg.run, fresh=True) as con:
            labels = _build(con, inp, cfg, (acts_tmp, notes, timings))
            carry_over(con, path, fingerprint, notes)
            con.execute(
                "INSERT INTO runs VALUES (?, 'analyse', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    uuid.uuid4().hex,
                    started,
                    datetime.now(UTC).replace(tzinfo=None),
                    json.dumps(to_dict(cfg)),
                    str(inp.store.path),
                    str(inp.sae_path),
                    fingerprint,
                    inp.store.hook_name,
                    inp.store.n_tokens,
                    len(labels.study_ids),
                    inp.sae.d_sae,
                    json.dumps(notes),
                ],
            )
            with _timed(timings, "indexes"):
                db.create_indexes(con)
            os.replace(acts_tmp, acts)
    finally:
        acts_tmp.unlink(missing_ok=True)
    save_config(cfg, path.parent / "analyse-cfg.json")
    for note in notes:
        log.info("note: %s", note)
    return path


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(AnalyseConfig, argv, prog="python -m workbench.analyse")
    try:
        path = analyse(cfg)
    except AnalyseError as exc:
        log.error("%s", exc)
        return 1
    print(path)
    if cfg.report:
        print(recovery_report(cfg.run))
        print(meaning_report(cfg.run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
