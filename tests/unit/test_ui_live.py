"""The live tabs' handlers (Steering, Try a study) on the tiny run with a tiny model, no browser."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.unit.test_images import write_dicom
from workbench.steer.intervene import SteerOutput
from workbench.ui import handlers_steer as hs
from workbench.ui import handlers_try as ht
from workbench.ui import steer_sweep as sw
from workbench.ui.context import open_context
from workbench.ui.live import Job, LiveModel, model_problem, progress_html, stream

pytestmark = pytest.mark.usefixtures("single_threaded")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from workbench.models.tiny import single_thread
    from workbench.testing.tiny_run import build

    with single_thread():
        return build(tmp_path_factory.mktemp("live") / "run", n_studies=8, model=True)


@pytest.fixture(scope="module")
def live(run):
    return LiveModel(run)


def last(updates) -> tuple:
    out = list(updates)
    assert out
    return out[-1]


def first_study(ctx) -> int:
    return ctx.rows("SELECT min(study_id) AS s FROM studies")[0]["s"]


def test_the_model_is_loaded_on_first_use_only(run, tmp_path):
    fresh = LiveModel(run)
    assert fresh.problem() is None and not fresh.loaded
    adapter, sae = fresh.get()
    assert fresh.loaded and adapter.d_model == sae.d_in == 8
    assert fresh.get()[0] is adapter
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("model"))
    assert "has no model" in model_problem(bare)
    ctx = open_context(bare)
    (msg, *rest) = last(hs.updates(ctx, LiveModel(bare), 1, [0], [1.0], "all", "add", 4, None))
    assert "has no model" in msg and rest == [None] * 4
    ctx.close()


def test_steering_changes_the_findings(ctx, live):
    sid = first_study(ctx)
    feats, strengths = [0, None, "3 · ramp", None], [15.0, 0.0, -4.0, 0.0]
    progress, base, steered, verdicts, cache = last(
        hs.updates(ctx, live, sid, feats, strengths, "all", "add", 12, None)
    )
    assert progress == "" and "Baseline findings" in base and "Steered findings" in steered
    assert "<ins" in steered  # the changed words are marked
    assert cache["key"] == [sid, 12] and isinstance(cache["text"], str)
    assert "report labeller" in verdicts
    # same study and length: the cached baseline is reused, only the steered text is new
    again = last(hs.updates(ctx, live, sid, feats, strengths, "image", "clamp", 12, cache))
    assert again[4]["text"] == cache["text"]


def test_steer_work_reuses_a_given_baseline(ctx, live):
    sid = first_study(ctx)
    req = hs.request(sid, [0], [0.0], "generated", "add", 5)
    work = hs.steer_work(hs.study_input(ctx, live, sid), req, hs.typical(ctx, [0]), "given")
    out = Job(live, work).start().wait(60).result
    assert out.baseline_text == "given" and isinstance(out.steered_text, str)


def test_bad_requests_become_messages(ctx, live):
    assert hs.parse_feature("12 · pacemaker") == 12 and hs.parse_feature("#7") == 7
    assert hs.parse_feature("pacemaker") is None and hs.parse_feature(3.0) == 3
    for args, text in (
        ((None, [0], [1.0]), "Pick a study"),
        ((1, [None], [1.0]), "Add at least one feature"),
        ((1, [99], [1.0]), "Feature 99 does not exist"),
    ):
        with pytest.raises(ValueError, match=text):
            hs.request(*args, "all", "add", 10, d_sae=16)
    msg = last(hs.updates(ctx, live, first_study(ctx), [0], [1.0], "tokens", "add", 4, None))[0]
    assert "is not one of" in msg


def test_word_diff_and_verdicts():
    a, b = hs.word_diff(
        "No pleural effusion. Heart normal.", "Small pleural effusion. Heart normal."
    )
    assert "<del" in a and "No" in a and "<ins" in b and "Small" in b
    table = hs.verdicts("No pleural effusion.", "Small pleural effusion.")
    assert "pleural effusion" in table and "flipped" in table
    view = hs.result_view(SteerOutput("Same.", "Same."))
    assert "same as the baseline" in view.steered


def _scripted_rows(method: str = "sae") -> list[dict]:
    from tests.unit.test_steering_eval import ScriptedAdapter, arm, evaluator
    from tests.unit.test_steering_eval import cases as scripted_cases

    features = (0,) if method == "sae" else ()
    return evaluator(ScriptedAdapter()).run_arm(
        arm(method, features=features), scripted_cases(), set()
    )


def test_feature_choices_and_sweep(ctx, run, tmp_path):
    from workbench.steer.evaluate import write_rows

    choices = hs.feature_choices(ctx)
    assert choices and choices[0][1] == 0 and choices[0][0].startswith("0 · ")
    assert sw.sweep_rows(ctx) == []
    hook = sw.recorded_hook(ctx)
    assert hook and hook.endswith("hook_resid_post")
    assert f"<code>{hook}</code>" in hs.site_controls(ctx, "recorded block").note
    assert "No stored steering sweep" in sw.sweep_chart(sw.sweep_rows(ctx), 0)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    write_rows(copy, _scripted_rows(), replace=False)
    other = open_context(copy)
    rows = sw.sweep_rows(other)
    other.close()
    assert {r["site"] for r in rows} == {"layer"}
    chart = sw.sweep_chart(rows, 0)
    assert "<svg" in chart and "sae pacemaker add +2" in chart and "recorded block" in chart
    assert "No stored sweep at the recorded block for feature 5" in sw.sweep_chart(rows, 5)


def test_the_sweep_is_found_under_the_image_token_run(run, tmp_path):
    """steer's default site writes to <run>/image-tokens only: the panel must show it."""
    from workbench.run import RunLayout
    from workbench.steer.evaluate import write_rows

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    write_rows(RunLayout(copy).image_tokens, _scripted_rows() + _scripted_rows("dim"), False)
    other = open_context(copy)
    assert other.rows("SELECT count(*) AS n FROM steering_results") == [{"n": 0}]  # main: none
    rows = sw.sweep_rows(other)
    other.close()
    assert {r["site"] for r in rows} == {"image"} and {r["method"] for r in rows} == {"sae", "dim"}
    for feature in (None, 0, 7):  # the image site's SAE is another SAE: never filtered out
        chart = sw.sweep_chart(rows, feature)
        assert "<svg" in chart and "site: image embeddings" in chart
        assert "sae pacemaker add +2" in chart and "dim pacemaker add +2" in chart
        assert "<td>image embeddings</td>" in chart and "No stored steering sweep" not in chart


