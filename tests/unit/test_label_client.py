"""The LLM client under attack: proxies, redirects, broken replies, rate limits, bad labels.

Every test runs against local servers only: :class:`tests.fixtures.fake_llm.FakeLLM` and a bare
TCP listener that records who connects to it (a stand-in for a proxy or a foreign host).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from tests.fixtures.fake_llm import PROXY_VARS, FakeLLM, Listener, Raw
from workbench.label.backends import LabelError, LLMSettings, OpenAIBackend, retry_after
from workbench.label.prompts import Example, MalformedAnswerError
from workbench.label.text import clean_label

TEXT = Example(1, "text", (" left", " chest", " pacemaker", " ."), (0.0, 0.0, 2.0, 0.0), 2, 2.0)


@pytest.fixture
def fake():
    server = FakeLLM()
    yield server
    server.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def backend(url: str, sleeps: list | None = None, allow_remote=False, **kw) -> OpenAIBackend:
    settings = LLMSettings(base_url=url, model="fake-model", timeout=5, backoff=0.5, **kw)
    sleep = (lambda s: None) if sleeps is None else sleeps.append
    return OpenAIBackend(settings, allow_remote=allow_remote, sleep=sleep)


def test_proxy_variables_do_not_reroute_local_traffic(fake, listener, monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.setenv(var, listener.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    out = backend(fake.base_url).explain(3, [TEXT], 2.0)
    assert out.text == "pacemaker" and len(fake.requests) == 1
    assert listener.connections == []  # the proxy saw nothing: no prompt left this route


def test_a_remote_endpoint_uses_the_proxy_only_with_the_opt_in(fake, monkeypatch):
    # FakeLLM plays the proxy: a proxied request carries the absolute URL in its request line
    monkeypatch.setenv("HTTP_PROXY", fake.base_url.rsplit("/v1", 1)[0])
    remote = "http://llm.example.invalid/v1"
    out = backend(remote, allow_remote=True).explain(3, [TEXT], 2.0)
    assert out.text == "pacemaker"
    assert fake.requests[0]["path"] == "http://llm.example.invalid/v1/chat/completions"


def test_redirects_are_not_followed(fake, listener):
    target = f"{listener.url}/v1/chat/completions"
    fake.script = [Raw(307, b"", (("Location", target),))]
    with pytest.raises(LabelError, match="feature 2: explanation: .*307"):
        backend(fake.base_url).explain(2, [TEXT], 2.0)
    assert listener.connections == []


@pytest.mark.parametrize("ctype", ["application/json", "text/html"])
def test_a_200_that_is_not_json_is_retried(fake, ctype):
    html = Raw(200, b"<html>proxy error page</html>", (("Content-Type", ctype),))
    fake.script = [html, "[EXPLANATION]: pacemaker"]
    sleeps = []
    assert backend(fake.base_url, sleeps).explain(4, [TEXT], 2.0).text == "pacemaker"
    assert len(fake.requests) == 2 and sleeps == [0.5]


def test_a_200_that_is_never_json_names_feature_and_stage(fake):
    fake.script = [Raw(200, b"not json at all")] * 3
    with pytest.raises(LabelError, match="feature 8: detection: failed after 3 attempts"):
        backend(fake.base_url, retries=2).detect(8, "pacemaker", [TEXT])


def test_retry_after_is_honoured_with_a_cap(fake):
    fake.script = [
        Raw(429, b'{"error": {"message": "slow down"}}', (("Retry-After", "3"),)),
        Raw(503, b'{"error": {}}', (("Retry-After", "3600"),)),
        Raw(429, b'{"error": {}}', (("retry-after-ms", "250"),)),
        "[EXPLANATION]: pacemaker",
    ]
    sleeps = []
    b = backend(fake.base_url, sleeps, retry_after_cap=20.0)
    assert b.explain(1, [TEXT], 2.0).text == "pacemaker"
    assert sleeps == [3.0, 20.0, 0.25]  # asked 3 s (not the 0.5 s backoff), 3600 s capped
    assert b.stats["retry_after"] == 3 and b.stats["retries"] == 3


def test_retry_after_as_an_http_date():
    class Err:
        class response:  # noqa: N801 (stands in for httpx's response)
            headers = {}

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    Err.response.headers = {"retry-after": format_datetime(now + timedelta(seconds=7), True)}
    assert retry_after(Err(), now=now) == pytest.approx(7.0)
    Err.response.headers = {"retry-after": "soon"}
    assert retry_after(Err(), now=now) is None
    Err.response.headers = {}
    assert retry_after(Err(), now=now) is None


def test_labels_are_cleaned_before_they_are_stored(fake):
    fake.script = ["[EXPLANATION]: pace\u202emaker\x07 \u2066leads\u2069\u200b\tin place"]
    assert backend(fake.base_url).explain(1, [TEXT], 2.0).text == "pacemaker leads in place"


def test_empty_and_huge_labels_are_rejected_and_counted(fake):
    fake.script = ["[EXPLANATION]: \u202e\u200b", "[EXPLANATION]: " + "x" * 5000, "\n\n"]
    fake.script += ["[EXPLANATION]: left pacemaker"]
    b = backend(fake.base_url)
    assert b.explain(1, [TEXT], 2.0).text == "left pacemaker"
    assert b.stats["rejected_labels"] == 3 and len(fake.requests) == 4
    fake.script = ["[EXPLANATION]: " + "y" * 5000] * 4
    with pytest.raises(LabelError, match="feature 6: explanation: failed after 4 .*5000 char"):
        b.explain(6, [TEXT], 2.0)
    assert b.stats["rejected_labels"] == 7


def test_clean_label_rules():
    assert clean_label("  a\u202eb\x00c\n d\u200b ") == "abc d"
    assert clean_label("caf\u0065\u0301") == "caf\u00e9"  # NFC
    for bad in ("", " \u2028 \u200f ", "z" * 401):
        with pytest.raises(MalformedAnswerError):
            clean_label(bad)


def test_simulation_request_and_parsing(fake):
    fake.script = ['Reasoning first.\n- "pacemaker": 9\nleft: 2']
    levels = backend(fake.base_url).simulate(5, "pacemaker", TEXT)
    assert levels == [2, 0, 9, 0]
    user = fake.requests[0]["messages"][1]["content"]
    assert "Explanation: pacemaker" in user and "Excerpt: left chest pacemaker ." in user
    assert "<<" not in user  # the simulator does not see the true activations
    fake.script = ["I cannot tell."] * 2
    with pytest.raises(LabelError, match="feature 5: simulation: failed after 2"):
        backend(fake.base_url, retries=1).simulate(5, "pacemaker", TEXT)
