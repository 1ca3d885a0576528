"""``python -m workbench.analyse``: one pass of an SAE over an activation store -> DuckDB.

Reads the run's activation store, SAE, dataset labels and (optionally) model, and writes
``features.duckdb`` and ``feature_acts.parquet`` beside them (schema: ``docs/schema.md``).

The only pass over the activations encodes each batch, keeps its non-zero latents, feeds
them to the streaming accumulators of :mod:`workbench.analyse.stats` and appends them to the
Parquet. Everything that needs a feature's whole distribution or a join with the tokens
(study maxima, quantile examples, context windows, n-grams) is SQL over that Parquet
(:mod:`workbench.analyse.tables`); concept AUROCs come from :mod:`workbench.analyse.concepts`,
decoder geometry from :mod:`workbench.analyse.directions`, the SAE's quality on held-out
studies (or on a sample measured within the one pass) from :mod:`workbench.analyse.quality`.
The database is built as a temporary file and swapped in atomically
(:func:`workbench.db.rewrite`); the Parquet is a generation file named after the run and
comes into force with that same switch (:mod:`workbench.generations`), so the pair is
replaced as a unit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from workbench import db, generations
from workbench.analyse import tables as ft
from workbench.analyse.carry import carry_over, sae_fingerprint
from workbench.analyse.concepts import (
    LabelMatrix,
    recovery_report,
    write_feature_concepts,
    write_recovery,
)
from workbench.analyse.config import AnalyseConfig
from workbench.analyse.directions import logit_effects, matryoshka_groups, nearest_neighbors
from workbench.analyse.inputs import (
    AnalyseError,
    Inputs,
    open_inputs,
    write_studies_and_labels,
)
from workbench.analyse.meaning import write_meaning
from workbench.analyse.quality import QualityAccumulator, write_quality
from workbench.analyse.report import meaning_report
from workbench.analyse.stats import (
    FeatureAccumulator,
    FeatureSummary,
    histogram_table,
    kind_codes,
    sparsify,
    stats_table,
)
from workbench.analyse.token_concepts import token_concept_report, write_token_concepts
from workbench.config import parse_config, save_config
from workbench.io import torch_threads
from workbench.store import ActivationStore, StoreError

log = logging.getLogger("workbench.analyse")

ACTS_SCHEMA = pa.schema([("row", pa.int64()), ("feature", pa.int32()), ("value", pa.float32())])


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
    with torch_threads(1):
        yield


def read_shard(store: ActivationStore, i: int) -> tuple[torch.Tensor, pa.Table]:
    """Shard ``i`` and its token metadata; unreadable or non-finite -> AnalyseError naming
    the shard file, row and study (the message every stage that reads a store gives)."""
    try:
        acts_ND = store.shard(i)
        store.check_finite(i, acts_ND)
        return acts_ND, store.metadata(i)
    except (StoreError, OSError, pa.ArrowException) as exc:
        raise AnalyseError(str(exc)) from None


@torch.no_grad()
def encode_pass(
    con, inp: Inputs, cfg: AnalyseConfig, acts_path: Path, quality: QualityAccumulator | None
) -> FeatureSummary:
    """Encode every token once: accumulators, sparse Parquet and the ``tokens`` table.

    ``quality``, if given, also receives the tokens of the studies in the quality plan's
    store sample (SAE quality without the model, :mod:`workbench.analyse.quality`).
    """
    device = cfg.torch_device()
    sae = inp.sae.to(device)
    acc = FeatureAccumulator(sae.d_sae, cfg.top_k, cfg.bins_per_octave, device=device)
    # no dictionary pages, delta-coded rows: 6x cheaper to write than pyarrow's defaults
    # and smaller (rows are sorted; features and values have too many distinct values)
    opts = {"use_dictionary": False, "column_encoding": {"row": "DELTA_BINARY_PACKED"}}
    with pq.ParquetWriter(acts_path, ACTS_SCHEMA, **opts) as writer:
        for i in range(inp.store.num_shards):
            acts_ND, meta = read_shard(inp.store, i)
            rows = meta.column("row").to_numpy()
            r0 = int(rows[0]) if len(rows) else 0
            if len(rows) != acts_ND.shape[0] or not np.array_equal(rows, r0 + np.arange(len(rows))):
                raise AnalyseError(f"{inp.store.path}: shard {i} rows are not dense/aligned")
            codes = kind_codes(meta.column("kind").to_pylist(), f"{inp.store.path} shard {i}")
            codes = codes.to(device)
            ft.insert_tokens(con, meta)
            sample = np.isin(meta.column("study_id").to_numpy(), inp.quality.store_sample)
            for b0 in range(0, acts_ND.shape[0], cfg.batch_tokens):
                x_BD = acts_ND[b0 : b0 + cfg.batch_tokens].to(device, torch.float32)
                lat_BF = sae.encode(x_BD)
                if lat_BF.shape != (x_BD.shape[0], sae.d_sae):
                    raise AnalyseError(f"SAE encode returned {tuple(lat_BF.shape)}")
                with _single_thread(device):
                    sb = sparsify(lat_BF, r0 + b0)
                    acc.update(sb, codes[sb.rows - r0], x_BD.shape[0])
                picked = np.flatnonzero(sample[b0 : b0 + cfg.batch_tokens])
                if quality is not None and picked.size:
                    idx = torch.from_numpy(picked).to(device)
                    quality.update(sae, x_BD[idx], lat_BF[idx])
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
    sample = QualityAccumulator(inp.sae) if inp.quality.mode == "store" else None
    with _timed(timings, "encode pass"):
        summary = encode_pass(con, inp, cfg, acts, sample)
    with _timed(timings, "study maxima + stats"):
        ft.build_study_features(con, acts)
        write_feature_tables(con, inp, summary)
    with _timed(timings, "examples"):
        ft.stage_top_examples(con, summary.top_vals, summary.top_rows)
        ft.stage_quantile_examples(con, acts, cfg.n_quantiles, cfg.per_quantile, cfg.seed)
        ft.build_examples(con, acts, cfg.context)
    with _timed(timings, "labels + AUROC"):
        recorded = inp.store.manifest.get("extra") or {}
        labels = write_studies_and_labels(con, inp.data_root, notes, inp.user_labels, recorded)
        write_feature_concepts(con, labels, inp.sae.d_sae, cfg.block, notes)
        write_recovery(con, cfg.recovery_threshold)
    write_meaning(con, inp, cfg, labels, (acts, notes), lambda name: _timed(timings, name))
    with _timed(timings, "SAE quality"):
        write_quality(con, inp.quality, inp.sae, inp.store, sample, notes)
    with _timed(timings, "token concepts"):
        write_token_concepts(con, inp.store, acts, inp.sae.d_sae, notes)
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
    if cfg.reuse:
        why = generations.incomplete(cfg.run)
        if why is None:
            log.info("%s is complete and reuse=True: not recomputed", path)
            return path
        log.warning("reuse=True but the previous analysis is incomplete (%s): recomputing", why)
    notes: list[str] = []
    with _timed(timings, "inputs (SAE, model, quality plan)"):
        inp = open_inputs(cfg, notes)
    started = db.utc_now()
    fingerprint = sae_fingerprint(inp.sae)
    run_id = uuid.uuid4().hex
    acts = generations.acts_file(path.parent, run_id)
    acts_tmp = acts.with_name(acts.name + ".tmp")
    published = False

    def publish() -> None:
        nonlocal published
        published = True
        generations.publish(path.parent, run_id)

    try:
        with db.rewrite(cfg.run, fresh=True, on_replaced=publish) as con:
            labels = _build(con, inp, cfg, (acts_tmp, notes, timings))
            carry_over(con, path, fingerprint, notes)
            db.insert_run_row(
                con,
                db.run_row("analyse", started, cfg, notes)._replace(run_id=run_id),
                db.Provenance(
                    str(inp.store.path),
                    str(Path(inp.sae_path).resolve()),  # the app finds it from any cwd
                    fingerprint,
                    inp.store.hook_name,
                    inp.store.n_tokens,
                    len(labels.study_ids),
                    inp.sae.d_sae,
                ),
            )
            with _timed(timings, "indexes"):
                db.create_indexes(con)
            os.replace(acts_tmp, acts)  # complete, under its own name; in force at the switch
    finally:
        acts_tmp.unlink(missing_ok=True)
        if not published:  # the database was not switched: this generation never existed
            acts.unlink(missing_ok=True)
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
        con = db.connect(cfg.run)
        try:
            tokens = token_concept_report(con)
        finally:
            con.close()
        if tokens:
            print(tokens)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
