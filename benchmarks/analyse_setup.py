"""The run ``bench_analyse.py`` times: a phantom, a random MAIRA-2 of the shape's width, its
recording and a random SAE, so that every stage of ``analyse`` has its real inputs.

- ``phantom/``: the phantom benchmark (:mod:`workbench.cxr.phantom`) in MIMIC-CXR layout:
  images, reports whose FINDINGS assert and negate findings ("Small left pleural effusion.",
  "No pneumothorax."), CheXpert and ground-truth label CSVs and the frontal masks.
  ``studies + held_out`` studies are generated; the store keeps the first ``studies``;
- ``model/``: maira2-mini's architecture (:mod:`workbench.models.mini.config`: Dinov2,
  4-layer projector, Llama decoder) with random weights, its decoder ``d_model`` wide, and a
  BPE tokenizer trained on the phantom's prompts and reports (whole-word tokens, as MAIRA-2's
  tokenizer gives for report text);
- ``activations/``: ``workbench.record`` of that model on the stored studies (every image
  token, the study's own prompt sections, the teacher-forced FINDINGS), so token strings,
  sections and patch coordinates are what a real recording writes, and the model recomputes
  the store exactly (analyse checks this before measuring CE loss recovered);
- ``sae/``: a random Matryoshka SAE whose threshold gives about ``k`` active latents per
  token on the stored activations.

Each artefact is reused when it is already there (``bench_analyse.py --out DIR``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import torch

from workbench.run import RunLayout
from workbench.sae import MatryoshkaSAE, save_sae
from workbench.store import ActivationStore

log = logging.getLogger("bench_analyse")


class Shape(NamedTuple):
    """One benchmark shape: the SAE, the model it reads and the studies recorded."""

    d_model: int  # decoder width: the recorded hook's width and the SAE's d_in
    d_sae: int  # SAE latents (4 Matryoshka groups of d_sae / 4)
    k: int  # active latents per token the SAE's threshold is set for
    studies: int  # studies recorded into the store
    text_layers: int  # decoder blocks of the random model
    layer: int  # decoder block recorded (blocks.<layer>.hook_resid_post)
    held_out: int = 32  # further phantom studies, not stored: analyse's SAE-quality sample
    image_size: int = 192  # processor crop; / patch_size 16: 12 x 12 tokens per image
    phantom_size: int = 256  # side of the phantom radiographs in pixels


def make_phantom(root: Path, shape: Shape, seed: int = 0) -> Path:
    """``studies + held_out`` phantom studies with masks under ``root``."""
    from workbench.cxr.phantom.run import PhantomConfig, generate

    if not (root / "phantom-summary.json").exists():
        n = shape.studies + shape.held_out
        generate(PhantomConfig(out=root, studies=n, size=shape.phantom_size, seed=seed))
    return root


def make_model(path: Path, phantom: Path, shape: Shape, seed: int = 0) -> Path:
    """A random maira2-mini-architecture MAIRA-2 ``shape.d_model`` wide, saved loadable."""
    from workbench.cxr.studies import iter_studies
    from workbench.models.mini.config import MiniConfig, build_mini
    from workbench.models.mini.data import prompt_corpus
    from workbench.models.mini.tokenizer import train_tokenizer
    from workbench.models.processor import Maira2Processor

    if (path / "config.json").is_file():
        return path
    records = list(iter_studies(phantom, require_findings=False))
    tokenizer = train_tokenizer(prompt_corpus(records), vocab_size=1536)
    cfg = MiniConfig(
        seed=seed,
        image_size=shape.image_size,
        text_hidden=shape.d_model,
        text_layers=shape.text_layers,
        text_intermediate=2 * shape.d_model,
    )
    model = build_mini(cfg, tokenizer).eval()
    model.save_pretrained(path)
    Maira2Processor.for_model(model.config, tokenizer).save_pretrained(path)
    return path


def make_store(run: RunLayout, shape: Shape) -> ActivationStore:
    """The model's recording of the first ``shape.studies`` phantom studies."""
    from workbench.record.run import RecordConfig, record

    if not (run.activations / "manifest.json").is_file():
        cfg = RecordConfig(
            model=str(run.model),
            run=run.root,
            layer=shape.layer,
            limit=shape.studies,
            image_tokens="all",
            progress=False,
            log_seconds=0,
        )
        record(cfg)
    return ActivationStore(run.activations)


