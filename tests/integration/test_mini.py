"""maira2-mini: config shape, training end to end (tiny sizes), resume, reuse, registry load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures.record_fixtures import make_phantom
from workbench.models.mini import MiniConfig, ensure_mini, is_trained, mini_config
from workbench.models.mini import train as mini_train
from workbench.models.mini.data import collate, epoch_batches
from workbench.models.mini.tokenizer import train_tokenizer
from workbench.models.processor import Maira2Processor
from workbench.models.registry import load_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return make_phantom(tmp_path_factory.mktemp("mini") / "phantom", studies=12, seed=2, masks=True)


def tiny_cfg(phantom, out, **kw) -> MiniConfig:
    sizes = dict(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1,
                 text_hidden=64, text_layers=2, text_intermediate=64, vocab_size=320)  # fmt: skip
    run = dict(epochs=2, batch_size=4, warmup_steps=1, threads=1, eval_studies=2,
               vision_steps=4, vision_batch=4, vision_phantom=phantom)  # fmt: skip
    return MiniConfig(phantom=phantom, out=out, **{**sizes, **run, **kw})


def test_config_has_maira2_structure():
    tok = train_tokenizer(["There is a small left pleural effusion."] * 5, vocab_size=300)
    cfg = mini_config(MiniConfig(), tok)
    assert cfg.model_type == "maira2" and cfg.projector_n_layers == 4
    assert cfg.vision_config.model_type == "dinov2" and cfg.text_config.model_type == "llama"
    assert cfg.image_token_index == tok.convert_tokens_to_ids("<image>")
    assert cfg.image_tokens_per_image == (192 // 16) ** 2
    processor = Maira2Processor.for_model(cfg, tok)
    assert processor.image_seq_length == cfg.image_tokens_per_image
    assert cfg.text_config.num_hidden_layers == 6 and cfg.text_config.vocab_size == len(tok)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        MiniConfig(image_size=100).validate()


def test_batches_are_deterministic_and_cover_the_epoch():
    lengths = [(7 * i) % 23 for i in range(200)]  # several pools of 32 batches
    a = epoch_batches(lengths, 3, seed=0, epoch=1)
    assert a == epoch_batches(lengths, 3, seed=0, epoch=1)
    assert a != epoch_batches(lengths, 3, seed=0, epoch=2)
    assert sorted(i for b in a for i in b) == list(range(200))
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a]
    assert sum(spread) / len(spread) < 3  # batches group similar lengths


def test_train_saves_a_loadable_model_and_ensure_reuses_it(phantom, tmp_path):
    out = mini_train.train(tiny_cfg(phantom, tmp_path / "m"))
    assert is_trained(out) and not (out / ".train").exists()
    stats = (out / "train-stats.json").read_text()
    assert '"steps"' in stats and "validate_macro_f1" in stats
    assert '"vision_steps_done": 4' in stats and (out / "stage1-heads.safetensors").is_file()
    adapter = load_model(str(out))
    assert adapter.kind == "vision_language" and adapter.n_layers == 2
    from workbench.cxr.studies import iter_studies

    study = next(iter(iter_studies(phantom, split="validate")))
    text = adapter.generate(adapter.prepare(study), max_new_tokens=5)
    assert isinstance(text, str)
    from workbench.models.mini.eval import evaluate_split

    blind = evaluate_split(adapter.model, adapter.processor, phantom, "validate", 2, "blank", True)
    assert blind.n_studies == 2 and set(blind.generated) <= {
        r.study_id for r in iter_studies(phantom)
    }
    weights = next(out.glob("*.safetensors"))
    mtime = weights.stat().st_mtime_ns
    assert ensure_mini(out) == out and weights.stat().st_mtime_ns == mtime  # reused


def test_teacher_forcing_labels_cover_only_the_findings(phantom):
    from workbench.cxr.studies import iter_studies
    from workbench.models.mini.data import encode_study

    tok = train_tokenizer(["Heart size is normal. No effusion."] * 5, vocab_size=300)
    processor = Maira2Processor(tok, image_size=32, patch_size=16)
    rec = next(iter(iter_studies(phantom, split="train")))
    ex, image_only = encode_study(processor, rec, torch.zeros(13), image_only_too=True)
    assert image_only.pixels is ex.pixels  # the variants share one pixel tensor
    full_text, blind_text = (tok.decode(e.input_ids.tolist()) for e in (ex, image_only))
    assert "N/A" in blind_text and len(blind_text) < len(full_text)
    labelled = ex.input_ids[ex.labels != -100]
    assert labelled[-1].item() == tok.eos_token_id
    assert tok.decode(labelled[:-1].tolist()).strip() == rec.findings.strip()
    batch = collate([ex, ex], pad_id=tok.pad_token_id)
    assert batch.pixel_values.shape[1:] == (3, 32, 32)
    assert batch.frontal.tolist() == [0, len(ex.pixels)]


def test_a_killed_training_resumes_to_the_same_weights(phantom, tmp_path, monkeypatch):
    reference = mini_train.train(tiny_cfg(phantom, tmp_path / "ref", eval_studies=0))
    calls = {"n": 0}
    real = mini_train.collate

    def dies_on_third_batch(*args, **kwargs):  # of stage 2 (stage 1 does not collate)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mini_train, "collate", dies_on_third_batch)
    cfg = tiny_cfg(phantom, tmp_path / "resumed", eval_studies=0, checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        mini_train.train(cfg)
    assert (cfg.out / ".train" / mini_train.CHECKPOINT).is_file()
    monkeypatch.setattr(mini_train, "collate", real)
    resumed = mini_train.train(cfg)
    assert "resuming from step 2" in (resumed / "train.log").read_text()
    a = load_file(next(reference.glob("*.safetensors")))
    b = load_file(next(resumed.glob("*.safetensors")))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_continuation_run_starts_from_trained_weights(phantom, tmp_path):
    first = mini_train.train(tiny_cfg(phantom, tmp_path / "a", eval_studies=0))
    cfg = tiny_cfg(phantom, tmp_path / "b", eval_studies=0, epochs=1, init_from=first, lr=0.0)
    second = mini_train.train(cfg)
    assert "continues from" in (second / "train.log").read_text()
    assert (second / "stage1-heads.safetensors").is_file()  # carried from the first run
    assert (second / "tokenizer.json").read_text() == (first / "tokenizer.json").read_text()
    a = load_file(next(first.glob("*.safetensors")))
    b = load_file(next(second.glob("*.safetensors")))
    for key in a:  # learning rate 0: the weights are carried over unchanged
        torch.testing.assert_close(a[key], b[key])


def test_ablation_images_are_blank_or_another_studys(phantom):
    import numpy as np

    from workbench.cxr.studies import iter_studies
    from workbench.models.mini.eval import study_images

    records = list(iter_studies(phantom, split="train"))
    blank = study_images(records, 0, "blank")
    assert (
        np.asarray(blank[0]).std() == 0 and blank[0].size == records[0].load_images().frontal.size
    )
    assert all((b is None) == (r is None) for b, r in zip(blank, records[0].load_images()))
    swapped = study_images(records, 0, "swapped")
    other = records[len(records) // 2].load_images().frontal
    assert np.array_equal(np.asarray(swapped[0]), np.asarray(other))
    assert not np.array_equal(np.asarray(swapped[0]), np.asarray(records[0].load_images().frontal))
    with pytest.raises(ValueError, match="image condition"):
        study_images(records, 0, "noise")


def test_decoder_init_takes_the_language_model_and_leaves_vision_fresh(phantom, tmp_path):
    first = mini_train.train(tiny_cfg(phantom, tmp_path / "a", eval_studies=0))
    cfg = tiny_cfg(
        phantom, tmp_path / "b", eval_studies=0, epochs=1, init_decoder_from=first, lr=0.0, seed=3
    )
    second = mini_train.train(cfg)
    assert "decoder initialised from" in (second / "train.log").read_text()
    assert (second / "tokenizer.json").read_text() == (first / "tokenizer.json").read_text()
    a = load_file(next(first.glob("*.safetensors")))
    b = load_file(next(second.glob("*.safetensors")))
    decoder = [k for k in a if k.startswith(("language_model.", "lm_head."))]
    assert decoder and all(torch.equal(a[k], b[k]) for k in decoder)  # lr 0: carried over
    vision = [k for k in a if "vision_tower" in k and k.endswith("weight")]
    assert any(not torch.equal(a[k], b[k]) for k in vision)  # stage 1 ran on a fresh tower


def test_stage1_continuation_starts_every_part_from_a_trained_model(phantom, tmp_path):
    first = mini_train.train(tiny_cfg(phantom, tmp_path / "a", eval_studies=0))
    cfg = tiny_cfg(
        phantom, tmp_path / "b", eval_studies=0, epochs=1, lr=0.0, vision_lr=0.0, seed=3,
        init_decoder_from=first, init_projector=True, init_vision_from=first,
    )  # fmt: skip
    second = mini_train.train(cfg)
    log_text = (second / "train.log").read_text()
    assert "decoder and projector initialised from" in log_text
    assert "vision tower initialised from" in log_text
    a = load_file(next(first.glob("*.safetensors")))
    b = load_file(next(second.glob("*.safetensors")))
    for key in a:  # both learning rates 0: every weight carried over, stage 1 ran on it
        torch.testing.assert_close(a[key], b[key])
    heads_a = load_file(first / "stage1-heads.safetensors")
    heads_b = load_file(second / "stage1-heads.safetensors")
    assert all(torch.equal(heads_a[k], heads_b[k]) for k in heads_a)


def test_continuation_options_that_contradict_are_refused(tmp_path):
    with pytest.raises(ValueError, match="init_vision_from"):
        MiniConfig(init_from=tmp_path, init_vision_from=tmp_path).validate()
    with pytest.raises(ValueError, match="init_projector"):
        MiniConfig(init_projector=True).validate()


def test_float16_storage_halves_the_file_and_loads_the_rounded_float32_model(
    phantom, tmp_path, monkeypatch
):
    import json

    from workbench.models import registry
    from workbench.models.maira2 import Maira2ForConditionalGeneration

    full = mini_train.train(tiny_cfg(phantom, tmp_path / "fp32", eval_studies=0))
    half = mini_train.train(tiny_cfg(phantom, tmp_path / "fp16", save_dtype="float16"))
    (w32,), (w16,) = full.glob("model-*.safetensors"), half.glob("model-*.safetensors")
    assert 0.45 < w16.stat().st_size / w32.stat().st_size < 0.55
    a, b = load_file(w32), load_file(w16)
    assert a.keys() == b.keys() and {t.dtype for t in b.values()} == {torch.float16}
    for key in a:  # the same run, its weights rounded to float16 and nothing else
        assert torch.equal(a[key].half(), b[key]), key
    assert json.loads((half / "config.json").read_text())["dtype"] == "float32"
    heads = load_file(half / "stage1-heads.safetensors")
    assert {t.dtype for t in heads.values()} == {torch.float32}
    stats = (half / "train-stats.json").read_text()
    assert "validate_macro_f1" in stats  # generated with the model before saving

    native = Maira2ForConditionalGeneration.from_pretrained(half)
    assert {p.dtype for p in native.parameters()} == {torch.float32}
    rounded = Maira2ForConditionalGeneration.from_pretrained(full)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.half().float())
    adapter = load_model(str(half))
    assert {p.dtype for p in adapter.model.parameters()} == {torch.float32}
    from workbench.cxr.studies import iter_studies

    study = next(iter(iter_studies(phantom, split="validate")))
    inp = adapter.prepare(study)
    with torch.no_grad():
        logits = adapter.model(**adapter.device_inputs(inp)).logits
        expected = rounded(**adapter.device_inputs(inp)).logits
        unrounded = Maira2ForConditionalGeneration.from_pretrained(full)(
            **adapter.device_inputs(inp)
        ).logits
    assert torch.equal(logits, expected) and not torch.equal(logits, unrounded)
    assert isinstance(adapter.generate(inp, max_new_tokens=5), str)

    # a GPU's half-precision default does not apply to a maira2-mini, only to other models
    monkeypatch.setattr(registry, "default_dtype", lambda device: torch.bfloat16)
    assert load_model(str(half)).model.dtype == torch.float32
    other = tmp_path / "not-mini"
    other.mkdir()
    for f in half.iterdir():
        if f.is_file() and f.name != "train-cfg.json":
            (other / f.name).write_bytes(f.read_bytes())
    assert load_model(str(other)).model.dtype == torch.bfloat16


def test_device_auto_trains_on_the_cpu_here_and_resumes_to_the_same_weights(
    phantom, tmp_path, monkeypatch
):
    from workbench.models.mini.config import resolve_device

    assert resolve_device(MiniConfig(device="auto")) == torch.device(
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    if torch.cuda.is_available():
        pytest.skip("device 'auto' picks the GPU on this machine")
    reference = mini_train.train(tiny_cfg(phantom, tmp_path / "ref", eval_studies=0))
    real = mini_train.collate
    calls = {"n": 0}

    def dies_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mini_train, "collate", dies_on_third_batch)
    cfg = tiny_cfg(phantom, tmp_path / "auto", eval_studies=0, checkpoint_every=1, device="auto")
    with pytest.raises(KeyboardInterrupt):
        mini_train.train(cfg)
    monkeypatch.setattr(mini_train, "collate", real)
    resumed = mini_train.train(cfg)
    log_text = (resumed / "train.log").read_text()
    assert "training on cpu" in log_text and "resuming from step 2" in log_text
    a = load_file(next(reference.glob("*.safetensors")))
    b = load_file(next(resumed.glob("*.safetensors")))
    for key in a:  # the device switch changes nothing on the CPU
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_refit_rewrites_the_dense_head_only(phantom, tmp_path):
    from workbench.models.mini.refit import RefitConfig, refit
    from workbench.models.mini.vision import load_heads

    model = mini_train.train(tiny_cfg(phantom, tmp_path / "m"))
    weights = {p.name: p.read_bytes() for p in model.glob("model*.safetensors")}
    before = load_heads(model)
    out = refit(RefitConfig(model=model, corpus=phantom, phantom=phantom, out=tmp_path / "r",
                            epochs=2, batch=4, threads=1))  # fmt: skip
    after = load_heads(out.parent)
    assert torch.equal(after.image.weight, before.image.weight)  # the image head is kept
    assert not torch.equal(after.dense.weight, before.dense.weight)
    assert {p.name: p.read_bytes() for p in model.glob("model*.safetensors")} == weights
    assert load_heads(model).dense.weight.equal(before.dense.weight)  # model dir untouched


def test_report_phantoms_join_stage_two_and_the_evaluation_phantom_is_refused(phantom, tmp_path):
    from workbench.cxr.studies import iter_studies

    extra = make_phantom(tmp_path / "extra", studies=6, seed=9, masks=True)
    out = mini_train.train(tiny_cfg(phantom, tmp_path / "m", vision_steps=0, epochs=1,
                                    report_phantoms=(extra,)))  # fmt: skip
    stats = (out / "train-stats.json").read_text()
    n_train = len(list(iter_studies(phantom, split="train")))
    n_extra = len(list(iter_studies(extra)))
    assert f'"train_studies": {n_train + n_extra}' in stats
    with pytest.raises(ValueError, match="report_phantoms"):
        tiny_cfg(phantom, tmp_path / "n", report_phantoms=(phantom,)).validate()
