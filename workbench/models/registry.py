"""One interface for every model the workbench analyses.

``load_model(spec)`` returns a :class:`ModelAdapter` for MAIRA-2 (a local directory or the
local HF cache of ``microsoft/maira-2``), ``maira2-mini`` (``data/maira2-mini`` or a run's
``model/`` directory), any local HF LLaVA-family checkpoint, or any local HF causal LM (text
only, over the report text). The adapter prepares a study's inputs with per-token metadata,
captures the residual stream at a layer (stopping the forward there), and generates with
intervention hooks. :func:`adapter_for` wraps an in-memory model the same way.

Nothing is downloaded: every load is ``local_files_only`` (HF_HUB_OFFLINE semantics).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch import nn
from transformers import PreTrainedTokenizerBase

from workbench.models.batch import generate_rows
from workbench.models.checkpoint import resolve_checkpoint_dir
from workbench.models.hooks import (
    InterventionFn,
    capture,
    capture_many,
    decoder_layers,
    final_norm,
)
from workbench.models.hooks import resid_post_name as _resid_post_name
from workbench.models.processor import (
    EncodedInputs,
    Maira2Processor,
    encode_text,
    processor_settings,
)
from workbench.models.prompts import Prompt, Segment, section_text

MINI_NAME = "maira2-mini"
MINI_TRAIN_CONFIG = "train-cfg.json"  # written beside every trained maira2-mini
POINTER_FILE = "pointer.txt"  # a run's model/ dir may hold this: one line, the model's path
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class PreparedInputs(NamedTuple):
    """Model inputs for one study and one metadata dict per token position.

    ``prompt_length`` is the number of positions before the teacher-forced findings (all of
    them when no findings were given); generation starts there.
    """

    model_inputs: dict[str, torch.Tensor]
    tokens: list[dict]
    prompt_length: int
    text: str


class StudyInputs(NamedTuple):
    """What a prompt needs from a study, images already read."""

    frontal: Image.Image | None
    lateral: Image.Image | None
    prior_frontal: Image.Image | None
    indication: str | None
    technique: str | None
    comparison: str | None
    prior_report: str | None


_TEXT_FIELDS = ("indication", "technique", "comparison", "prior_report")


def _field(study: Any, key: str) -> Any:
    return study.get(key) if isinstance(study, Mapping) else getattr(study, key, None)


def study_inputs(study: Any) -> StudyInputs:
    """Read a StudyRecord (paths) or a mapping (PIL images or paths) into :class:`StudyInputs`."""
    if isinstance(study, Mapping):
        images = [_as_image(study.get(k)) for k in ("frontal", "lateral", "prior_frontal")]
    else:
        loaded = study.load_images()
        images = [loaded.frontal, loaded.lateral, loaded.prior_frontal]
    return StudyInputs(*images, *(_field(study, k) for k in _TEXT_FIELDS))


def _as_image(value: Image.Image | str | Path | None) -> Image.Image | None:
    if value is None or isinstance(value, Image.Image):
        return value
    from workbench.cxr.images import load_image

    return load_image(value)


class ModelAdapter(ABC):
    """Common operations over a wrapped HF-style model (see module docstring)."""

    kind = "base"

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, name: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name

    @property
    def n_layers(self) -> int:
        return len(decoder_layers(self.model))

    @property
    def d_model(self) -> int:
        return self.model.get_output_embeddings().weight.shape[1]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def unembed(self) -> torch.Tensor:
        """W_U, [d_model, vocab]: ``logits = final_norm(resid_post of the last block) @ W_U``.

        It applies to the *normalised* residual; use :attr:`final_norm` first (the LM heads
        here have no bias).
        """
        return self.model.get_output_embeddings().weight.T

    @property
    def final_norm(self) -> nn.Module:
        """The norm between the last block and the LM head."""
        return final_norm(self.model)

    def hook_name(self, layer: int) -> str:
        """The residual-stream hook name after block ``layer``, checked against the model."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"{self.name}: layer {layer} outside 0..{self.n_layers - 1}")
        return _resid_post_name(layer)

    @abstractmethod
    def prepare(self, study: Any, findings: str | None = None) -> PreparedInputs:
        """Inputs for ``study`` (StudyRecord or mapping); ``findings`` is teacher-forced."""

    def device_inputs(self, inp: PreparedInputs) -> dict[str, torch.Tensor]:
        """``inp``'s tensors on the model's device, floating ones in the model's dtype."""
        dtype = next(self.model.parameters()).dtype
        out = {}
        for key, value in inp.model_inputs.items():
            value = value.to(self.device)
            out[key] = value.to(dtype) if value.is_floating_point() else value
        return out

    @torch.no_grad()
    def residual(self, inp: PreparedInputs, layer: int) -> torch.Tensor:
        """Residual stream after block ``layer``, [T, d_model]; later layers never run."""
        with capture(self.model, self.hook_name(layer)) as cap:
            self.model(**self.device_inputs(inp))
        return cap.acts[0]

    @torch.no_grad()
    def residuals(self, inp: PreparedInputs, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Residual streams after each of ``layers`` from one forward, [T, d_model] each; the
        forward stops after the deepest of them."""
        names = {layer: self.hook_name(layer) for layer in layers}
        with capture_many(self.model, list(names.values())) as caps:
            self.model(**self.device_inputs(inp))
        return {layer: caps[name].acts[0] for layer, name in names.items()}

    def generate(
        self,
        inp: PreparedInputs,
        max_new_tokens: int = 300,
        interventions: Mapping[str, InterventionFn] | None = None,
    ) -> str:
        """Greedy continuation of the prompt, decoded without special tokens, lstripped."""
        return self.generate_batch([inp], max_new_tokens, interventions)[0]

    def generate_batch(
        self,
        inps: Sequence[PreparedInputs],
        max_new_tokens: int = 300,
        interventions: Mapping[str, InterventionFn] | None = None,
    ) -> list[str]:
        """Greedy continuations of several prompts in one left-padded ``generate`` call
        (:mod:`workbench.models.batch`); row ``b`` equals ``generate(inps[b])``."""
        if any(inp.prompt_length != len(inp.tokens) for inp in inps):
            raise ValueError("these inputs teacher-force findings; prepare(study) without them")
        rows = [inp.model_inputs for inp in inps]
        return generate_rows(self.model, self.tokenizer, rows, max_new_tokens, interventions)


def _prepared(enc: EncodedInputs) -> PreparedInputs:
    inputs = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}
    if enc.pixel_values is not None:
        inputs["pixel_values"] = enc.pixel_values
    n_prompt = sum(1 for t in enc.tokens if t["kind"] != "report")
    return PreparedInputs(inputs, enc.tokens, n_prompt, enc.text)


class VisionLanguageAdapter(ModelAdapter):
    """MAIRA-2, maira2-mini and HF LLaVA models: MAIRA-2's prompt and image processing."""

    kind = "vision_language"

    def __init__(self, model, tokenizer, name: str, processor: Maira2Processor | None = None):
        super().__init__(model, tokenizer, name)
        self.processor = processor or Maira2Processor.for_model(model.config, tokenizer)

    def prepare(
        self, study: Any, findings: str | None = None, get_grounding: bool = False
    ) -> PreparedInputs:
        s = study_inputs(study)
        if s.frontal is None:
            raise ValueError(f"{self.name}: the study has no frontal image")
        enc = self.processor.reporting_inputs(
            s.frontal,
            s.lateral,
            s.prior_frontal,
            s.indication,
            s.technique,
            s.comparison,
            s.prior_report,
            get_grounding=get_grounding,
            assistant_text=findings,
        )
        return _prepared(enc)


class CausalLMAdapter(ModelAdapter):
    """A text-only causal LM over the report: sections as a plain prompt, then the report.

    Prompt: ``[PRIOR_REPORT: p ]INDICATION: i TECHNIQUE: t COMPARISON: c FINDINGS:`` (missing
    sections ``N/A``, prior report only when given), findings teacher-forced after a space.
    With an impression, ``IMPRESSION:`` and the impression follow the findings (or replace
    them when no findings are given), so FINDINGS, IMPRESSION or both can be recorded.
    """

    kind = "causal_lm"

    def prepare(
        self, study: Any, findings: str | None = None, impression: str | None = None
    ) -> PreparedInputs:
        s = study if isinstance(study, StudyInputs) else _text_fields(study)
        segs = []
        if s.prior_report:
            segs += [Segment("PRIOR_REPORT: ", "template"), Segment(s.prior_report, "prior_report")]
            segs.append(Segment(" ", "template"))
        for label, value in (
            ("INDICATION", s.indication),
            ("TECHNIQUE", s.technique),
            ("COMPARISON", s.comparison),
        ):
            segs += [Segment(f"{label}: ", "template"), Segment(section_text(value), label.lower())]
            segs.append(Segment(" ", "template"))
        if findings is not None or impression is None:
            segs.append(Segment("FINDINGS:", "template"))
        if findings is not None:
            segs.append(Segment(" " + findings, "findings", "report"))
        if impression is not None:
            lead = " " if findings is not None else ""
            segs.append(Segment(f"{lead}IMPRESSION:", "template"))
            segs.append(Segment(" " + impression, "impression", "report"))
        return _prepared(encode_text(self.tokenizer, Prompt(tuple(segs))))


def _text_fields(study: Any) -> StudyInputs:
    return StudyInputs(None, None, None, *(_field(study, k) for k in _TEXT_FIELDS))


def adapter_for(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    name: str = "model",
    processor: Maira2Processor | None = None,
) -> ModelAdapter:
    """Wrap an in-memory model: vision-language if its config has a vision tower."""
    if getattr(model.config, "vision_config", None) is not None:
        return VisionLanguageAdapter(model, tokenizer, name, processor)
    return CausalLMAdapter(model, tokenizer, name)


def resolve_model_dir(spec: str | Path, cache_dir: str | Path | None = None) -> Path:
    """``maira2-mini``, a directory (following ``pointer.txt``), or a cached HF repo id."""
    if str(spec) == MINI_NAME:
        candidates = [Path("data") / MINI_NAME, _PROJECT_ROOT / "data" / MINI_NAME]
        for path in candidates:
            if (path / "config.json").is_file():
                return path
        raise FileNotFoundError(
            f"{MINI_NAME} not found in {', '.join(map(str, candidates))}; train it first"
        )
    path = Path(spec).expanduser()
    pointer = path / POINTER_FILE
    if path.is_dir() and not (path / "config.json").is_file() and pointer.is_file():
        target = Path(pointer.read_text().strip())
        return target if target.is_absolute() else (path / target).resolve()
    return resolve_checkpoint_dir(spec, cache_dir=cache_dir)


def is_mini_dir(spec: str | Path, directory: Path) -> bool:
    """True for a maira2-mini: the name, or a directory its training wrote (it holds the
    training config ``MINI_TRAIN_CONFIG`` beside the weights)."""
    return str(spec) == MINI_NAME or (directory / MINI_TRAIN_CONFIG).is_file()


def default_dtype(device: str | torch.device) -> torch.dtype:
    """float32 on CPU; bf16 on a GPU that supports it, else fp16."""
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_model(
    spec: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | Path | None = None,
) -> ModelAdapter:
    """Load the model ``spec`` names; its type comes from ``config.json``'s ``model_type``.

    ``dtype`` None: float32 for a maira2-mini (:func:`is_mini_dir`; also when its safetensors
    are stored in float16), else :func:`default_dtype` of ``device``.
    """
    from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

    from workbench.models.maira2 import Maira2ForConditionalGeneration

    directory = resolve_model_dir(spec, cache_dir)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found")
    config = json.loads(config_path.read_text())
    if dtype is None and is_mini_dir(spec, directory):
        dtype = torch.float32  # its own precision on every device, however its files store it
    dtype = dtype or default_dtype(device)
    name = str(spec)
    model_type = config.get("model_type")
    if model_type == "maira2":
        model = Maira2ForConditionalGeneration.from_pretrained(directory, device, dtype)
        processor = _processor(directory)
        return VisionLanguageAdapter(model, processor.tokenizer, name, processor)
    if "vision_config" in config and model_type != "llava":
        raise ValueError(
            f"{config_path}: model_type {model_type!r} is a vision-language model the workbench "
            "does not support; supported: maira2, llava, and text-only causal LMs"
        )
    if model_type == "llava":
        model, info = LlavaForConditionalGeneration.from_pretrained(
            directory, dtype=dtype, local_files_only=True, output_loading_info=True
        )
        _check_loading_info(directory, info)
        processor = _processor(directory)
        return VisionLanguageAdapter(model.to(device), processor.tokenizer, name, processor)
    model, info = AutoModelForCausalLM.from_pretrained(
        directory, dtype=dtype, local_files_only=True, output_loading_info=True
    )
    _check_loading_info(directory, info)
    return CausalLMAdapter(model.to(device), model_tokenizer(directory), name)


def model_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``directory`` (error naming the directory when absent)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{directory}: no loadable tokenizer ({err})") from err


def _processor(directory: Path) -> Maira2Processor:
    return Maira2Processor(model_tokenizer(directory), **processor_settings(directory))


def _check_loading_info(directory: Path, info: dict) -> None:
    missing, unexpected = info.get("missing_keys") or [], info.get("unexpected_keys") or []
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {directory} does not match its config: missing {sorted(missing)[:10]}, "
            f"unexpected {sorted(unexpected)[:10]}"
        )
