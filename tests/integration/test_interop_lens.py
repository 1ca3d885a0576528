"""TransformerLens sees what the workbench records: same residual stream, same weights.

A tiny Llama built from config is recorded by the real ``record`` stage at its first, middle
and last block; TransformerLens, built from the same weights by its own Llama conversion
(``HookedTransformer``) and by ``TransformerBridge``, gives the same
``blocks.L.hook_resid_post`` on the recorded tokens. MAIRA-2 cannot be hosted whole (the
tests below pin which step fails), but its language model can, fed with the merged
embeddings. TransformerLens' own ``pip install`` is refused and torch stays as installed.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.fixtures.interop_world import (
    N_LAYERS,
    record_store,
    study_rows,
    write_model,
    write_texts,
)
from workbench.interop import (
    InteropError,
    hooked_transformer,
    refuse_installs,
    residual_input,
    torch_install,
    transformer_bridge,
)
from workbench.models.registry import adapter_for
from workbench.models.tiny import tiny_llava, tiny_maira2, tiny_text_config, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("single_threaded")
ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"first": 0, "middle": (N_LAYERS - 1) // 2, "last": N_LAYERS - 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A local Llama directory whose path contains 'llama' (a TransformerLens trap) + stores."""
    root = tmp_path_factory.mktemp("interop")
    model = write_model(root / "tiny-llama")
    texts = write_texts(root / "texts.csv")
    stores = {L: record_store(root, model, texts, L, root / f"acts{L}") for L in LAYERS.values()}
    return model, stores


@pytest.fixture(scope="module")
def lenses(world):
    model, _ = world
    return {"hooked": hooked_transformer(model), "bridge": transformer_bridge(model)}


@pytest.mark.parametrize("which", ["hooked", "bridge"])
@pytest.mark.parametrize("where", list(LAYERS))
def test_recorded_resid_post_equals_transformer_lens(world, lenses, which, where):
    _, stores = world
    layer, tl = LAYERS[where], lenses[which]
    hook = f"blocks.{layer}.hook_resid_post"
    studies = study_rows(stores[layer])
    assert len(studies) == 4
    for ids, recorded in studies.values():
        _, cache = tl.run_with_cache(ids[None], names_filter=[hook])
        theirs = cache[hook][0]
        assert theirs.shape == recorded.shape
        assert recorded.abs().max() > 1e-2  # not a comparison of zeros
        torch.testing.assert_close(theirs, recorded, rtol=1e-4, atol=1e-5)


def test_hooked_transformer_keeps_the_model_unprocessed(world, lenses):
    """Same logits as the HF model: no LayerNorm folding or centring changed the outputs."""
    from transformers import AutoModelForCausalLM

    model, stores = world
    hf = AutoModelForCausalLM.from_pretrained(model).eval()
    ids, _ = next(iter(study_rows(stores[0]).values()))
    with torch.no_grad():
        expected = hf(ids[None]).logits
    torch.testing.assert_close(lenses["hooked"](ids[None]), expected, rtol=1e-4, atol=1e-4)
    assert lenses["hooked"].cfg.model_name == "tiny-llama"


def _study():
    image = Image.linear_gradient("L").resize((64, 64))
    return {"frontal": image, "indication": "Dyspnea.", "comparison": "None."}


@pytest.mark.parametrize("build", [tiny_maira2, tiny_llava], ids=["maira2", "llava"])
def test_language_model_of_a_vision_language_model_in_transformer_lens(build):
    """MAIRA-2 / LLaVA: the recorded residual (image tokens included) equals TransformerLens
    running the converted language model from the merged embeddings."""
    tok = tiny_tokenizer()
    adapter = adapter_for(build(tok, n_layers=N_LAYERS), tok, "tiny")
    inp = adapter.prepare(_study(), findings="The heart size is normal.")
    tl = hooked_transformer(adapter)
    x0 = residual_input(adapter.model, inp.model_inputs)
    n_image = sum(t["kind"] == "image" for t in inp.tokens)
    assert x0.shape == (1, len(inp.tokens), adapter.d_model) and n_image > 0
    _, cache = tl.run_with_cache(x0, start_at_layer=0)
    for layer in LAYERS.values():
        recorded = adapter.residual(inp, layer)
        theirs = cache[f"blocks.{layer}.hook_resid_post"][0]
        torch.testing.assert_close(theirs, recorded, rtol=1e-4, atol=1e-5)


