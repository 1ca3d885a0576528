"""maira2-mini: MAIRA-2's architecture and code path at a size 2 CPU cores can train.

The same native :class:`~workbench.models.maira2.Maira2ForConditionalGeneration`, a tiny
:class:`~workbench.models.maira2.Maira2Config` (Dinov2 encoder, 4-layer projector as in
MAIRA-2, Llama decoder), its own byte-level BPE tokenizer with MAIRA-2's added tokens
(:mod:`workbench.models.mini.tokenizer`) and the exact MAIRA-2 processor at a small image size.
``python -m workbench.models.mini`` trains it on the phantom benchmark's train split to write
FINDINGS from the reporting prompt and saves it with ``save_pretrained`` (model, tokenizer,
processor configs), loadable by :func:`workbench.models.registry.load_model`.

This module holds the configuration and the architecture; training lives in
:mod:`workbench.models.mini.train`, and :mod:`workbench.models.mini.ensure` decides between the
shipped model and a fresh training run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from transformers import Dinov2Config, LlamaConfig, PreTrainedTokenizerBase

from workbench.config import ConfigError
from workbench.cxr.findings import RENDERED
from workbench.models.maira2 import Maira2Config, Maira2ForConditionalGeneration

DEVICES = ("cpu", "cuda", "auto")
SAVE_DTYPES = ("float32", "float16", "bfloat16")
PROJECT_ROOT = Path(__file__).resolve().parents[3]
SHIPPED = PROJECT_ROOT / "data" / "maira2-mini"


@dataclass
class MiniConfig:
    """Train maira2-mini on the phantom benchmark (generated first if the directory is empty)."""

    phantom: Path = Path("runs/mini-train/phantom")
    """Phantom benchmark root (MIMIC-CXR layout); generated here when it does not exist."""
    studies: int = 2500
    """Studies to generate when the phantom benchmark has to be made."""
    size: int = 256
    """Side in pixels of generated phantom radiographs."""
    phantom_seed: int = 1
    """Seed of a generated phantom benchmark (the demo uses seed 0: a different cohort)."""
    out: Path = Path("data/maira2-mini")
    """Where the trained model is saved (save_pretrained directory)."""
    seed: int = 0
    """Seed for initialisation and batch order."""
    image_size: int = 192
    """Processor crop size in pixels (MAIRA-2: 518)."""
    patch_size: int = 16
    """Dinov2 patch size: (image_size / patch_size)^2 image tokens per image (MAIRA-2: 14)."""
    vision_hidden: int = 128
    """Dinov2 width (MAIRA-2: 768)."""
    vision_layers: int = 4
    """Dinov2 depth (MAIRA-2: 12)."""
    text_hidden: int = 256
    """Llama width (MAIRA-2: 4096)."""
    text_layers: int = 6
    """Llama depth (MAIRA-2: 32); recording defaults to the middle block."""
    text_intermediate: int = 512
    """Llama MLP width (MAIRA-2: 11008)."""
    vocab_size: int = 1536
    """Base BPE vocabulary before MAIRA-2's 207 added tokens."""
    epochs: int = 1
    """Passes over the train split."""
    batch_size: int = 8
    """Studies per optimisation step."""
    lr: float = 1.5e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10 %)."""
    warmup_steps: int = 30
    """Steps of linear learning-rate warm-up."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices (not on norms, biases or embeddings)."""
    vision_phantom: Path = Path("runs/mini-train/pretrain")
    """Stage-1 pretraining corpus: a second phantom benchmark (all its splits), generated here
    when missing. RAD-DINO was pretrained on other radiographs than MAIRA-2's; likewise the
    encoder never sees the evaluation phantom's validate or test images. Its train split is
    added to the corpus."""
    vision_studies: int = 8000
    """Studies of a generated stage-1 corpus (frontal images with masks)."""
    vision_phantom_seed: int = 11
    """Seed of a generated stage-1 corpus (different subjects from the evaluation phantom)."""
    vision_steps: int = 1800
    """Steps of stage 1: the vision tower alone learns, from each frontal image, the phantom's
    masks per patch (dense) and its concepts (image level), standing in for MAIRA-2's
    pretrained, frozen RAD-DINO (0 skips it)."""
    vision_batch: int = 32
    """Frontal images per stage-1 step."""
    vision_lr: float = 1e-3
    """Peak learning rate of stage 1 (linear warm-up over 100 steps, cosine decay)."""
    dense_weight: float = 1.0
    """Weight of the dense per-patch mask loss against the image-level concept loss."""
    dense_pos_weight_cap: float = 50.0
    """Upper bound of the dense loss's per-channel positive weight (uncovered over covered
    patch area over the stage-1 corpus; rare, small masks such as nodules reach it)."""
    vision_oversample: tuple[str, ...] = ()
    """Stage 1: concepts (names of ``workbench.cxr.findings.RENDERED``) whose positive images
    are drawn ``vision_oversample_factor`` times as often as the others (batch draws stay a
    function of (seed, step), so a resumed run sees the same batches)."""
    vision_oversample_factor: int = 1
    """Stage-1 sampling weight of an image positive for a ``vision_oversample`` concept (the
    others weigh 1; 1 draws uniformly)."""
    vision_minutes: float = 0.0
    """Stop stage 1 early after this many minutes and go on (0: no limit)."""
    freeze_vision: bool = True
    """Keep the vision tower frozen in stage 2, as MAIRA-2 keeps RAD-DINO frozen."""
    init_from: Path | None = None
    """Start from the weights and tokenizer of a trained maira2-mini (a continuation run:
    stage 1 is skipped, stage 2 runs ``epochs`` more epochs with a fresh schedule)."""
    init_decoder_from: Path | None = None
    """Start the language model and LM head from a trained maira2-mini (and use its
    tokenizer); vision tower and projector start fresh and stage 1 runs. A decoder that already
    writes phantom reports then only has to learn to read the new image tokens."""
    init_projector: bool = False
    """With ``init_decoder_from``: start the projector from that model too (a continuation after
    a short stage-1 continuation, when the image tokens change little)."""
    init_vision_from: Path | None = None
    """Start stage 1 from this maira2-mini's vision tower and stage-1 heads and pretrain
    ``vision_steps`` more steps with a fresh schedule (continued pretraining, e.g. after the
    phantom's rendering of a finding changed). A tower pretrained at another ``image_size``
    starts with its position embeddings resampled to this grid (same patch size)."""
    aux_weight: float = 1.0
    """Weight of the stage-2 auxiliary loss: a linear probe on the pooled projector output of
    the current frontal image predicts the phantom's ground-truth concepts. It gives the
    projector a direct signal within the CPU budget; the probe is not part of the saved
    model (0 turns it off: pure teacher-forced language-model loss, as MAIRA-2)."""
    image_only_prob: float = 0.3
    """Stage 2: share of training prompts with indication, comparison and prior report set to
    N/A (as MAIRA-2 allows), so that the model reports from the images when the text is
    missing instead of copying findings from the prior report (0: always the full prompt)."""
    oversample: tuple[str, ...] = ()
    """Stage 2: concepts (names of ``workbench.cxr.findings.RENDERED``) whose positive training
    studies appear ``oversample_factor`` times per epoch. A rare, subtle finding seen in few
    teacher-forced reports teaches the decoder that writing it is seldom right, so it
    under-calls it (high precision, low recall); repeating its studies moves that prior."""
    oversample_factor: int = 1
    """How many times per epoch a study positive for an ``oversample`` concept is seen."""
    report_phantoms: tuple[Path, ...] = ()
    """Stage 2: further phantom benchmarks (other seeds, other subjects) whose studies, all
    splits, join the evaluation phantom's train split (MAIRA-2 trains on several report
    datasets). More reports of the rare findings teach the decoder to read them instead of
    memorising the few training images; the evaluation phantom itself is refused here."""
    threads: int = 2
    """torch CPU threads (1 is faster when other jobs share the cores)."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """Where both stages train: ``cpu``, ``cuda`` (an error when torch sees no GPU) or ``auto``
    (cuda when available, else cpu). Checkpoints hold CPU tensors, so a run killed on one kind
    of machine resumes on the other (same batches; the arithmetic, hence the weights, differ
    slightly between devices)."""
    save_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Precision of the saved model's safetensors. ``config.json`` still declares float32, so
    loaders upcast on reading and return the float32 model with its weights rounded to this
    precision (float16 halves the file; the stage-1 heads are always saved in float32)."""
    checkpoint_every: int = 25
    """Steps between resumable checkpoints (a killed run continues from the last one)."""
    max_minutes: float = 0.0
    """Stop early after this many minutes of training and save what there is (0: no limit)."""
    eval_studies: int = 64
    """Validation studies generated and labelled at the end (0 skips the check)."""
    max_train_studies: int = 0
    """Use only the first N train studies (0: all); for smoke runs."""

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}"
            )
        for name in (
            "epochs",
            "batch_size",
            "text_layers",
            "vision_layers",
            "threads",
            "vision_batch",
            "oversample_factor",
            "vision_oversample_factor",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"config field '{name}' must be >= 1")
        if self.init_from is not None and self.init_vision_from is not None:
            raise ValueError("init_vision_from needs stage 1, which init_from skips: give one")
        if self.init_projector and self.init_decoder_from is None:
            raise ValueError("init_projector starts the projector from init_decoder_from: set it")
        if not self.dense_pos_weight_cap > 0:
            raise ValueError(
                f"config field 'dense_pos_weight_cap' must be > 0, got {self.dense_pos_weight_cap}"
            )
        for name, choices in (("device", DEVICES), ("save_dtype", SAVE_DTYPES)):
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"config field '{name}' must be one of {choices}, got {getattr(self, name)!r}"
                )
        if any(p.resolve() == self.phantom.resolve() for p in self.report_phantoms):
            raise ValueError(
                f"config field 'report_phantoms' names the evaluation phantom {self.phantom}: "
                "its validate and test splits would leak into training"
            )
        for name in ("oversample", "vision_oversample"):
            unknown = sorted(set(getattr(self, name)) - set(RENDERED))
            if unknown:
                raise ValueError(
                    f"config field '{name}': unknown concepts {unknown}; known: {list(RENDERED)}"
                )


