"""The LLM explainer/judge of ``label``: any OpenAI-compatible chat server, kept private.

:class:`OpenAIBackend` talks to any OpenAI-compatible chat server (``transformers serve``,
vLLM, llama.cpp, Ollama, TGI, or a hosted API) through the ``openai`` client.

Privacy: study text leaves the machine only when the user says so. A loopback ``base_url`` is
allowed; any other host needs ``allow_remote=True`` and is refused *before* a client exists
(:func:`check_endpoint`). The HTTP client of a local endpoint ignores the environment
(``trust_env=False``: ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` would otherwise reroute every
prompt through a proxy), and no client follows redirects (a local server must not be able to
forward a prompt elsewhere). Environment proxies are used only for a remote endpoint, i.e.
under the same explicit opt-in.

Robustness: connection errors, timeouts, 408/409/429/5xx, a 200 reply that is not a chat
completion (HTML, broken JSON) and unreadable answers are retried with exponential backoff; a
``Retry-After`` header (seconds, milliseconds or an HTTP date) replaces the backoff, capped at
``retry_after_cap``. Then a :class:`LabelError` names the feature and the stage. Labels pass
:func:`workbench.label.text.clean_label`; rejected ones are retried and counted in ``stats``.

The offline rule-based backend lives in :mod:`workbench.label.offline`.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from workbench.label import prompts
from workbench.label.prompts import Example, MalformedAnswerError
from workbench.label.text import clean_label


class LabelError(RuntimeError):
    """Labelling cannot go on (the message names the feature and the cause)."""


class PrivacyError(LabelError):
    """A request would send study text to a non-local server without ``--allow-remote``."""


class Explanation(NamedTuple):
    text: str
    raw: str | None
    """The full answer (LLM) or None."""


class Judgement(NamedTuple):
    predicted: list[int]
    probs: list[float] | None


class Backend(Protocol):
    """An explainer and judge; ``stats`` counts retries, rejected labels and the like."""

    method: str
    model: str | None
    stats: Counter[str]

    def explain(
        self, feature: int, examples: list[Example], max_act: float, hint=None
    ) -> Explanation: ...

    def detect(self, feature: int, explanation: str, examples: list[Example]) -> Judgement: ...

    def fuzz(self, feature: int, explanation: str, examples: list[Example]) -> Judgement: ...

    def simulate(self, feature: int, explanation: str, example: Example) -> list[int]: ...


def is_local(base_url: str) -> bool:
    """True when ``base_url`` names this machine (loopback address or ``localhost``)."""
    host = urlsplit(base_url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(base_url: str, allow_remote: bool) -> None:
    """Refuse a malformed URL, and a non-local one unless the user allowed remote servers."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LabelError(f"base_url {base_url!r} is not an http(s) URL")
    if not allow_remote and not is_local(base_url):
        raise PrivacyError(
            f"refusing to send study text to {parts.hostname}: base_url {base_url} is not on "
            "this machine. Report text is patient data; pass --allow-remote only if you are "
            "permitted to share it with that server (e.g. a data-use agreement covers it)."
        )


@dataclass
class LLMSettings:
    """Connection and sampling settings of :class:`OpenAIBackend`."""

    base_url: str
    model: str
    api_key: str = "local"
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 2.0
    temperature: float = 0.0
    max_tokens: int = 600
    logprobs: bool = False
    retry_after_cap: float = 60.0
    """Longest wait honoured from a server's Retry-After header (seconds)."""


def _retryable(err: Exception) -> bool:
    import openai

    if isinstance(err, (MalformedAnswerError, openai.APIConnectionError)):
        return True  # APITimeoutError is an APIConnectionError
    if isinstance(err, (ValueError, openai.APIResponseValidationError)):
        return True  # a 200 whose body is not JSON (json.JSONDecodeError is a ValueError)
    return isinstance(err, openai.APIStatusError) and (
        err.status_code in (408, 409, 429) or err.status_code >= 500
    )


