"""Recording with a text-only causal LM, and under ``accelerate launch`` with 2 CPU processes."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.launch import launch_two
from tests.fixtures.record_fixtures import make_phantom, save_tiny_llama, save_tiny_maira2
from workbench.record.run import RecordConfig, record
from workbench.store import ActivationStore

pytestmark = pytest.mark.slow


def _rows(path) -> dict[tuple[int, int], torch.Tensor]:
    store = ActivationStore(path)
    out = {}
    for acts, meta in store.iter_shards():
        keys = zip(meta["study_id"].to_pylist(), meta["position"].to_pylist(), strict=True)
        for i, key in enumerate(keys):
            out[key] = acts[i]
    return out


def test_text_only_causal_lm_over_a_csv(tmp_path):
    model = save_tiny_llama(tmp_path / "llama", n_layers=3)
    data = tmp_path / "reports.csv"
    data.write_text(
        "study_id,subject_id,text\n"
        '1,10,"The heart size is normal. No pneumothorax."\n'
        '2,10,"Small left pleural effusion."\n'
        '3,11,""\n'
    )
    cfg = RecordConfig(model=str(model), data=data, out=tmp_path / "acts", progress=False)
    store = ActivationStore(record(cfg))
    assert store.layer == 1 and store.d_model == 48
    assert sorted(store.manifest["studies_complete"]) == [1, 2]
    assert "3" in store.manifest["skipped"]
    meta = store.metadata_all().to_pylist()
    report = [m for m in meta if m["kind"] == "report"]
    assert {m["study_id"] for m in report} == {1, 2}
    assert all(m["kind"] in ("report", "prompt") for m in meta)
    assert {m["subject_id"] for m in meta} == {10}


def test_vision_model_refuses_text_only_data(tmp_path):
    model = save_tiny_maira2(tmp_path / "m", n_layers=2)
    data = tmp_path / "r.csv"
    data.write_text("text\nNo effusion.\n")
    from workbench.record.run import RecordError

    with pytest.raises(RecordError, match="needs images"):
        record(RecordConfig(model=str(model), data=data, out=tmp_path / "a", progress=False))


def test_two_processes_record_the_same_rows_as_one(tmp_path):
    phantom = make_phantom(tmp_path / "phantom", studies=8, seed=4)
    model = save_tiny_maira2(tmp_path / "model", n_layers=2)
    common = ["--model", str(model), "--data", str(phantom), "--no-progress",
              "--image-tokens", "all", "--shard-tokens", "300"]  # fmt: skip
    one = record(
        RecordConfig(
            model=str(model),
            data=phantom,
            out=tmp_path / "one",
            progress=False,
            image_tokens="all",
            shard_tokens=300,
        )  # fmt: skip
    )
    launch_two("workbench.record", [*common, "--out", str(tmp_path / "two")])
    two = tmp_path / "two"
    assert sorted(p.name for p in two.glob("rank*")) == ["rank0", "rank1"]
    parts = [set(ActivationStore(p).manifest["studies_complete"]) for p in two.glob("rank*")]
    assert parts[0] and parts[1] and not parts[0] & parts[1]
    rows_one, rows_two = _rows(one), _rows(two)
    assert rows_one.keys() == rows_two.keys()
    for key, row in rows_one.items():
        torch.testing.assert_close(rows_two[key], row, rtol=1e-5, atol=1e-5)
    merged = ActivationStore(two)
    assert merged.metadata_all()["row"].to_pylist() == list(range(merged.n_tokens))
