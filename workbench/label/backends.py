"""Explainer/judge backends of ``label``: an OpenAI-compatible LLM, or offline rules.

:class:`OpenAIBackend` talks to any OpenAI-compatible chat server (vLLM, llama.cpp, Ollama,
TGI, or a hosted API) through the ``openai`` client. Study text leaves the machine only when
the user says so: a loopback ``base_url`` is allowed, any other host needs
``allow_remote=True`` and is refused *before* a client exists (:func:`check_endpoint`).
Transient failures (connection errors, timeouts, 408/409/429/5xx, unreadable answers) are
retried with exponential backoff; then a :class:`LabelError` names the feature.

:class:`OfflineBackend` needs no server: it explains a feature by the tokens it marks and the
concepts the rule-based report labeller (:mod:`workbench.cxr.labeller`) finds in its
examples, and judges detection examples by those same tokens and concepts. It is weaker than
an LLM but runs the whole explain -> detect -> score loop in CI and on air-gapped machines.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from workbench.cxr.findings import CHEXPERT_LABELS
from workbench.cxr.labeller.context import PHANTOM_CONCEPTS, label_report
from workbench.label import prompts
from workbench.label.prompts import Example, MalformedAnswerError


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
    method: str
    model: str | None

    def explain(self, feature: int, examples: list[Example], max_act: float) -> Explanation: ...

    def detect(self, feature: int, explanation: str, examples: list[Example]) -> Judgement: ...

    def fuzz(self, feature: int, explanation: str, examples: list[Example]) -> Judgement: ...


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


def _retryable(err: Exception) -> bool:
    import openai

    if isinstance(err, (MalformedAnswerError, openai.APIConnectionError)):
        return True  # APITimeoutError is an APIConnectionError
    return isinstance(err, openai.APIStatusError) and (
        err.status_code in (408, 409, 429) or err.status_code >= 500
    )


class OpenAIBackend:
    """Explainer and judge served by an OpenAI-compatible chat-completions endpoint."""

    def __init__(self, settings: LLMSettings, allow_remote: bool = False, sleep=time.sleep):
        check_endpoint(settings.base_url, allow_remote)
        from openai import OpenAI

        self.settings = settings
        self.method = f"llm:{settings.model}"
        self.model = settings.model
        self._sleep = sleep
        # retries are ours (logged, with the feature in the error), not the client's
        self.client = OpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key,
            timeout=settings.timeout,
            max_retries=0,
        )

    def _ask(self, messages: list[dict], what: str, parse: Callable[[Any], Any], **extra) -> Any:
        """One chat completion parsed by ``parse``, retried on transient errors."""
        import openai

        s, last = self.settings, None
        for attempt in range(s.retries + 1):
            try:
                response = self.client.chat.completions.create(
                    model=s.model,
                    messages=messages,
                    temperature=s.temperature,
                    max_tokens=s.max_tokens,
                    **extra,
                )
                if not response.choices:
                    raise MalformedAnswerError("no choices in the response")
                return parse(response.choices[0])
            except (MalformedAnswerError, openai.OpenAIError) as err:
                if not _retryable(err):
                    raise LabelError(f"{what}: {type(err).__name__}: {err}") from err
                last = err
            if attempt < s.retries:
                self._sleep(s.backoff * 2**attempt)
        raise LabelError(
            f"{what}: failed after {s.retries + 1} attempts: {type(last).__name__}: {last}"
        ) from last

    def explain(self, feature: int, examples: list[Example], max_act: float) -> Explanation:
        messages = prompts.explain_messages(feature, examples, max_act)

        def parse(choice) -> Explanation:
            raw = choice.message.content
            return Explanation(prompts.parse_explanation(raw), raw)

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


def canonical(concept: str) -> str:
    """One spelling per concept: lower case, spaces for underscores ('Pleural Effusion',
    'pleural_effusion' -> 'pleural effusion')."""
    return concept.replace("_", " ").lower()


# Concept names the offline judge recognises in a label, in canonical spelling.
_VOCAB = frozenset(canonical(c) for c in PHANTOM_CONCEPTS + CHEXPERT_LABELS) - {"no finding"}
_QUOTED = re.compile(r'"([^"]+)"')


@lru_cache(maxsize=65536)
def _positive_concepts(text: str) -> frozenset[str]:
    """Canonical concepts (phantom and CheXpert) the report labeller finds positive in ``text``.

    Cached: image examples of one study share its findings, and every feature meets them.
    """
    labels = label_report(text)
    pos = [c for c, v in labels.concepts.items() if v == 1]
    pos += [c for c, v in labels.chexpert.items() if v == 1 and c != "No Finding"]
    return frozenset(canonical(c) for c in pos)


def _concepts_of(ex: Example) -> frozenset[str]:
    """What an example is about: concepts in its text, or an image study's findings/labels."""
    if ex.kind == "text":
        return _positive_concepts("".join(ex.tokens))
    if ex.findings:
        return _positive_concepts(ex.findings)
    return frozenset(canonical(c) for c in ex.labels)


class OfflineBackend:
    """Rule-based explainer and judge (see module docstring); deterministic, no network."""

    method = "offline"
    model = "rules"

    def explain(self, feature: int, examples: list[Example], max_act: float) -> Explanation:
        tokens: Counter[str] = Counter()
        concepts: Counter[str] = Counter()
        for ex in examples:
            if ex.kind == "text":
                tokens.update(
                    {t.strip().lower() for t, a in zip(ex.tokens, ex.acts) if a > 0 and t.strip()}
                )
            concepts.update(_concepts_of(ex))
        n_image = sum(ex.kind == "image" for ex in examples)
        common = [c for c, k in concepts.most_common(2) if k >= max(1, len(examples) / 2)]
        parts = []
        if tokens:
            parts.append("report tokens " + ", ".join(f'"{t}"' for t, _ in tokens.most_common(3)))
        if n_image:
            parts.append("image patches")
        about = " and ".join(common)
        text = " and ".join(parts) or "no readable examples"
        return Explanation(text + (f" in studies with {about}" if about else ""), None)

    def detect(self, feature: int, explanation: str, examples: list[Example]) -> Judgement:
        lower = canonical(explanation)
        named = {c for c in _VOCAB if re.search(rf"\b{re.escape(c)}\b", lower)}
        quoted = [q.strip().lower() for q in _QUOTED.findall(explanation) if q.strip()]
        predicted = []
        for ex in examples:
            text = "".join(ex.tokens).lower() if ex.kind == "text" else ""
            hit = any(re.search(rf"\b{re.escape(q)}\b", text) for q in quoted)
            predicted.append(int(hit or bool(named & _concepts_of(ex))))
        return Judgement(predicted, None)

    def fuzz(self, feature: int, explanation: str, examples: list[Example]) -> Judgement:
        """1 where a marked token is a word of the label's quoted tokens or named concepts."""
        lower = canonical(explanation)
        words = {w for c in _VOCAB if re.search(rf"\b{re.escape(c)}\b", lower) for w in c.split()}
        words |= {w for q in _QUOTED.findall(explanation) for w in q.lower().split()}
        predicted = []
        for ex in examples:
            marked = {t.strip().lower() for t, a in zip(ex.tokens, ex.acts) if a > 0}
            predicted.append(int(bool(marked & words)))
        return Judgement(predicted, None)
