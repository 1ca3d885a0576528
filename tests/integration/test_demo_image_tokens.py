"""The demo's image-token step on a tiny MAIRA-2 and phantom: projector store -> SAE -> analyse
in <run>/image-tokens, each part skipped on a rerun, and steer's default site finds it."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]


@pytest.fixture
def demo_run(tmp_path):
    from workbench.cxr.phantom.run import PhantomConfig, generate
    from workbench.models.processor import Maira2Processor
    from workbench.models.tiny import tiny_maira2, tiny_tokenizer
    from workbench.run import RunLayout

    layout = RunLayout(tmp_path / "demo")
    generate(PhantomConfig(out=layout.phantom, studies=12, size=64, seed=4, workers=1))
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    model = tiny_maira2(tokenizer)
    model.save_pretrained(layout.model)
    Maira2Processor.for_model(model.config, tokenizer).save_pretrained(layout.model)
    return layout


def test_the_image_token_run_is_built_once_and_steered(demo_run):
    from workbench import db
    from workbench.demo import DemoConfig, step_image_tokens
    from workbench.models.hooks import VISION_PROJECTOR
    from workbench.run import RunLayout
    from workbench.steer.config import SteerConfig
    from workbench.store import ActivationStore

    cfg = DemoConfig(run=demo_run.root)
    report = step_image_tokens(cfg)
    nested = RunLayout(demo_run.image_tokens)
    store = ActivationStore(nested.activations)
    assert store.hook_name == VISION_PROJECTOR and store.manifest["complete"]
    weights = nested.sae / "sae_weights.safetensors"
    stamp = weights.stat().st_mtime_ns
    con = db.connect(nested.root)
    try:
        n = con.execute("SELECT count(*) FROM feature_concepts").fetchone()[0]
    finally:
        con.close()
    assert n > 0
    assert step_image_tokens(cfg) == report  # a rerun reuses store, SAE and analysis
    assert weights.stat().st_mtime_ns == stamp
    assert SteerConfig(run=demo_run.root).site_run == nested.root  # where steer looks