def make_sae(path: Path, store: ActivationStore, shape: Shape, seed: int = 0) -> MatryoshkaSAE:
    """An untrained SAE that fires like a trained one: about ``k`` latents per token, spread
    over the kinds of token.

    A random one with one threshold fires only on the kind of token with the largest
    activations (the image tokens of an untrained model, all near one vector), and then
    mention scores and examples have almost nothing to read. Here each latent's direction is a
    stored token's centred activation plus as much noise (the data-initialised dictionaries
    of the SAE literature), ``b_dec`` is the mean activation, and each latent's threshold lets
    it fire on ``k / d_sae`` of the tokens: ``k`` per token on average, on tokens like its seed.
    Its reconstructions are poor (it is not trained), but what fires where is like a real SAE.
    """
    g = torch.Generator().manual_seed(seed)
    sae = MatryoshkaSAE(
        shape.d_model, shape.d_sae, shape.k, (shape.d_sae // 4,) * 4, hook_name=store.hook_name
    )
    shard = store.shard(0).float()
    sample = shard[:: max(1, shard.shape[0] // 4096)]  # spread over studies and kinds
    mean = sample.mean(0)
    seeds = sample[torch.randint(sample.shape[0], (shape.d_sae,), generator=g)] - mean
    noise = torch.randn(seeds.shape, generator=g) / shape.d_model**0.5
    dirs = seeds / seeds.norm(dim=1, keepdim=True).clamp_min(1e-12) + noise
    dirs /= dirs.norm(dim=1, keepdim=True)
    with torch.no_grad():
        sae.W_dec_FD.copy_(dirs)
        sae.W_enc_DF.copy_(dirs.T / shape.k)  # ~k latents share a token: FVU near 1, not k^2
        sae.b_enc_F.zero_()
        sae.b_dec_D.copy_(mean)
        pre = sae.pre_acts(sample)  # [tokens, d_sae]
        n_fire = max(1, shape.k * sample.shape[0] // shape.d_sae)
        sae.threshold = pre.topk(n_fire, dim=0).values[-1].clamp_min(0.0).contiguous()
    save_sae(sae, path)
    return sae


def make_run(run: Path, shape: Shape) -> tuple[ActivationStore, MatryoshkaSAE]:
    """Phantom, model, store and SAE under ``run`` (see the module docstring)."""
    layout = RunLayout(run)
    make_phantom(layout.phantom, shape)
    make_model(layout.model, layout.phantom, shape)
    store = make_store(layout, shape)
    log.info("store: %d tokens of %d studies", store.n_tokens, shape.studies)
    return store, make_sae(layout.sae, store, shape)


def stage_rows(con) -> dict[str, int]:
    """Rows each analysis stage wrote that show it ran on real inputs (0: it was skipped)."""
    queries = {
        "mentions": "SELECT count(*) FROM mentions",
        "assertion_selectivity": "SELECT count(*) FROM feature_mentions "
        "WHERE selectivity IS NOT NULL",
        "feature_localisation": "SELECT count(*) FROM feature_localisation "
        "WHERE pointing_game IS NOT NULL",
        "concept_probes": "SELECT count(*) FROM concept_probes WHERE probe_auroc IS NOT NULL",
        "sae_quality_ce": "SELECT count(*) FROM sae_quality "
        "WHERE source = 'model' AND held_out AND ce_recovered IS NOT NULL",
    }
    return {name: int(con.execute(sql).fetchone()[0]) for name, sql in queries.items()}
