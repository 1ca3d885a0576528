"""The OpenAI backend against a fake OpenAI-compatible server on 127.0.0.1
(:class:`tests.fixtures.fake_llm.FakeLLM`)."""

from __future__ import annotations

import time

import openai
import pytest

from tests.fixtures.fake_llm import FakeLLM
from workbench.label.backends import LabelError, LLMSettings, OpenAIBackend, PrivacyError
from workbench.label.prompts import Example


@pytest.fixture
def fake():
    server = FakeLLM()
    yield server
    server.close()


def backend(url: str, sleeps: list | None = None, **kw) -> OpenAIBackend:
    settings = LLMSettings(base_url=url, model="fake-model", timeout=5, backoff=0.5, **kw)
    sleeps = [] if sleeps is None else sleeps
    return OpenAIBackend(settings, sleep=sleeps.append)


TEXT = Example(1, "text", (" left", " chest", " pacemaker", " ."), (0.0, 0.0, 2.0, 0.0), 2, 2.0)
IMAGE = Example(2, "image", ("<image>",), (1.0,), 0, 1.0, "Pacemaker in place.", (0, 2))


def test_explain_prompt_and_parsing(fake):
    out = backend(fake.base_url).explain(7, [TEXT, IMAGE], max_act=2.0)
    assert out.text == "pacemaker"
    assert out.raw.startswith("The examples share a token.")
    (req,) = fake.requests
    assert req["path"] == "/v1/chat/completions" and req["model"] == "fake-model"
    assert req["temperature"] == 0.0
    system, user = req["messages"][0]["content"], req["messages"][1]["content"]
    assert "[EXPLANATION]:" in system
    assert "Feature 7" in user
    assert "Example 1: left chest <<pacemaker>> ." in user
    assert '("pacemaker", 10)' in user
    assert "Example 2: [image patch at row 0, column 2, activation 5/10]" in user
    assert "Report findings: Pacemaker in place." in user


def test_detection_request_and_logprobs(fake):
    tok = {"token": "1", "logprob": -0.1, "bytes": None}
    fake.logprobs = [
        {**tok, "top_logprobs": [tok, {"token": "0", "logprob": -2.4, "bytes": None}]},
        {"token": "0", "logprob": -0.2, "bytes": None, "top_logprobs": []},
    ]
    fake.script = ["[1, 0]"]
    plain = Example(3, "text", (" clear", " lungs"), (0.0, 0.0), 0, 0.0)
    out = backend(fake.base_url, logprobs=True).detect(7, "pacemaker", [TEXT, plain])
    assert out.predicted == [1, 0]
    assert out.probs[0] == pytest.approx(1 / (1 + 2.718281828 ** (-2.3)), rel=1e-4)
    assert out.probs[1] == 0.0
    req = fake.requests[0]
    assert req["logprobs"] is True and req["top_logprobs"] == 5
    assert "Explanation: pacemaker" in req["messages"][1]["content"]
    assert "<<" not in req["messages"][1]["content"]  # the judge sees no markers


def test_retries_on_server_errors_with_backoff(fake):
    fake.script = [500, 503, "[EXPLANATION]: effusion"]
    sleeps = []
    out = backend(fake.base_url, sleeps).explain(3, [TEXT], 2.0)
    assert out.text == "effusion"
    assert len(fake.requests) == 3
    assert sleeps == [0.5, 1.0]


def test_timeouts_are_retried(fake):
    def slow(body):
        time.sleep(1.0)
        return "[EXPLANATION]: too late"

    fake.script = [slow, "[EXPLANATION]: in time"]
    settings = LLMSettings(base_url=fake.base_url, model="m", timeout=0.3, backoff=0.0)
    assert OpenAIBackend(settings).explain(1, [TEXT], 2.0).text == "in time"
    assert len(fake.requests) == 2


def test_malformed_answers_are_retried_then_reported(fake):
    fake.script = ["no list here"] * 4
    sleeps = []
    with pytest.raises(LabelError, match=r"feature 11: detection: failed after 4 attempts"):
        backend(fake.base_url, sleeps).detect(11, "pacemaker", [TEXT])
    assert len(fake.requests) == 4 and sleeps == [0.5, 1.0, 2.0]


def test_client_errors_are_not_retried(fake):
    fake.script = [400]
    with pytest.raises(LabelError, match="feature 5: explanation: BadRequestError"):
        backend(fake.base_url).explain(5, [TEXT], 2.0)
    assert len(fake.requests) == 1


def test_connection_error_names_the_feature():
    closed = FakeLLM()
    url = closed.base_url
    closed.close()  # nothing listens there any more
    with pytest.raises(LabelError, match="feature 9: explanation: failed after 2 attempts") as err:
        backend(url, retries=1).explain(9, [TEXT], 2.0)
    assert isinstance(err.value.__cause__, openai.APIConnectionError)


def test_remote_endpoint_refused_before_any_client(monkeypatch):
    def no_client(*args, **kwargs):
        raise AssertionError("a client was created for a refused endpoint")

    monkeypatch.setattr(openai, "OpenAI", no_client)
    settings = LLMSettings(base_url="https://api.example.com/v1", model="m")
    with pytest.raises(PrivacyError, match="refusing to send study text to api.example.com"):
        OpenAIBackend(settings)


def test_remote_endpoint_allowed_explicitly():
    settings = LLMSettings(base_url="https://api.example.com/v1", model="m")
    b = OpenAIBackend(settings, allow_remote=True)
    assert b.method == "llm:m" and str(b.client.base_url).startswith("https://api.example.com")
