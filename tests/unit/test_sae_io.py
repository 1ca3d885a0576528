"""SAE file formats: our artefact through SAELens, SAELens files, dictionary_learning ae.pt."""

from __future__ import annotations

import json

import pytest
import torch

from tests.fixtures.sae_files import write_dictionary_learning
from workbench.sae import MatryoshkaSAE, SAEFormatError, load_sae, save_sae


def _trained_like_sae(d_in=12, d_sae=48, k=4, seed=0) -> MatryoshkaSAE:
    g = torch.Generator().manual_seed(seed)
    sae = MatryoshkaSAE(d_in, d_sae, k, (8, 16, 24), hook_name="blocks.3.hook_resid_post")
    sae.reset_parameters(g)
    with torch.no_grad():
        sae.b_enc_F.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec_D.copy_(torch.randn(d_in, generator=g))
        sae.threshold.fill_(0.35)
    return sae


def test_roundtrip_ours(tmp_path):
    sae = _trained_like_sae()
    save_sae(sae, tmp_path / "sae", extra={"norm_factor": 2.5})
    back = load_sae(tmp_path / "sae")
    assert (back.d_in, back.d_sae, back.k) == (12, 48, 4)
    assert back.group_sizes == (8, 16, 24) and back.hook_name == "blocks.3.hook_resid_post"
    x = torch.randn(64, 12) * 3
    torch.testing.assert_close(back.encode(x), sae.encode(x))
    torch.testing.assert_close(back(x), sae(x))
    meta = json.loads((tmp_path / "sae" / "workbench_sae.json").read_text())
    assert meta["norm_factor"] == 2.5
    seq = x.view(4, 16, 12)  # [batch, positions, d_in] as in a forward hook
    torch.testing.assert_close(back.encode(seq), back.encode(x).view(4, 16, 48))
    torch.testing.assert_close(back(seq), back(x).view(4, 16, 12))


def test_saelens_loads_ours_with_same_activations(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    sae = _trained_like_sae()
    save_sae(sae, tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    assert type(theirs).__name__ == "JumpReLUSAE"
    assert theirs.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    x = torch.randn(256, 12) * 3
    ours = sae.encode(x)
    assert (ours > 0).float().sum(1).mean() > 1  # the comparison is not vacuous
    torch.testing.assert_close(theirs.encode(x), ours)
    torch.testing.assert_close(theirs.decode(theirs.encode(x)), sae(x))


def test_load_sae_saved_by_saelens(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    cfg = JumpReLUSAEConfig(d_in=10, d_sae=30)
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    theirs = JumpReLUSAE(cfg)
    with torch.no_grad():  # a non-unit decoder: load_sae folds the norms into the encoder
        for p in (theirs.W_enc, theirs.W_dec, theirs.b_enc, theirs.b_dec):
            p.copy_(torch.randn_like(p))
        theirs.threshold.copy_(torch.rand(30))
    theirs.save_model(tmp_path / "sl")
    ours = load_sae(tmp_path / "sl")
    assert ours.hook_name == "blocks.1.hook_resid_post"
    torch.testing.assert_close(ours.W_dec_FD.norm(dim=1), torch.ones(30))
    x = torch.randn(128, 10) * 2
    ref = sae_lens.SAE.load_from_disk(tmp_path / "sl")
    norms = ref.W_dec.norm(dim=1)
    torch.testing.assert_close(ours.encode(x), ref.encode(x) * norms, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


def test_load_dictionary_learning_matryoshka(tmp_path):
    state = write_dictionary_learning(tmp_path / "ef4")
    sae = load_sae(tmp_path / "ef4" / "ae.pt")
    assert (sae.d_in, sae.d_sae, sae.k, sae.group_sizes) == (16, 64, 6, (16, 48))
    from workbench.models.hooks import resid_post_name

    assert sae.hook_name == resid_post_name(15)
    x = torch.randn(100, 16)
    # dictionary_learning MatryoshkaBatchTopKSAE.encode(use_threshold=True), written out
    post = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
    expected = post * (post > state["threshold"])
    torch.testing.assert_close(sae.encode(x), expected)
    torch.testing.assert_close(sae(x), expected @ state["W_dec"] + state["b_dec"])


def test_bad_directories_name_the_problem(tmp_path):
    with pytest.raises(SAEFormatError, match="no SAE found"):
        (tmp_path / "empty").mkdir()
        load_sae(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cfg.json").write_text(json.dumps({"architecture": "topk", "d_in": 2, "d_sae": 4}))
    (bad / "sae_weights.safetensors").write_bytes(b"")
    with pytest.raises(SAEFormatError, match="architecture 'topk'"):
        load_sae(bad)
