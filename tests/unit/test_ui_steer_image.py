"""The Steering tab's site choice on the tiny run with its image-token run, no browser: at the
image tokens strength 0 is the baseline word for word and a large strength changes the
findings; the recorded block steers as before; a run without <run>/image-tokens is told what
to build."""

from __future__ import annotations

import shutil

import pytest

from tests.unit.test_ui_live import first_study, last
from workbench.ui import handlers_steer as hs
from workbench.ui import handlers_steer_image as si
from workbench.ui.context import open_context
from workbench.ui.live import Job, LiveModel

pytestmark = pytest.mark.usefixtures("single_threaded")
N_NEW = 12


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny run, its decoder drawn to read the image (tiny_run.write_model), and
    <run>/image-tokens recorded from its projector."""
    from workbench.models.tiny import single_thread
    from workbench.testing.tiny_run import build, build_image_tokens

    with single_thread():
        root = build(tmp_path_factory.mktemp("liveimg") / "run", n_studies=8, model=True,
                     decoder_gain=1.0)  # fmt: skip
        build_image_tokens(root)
    return root


@pytest.fixture(scope="module")
def live(run):
    return LiveModel(run)


def image_feature(ctx) -> int:
    """A live feature of the image-token SAE that maps to a concept (the tiny SAE's feature
    f reads coordinate f of the projector output)."""
    for _, f in hs.site_controls(ctx, si.IMAGE_SITE).choices:
        if si.image_plan(ctx, [f]).concept_of.get(f) in {"cardiomegaly", "atelectasis", "edema"}:
            return f
    raise AssertionError("no image-token feature with a concept")


def steer_image(ctx, live, feature: int, strength: float) -> tuple:
    return last(hs.updates(ctx, live, first_study(ctx), [feature], [strength], "all", "add",
                           N_NEW, None, si.IMAGE_SITE))  # fmt: skip


def test_the_image_site_is_the_default_and_lists_the_image_token_sae(ctx, run):
    options = si.site_options(run)
    assert options == si.SiteOptions(si.IMAGE_SITE, True, None)
    controls = hs.site_controls(ctx, si.IMAGE_SITE)
    assert not controls.block_controls and "x adjusted map" in controls.strength_label
    assert "vision.hook_projector_out" in controls.note
    # the image-token SAE's 16 features (8 live) are listed, labelled from its own analysis
    assert controls.choices and all(0 <= f < 16 for _, f in controls.choices)
    block = hs.site_controls(ctx, si.BLOCK_SITE)
    assert block.block_controls and block.choices == hs.feature_choices(ctx)
    assert "x max act" in block.strength_label and "hook_resid_post" in block.note


def test_strength_zero_is_the_baseline_and_a_large_strength_changes_it(ctx, live):
    f = image_feature(ctx)
    progress, base, steered, verdicts, cache = steer_image(ctx, live, f, 0.0)
    assert progress == "" and "same as the baseline" in steered and "<ins" not in steered
    progress, base2, steered2, _, cache2 = steer_image(ctx, live, f, 50.0)
    assert progress == "" and cache2["text"] == cache["text"]  # the same unsteered baseline
    assert "<ins" in steered2 and "same as the baseline" not in steered2
    # the texts themselves: strength 0 adds exactly nothing to the image tokens
    plan = si.image_plan(ctx, [f])
    record = hs.study_input(ctx, live, first_study(ctx))
    zero = si.image_work(live, record, {f: 0.0}, plan, N_NEW, None)
    out = Job(live, zero).start().wait(60).result
    assert out.steered_text == out.baseline_text == cache["text"]
    strong = si.image_work(live, record, {f: 50.0}, plan, N_NEW, out.baseline_text)
    assert Job(live, strong).start().wait(60).result.steered_text != out.baseline_text


def test_the_recorded_block_site_steers_as_before(ctx, live):
    sid = first_study(ctx)
    got = last(hs.updates(ctx, live, sid, [0], [15.0], "all", "add", N_NEW, None, si.BLOCK_SITE))
    default = last(hs.updates(ctx, live, sid, [0], [15.0], "all", "add", N_NEW, None))
    assert got == default and "<ins" in got[2]
    req = hs.request(sid, [0], [15.0], "all", "add", N_NEW)
    work = hs.steer_work(hs.study_input(ctx, live, sid), req, hs.typical(ctx, [0]), None)
    out = Job(live, work).start().wait(60).result
    assert got[1:4] == tuple(hs.result_view(out)) and got[4]["text"] == out.baseline_text


def test_a_feature_without_a_map_is_a_message(ctx, live):
    msg = steer_image(ctx, live, 99, 1.0)[0]  # the image-token SAE has 16 features
    assert "Feature 99 of the image-token SAE has no concept" in msg


def test_a_run_without_image_tokens_is_told_how_to_build_them(run, tmp_path):
    bare = tmp_path / "run"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("image-tokens"))
    options = si.site_options(bare)
    assert options.value == si.BLOCK_SITE and not options.image_available
    nested = str(bare / "image-tokens")
    assert nested in options.problem and "python -m workbench demo" in options.problem
    assert "--hook vision.hook_projector_out --image-tokens all" in options.problem
    ctx = open_context(bare)
    try:
        controls = hs.site_controls(ctx, si.IMAGE_SITE)  # falls back to the recorded block
        assert controls.block_controls and nested in controls.note
        msg = last(hs.updates(ctx, LiveModel(bare), first_study(ctx), [0], [1.0], "all", "add",
                              4, None, si.IMAGE_SITE))  # fmt: skip
    finally:
        ctx.close()
    assert nested in msg[0] and "image-token SAE" in msg[0] and msg[1:] == (None,) * 4
