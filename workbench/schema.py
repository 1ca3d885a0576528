"""``features.duckdb``'s tables, declared once: every table and column with its description.

The DDL and the ``COMMENT ON`` text a notebook sees in ``duckdb_columns()`` (both made by
:func:`workbench.db.create_schema`) and the reference tables of ``docs/schema.md``
(:func:`markdown`, ``python -m workbench.db --markdown``) all come from :data:`TABLES`.
The specs of analyse's meaning scores live in :mod:`workbench.schema_meaning` and are
appended here. This module only declares; connections and writes are :mod:`workbench.db`'s.
"""

from __future__ import annotations

from typing import NamedTuple

from workbench.schema_meaning import SPECS


class Column(NamedTuple):
    name: str
    type: str
    doc: str


class Table(NamedTuple):
    """A table: its columns, which stage writes it, and the columns to index."""

    name: str
    doc: str
    columns: tuple[Column, ...]
    stage: str = "analyse"
    index: tuple[str, ...] = ("feature",)


def _t(spec: str) -> Table:
    """A table from a spec: ``name | stage | index columns or -``, its description, then one
    ``column TYPE | description`` per line; a line without `` | `` continues the text above."""
    head, *lines = [ln.strip() for ln in spec.strip().splitlines() if ln.strip()]
    name, stage, index = (p.strip() for p in head.split(" | "))
    doc, cols = "", []
    for line in lines:
        decl, sep, text = line.partition(" | ")
        if not sep:  # continuation
            if cols:
                cols[-1] = cols[-1]._replace(doc=f"{cols[-1].doc} {line}")
            else:
                doc = f"{doc} {line}".strip()
            continue
        col, typ = decl.split()
        cols.append(Column(col, typ, text.strip()))
    idx = () if index == "-" else tuple(index.split(","))
    return Table(name, doc, tuple(cols), stage, idx)


