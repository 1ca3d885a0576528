"""MAIRA-2 prompts against hand-written golden texts; token expansion and token metadata."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.models.processor import Maira2Processor
from workbench.models.prompts import (
    CHAT_TEMPLATE,
    ReportingRequest,
    phrase_grounding_messages,
    phrase_grounding_prompt,
    reporting_messages,
    reporting_prompt,
)

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "golden_prompts"
CASES = json.loads((GOLDEN / "cases.json").read_text())

# maira2.md section 3, "Rendered example, frontal + lateral, no prior", verbatim.
SPEC_EXAMPLE = (
    "You are an expert radiology assistant tasked with interpreting a chest X-ray study. USER: "
    "Given the current frontal image<image> and the current lateral image<image> Provide a "
    "structured description of the findings in the radiology study in comparison to the prior "
    "frontal image. INDICATION: Dyspnea. TECHNIQUE: PA and lateral views of the chest. "
    "COMPARISON: None. ASSISTANT: "
)


def golden_text(name: str) -> str:
    text = (GOLDEN / name).read_text()
    return text[:-1] if text.endswith("\n") else text


def case_inputs(case: dict) -> dict:
    inputs = dict(CASES["defaults"])
    inputs.update(case.get("overrides", {}))
    inputs.setdefault("assistant_text", None)
    return inputs


def request_of(case: dict) -> ReportingRequest:
    return ReportingRequest(
        has_lateral=case["lateral"],
        has_prior=case["prior"],
        get_grounding=case["grounded"],
        **case_inputs(case),
    )


def render_case(case: dict) -> str:
    if case["task"] == "phrase_grounding":
        return phrase_grounding_prompt(case["phrase"]).text
    return reporting_prompt(request_of(case)).text


pytestmark = pytest.mark.usefixtures("single_threaded")


def test_golden_cases_cover_every_combination():
    combos = {
        (c["lateral"], c["prior"], c["grounded"])
        for c in CASES["cases"]
        if c["task"] == "reporting"
    }
    assert len(combos) == 8


@pytest.mark.parametrize(
    "case", CASES["cases"], ids=lambda c: c["file"] + str(c.get("overrides", ""))
)
def test_prompt_matches_golden(case):
    assert render_case(case) == golden_text(case["file"])


def test_spec_example_matches_exactly():
    assert golden_text("reporting_frontal_lateral.txt") == SPEC_EXAMPLE
    prompt = reporting_prompt(
        ReportingRequest(True, False, "Dyspnea.", "PA and lateral views of the chest.", "None.")
    )
    assert prompt.text == SPEC_EXAMPLE


@pytest.mark.parametrize(
    "case", CASES["cases"], ids=lambda c: c["file"] + str(c.get("overrides", ""))
)
def test_python_rendering_equals_the_jinja_chat_template(case, tokenizer):
    if case["task"] == "phrase_grounding":
        messages = phrase_grounding_messages(case["phrase"])
        assistant = None
    else:
        inputs = case_inputs(case)
        assistant = inputs["assistant_text"]
        messages = reporting_messages(request_of(case))
    rendered = tokenizer.apply_chat_template(
        messages,
        chat_template=CHAT_TEMPLATE,
        tokenize=False,
        add_generation_prompt=assistant is None,
    )
    assert rendered == render_case(case)


def _image(seed: int, shape=(70, 60)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8))


def test_maira2_geometry_gives_1369_tokens_per_image(tokenizer):
    processor = Maira2Processor(tokenizer, image_size=518, patch_size=14)
    assert processor.image_seq_length == 1369
    assert (
        Maira2Processor(tokenizer, 518, 14, num_additional_image_tokens=0).image_seq_length == 1368
    )
    assert (
        Maira2Processor(tokenizer, 518, 14, vision_feature_select_strategy="full").image_seq_length
        == 1370
    )
    enc = processor.reporting_inputs(_image(0), _image(1), _image(2), "Dyspnea.", None, None, None)
    assert int((enc.input_ids == processor.image_token_id).sum()) == 3 * 1369
    assert tuple(enc.pixel_values.shape) == (3, 3, 518, 518)


def test_image_tokens_carry_image_and_patch(tokenizer):
    processor = Maira2Processor(tokenizer, image_size=56, patch_size=14)
    enc = processor.reporting_inputs(
        _image(0), _image(1), _image(2), "Dyspnea.", None, None, "Prior."
    )
    images = [t for t in enc.tokens if t["kind"] == "image"]
    assert len(images) == 3 * 16
    assert [t["section"] for t in images[::16]] == [
        "current_frontal",
        "current_lateral",
        "prior_frontal",
    ]
    assert [t["image_index"] for t in images[::16]] == [0, 1, 2]
    first = images[:16]
    assert [(t["patch_row"], t["patch_col"]) for t in first] == [
        (r, c) for r in range(4) for c in range(4)
    ]
    assert all(enc.input_ids[0, t["position"]] == processor.image_token_id for t in images)


def test_tokens_are_labelled_by_section(tokenizer):
    processor = Maira2Processor(tokenizer, image_size=56, patch_size=14)
    enc = processor.reporting_inputs(
        _image(0),
        None,
        _image(1),
        "Dyspnea.",
        None,
        "None.",
        "Old effusion.",
        assistant_text="Heart normal.",
    )
    assert enc.text.endswith("ASSISTANT: Heart normal.</s>")

    def section_text(name):
        return "".join(t["token"] for t in enc.tokens if t["section"] == name).strip()

    assert section_text("indication") == "Dyspnea."
    assert section_text("technique") == "N/A"
    assert section_text("comparison") == "None."
    assert section_text("prior_report") == "Old effusion."
    report = [t for t in enc.tokens if t["kind"] == "report"]
    assert "".join(t["token"] for t in report).strip() == "Heart normal.</s>"
    assert report[0]["position"] > max(t["position"] for t in enc.tokens if t["kind"] != "report")
    assert enc.tokens[0]["token"] == "<s>" and enc.tokens[0]["section"] == "template"
    assert [t["position"] for t in enc.tokens] == list(range(enc.input_ids.shape[1]))


def test_generation_prompt_has_no_report_tokens(tokenizer):
    processor = Maira2Processor(tokenizer, image_size=56, patch_size=14)
    enc = processor.reporting_inputs(_image(0), None, None, None, None, None, None)
    kinds = Counter(t["kind"] for t in enc.tokens)
    assert kinds == {"prompt": kinds["prompt"], "image": 16}
    assert enc.text.endswith("ASSISTANT: ")


def test_phrase_grounding_inputs(tokenizer):
    processor = Maira2Processor(tokenizer, image_size=56, patch_size=14)
    enc = processor.phrase_grounding_inputs(_image(0), "Pleural effusion.")
    assert enc.text == golden_text("phrase_grounding.txt")
    assert (
        "".join(t["token"] for t in enc.tokens if t["section"] == "phrase").strip()
        == "Pleural effusion."
    )


def test_image_count_must_match_prompt(tokenizer):
    processor = Maira2Processor(tokenizer, image_size=56, patch_size=14)
    prompt = reporting_prompt(ReportingRequest(has_lateral=True))
    with pytest.raises(ValueError, match="2 image slots but 1 images"):
        processor.encode(prompt, [_image(0)])


def test_tokenizer_without_image_token_is_rejected():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    with pytest.raises(ValueError, match="no '<image>' token"):
        Maira2Processor(tok)


def test_save_and_load_processor_settings(tokenizer, tmp_path):
    Maira2Processor(tokenizer, image_size=56, patch_size=14, image_mean=0.4).save_pretrained(
        tmp_path
    )
    loaded = Maira2Processor.from_pretrained(tmp_path)
    assert (loaded.image_size, loaded.patch_size, loaded.image_seq_length) == (56, 14, 16)
    assert loaded.image_mean == pytest.approx(0.4)
    assert (
        json.loads((tmp_path / "chat_template.json").read_text())["chat_template"] == CHAT_TEMPLATE
    )
    assert loaded.tokenizer.convert_tokens_to_ids("<image>") == tokenizer.convert_tokens_to_ids(
        "<image>"
    )


def test_llama_style_tokenizer_from_a_local_directory(tmp_path):
    """MAIRA-2 ships a (SentencePiece-style) Llama tokenizer; the processor must label its
    ``▁``-prefixed tokens and keep ``<image>`` whole after a save/load round trip."""
    from transformers import LlamaTokenizer

    prompt = reporting_prompt(
        ReportingRequest(False, True, "Dyspnea.", None, "None.", "Old.", assistant_text="Clear.")
    )
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
    for char in sorted(set(prompt.text.replace("<image>", "").replace("</s>", "")) - {" "}):
        vocab.setdefault(char, len(vocab))
    tok = LlamaTokenizer(vocab=vocab, merges=[])
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    Maira2Processor(tok, image_size=28, patch_size=14).save_pretrained(tmp_path)
    processor = Maira2Processor.from_pretrained(tmp_path)
    assert processor.image_seq_length == 4
    enc = processor.reporting_inputs(
        _image(0), None, _image(1), "Dyspnea.", None, "None.", "Old.", assistant_text="Clear."
    )
    assert int((enc.input_ids == processor.image_token_id).sum()) == 8
    assert "unk" not in "".join(t["token"] for t in enc.tokens)

    def joined(section):
        return (
            "".join(t["token"] for t in enc.tokens if t["section"] == section)
            .replace("▁", " ")
            .strip()
        )

    assert joined("indication") == "Dyspnea."
    assert joined("prior_report") == "Old."
    assert joined("findings").startswith("Clear.")
    assert [t["section"] for t in enc.tokens if t["kind"] == "image"] == ["current_frontal"] * 4 + [
        "prior_frontal"
    ] * 4