def test_jobs_run_one_at_a_time_and_cancel(live):
    live.get()
    release, seen = threading.Event(), []

    def blocking(adapter, sae, monitor_for):
        release.wait(10)
        return "first"

    def counting(adapter, sae, monitor_for):
        monitor = monitor_for("counting", 1000)
        for _ in range(1000):
            monitor(None)
            seen.append(monitor.steps)
            time.sleep(0.005)
        return "ran to the end"

    first = Job(live, blocking).start()
    second = Job(live, counting).start()
    time.sleep(0.6)
    assert second.progress.stage == "waiting for the model" and not seen
    release.set()
    assert first.wait(10).result == "first"
    while not seen:
        time.sleep(0.01)
    assert "counting" in progress_html(second.progress)
    second.cancel.set()
    assert second.wait(10).error == "Cancelled." and len(seen) < 1000
    gen = stream(live, counting, lambda p: [p.stage], poll_s=0.05)
    next(gen)
    gen.close()  # what Gradio does on Stop: the job is cancelled and frees the model
    assert live.busy.acquire(timeout=10)
    live.busy.release()


def test_uploads_are_read_into_memory_and_deleted(tmp_path, run):
    frontal = next((run / "phantom" / "files").rglob("*.jpg"))
    copy = tmp_path / "upload.jpg"
    shutil.copy(frontal, copy)
    image, note = ht.upload(str(copy), "frontal")
    assert image.mode == "L" and "frontal image read" in note and not copy.exists()
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    image, note = ht.upload(str(bad), "frontal")
    assert image is None and "cannot be read" in note and str(tmp_path) not in note
    dcm = tmp_path / "scan.dcm"
    write_dicom(dcm, (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16), bits_stored=12)
    image, note = ht.upload(str(dcm), "lateral")
    assert image.size == (64, 64) and not dcm.exists()
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (ht.MAX_UPLOAD_BYTES + 1))
    assert "the limit is 20 MB" in ht.upload(str(big), "frontal")[1]
    assert ht.upload(None, "lateral") == (None, "")


def test_try_a_study(ctx, live, run):
    frontal = Image.open(next((run / "phantom" / "files").rglob("*.jpg"))).convert("L")
    progress, findings, options, heat, result = last(
        ht.updates(ctx, live, frontal, None, "Cough", 10)
    )
    assert progress == "" and "Findings" in findings and "generated token" in findings
    assert result.grid == (4, 4) and len(result.tokens) >= 1
    choices, selected = options
    assert selected == choices[0][1] and selected in result.patches
    assert "data:image/jpeg;base64," in heat and f"feature {selected}" in heat
    assert 'data-feature="' in findings  # links to the feature pages
    assert "no feature fires" in ht.heatmap_html(result, 999)
    assert "Upload a frontal image" in last(ht.updates(ctx, live, None, None, "", 5))[0]