TABLES: tuple[Table, ...] = (
    _t("""runs | every stage | -
        One row per stage execution that wrote this database.
        run_id VARCHAR | Random id of the execution.
        stage VARCHAR | Stage name: analyse, label, steer, ...
        started_at TIMESTAMP | UTC start time.
        finished_at TIMESTAMP | UTC end time.
        config VARCHAR | The resolved stage config as JSON.
        store_path VARCHAR | Activation store read.
        sae_path VARCHAR | SAE artefact read.
        sae_fingerprint VARCHAR | Hash of the SAE weights; other stages' rows survive a rerun of
            analyse only while it matches.
        hook_name VARCHAR | Hook of the activations, e.g. blocks.15.hook_resid_post.
        n_tokens BIGINT | Tokens encoded.
        n_studies INTEGER | Studies in the store.
        d_sae INTEGER | Number of SAE features.
        notes VARCHAR | Things the stage skipped or could not compute, as JSON list.
    """),
    _t("""studies | analyse | -
        One row per study in the activation store.
        study_id BIGINT | MIMIC-CXR study id.
        subject_id BIGINT | MIMIC-CXR subject (patient) id.
        split VARCHAR | train / validate / test (NULL when the dataset was not found).
        n_tokens INTEGER | Tokens of the study in the store.
        has_chexpert BOOLEAN | CheXpert labels were found for the study.
        has_phantom BOOLEAN | Phantom ground truth was found for the study.
        frontal_path VARCHAR | Path of the frontal image (NULL when unknown).
        findings VARCHAR | FINDINGS section of the report.
        impression VARCHAR | IMPRESSION section of the report.
    """),
    _t("""study_labels | analyse | -
        Labels of each study in long form; a missing (study, concept) pair means unknown.
        study_id BIGINT | Study.
        source VARCHAR | 'chexpert' (the 14 CheXpert labels), 'phantom' (ground truth) or
            'user' (`analyse --labels FILE.csv`, never treated as ground truth).
        concept VARCHAR | Label name, e.g. 'Pleural Effusion' or 'pacemaker'.
        value DOUBLE | 1 positive, 0 negative, -1 uncertain (CheXpert).
    """),
    _t("""concepts | analyse | -
        Every concept scored against the features, with its label counts over stored studies.
        concept VARCHAR | Label name.
        source VARCHAR | 'chexpert', 'phantom' or 'user'.
        n_pos INTEGER | Studies labelled 1.
        n_neg INTEGER | Studies labelled 0.
        n_uncertain INTEGER | Studies labelled -1 (left out of the AUROC).
        n_missing INTEGER | Stored studies without this label (left out of the AUROC).
    """),
    _t("""tokens | analyse | -
        Token metadata of the activation store, one row per token.
        row BIGINT | Global row 0..N-1, the key of the activation store.
        study_id BIGINT | Study.
        subject_id BIGINT | Subject.
        position INTEGER | Position in the model's input sequence.
        token_id INTEGER | Vocabulary id (image tokens: the image token id).
        token VARCHAR | Decoded token text.
        kind VARCHAR | image, prompt, report, generated or latent.
        section VARCHAR | Prompt/report section, e.g. findings, indication.
        patch_row INTEGER | Image patch row for image tokens, else NULL.
        patch_col INTEGER | Image patch column for image tokens, else NULL.
    """),
    _t("""features | analyse | feature
        One row per SAE feature: what the SAE itself says about it.
        feature INTEGER | SAE latent index 0..d_sae-1.
        matryoshka_group INTEGER | Index of the first nested prefix containing it.
        encoder_bias REAL | b_enc of the feature.
        decoder_norm REAL | L2 norm of the decoder row (1 for our SAEs).
    """),
    _t("""feature_stats | analyse | feature
        Activation statistics of each feature over every token of the store.
        feature INTEGER | SAE latent index.
        n_fires BIGINT | Tokens with a non-zero activation.
        frequency DOUBLE | n_fires / number of tokens (density).
        mean_act DOUBLE | Mean activation over the tokens where it fires (NULL if dead).
        max_act DOUBLE | Largest activation (0 if dead).
        sum_act DOUBLE | Total activation mass.
        frac_image DOUBLE | Share of the mass on image tokens (NULL if dead).
        frac_prompt DOUBLE | Share of the mass on prompt tokens.
        frac_report DOUBLE | Share of the mass on report tokens.
        frac_other DOUBLE | Share on generated/latent tokens.
        n_studies INTEGER | Studies in which it fires at least once.
        dead BOOLEAN | Never fires.
    """),
    _t("""feature_histograms | analyse | feature
        Histogram of each feature's non-zero activations on log-spaced bins (empty bins omitted).
        feature INTEGER | SAE latent index.
        bin INTEGER | Bin b covers [2^(b/r), 2^((b+1)/r)), r = bins per octave.
        bin_lo DOUBLE | Lower edge of the bin.
        bin_hi DOUBLE | Upper edge of the bin.
        count BIGINT | Tokens whose activation falls in the bin.
    """),
    _t("""feature_examples | analyse | feature
        Dashboard examples: the top activating tokens and a random few from each quantile.
        feature INTEGER | SAE latent index.
        example_group VARCHAR | 'top' (the highest activations) or 'quantile'.
        quantile INTEGER | Quantile group 0..n-1 of [0, max_act] (n-1 = highest); NULL for 'top'.
        rank INTEGER | Order within the group: by activation for 'top', random for 'quantile'.
        row BIGINT | Global token row (joins `tokens.row` and `feature_acts.row`).
        study_id BIGINT | Study of the token.
        position INTEGER | Position of the token in the model's input sequence.
        token VARCHAR | Decoded token text.
        kind VARCHAR | Token kind: image, prompt, report, generated or latent.
        section VARCHAR | Report or prompt section of the token (NULL for image tokens).
        activation REAL | The feature's activation on this token.
        patch_row INTEGER | Image patch row for image tokens (heatmap), else NULL.
        patch_col INTEGER | Image patch column for image tokens, else NULL.
        context_tokens VARCHAR[] | The token and up to `context` tokens each side (same study).
        context_acts REAL[] | The feature's activation on each context token (0 = silent).
        center INTEGER | 0-based index of the example token inside the context lists.
    """),
    _t("""study_features | analyse | feature
        Each feature's maximum activation per study (sparse: only studies where it fires).
        study_id BIGINT | Study.
        feature INTEGER | SAE latent index.
        max_act REAL | Largest activation of the feature over the study's tokens.
        n_fires INTEGER | Tokens of the study where it fires.
        image_max REAL | Largest activation on the study's image tokens (NULL: silent there).
        n_image INTEGER | Image tokens (patches) of the study where it fires.
    """),
    _t("""feature_concepts | analyse | feature
        AUROC of the study-level maximum activation for every (feature, concept).
        feature INTEGER | SAE latent index.
        concept VARCHAR | Label name (see `concepts`).
        source VARCHAR | 'chexpert', 'phantom' or 'user'.
        auroc DOUBLE | AUROC of study max activation vs label; NULL without both classes.
        rank INTEGER | 1 = the feature's best concept (highest AUROC).
    """),
    _t("""concept_recovery | analyse | -
        Phantom benchmark: the best feature for each ground-truth concept.
        concept VARCHAR | Phantom concept (finding, device or change).
        category VARCHAR | finding, device or change.
        n_pos INTEGER | Stored studies where the concept is present.
        prevalence_rank INTEGER | 1 = most common concept of its category.
        best_feature INTEGER | Feature with the highest AUROC (NULL if not computable).
        auroc DOUBLE | Its AUROC.
        recovered BOOLEAN | auroc >= threshold.
        threshold DOUBLE | The threshold used.
    """),
    _t("""feature_token_concepts | analyse | feature
        Image-model stores (segmentation latents, vision tower): each feature scored against the
        ground truth stored with every token (docs/segmentation.md, *Latents*).
        feature INTEGER | SAE latent index.
        concept VARCHAR | Concept or target name, e.g. lung, nodule, sex=F, sample_variance.
        concept_group VARCHAR | structure, finding, device, annotation, attribute or uncertainty.
        metric VARCHAR | 'auroc' (token activation vs concept value >= 0.5) or 'spearman'
            (rank correlation with a continuous target).
        value DOUBLE | The score; NULL when undefined (one class only, or a constant side).
    """),
    _t("""feature_logits | analyse | feature
        Tokens each decoder direction promotes / suppresses most through the unembedding.
        feature INTEGER | SAE latent index.
        direction VARCHAR | 'promote' (largest W_dec W_U) or 'suppress' (smallest).
        rank INTEGER | 1 = strongest.
        token_id INTEGER | Vocabulary id.
        token VARCHAR | Decoded token.
        effect REAL | Logit effect W_dec[f] . W_U[:, token].
    """),
    _t("""feature_neighbors | analyse | feature
        Nearest features by cosine similarity of decoder directions.
        feature INTEGER | SAE latent index.
        rank INTEGER | 1 = most similar.
        neighbor INTEGER | The other feature.
        cosine REAL | Cosine similarity of the two decoder rows.
    """),
    _t("""feature_ngrams | analyse | feature
        Report n-grams around the tokens where a feature fires, by activation-weighted tf-idf.
        feature INTEGER | SAE latent index.
        rank INTEGER | 1 = most characteristic.
        ngram VARCHAR | The n-gram text (the firing token with the one before it).
        score DOUBLE | Sum of activations times log(report tokens / n-gram count).
        n INTEGER | Firing tokens with this n-gram.
    """),
    _t("""feature_labels | label | feature
        Human-readable labels; method 'statistical' from analyse, others from `label`.
        feature INTEGER | SAE latent index.
        method VARCHAR | 'statistical', 'llm', 'human', ...
        label VARCHAR | The label text.
        score DOUBLE | Its confidence: AUROC of the best concept for 'statistical'.
        model VARCHAR | Model that wrote it (NULL for 'statistical').
        details VARCHAR | JSON with anything else (concept, n-grams, prompt, ...).
        created_at TIMESTAMP | UTC time written.
    """),
    _t("""feature_scores | label | feature
        Scores of labels, e.g. detection scoring of an LLM label on held-out examples.
        feature INTEGER | SAE latent index.
        method VARCHAR | Label method scored (matches feature_labels.method).
        scorer VARCHAR | 'name:judge', name: detection, detection_hard, fuzz or simulation.
        metric VARCHAR | 'accuracy', 'f1', 'auroc', 'balanced_accuracy', 'correlation', ...
        value DOUBLE | The metric.
        n_examples INTEGER | Examples scored.
        created_at TIMESTAMP | UTC time written.
    """),
    _t("""steering_results | steer | feature
        Steering evaluations (`python -m workbench steer`, docs/steering.md): one row per arm
        and held-out study, the findings generated without and with the intervention and what
        the report labeller reads in both. An arm is (method, concept, direction, features,
        strength, unit, mode, positions, details.variant). Site image (the default) writes
        into <run>/image-tokens/features.duckdb, site layer into the run's own.
        feature INTEGER | First SAE feature steered (NULL for the other methods).
        strength DOUBLE | Signed strength in `unit` (negative: removing); prompt: +1 names the
            concept in the INDICATION, -1 rules it out.
        study_id BIGINT | Held-out study whose images and prompt were used.
        concept VARCHAR | Target concept (a phantom finding/device or a CheXpert label).
        baseline_text VARCHAR | Findings generated without intervention.
        steered_text VARCHAR | Findings generated with it.
        baseline_mentions BOOLEAN | The baseline mentions the concept (any reading).
        steered_mentions BOOLEAN | The steered findings mention it (any reading).
        details VARCHAR | JSON: variant (settings that change the text: max_new_tokens, dim
            token kinds, site and image sections), raw strengths, hook, image sections steered,
            model, steered indication (prompt), edit (counterfactual), readings.
        created_at TIMESTAMP | UTC time written.
        method VARCHAR | 'sae' (SAE features), 'dim' (difference of means), 'prompt' (concept
            named in the INDICATION), 'counterfactual' (the concept drawn into the phantom
            image) or 'random' (null control: a random patch map with the norm of dim's map at
            every patch, or of the SAE map's where features is set); NULL in rows of older
            versions.
        direction VARCHAR | 'add' (studies without the concept) or 'remove' (studies with it).
        features INTEGER[] | SAE features steered together (empty for the other methods).
        unit VARCHAR | Strength unit: max_act, mean_act or raw (sae), mean_diff (dim: 1 = the
            whole with-minus-without difference) at site layer; adjusted_map or along_dim (sae),
            own_act (sae, mode clamp: each feature's activation times 1 + strength), adjusted_diff
            (dim: 1 = one adjusted gap per patch) or matched_norm (random) at site image; prompt;
            image (counterfactual).
        mode VARCHAR | add or clamp (sae), add (dim), prompt, render (counterfactual).
        positions VARCHAR | Steered positions: all, image, prompt, generated, or kinds joined
            by '+'; prompt for the prompt method; image at site image and for the
            counterfactual.
        baseline_value INTEGER | Labeller reading of the concept in the baseline: 1 stated,
            0 negated, -1 uncertain, NULL not mentioned.
        steered_value INTEGER | The same in the steered findings.
        eligible BOOLEAN | The baseline is not already in the intended state, so it can flip.
        success BOOLEAN | Flipped as intended: eligible and now stated (add) / no longer stated
            (remove).
        side_effects VARCHAR[] | Other phantom findings/devices whose stated/not-stated reading
            changed.
        baseline_ppl DOUBLE | Perplexity of the baseline findings under the unsteered model.
        steered_ppl DOUBLE | Perplexity of the steered findings under the unsteered model (same
            prompt as the baseline).
        repeat_rate DOUBLE | Share of repeated word 3-grams in the steered findings.
        parses BOOLEAN | The steered findings still parse as a FINDINGS section of sentences.
    """),
)