def _saved(model, tok, path: Path):
    from transformers import AutoTokenizer

    model.save_pretrained(path)
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def test_which_step_fails_for_maira2_in_transformer_lens(tmp_path):
    """Pinned so that the docs stay true: when TransformerLens learns these, this fails."""
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens.model_bridge import TransformerBridge

    tok = tiny_tokenizer()
    maira, llava = tiny_maira2(tok), tiny_llava(tok)
    with refuse_installs() as attempts:
        for name, model in (("maira2", maira), ("llava", llava)):
            tok_disk = _saved(model, tok, tmp_path / name)
            # HookedTransformer: the config conversion has no branch for either architecture
            with pytest.raises(NotImplementedError, match="not currently supported"):
                loading.get_pretrained_model_config(str(tmp_path / name))
            expected = {
                "maira2": (ValueError, "Could not determine supported architecture"),
                "llava": (AttributeError, "'Dinov2Model' object has no attribute 'pre_layrnorm'"),
            }[name]
            with pytest.raises(expected[0], match=re.escape(expected[1])):
                TransformerBridge.boot_transformers(
                    str(tmp_path / name), hf_model=model, tokenizer=tok_disk, device="cpu"
                )
    assert attempts == []  # both fail before TransformerLens reaches its installer
    with pytest.raises(InteropError, match="Dinov2"):
        transformer_bridge(adapter_for(maira, tok, "maira"))


def _clip_llava(tok):
    """A LLaVA with a CLIP tower: TransformerBridge boots it, then looks for a processor."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=28, patch_size=14, projection_dim=32,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=tiny_text_config(len(tok), 1).to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        architectures=["LlavaForConditionalGeneration"],
    )
    return LlavaForConditionalGeneration(config).eval()


def _pinned_torch() -> str:
    match = re.search(r"torch==([\w.]+)", (ROOT / "Makefile").read_text())
    assert match, "the Makefile no longer pins torch"
    return match.group(1)


@pytest.mark.filterwarnings("ignore:Hook alias:UserWarning")  # CLIP tower hooks, not used
def test_transformer_lens_install_attempt_refused_and_torch_unchanged(tmp_path):
    """TransformerLens runs `pip install torchvision` for a multimodal model without a local
    processor; inside refuse_installs it is refused, and the installed torch is unchanged."""
    from transformer_lens.model_bridge import TransformerBridge

    before = torch_install()
    assert before.version == torch.__version__, "the imported torch is not the installed one"
    assert before.version.split("+")[0] == _pinned_torch(), "torch differs from the Makefile pin"
    tok = tiny_tokenizer()
    model = _clip_llava(tok)
    tok_disk = _saved(model, tok, tmp_path / "clip-llava")
    with refuse_installs() as attempts:
        TransformerBridge.boot_transformers(
            str(tmp_path / "clip-llava"), hf_model=model, tokenizer=tok_disk, device="cpu"
        )
    if importlib.util.find_spec("torchvision") is None:  # then TransformerLens tries pip
        assert attempts and "torchvision" in map(str, attempts[0])
    assert torch_install() == before


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(InteropError, match="tokenizer"):
        hooked_transformer(tiny_llava(tiny_tokenizer()))
    with pytest.raises(InteropError, match="expected a model directory"):
        hooked_transformer(42)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        hooked_transformer(tmp_path / "nowhere")
