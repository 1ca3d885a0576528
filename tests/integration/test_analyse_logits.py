"""Logit effects through a saved model's unembedding, final-norm scale folded in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fixtures.analyse_world import D, make_run
from workbench import db
from workbench.analyse.run import AnalyseConfig, AnalyseError, analyse

pytestmark = pytest.mark.slow  # importing transformers dominates (seconds on a busy CPU)


@pytest.fixture(scope="module")
def run_with_model(tmp_path_factory):
    from transformers import LlamaForCausalLM

    from workbench.models.tiny import tiny_text_config, tiny_tokenizer

    run = make_run(tmp_path_factory.mktemp("logits"))
    tok = tiny_tokenizer()
    cfg = tiny_text_config(len(tok), n_layers=1)
    cfg.hidden_size, cfg.intermediate_size = D, 16
    cfg.num_attention_heads = cfg.num_key_value_heads = 2
    cfg.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.norm.weight.copy_(torch.linspace(0.1, 3.0, D))
    model.save_pretrained(run / "model")
    tok.save_pretrained(run / "model")
    analyse(AnalyseConfig(run=run, n_logits=4))
    return run, model, tok


def test_feature_logits_match_decoder_times_scaled_unembedding(run_with_model):
    run, model, tok = run_with_model
    W_U = model.lm_head.weight.detach().T * model.model.norm.weight.detach()[:, None]
    con = db.connect(run)
    for f, direction_D in ((0, torch.eye(D)[0]), (9, -torch.eye(D)[1])):
        eff = (direction_D @ W_U).numpy()
        got = con.execute(
            "SELECT direction, token_id, token, effect FROM feature_logits WHERE feature = ? "
            "ORDER BY direction, rank",
            [f],
        ).fetchall()
        promote = [r for r in got if r[0] == "promote"]
        suppress = [r for r in got if r[0] == "suppress"]
        assert [r[1] for r in promote] == list(np.argsort(-eff)[:4])
        assert [r[1] for r in suppress] == list(np.argsort(eff)[:4])
        np.testing.assert_allclose([r[3] for r in promote], np.sort(eff)[::-1][:4], rtol=1e-5)
        assert promote[0][2] == tok.decode([promote[0][1]])
    assert con.execute("SELECT count(*) FROM feature_logits").fetchone()[0] == 16 * 8


def test_model_of_another_width_is_refused(run_with_model, tmp_path):
    from transformers import LlamaForCausalLM

    from workbench.models.tiny import tiny_text_config, tiny_tokenizer

    run, _, _ = run_with_model
    tok = tiny_tokenizer()
    cfg = tiny_text_config(len(tok), n_layers=1)
    cfg.architectures = ["LlamaForCausalLM"]
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "wide")
    tok.save_pretrained(tmp_path / "wide")
    with pytest.raises(AnalyseError, match="model width 48 differs from the SAE's d_in=8"):
        analyse(AnalyseConfig(run=run, model=tmp_path / "wide"))
    # without logit effects the model is only wanted for the SAE quality: noted, not fatal
    import shutil

    copy = shutil.copytree(run, tmp_path / "copy")  # the module's run stays as it is
    analyse(AnalyseConfig(run=copy, model=tmp_path / "wide", n_logits=0))
    con = db.connect(copy)
    notes = con.execute("SELECT notes FROM runs WHERE stage = 'analyse'").fetchone()[0]
    source = con.execute("SELECT DISTINCT source FROM sae_quality").fetchall()
    con.close()
    assert "model width 48 differs from the SAE's d_in=8: not used" in notes
    assert source == [("store",)]
