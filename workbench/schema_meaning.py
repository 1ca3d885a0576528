"""Table specs of analyse's meaning scores: mentions, localisation, probe ceiling, SAE quality.

Kept apart from :mod:`workbench.schema` only to keep that file short;
:data:`workbench.schema.TABLES` appends these, so the DDL, the DuckDB comments and
``docs/schema.md`` come from here the same way (the spec format is
:func:`workbench.schema._t`'s).
"""

from __future__ import annotations

SPECS: tuple[str, ...] = (
    """mentions | analyse | -
        Every concept mention in the stored report tokens, as the report labeller reads it
        (spaCy + negspacy, `workbench.cxr.labeller`).
        mention_id BIGINT | Dense id 0..n-1.
        study_id BIGINT | Study.
        section VARCHAR | Report section of the tokens (findings, impression).
        concept VARCHAR | Concept mentioned (phantom names plus the labeller's extra concepts).
        status VARCHAR | asserted, negated, uncertain or historical ("stable effusion").
        cue VARCHAR | Phrase that decided the status ("no", "possible", "normal", ...); NULL
            when asserted.
        char_start INTEGER | First character of the mention in the section text: the
            finding's noun phrase, pre-modifiers included ("bibasilar plate-like
            atelectasis"; the status is read on the head phrase, "atelectasis").
        char_end INTEGER | One past its last character.
        text VARCHAR | The mention as written (the whole noun phrase).
        row_lo BIGINT | Store row of the mention's first token.
        row_hi BIGINT | Store row of its last token (its tokens are rows row_lo..row_hi).
    """,
    """feature_mentions | analyse | feature
        What a feature does on a concept's mentions: fires on "effusion present" or on the
        word "effusion"? A mention's value is the feature's largest activation on its tokens
        (0 when silent); only (feature, concept) pairs where it fires on a mention are stored.
        feature INTEGER | SAE latent index.
        concept VARCHAR | Concept (see `mentions`).
        n_fired INTEGER | Mentions of the concept on which the feature fires.
        mean_asserted DOUBLE | Mean value over asserted mentions (NULL: none in the run).
        mean_negated DOUBLE | Mean value over negated mentions ("no effusion").
        mean_uncertain DOUBLE | Mean value over uncertain mentions ("possible effusion").
        mean_historical DOUBLE | Mean value over historical mentions ("stable effusion").
        selectivity DOUBLE | Assertion selectivity: AUROC of the value for present (asserted
            or historical) vs negated mentions; 1 = means present, 0.5 = fires on the word.
            NULL without both kinds of mention.
    """,
    """feature_localisation | analyse | feature
        Where on the frontal image a feature fires, scored against the phantom's masks
        (findings and devices), over the studies where the concept is present. Computed for
        features with at least `loc_min_image` of their mass on image tokens.
        feature INTEGER | SAE latent index.
        concept VARCHAR | Phantom concept with a mask.
        n_studies INTEGER | Positive studies with a mask and stored image patches.
        pointing_game DOUBLE | Fraction of them whose peak patch lies inside the mask dilated
            by one patch (a study where the feature is silent is a miss).
        patch_auroc DOUBLE | AUROC of the patch activation (0 when silent) for patches that
            overlap the mask vs the other patches of the same studies.
        mean_inside DOUBLE | Mean activation on patches overlapping the mask.
        mean_outside DOUBLE | Mean activation on the other patches.
    """,
    """concept_probes | analyse | -
        The probe ceiling: a logistic-regression probe on the raw residual stream (same
        layer) against the best single SAE feature read through the same poolings, per
        concept with both classes (`workbench.analyse.probes`, `workbench.analyse.pooled`).
        concept VARCHAR | Label name.
        source VARCHAR | 'phantom', 'chexpert' or 'user'.
        n_pos INTEGER | Studies labelled 1 (and pooled).
        n_neg INTEGER | Studies labelled 0.
        probe_auroc DOUBLE | Out-of-fold AUROC of the probe (folds split by subject).
        l2 DOUBLE | L2 strength chosen (the best out-of-fold AUROC of a small grid).
        best_feature INTEGER | Feature with the highest AUROC under one of the probe's
            poolings.
        pooling VARCHAR | That pooling of the feature's activation (0 where silent) per study:
            'image max', 'image mean', 'report max' or 'report mean'.
        feature_auroc DOUBLE | Its AUROC (studies and labels as the probe's).
        ratio DOUBLE | feature_auroc / probe_auroc (target: >= 0.95).
        study_max_auroc DOUBLE | For reference: the best AUROC of a feature's maximum over
            all the study's tokens (`feature_concepts`; it also reads the prompt, which the
            probe does not).
        inputs VARCHAR | Pooled inputs of the probe, e.g. 'image max, image mean, report max,
            report mean'.
        n_folds INTEGER | Cross-validation folds.
    """,
    """concept_sparse_probes | analyse | -
        How many SAE features a concept takes: a k-sparse probe (Gurnee et al. 2023; SAEBench's
        sparse probing), a logistic regression on the concept's k best features, each read
        through its best pooling, with the probe's folds and L2 grid
        (`workbench.analyse.sparse_probe`). A concept the SAE splits over a few latents
        reaches the probe at k = 2 or 5 where its best single feature does not.
        concept VARCHAR | Label name (the concepts of `concept_probes` that were probed).
        source VARCHAR | 'phantom', 'chexpert' or 'user'.
        k INTEGER | Features the probe reads (1, 2 or 5).
        auroc DOUBLE | Out-of-fold AUROC; on each training fold the k features are the best
            by AUROC there, among the 32 best on all probed studies.
        ratio DOUBLE | auroc / the concept's probe_auroc in `concept_probes`.
        features INTEGER[] | The k features best on all probed studies, best first.
        poolings VARCHAR[] | Their poolings, as in `concept_probes.pooling`.
    """,
    """sae_quality | analyse | -
        How well the SAE reconstructs the residual stream, per Matryoshka prefix, on a sample
        of `quality_studies` studies (`workbench.analyse.quality`): held-out studies of the
        dataset run through the recorded model when it is here, else stored studies.
        n_groups INTEGER | The prefix: the first n groups of latents (the largest n = the SAE).
        n_latents INTEGER | Latents in the prefix.
        source VARCHAR | 'model' (activations recomputed by the recorded model) or 'store'
            (stored activations; no CE loss).
        held_out BOOLEAN | The studies are not in the store, so the SAE never trained on them.
        n_studies INTEGER | Studies evaluated.
        n_tokens BIGINT | Tokens evaluated (the positions the store keeps).
        fvu DOUBLE | Fraction of variance unexplained: the summed squared reconstruction error
            over the summed squared deviation of the tokens from their mean.
        l0 DOUBLE | Active latents of the prefix per token.
        dead_frac DOUBLE | Share of the prefix's latents that never fire on these tokens.
        dense_frac DOUBLE | Share that fire on more than 10 % of them.
        ce_clean DOUBLE | Mean next-token cross entropy (nats) on the report tokens, clean.
        ce_spliced DOUBLE | The same with the prefix's reconstruction spliced in at the
            recorded layer (on the positions the store keeps).
        ce_zero_ablated DOUBLE | The same with those activations set to zero.
        ce_recovered DOUBLE | CE loss recovered, (zero - spliced) / (zero - clean): 1 = as good
            as the clean model, 0 = as bad as zero-ablation (SAELens' ce_loss_score).
        n_ce_tokens BIGINT | Report tokens the losses average over.
    """,
)
