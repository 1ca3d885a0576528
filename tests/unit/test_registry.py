"""The model registry: one adapter interface over MAIRA-2, LLaVA and text-only causal LMs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.models import registry
from workbench.models.hooks import resid_post_name
from workbench.models.processor import Maira2Processor
from workbench.models.registry import adapter_for, load_model, resolve_model_dir
from workbench.models.tiny import tiny_llama, tiny_llava, tiny_maira2

BUILDERS = {"maira2": tiny_maira2, "llava": tiny_llava, "llama": tiny_llama}


pytestmark = pytest.mark.usefixtures("single_threaded")


@pytest.fixture(scope="module")
def adapters(tokenizer):
    torch.manual_seed(0)
    return {
        name: adapter_for(build(tokenizer), tokenizer, name) for name, build in BUILDERS.items()
    }


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (70, 64)).astype(np.uint8))


def _study(**overrides) -> dict:
    study = {
        "frontal": _image(0),
        "lateral": _image(1),
        "prior_frontal": None,
        "indication": "Dyspnea.",
        "technique": None,
        "comparison": "None.",
        "prior_report": "Old effusion.",
    }
    study.update(overrides)
    return study


def test_adapter_kinds_and_sizes(adapters):
    assert adapters["maira2"].kind == adapters["llava"].kind == "vision_language"
    assert adapters["llama"].kind == "causal_lm"
    for adapter in adapters.values():
        assert (adapter.n_layers, adapter.d_model) == (3, 48)
        assert adapter.unembed.shape == (48, len(adapter.tokenizer))


@pytest.mark.parametrize("name", ["maira2", "llava"])
def test_vision_language_prepare_metadata(name, adapters):
    inp = adapters[name].prepare(_study(), findings="Heart normal.")
    kinds = [t["kind"] for t in inp.tokens]
    assert kinds.count("image") == 32
    assert {t["section"] for t in inp.tokens if t["kind"] == "image"} == {
        "current_frontal",
        "current_lateral",
    }
    report = [t for t in inp.tokens if t["kind"] == "report"]
    assert report and all(t["section"] == "findings" for t in report)
    assert inp.prompt_length == report[0]["position"]
    assert "PRIOR_REPORT" not in inp.text  # no prior image, so the prior report is ignored
    assert inp.model_inputs["pixel_values"].shape == (2, 3, 56, 56)


@pytest.mark.parametrize("name", ["maira2", "llava", "llama"])
def test_residual_matches_hidden_states(name, adapters):
    adapter = adapters[name]
    inp = adapter.prepare(_study(), findings="Heart normal.")
    acts = adapter.residual(inp, 1)
    assert acts.shape == (len(inp.tokens), adapter.d_model)
    with torch.no_grad():
        hidden = adapter.model(**inp.model_inputs, output_hidden_states=True).hidden_states
    torch.testing.assert_close(acts, hidden[2][0])


def test_unembed_after_final_norm_gives_logits(adapters):
    adapter = adapters["maira2"]
    inp = adapter.prepare(_study())
    last = adapter.residual(inp, adapter.n_layers - 1)
    with torch.no_grad():
        logits = adapter.model(**inp.model_inputs).logits[0]
        torch.testing.assert_close(adapter.final_norm(last) @ adapter.unembed, logits)


@pytest.mark.parametrize("name", ["maira2", "llava", "llama"])
def test_generate_with_and_without_intervention(name, adapters):
    adapter = adapters[name]
    inp = adapter.prepare(_study())
    plain = adapter.generate(inp, max_new_tokens=4)
    assert plain == adapter.generate(inp, max_new_tokens=4)
    calls = []

    def steer(acts):
        calls.append(acts.shape[1])
        return acts + 50.0 * torch.randn(acts.shape[-1], generator=torch.Generator().manual_seed(0))

    steered = adapter.generate(inp, max_new_tokens=4, interventions={resid_post_name(0): steer})
    assert calls and calls[0] == len(inp.tokens)
    assert steered != plain


def test_generate_refuses_teacher_forced_inputs(adapters):
    inp = adapters["llama"].prepare(_study(), findings="Heart normal.")
    with pytest.raises(ValueError, match="teacher-force"):
        adapters["llama"].generate(inp)


def test_text_only_prompt(adapters):
    inp = adapters["llama"].prepare(_study(prior_report=None), findings="Heart normal.")
    assert (
        inp.text == "INDICATION: Dyspnea. TECHNIQUE: N/A COMPARISON: None. FINDINGS: Heart normal."
    )
    assert "pixel_values" not in inp.model_inputs
    report = "".join(t["token"] for t in inp.tokens if t["kind"] == "report")
    assert report.strip() == "Heart normal."
    assert {t["section"] for t in inp.tokens if t["kind"] == "report"} == {"findings"}


def test_text_only_prompt_with_impression(adapters):
    llama = adapters["llama"]
    study = _study(prior_report=None)
    both = llama.prepare(study, findings="Heart normal.", impression="No acute process.")
    assert both.text.endswith("FINDINGS: Heart normal. IMPRESSION: No acute process.")
    sections = {}
    for t in both.tokens:
        if t["kind"] == "report":
            sections[t["section"]] = sections.get(t["section"], "") + t["token"]
    assert {k: v.strip() for k, v in sections.items()} == {
        "findings": "Heart normal.",
        "impression": "No acute process.",
    }
    alone = llama.prepare(study, impression="No acute process.")
    assert alone.text.endswith("COMPARISON: None. IMPRESSION: No acute process.")
    assert "FINDINGS" not in alone.text
    assert llama.prepare(study).text.endswith("FINDINGS:")  # generation prompt unchanged


def test_bad_layer_is_rejected(adapters):
    with pytest.raises(ValueError, match="outside 0..2"):
        adapters["llama"].hook_name(3)


class FakeRecord:
    """The StudyRecord fields the adapters read, with images loaded on demand."""

    indication, technique, comparison, prior_report = "Cough.", "PA.", None, "Prior text."

    def __init__(self, images):
        self._images = images

    def load_images(self):
        return self._images


def test_prepare_accepts_a_study_record(adapters):
    from workbench.cxr.studies import StudyImages

    record = FakeRecord(StudyImages(_image(0), None, _image(2)))
    inp = adapters["maira2"].prepare(record)
    assert "PRIOR_REPORT: Prior text." in inp.text
    assert {t["image_index"] for t in inp.tokens if t["kind"] == "image"} == {0, 1}


def test_prepare_reads_image_paths(adapters, tmp_path):
    path = tmp_path / "frontal.png"
    _image(3).save(path)
    inp = adapters["maira2"].prepare(_study(frontal=path, lateral=None))
    assert inp.model_inputs["pixel_values"].shape[0] == 1


@pytest.mark.parametrize("name", ["maira2", "llava", "llama"])
def test_load_model_from_saved_directory(name, adapters, tokenizer, tmp_path):
    adapter = adapters[name]
    adapter.model.save_pretrained(tmp_path)
    if name == "llama":
        tokenizer.save_pretrained(tmp_path)
    else:
        Maira2Processor.for_model(adapter.model.config, tokenizer).save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert type(loaded) is type(adapter)
    inp = loaded.prepare(_study(), findings="Heart normal.")
    torch.testing.assert_close(loaded.residual(inp, 2), adapter.residual(inp, 2))


def test_maira2_mini_and_pointer_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, "_PROJECT_ROOT", tmp_path / "no-checkout")  # hide shipped
    with pytest.raises(FileNotFoundError, match="maira2-mini not found"):
        resolve_model_dir("maira2-mini")
    mini = tmp_path / "data" / "maira2-mini"
    mini.mkdir(parents=True)
    (mini / "config.json").write_text("{}")
    assert resolve_model_dir("maira2-mini") == Path("data") / "maira2-mini"
    run_model = tmp_path / "runs" / "x" / "model"
    run_model.mkdir(parents=True)
    (run_model / registry.POINTER_FILE).write_text(str(mini) + "\n")
    assert resolve_model_dir(run_model) == mini


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)


def test_default_dtype():
    assert registry.default_dtype("cpu") == torch.float32


def test_unsupported_vision_language_type_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_vl", "vision_config": {}}')
    with pytest.raises(ValueError, match="qwen2_vl"):
        load_model(tmp_path)