def retry_after(err: Exception, now: datetime | None = None) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms``, ``retry-after`` in seconds or as
    an HTTP date), or None when it did not say."""
    headers = getattr(getattr(err, "response", None), "headers", None) or {}
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        if when is not None and when.tzinfo is not None:
            now = now or datetime.now(UTC)
            return max(0.0, (when - now).total_seconds())
    return None


def http_client(base_url: str, timeout: float):
    """The HTTP client for ``base_url``: environment proxies only for a remote endpoint
    (which ``check_endpoint`` allowed explicitly), never redirects."""
    import openai

    return openai.DefaultHttpxClient(
        trust_env=not is_local(base_url), follow_redirects=False, timeout=timeout
    )


class OpenAIBackend:
    """Explainer and judge served by an OpenAI-compatible chat-completions endpoint."""

    def __init__(self, settings: LLMSettings, allow_remote: bool = False, sleep=time.sleep):
        check_endpoint(settings.base_url, allow_remote)
        from openai import OpenAI

        self.settings = settings
        self.method = f"llm:{settings.model}"
        self.model = settings.model
        self.stats: Counter[str] = Counter()
        self._sleep = sleep
        # retries are ours (logged, with the feature in the error), not the client's
        self.client = OpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key,
            timeout=settings.timeout,
            max_retries=0,
            http_client=http_client(settings.base_url, settings.timeout),
        )

    def _wait(self, err: Exception, attempt: int) -> float:
        """Seconds before the next attempt: the server's Retry-After (capped), else backoff."""
        asked = retry_after(err)
        if asked is None:
            return self.settings.backoff * 2**attempt
        self.stats["retry_after"] += 1
        return min(asked, self.settings.retry_after_cap)

    def _complete(self, messages: list[dict], extra: dict):
        """One chat completion; a reply that is not one raises MalformedAnswerError."""
        s = self.settings
        response = self.client.chat.completions.create(
            model=s.model,
            messages=messages,
            temperature=s.temperature,
            max_tokens=s.max_tokens,
            **extra,
        )
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            kind = type(response).__name__
            raise MalformedAnswerError(
                f"the reply is not a chat completion ({kind} without choices)"
            )
        return choices[0]

    def _ask(self, messages: list[dict], what: str, parse: Callable[[Any], Any], **extra) -> Any:
        """One chat completion parsed by ``parse``, retried on transient errors."""
        import openai

        s, last = self.settings, None
        for attempt in range(s.retries + 1):
            try:
                return parse(self._complete(messages, extra))
            except (MalformedAnswerError, openai.OpenAIError, json.JSONDecodeError) as err:
                if not _retryable(err):
                    raise LabelError(f"{what}: {type(err).__name__}: {err}") from err
                last = err
            if attempt < s.retries:
                self.stats["retries"] += 1
                self._sleep(self._wait(last, attempt))
        raise LabelError(
            f"{what}: failed after {s.retries + 1} attempts: {type(last).__name__}: {last}"
        ) from last

    def explain(
        self, feature: int, examples: list[Example], max_act: float, hint=None
    ) -> Explanation:
        """The LLM's label from the examples alone (``hint``, the analysis' concept, is not
        shown: the label stays an independent reading of the examples)."""
        messages = prompts.explain_messages(feature, examples, max_act)

        def parse(choice) -> Explanation:
            raw = choice.message.content
            try:
                return Explanation(clean_label(prompts.parse_explanation(raw)), raw)
            except MalformedAnswerError:
                self.stats["rejected_labels"] += 1
                raise

        return self._ask(messages, f"feature {feature}: explanation", parse)

    def _judge(self, messages: list[dict], n: int, what: str) -> Judgement:
        def parse(choice) -> Judgement:
            predicted = prompts.parse_detection(choice.message.content, n)
            content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
            return Judgement(predicted, prompts.detection_probabilities(content, n))

        extra = {"logprobs": True, "top_logprobs": 5} if self.settings.logprobs else {}
        return self._ask(messages, what, parse, **extra)

    def detect(self, feature: int, explanation: str, examples: list[Example]) -> Judgement:
        messages = prompts.detect_messages(explanation, examples)
        return self._judge(messages, len(examples), f"feature {feature}: detection")

    def fuzz(self, feature: int, explanation: str, examples: list[Example]) -> Judgement:
        messages = prompts.fuzz_messages(explanation, examples)
        return self._judge(messages, len(examples), f"feature {feature}: fuzzing")

    def simulate(self, feature: int, explanation: str, example: Example) -> list[int]:
        """Predicted activation level (0-10) per token of a text example (simulation)."""
        messages = prompts.simulate_messages(explanation, example)

        def parse(choice) -> list[int]:
            return prompts.parse_simulation(choice.message.content, example.tokens)

        return self._ask(messages, f"feature {feature}: simulation", parse)
