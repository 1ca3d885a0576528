"""MAIRA-2's processor, natively: image normalisation, prompts, token expansion, outputs.

Follows shared/reference/maira2.md section 3 exactly:

* images: grey, min-max to [0, 255] as uint8 (``Maira2Processor._normalize_image``), then
  BitImageProcessor: resize the shortest edge to ``image_size`` (bicubic, long edge
  ``int(size * long / short)``), centre crop to a square, rescale 1/255, normalise with mean
  0.5307 / std 0.2583, the grey channel replicated to 3 channels;
* prompts: rendered by :mod:`workbench.models.prompts` (the chat template, reporting,
  grounded reporting, phrase grounding), each piece tagged with its section;
* image tokens: each ``<image>`` expands to (size/patch)^2 + num_additional_image_tokens - 1
  ("default" strategy) copies, 1369 at 518 px / patch 14, before tokenisation (LlavaProcessor);
* outputs: grounded sequences ``<obj>phrase<box><xA><yB><xC><yD></box></obj>`` parse strictly
  to ``(phrase, [(x1, y1, x2, y2)])`` with coordinates ``(bin + 0.5) / 100``.

The tokenizer is any transformers fast tokenizer that knows ``<image>`` (MAIRA-2's Llama
tokenizer, or maira2-mini's byte-level BPE). Offsets from the fast tokenizer map every token
back to the prompt section it came from, which is the per-token metadata the store records.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from workbench.models.grounding import BoxType, adjust_box_for_original_image_size, parse_grounded
from workbench.models.prompts import (
    CHAT_TEMPLATE,
    Prompt,
    ReportingRequest,
    Segment,
    phrase_grounding_prompt,
    reporting_prompt,
)

# MAIRA-2's image statistics (preprocessor_config.json, maira2.md section 3).
MAIRA2_IMAGE_MEAN = 0.5307
MAIRA2_IMAGE_STD = 0.2583

__all__ = [
    "BoxType",
    "EncodedInputs",
    "Maira2Processor",
    "encode_text",
    "processor_settings",
    "tokenize_segments",
    "adjust_box_for_original_image_size",
    "normalize_image",
    "parse_grounded",
]


class EncodedInputs(NamedTuple):
    """Model inputs for one prompt plus per-token metadata (one dict per position)."""

    input_ids: torch.Tensor  # [1, T]
    attention_mask: torch.Tensor  # [1, T]
    pixel_values: torch.Tensor | None  # [n_images, 3, S, S]
    tokens: list[dict]
    text: str  # the prompt before image-token expansion


def normalize_image(image: Image.Image) -> Image.Image:
    """Grey, min-max rescaled to [0, 255] and truncated to uint8 (``_normalize_image``).

    A constant image has no range; it becomes all zeros instead of the NaNs the original
    division by zero would produce.
    """
    arr = np.asarray(image.convert("L"), dtype=np.float64)
    arr = arr - arr.min()
    peak = arr.max()
    arr = arr / peak * 255.0 if peak > 0 else np.zeros_like(arr)
    return Image.fromarray(arr.astype(np.uint8), mode="L")


class Maira2Processor:
    """Turns a study (images + report sections) into MAIRA-2 inputs and outputs into text.

    ``image_size`` and ``patch_size`` come from the model's vision config, so a tiny model
    with 56-px images and patch 14 gets 16 image tokens per image.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_size: int = 518,
        patch_size: int = 14,
        num_additional_image_tokens: int = 1,
        vision_feature_select_strategy: str = "default",
        image_mean: float = MAIRA2_IMAGE_MEAN,
        image_std: float = MAIRA2_IMAGE_STD,
        image_token: str = "<image>",
        num_box_coord_bins: int = 100,
    ):
        if not tokenizer.is_fast:
            raise ValueError("Maira2Processor needs a fast tokenizer (for token offsets)")
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {image_token!r} token; add it as a special token")
        if vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"unknown vision_feature_select_strategy {vision_feature_select_strategy!r}"
            )
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_additional_image_tokens = num_additional_image_tokens
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.image_mean = image_mean
        self.image_std = image_std
        self.image_token = image_token
        self.num_box_coord_bins = num_box_coord_bins

    @classmethod
    def for_model(cls, config, tokenizer: PreTrainedTokenizerBase, **overrides) -> Maira2Processor:
        """A processor matching a Maira2Config / LlavaConfig's vision tower."""
        kwargs = {
            "image_size": config.vision_config.image_size,
            "patch_size": config.vision_config.patch_size,
            "vision_feature_select_strategy": config.vision_feature_select_strategy,
        }
        kwargs.update(overrides)
        return cls(tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> Maira2Processor:
        """Tokenizer and processor settings from a local model directory (no download).

        Reads ``preprocessor_config.json`` (crop size, mean, std) and ``processor_config.json``
        (patch size, strategy, ``num_additional_image_tokens``, defaulting to 1, the value that
        matches MAIRA-2's CLS-dropped features) when present, else ``config.json``.
        """
        directory = Path(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        kwargs = processor_settings(directory)
        kwargs.update(overrides)
        return cls(tokenizer, **kwargs)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the tokenizer, preprocessor/processor configs and the chat template."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        pre = {
            "image_processor_type": "BitImageProcessor",
            "do_convert_rgb": True,
            "do_resize": True,
            "size": {"shortest_edge": self.image_size},
            "resample": 3,
            "do_center_crop": True,
            "crop_size": {"height": self.image_size, "width": self.image_size},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [self.image_mean] * 3,
            "image_std": [self.image_std] * 3,
        }
        proc = {
            "image_token": self.image_token,
            "patch_size": self.patch_size,
            "num_additional_image_tokens": self.num_additional_image_tokens,
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "num_box_coord_bins": self.num_box_coord_bins,
        }
        (directory / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
        (directory / "processor_config.json").write_text(json.dumps(proc, indent=2))
        chat = {"chat_template": CHAT_TEMPLATE}
        (directory / "chat_template.json").write_text(json.dumps(chat, indent=2))
        return directory

    # ---- images -------------------------------------------------------------------------
    @property
    def grid(self) -> int:
        """Patches per side: image_size // patch_size."""
        return self.image_size // self.patch_size

    @property
    def image_seq_length(self) -> int:
        """``<image>`` tokens per image, (size/patch)^2 + additional - 1 for "default"."""
        drop = 1 if self.vision_feature_select_strategy == "default" else 0
        return self.grid**2 + self.num_additional_image_tokens - drop

    def preprocess_image(self, image: Image.Image) -> np.ndarray:
        """One image -> float32 [3, S, S] (normalise, resize, centre crop, rescale, standardise)."""
        grey = normalize_image(image)
        width, height = grey.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.image_size, int(self.image_size * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        resized = grey.resize(size, resample=Image.Resampling.BICUBIC)
        top = (resized.height - self.image_size) // 2
        left = (resized.width - self.image_size) // 2
        crop = np.asarray(resized, dtype=np.float32)[
            top : top + self.image_size, left : left + self.image_size
        ]
        unit = crop * np.float32(1 / 255)
        standard = (unit - np.float32(self.image_mean)) / np.float32(self.image_std)
        return np.repeat(standard[None], 3, axis=0)

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Stack preprocessed images into [n_images, 3, S, S]."""
        return torch.from_numpy(np.stack([self.preprocess_image(im) for im in images]))

    # ---- prompts ------------------------------------------------------------------------
    def reporting_inputs(
        self,
        current_frontal: Image.Image,
        current_lateral: Image.Image | None,
        prior_frontal: Image.Image | None,
        indication: str | None,
        technique: str | None,
        comparison: str | None,
        prior_report: str | None,
        get_grounding: bool = False,
        assistant_text: str | None = None,
    ) -> EncodedInputs:
        """``format_and_preprocess_reporting_input``: the findings prompt and its images.

        Images go in the order frontal, [lateral], [prior frontal], as in the prompt. With
        ``assistant_text`` the findings are teacher-forced as the assistant turn.
        """
        request = ReportingRequest(
            has_lateral=current_lateral is not None,
            has_prior=prior_frontal is not None,
            indication=indication,
            technique=technique,
            comparison=comparison,
            prior_report=prior_report,
            get_grounding=get_grounding,
            assistant_text=assistant_text,
        )
        prompt = reporting_prompt(request, eos_token=self.tokenizer.eos_token or "")
        images = [im for im in (current_frontal, current_lateral, prior_frontal) if im is not None]
        return self.encode(prompt, images)

    def phrase_grounding_inputs(
        self, frontal_image: Image.Image, phrase: str, assistant_text: str | None = None
    ) -> EncodedInputs:
        """``format_and_preprocess_phrase_grounding_input``: ground one phrase on the frontal."""
        prompt = phrase_grounding_prompt(
            phrase, assistant_text=assistant_text, eos_token=self.tokenizer.eos_token or ""
        )
        return self.encode(prompt, [frontal_image])

    def encode(self, prompt: Prompt, images: Sequence[Image.Image]) -> EncodedInputs:
        """Expand image tokens, tokenise (BOS prepended) and label every token."""
        n_slots = sum(1 for seg in prompt.segments if seg.image_index is not None)
        if n_slots != len(images):
            raise ValueError(f"prompt has {n_slots} image slots but {len(images)} images given")
        pieces = [
            (
                self.image_token * self.image_seq_length
                if seg.image_index is not None
                else seg.text,
                seg,
            )
            for seg in prompt.segments
        ]
        ids, tokens = tokenize_segments(self.tokenizer, pieces)
        seen: dict[int, int] = {}
        for meta in tokens:
            if meta["token_id"] == self.image_token_id and meta["image_index"] is not None:
                k = seen.get(meta["image_index"], 0)
                seen[meta["image_index"]] = k + 1
                meta["kind"] = "image"
                meta.update(self._patch_of(k))
        self._check_image_runs(tokens, len(images))
        pixel_values = self.pixel_values(images) if images else None
        input_ids = torch.tensor([ids], dtype=torch.long)
        return EncodedInputs(
            input_ids, torch.ones_like(input_ids), pixel_values, tokens, prompt.text
        )

    def _patch_of(self, k: int) -> dict:
        """Row/column of the k-th token of an image ("full" strategy: token 0 is the CLS)."""
        k -= self.image_seq_length - self.grid**2
        if k < 0:
            return {"patch_row": None, "patch_col": None}
        return {"patch_row": k // self.grid, "patch_col": k % self.grid}

    def _check_image_runs(self, tokens: list[dict], n_images: int) -> None:
        counts = [0] * n_images
        for t in tokens:
            if t["token_id"] == self.image_token_id:
                if t["image_index"] is None:
                    raise ValueError(f"stray {self.image_token} token at position {t['position']}")
                counts[t["image_index"]] += 1
        if any(c != self.image_seq_length for c in counts):
            raise ValueError(
                f"image token counts {counts} differ from {self.image_seq_length} per image: "
                "the tokenizer split or merged the image token"
            )

    # ---- outputs ------------------------------------------------------------------------
    def decode_generated(self, new_ids: Sequence[int] | torch.Tensor) -> str:
        """Decode generated ids (special tokens skipped) and strip the leading space."""
        if isinstance(new_ids, torch.Tensor):
            new_ids = new_ids.tolist()
        return self.tokenizer.decode(list(new_ids), skip_special_tokens=True).lstrip()

    def convert_output_to_plaintext_or_grounded_sequence(
        self, text: str
    ) -> str | list[tuple[str, list[BoxType] | None]]:
        """Plain text unchanged (stripped), or grounded phrases with boxes; strict."""
        return parse_grounded(text, num_box_coord_bins=self.num_box_coord_bins)

    adjust_box_for_original_image_size = staticmethod(adjust_box_for_original_image_size)


def tokenize_segments(
    tokenizer: PreTrainedTokenizerBase, pieces: Sequence[tuple[str, Segment]]
) -> tuple[list[int], list[dict]]:
    """Tokenise the concatenated ``(text, segment)`` pieces; label each token from its offsets.

    A token belongs to the segment holding its first non-space character (byte-level and
    SentencePiece tokens carry the preceding space). Tokens with no characters (BOS) are
    ``template``. Image tokens keep their segment's ``image_index``; kind is the segment's.
    """
    text = "".join(t for t, _ in pieces)
    starts = list(itertools.accumulate((len(t) for t, _ in pieces[:-1]), initial=0))
    enc = tokenizer(text, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    names: dict[int, str] = {}
    tokens = []
    for pos, (tid, (start, end)) in enumerate(zip(ids, enc["offset_mapping"], strict=True)):
        if tid not in names:
            names[tid] = tokenizer.decode([tid])
        meta = {"position": pos, "token_id": tid, "token": names[tid], "kind": "prompt"}
        meta.update(section="template", image_index=None, patch_row=None, patch_col=None)
        if end > start:
            char = start
            while char < end - 1 and text[char].isspace():
                char += 1
            seg = pieces[bisect.bisect_right(starts, char) - 1][1]
            meta.update(kind=seg.kind, section=seg.section, image_index=seg.image_index)
        tokens.append(meta)
    return ids, tokens


def encode_text(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> EncodedInputs:
    """A text-only prompt (no images) as model inputs plus per-token metadata."""
    ids, tokens = tokenize_segments(tokenizer, [(seg.text, seg) for seg in prompt.segments])
    input_ids = torch.tensor([ids], dtype=torch.long)
    return EncodedInputs(input_ids, torch.ones_like(input_ids), None, tokens, prompt.text)


def processor_settings(directory: Path) -> dict:
    """Processor keyword arguments from the JSON files of a model directory."""
    kwargs: dict = {}
    config_path = directory / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        vision = config.get("vision_config") or {}
        for key in ("image_size", "patch_size"):
            if key in vision:
                kwargs[key] = vision[key]
        if "vision_feature_select_strategy" in config:
            kwargs["vision_feature_select_strategy"] = config["vision_feature_select_strategy"]
    pre_path = directory / "preprocessor_config.json"
    if pre_path.is_file():
        pre = json.loads(pre_path.read_text())
        crop = pre.get("crop_size") or {}
        if "height" in crop:
            kwargs["image_size"] = crop["height"]
        for key in ("image_mean", "image_std"):
            value = pre.get(key)
            if isinstance(value, list) and value:
                kwargs[key] = float(value[0])
    proc_path = directory / "processor_config.json"
    if proc_path.is_file():
        proc = json.loads(proc_path.read_text())
        for key in ("patch_size", "num_additional_image_tokens", "vision_feature_select_strategy"):
            if proc.get(key) is not None:
                kwargs[key] = proc[key]
        for key in ("image_token", "num_box_coord_bins"):
            if key in proc:
                kwargs[key] = proc[key]
    return kwargs