def resolve_device(cfg: MiniConfig):
    """The torch device ``cfg.device`` names (``auto``: cuda when available, else cpu)."""
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "config field 'device' is 'cuda' but torch sees no CUDA device "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
            "use 'cpu' or 'auto'"
        )
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def storage_dtype(cfg: MiniConfig):
    """The torch dtype of ``cfg.save_dtype``."""
    import torch

    return getattr(torch, cfg.save_dtype)


def vision_config(cfg: MiniConfig) -> Dinov2Config:
    """The Dinov2 tower's config (RAD-DINO's family at ``cfg``'s width, depth and input size)."""
    return Dinov2Config(
        hidden_size=cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=max(1, cfg.vision_hidden // 64),
        mlp_ratio=2,
        patch_size=cfg.patch_size,
        image_size=cfg.image_size,
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
        qkv_bias=True,
        apply_layernorm=True,
        out_features=[f"stage{cfg.vision_layers}"],
        reshape_hidden_states=False,
    )


def mini_config(cfg: MiniConfig, tokenizer: PreTrainedTokenizerBase) -> Maira2Config:
    """The tiny Maira2Config: MAIRA-2's config keys and structure, small widths and depths."""
    vision = vision_config(cfg)
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=max(1, cfg.text_hidden // 64),
        num_key_value_heads=max(1, cfg.text_hidden // 64),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    grid = cfg.image_size // cfg.patch_size
    return Maira2Config(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        projector_n_layers=4,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=grid * grid,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["Maira2ForConditionalGeneration"],
    )


def build_mini(cfg: MiniConfig, tokenizer: PreTrainedTokenizerBase):
    """A freshly initialised maira2-mini for ``tokenizer`` (seeded by ``cfg.seed``)."""
    import torch

    torch.manual_seed(cfg.seed)
    return Maira2ForConditionalGeneration(mini_config(cfg, tokenizer))


def is_trained(path: str | Path) -> bool:
    """True when ``path`` holds a finished maira2-mini (weights, tokenizer, processor)."""
    path = Path(path)
    needed = ("config.json", "tokenizer.json", "processor_config.json")
    has_weights = any(path.glob("*.safetensors"))
    return has_weights and all((path / name).is_file() for name in needed)
