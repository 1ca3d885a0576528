"""The record stage's configuration: which model, hook, studies and tokens, and how to store.

:func:`workbench.record.run.record` takes a :class:`RecordConfig` (re-exported by
:mod:`workbench.record.run` and the package); ``python -m workbench record`` fills it from
flags and presets through :func:`workbench.config.parse_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from workbench.models.hooks import hook_site


@dataclass
class RecordConfig:
    """Record the residual stream at one layer over a study collection into a store."""

    model: str = "maira2-mini"
    """Model: 'maira2-mini', a local model directory, or a cached HF repo id (no download)."""
    run: Path = Path("runs/demo")
    """Run directory: data and out default to <run>/phantom and <run>/activations."""
    data: Path | None = None
    """MIMIC-CXR / phantom root, a MIMIC reports tree, or a CSV/JSON/Parquet file of texts."""
    out: Path | None = None
    """Activation store directory (resumed when it exists)."""
    layer: int = -1
    """Decoder block L whose output is recorded; -1: the middle block (n_layers - 1) // 2."""
    layers: tuple[int, ...] = ()
    """Several decoder blocks from one forward pass (stopping after the deepest): one store per
    hook in <out>/<hook name>, listed in <out>/hooks.json; empty: only `layer`."""
    hook: str = ""
    """Hook to record instead of decoder blocks (docs/sae.md lists every name):
    vision.blocks.<L>.hook_resid_post or vision.hook_projector_out for the image encoder;
    backbone.hook_bottleneck, backbone.hook_features, head.hook_cov_factor,
    generator.hook_w_plus or generator.blocks.<i>.hook_out with --model segmentation:RUN_DIR."""
    split: str | None = None
    """Only studies of this split (train/validate/test); empty: all."""
    limit: int = 0
    """Record at most this many studies (first by study id; 0: all)."""
    image_tokens: Literal["first_last", "all", "none"] = "first_last"
    """Image tokens kept: first and last of each image (MAIRA-2 SAE study), all (for image
    heatmaps), or none."""
    prompt_tokens: Literal["sections", "all", "none"] = "sections"
    """Prompt tokens kept: the study's own text (indication, technique, comparison, prior
    report) without the fixed boilerplate, all of them, or none."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Storage dtype of the activations."""
    shard_tokens: int = 65536
    """Tokens per shard (bounds the memory a run holds)."""
    device: str = "cpu"
    """torch device for the model ('cuda' under accelerate launch picks the local GPU)."""
    sections: Literal["findings", "impression", "both"] = "findings"
    """Report sections teacher-forced: FINDINGS (MAIRA-2's task), IMPRESSION or both (FINDINGS
    then IMPRESSION); other than findings only for a text-only causal LM. Studies without a
    chosen section are skipped."""
    text_column: str = "text"
    """Text column of a CSV/JSON/Parquet input (text-only mode); without it, the column named
    after the section (findings / impression; both sections read those two columns)."""
    id_column: str = ""
    """Id column of a table input ('' : study_id if present, else the row number)."""
    progress: bool = True
    """Show a progress bar."""
    log_seconds: float = 60.0
    """Log a progress line this often (seconds), with or without the bar; 0: never."""
    flush_seconds: float = 300.0
    """Write buffered studies to a shard at least this often (seconds), so a crash loses at
    most this long of recording (a shard is also written every shard_tokens tokens)."""
    pool: int = 1
    """Segmentation models: average-pool the hooked feature map pool x pool into one token."""
    samples: int = 32
    """Segmentation SSN: samples per image behind the per-pixel sample variance."""
    tto_steps: int = -1
    """Segmentation SemanticGAN: test-time optimisation steps (-1: the model's saved value)."""

    def validate(self) -> None:
        if self.shard_tokens < 1:
            raise ValueError("config field 'shard_tokens' must be >= 1")
        if self.flush_seconds <= 0:
            raise ValueError(f"config field 'flush_seconds' must be > 0, got {self.flush_seconds}")
        for value in (self.layer, *self.layers):
            if value < -1:
                raise ValueError(f"config fields 'layer'/'layers' must be >= -1, got {value}")
        if self.hook and (self.layer != -1 or self.layers):
            raise ValueError("give config field 'hook' or 'layer'/'layers', not both")
        if self.hook:
            hook_site(self.hook)  # ValueError naming the known forms
        if self.pool < 1 or self.samples < 1:
            raise ValueError("config fields 'pool' and 'samples' must be >= 1")
