"""``workbench.record`` end to end on a tiny phantom and a tiny saved MAIRA-2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.fixtures.record_fixtures import make_phantom, save_tiny_maira2
from workbench.cxr.collection import load_collection
from workbench.models.hooks import decoder_layers
from workbench.models.registry import load_model
from workbench.record.run import RecordConfig, RecordError, main, record
from workbench.store import ActivationStore

# a tiny phantom and model per module: ~10-60 s in all
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    phantom = make_phantom(root / "phantom", studies=10)
    model = save_tiny_maira2(root / "model", n_layers=4)
    return phantom, model


def _cfg(world, out, **kw) -> RecordConfig:
    phantom, model = world
    base = dict(model=str(model), data=phantom, out=out, progress=False, shard_tokens=200)
    return RecordConfig(**{**base, **kw})


def _rows(path) -> dict[tuple[int, int], torch.Tensor]:
    """(study_id, position) -> activation row, over the whole store."""
    store = ActivationStore(path)
    out = {}
    for acts, meta in store.iter_shards():
        for i, (s, p) in enumerate(zip(meta["study_id"].to_pylist(), meta["position"].to_pylist())):
            out[(s, p)] = acts[i]
    return out


def test_records_every_study_once_and_matches_full_forward(world, tmp_path):
    out = record(_cfg(world, tmp_path / "acts", image_tokens="all", prompt_tokens="all"))
    store = ActivationStore(out)
    n_studies = len(load_collection(world[0]).items)
    assert sorted(store.manifest["studies_complete"]) == sorted(
        it.study_id for it in load_collection(world[0]).items
    )
    assert store.layer == 1 and store.hook_name == "blocks.1.hook_resid_post"  # (4 - 1) // 2
    assert store.manifest["complete"] and (out / "cfg.json").is_file()
    meta = store.metadata_all()
    assert meta.num_rows == store.n_tokens
    assert set(meta["kind"].to_pylist()) == {"image", "prompt", "report"}
    assert meta["row"].to_pylist() == list(range(store.n_tokens))
    # With every token kept, the rows are exactly HF hidden_states[L + 1] of a full forward.
    adapter = load_model(str(world[1]))
    item = load_collection(world[0]).items[0]
    inp = adapter.prepare(item.source, findings=item.findings)
    with torch.no_grad():
        full = adapter.model(**inp.model_inputs, output_hidden_states=True)
    rows = _rows(out)
    got = torch.stack([rows[(item.study_id, p)] for p in range(len(inp.tokens))])
    torch.testing.assert_close(got, full.hidden_states[2][0])
    assert len({s for s, _ in rows}) == n_studies


def test_forward_stops_at_the_recorded_layer(world, tmp_path, monkeypatch):
    from workbench.record import run as rec_mod

    calls = []
    real = rec_mod.record_item

    def spy(adapter, item, layer, cfg):
        handle = decoder_layers(adapter.model)[layer + 1].register_forward_hook(
            lambda *a: calls.append("later block ran")
        )
        head = adapter.model.get_output_embeddings().register_forward_hook(
            lambda *a: calls.append("lm head ran")
        )
        try:
            return real(adapter, item, layer, cfg)
        finally:
            handle.remove()
            head.remove()

    monkeypatch.setattr(rec_mod, "record_item", spy)
    record(_cfg(world, tmp_path / "acts", limit=2))
    assert calls == []


def test_default_filtering_keeps_first_last_image_tokens_and_study_text(world, tmp_path):
    out = record(_cfg(world, tmp_path / "acts"))
    meta = ActivationStore(out).metadata_all().to_pylist()
    for study in {m["study_id"] for m in meta}:
        rows = [m for m in meta if m["study_id"] == study]
        images = [m for m in rows if m["kind"] == "image"]
        n_images = len({m["section"] for m in images})
        assert len(images) == 2 * n_images  # first and last of each image
        prompt_sections = {m["section"] for m in rows if m["kind"] == "prompt"}
        assert prompt_sections <= {"indication", "technique", "comparison", "prior_report"}
        assert "system" not in prompt_sections and "instruction" not in prompt_sections
        assert any(m["kind"] == "report" for m in rows)
        assert all(m["subject_id"] is not None for m in rows)


def test_no_image_tokens_mode(world, tmp_path):
    out = record(_cfg(world, tmp_path / "acts", image_tokens="none", prompt_tokens="none"))
    kinds = set(ActivationStore(out).metadata_all()["kind"].to_pylist())
    assert kinds == {"report"}


def test_sections_other_than_findings_need_a_text_model(world, tmp_path):
    with pytest.raises(RecordError, match="writes FINDINGS; --sections both needs a text-only"):
        record(_cfg(world, tmp_path / "acts", sections="both"))


def test_resume_with_other_sections_is_refused(world, tmp_path):
    from tests.fixtures.record_fixtures import save_tiny_llama

    llama = save_tiny_llama(tmp_path / "llama")
    out = tmp_path / "text"
    record(_cfg(world, out, model=str(llama), limit=2, sections="impression"))
    meta = ActivationStore(out).metadata_all(["kind", "section"]).to_pylist()
    assert {m["section"] for m in meta if m["kind"] == "report"} == {"impression"}
    with pytest.raises(RecordError, match="recorded with --sections impression; got findings"):
        record(_cfg(world, out, model=str(llama), limit=3))


def test_resume_after_a_kill_records_each_study_once(world, tmp_path, monkeypatch):
    from workbench.record import run as rec_mod

    real, seen = rec_mod.record_item, []

    def dies_after_five(adapter, item, layer, cfg):
        if len(seen) == 5:
            raise KeyboardInterrupt  # a kill in the middle of the run
        seen.append(item.study_id)
        return real(adapter, item, layer, cfg)

    monkeypatch.setattr(rec_mod, "record_item", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        record(_cfg(world, tmp_path / "acts", shard_tokens=50))
    partial = ActivationStore(tmp_path / "acts").manifest["studies_complete"]
    assert 0 < len(partial) <= 5
    monkeypatch.setattr(rec_mod, "record_item", real)
    record(_cfg(world, tmp_path / "acts", shard_tokens=50))
    store = ActivationStore(tmp_path / "acts")
    done = store.manifest["studies_complete"]
    assert len(done) == len(set(done)) == len(load_collection(world[0]).items)
    meta = store.metadata_all()
    pairs = list(zip(meta["study_id"].to_pylist(), meta["position"].to_pylist()))
    assert len(pairs) == len(set(pairs))
    assert _rows(tmp_path / "acts").keys() == _rows(record(_cfg(world, tmp_path / "b"))).keys()


def test_bad_studies_are_skipped_with_reasons(world, tmp_path):
    phantom = shutil.copytree(world[0], tmp_path / "phantom")
    items = load_collection(phantom).items
    items[0].source.frontal_path.write_bytes(b"not a jpeg at all")
    report = items[1].source.report_path
    report.write_text(report.read_text().split("FINDINGS:")[0])
    out = record(_cfg((phantom, world[1]), tmp_path / "acts"))
    manifest = ActivationStore(out).manifest
    assert "unreadable" in manifest["skipped"][str(items[0].study_id)]
    assert "no findings" in manifest["skipped"][str(items[1].study_id)]
    assert len(manifest["studies_complete"]) == len(items) - 2


def test_nan_activations_stop_with_a_clear_error(world, tmp_path):
    broken = shutil.copytree(world[1], tmp_path / "model")
    from safetensors.torch import load_file, save_file

    shard = next(broken.glob("*.safetensors"))
    state = load_file(shard)
    key = next(k for k in state if "layers.0." in k and k.endswith("o_proj.weight"))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, shard, metadata={"format": "pt"})
    with pytest.raises(RecordError, match="NaN"):
        record(_cfg((world[0], broken), tmp_path / "acts"))
    assert main(["--model", str(broken), "--data", str(world[0]), "--out",
                 str(tmp_path / "acts2"), "--no-progress"]) == 1  # fmt: skip


def test_cli_writes_config_and_resumes_with_nothing_to_do(world, tmp_path, capsys):
    argv = ["--model", str(world[1]), "--data", str(world[0]), "--out", str(tmp_path / "a"),
            "--no-progress", "--limit", "3", "--dtype", "bfloat16"]  # fmt: skip
    assert main(argv) == 0
    assert main(argv) == 0
    store = ActivationStore(tmp_path / "a")
    assert len(store.manifest["studies_complete"]) == 3
    assert store.shard(0).dtype == torch.bfloat16
    assert json.loads((tmp_path / "a" / "cfg.json").read_text())["dtype"] == "bfloat16"


def test_study_collection_sections(world, tmp_path):
    phantom = shutil.copytree(world[0], tmp_path / "phantom")
    items = load_collection(phantom).items
    report = items[0].source.report_path
    report.write_text(report.read_text().split("IMPRESSION:")[0])  # FINDINGS only
    both = load_collection(phantom, sections="both")
    assert [s.study_id for s in both.skipped] == [items[0].study_id]
    assert "no IMPRESSION" in both.skipped[0].reason
    assert all(it.findings and it.impression for it in both.items)
    imp = load_collection(phantom, sections="impression", only=[it.study_id for it in items[1:3]])
    assert {it.study_id for it in imp.items} == {it.study_id for it in items[1:3]}
    assert all(it.findings is None and it.impression for it in imp.items)