TABLES += tuple(_t(spec) for spec in SPECS)  # mentions, localisation, probe ceiling

RETIRED = ("feature_labels", "feature_scores", "steering_results")


def _retired(t: Table) -> Table:
    """``retired_<t>``: rows of ``t`` that belonged to an SAE the run no longer analyses."""
    extra = (
        Column("sae_fingerprint", "VARCHAR", "Fingerprint of the SAE the row belonged to."),
        Column("retired_at", "TIMESTAMP", "UTC time analyse moved it here."),
    )
    doc = (
        f"`{t.name}` rows of an earlier SAE, moved aside when analyse ran with another one; "
        "moved back when that SAE is analysed again."
    )
    return Table(f"retired_{t.name}", doc, t.columns + extra, "analyse", ())


TABLES = TABLES + tuple(_retired(t) for t in TABLES if t.name in RETIRED)
TABLE = {t.name: t for t in TABLES}


def markdown() -> str:
    """The reference part of ``docs/schema.md``: one table of columns per table."""
    out = []
    for t in TABLES:
        out += [f"### `{t.name}`", "", f"{t.doc} Written by `{t.stage}`.", ""]
        out += ["| column | type | meaning |", "|---|---|---|"]
        out += [f"| `{c.name}` | {c.type} | {c.doc.replace('|', '/')} |" for c in t.columns]
        out.append("")
    return "\n".join(out)
