"""Prompts of the auto-interpretation loop and the parsers of their answers.

Three prompts, after EleutherAI's delphi (Paulo et al. 2024, arXiv 2410.13928, sec. 3):

- *explain*: a feature's activating examples, activating tokens wrapped in ``<<...>>`` and
  their activations on a 0-10 integer scale (``floor(10 * a / max_act)``, the normalisation of
  OpenAI's automated-interpretability), answer's last line ``[EXPLANATION]: ...``;
- *detect* (detection scoring): the explanation and a shuffled mix of activating and
  non-activating examples shown without markers; the answer is a list of 0/1, one per example;
- *fuzz* (fuzzing): activating text examples with the true activating tokens marked, or the
  same number of marks moved to random silent tokens; the judge says which marks fit;
- *simulate* (simulation, OpenAI's automated-interpretability and delphi): the explanation and
  one unmarked text excerpt; the answer lists the words the feature would fire on with a 0-10
  level (``word: level`` lines, unlisted words 0), so per-token predictions can be correlated
  with the true activations.

Image-token examples cannot be shown to a text LLM, so they are summarised by the patch
position and the findings written in the study's report (its positive labels when it has
no report text). The wording lives in
``data/prompts/*.txt`` so a researcher can edit it without touching code.
"""

from __future__ import annotations

import math
import re
from functools import cache
from pathlib import Path
from typing import NamedTuple

from workbench.label.text import MalformedAnswerError, words

PROMPT_DIR = Path(__file__).resolve().parents[2] / "data" / "prompts"
_FINDINGS_CHARS = 600


class Example(NamedTuple):
    """One example shown to the explainer or the judge.

    ``kind`` is 'text' (a report/prompt context window) or 'image' (a patch of the study's
    image, described through its report). ``acts`` holds the feature's activation on each of
    ``tokens``; non-activating examples have ``activation == 0``.
    """

    study_id: int
    kind: str
    tokens: tuple[str, ...]
    acts: tuple[float, ...]
    center: int
    activation: float
    findings: str | None = None
    patch: tuple[int, int] | None = None
    labels: tuple[str, ...] = ()
    """Positive labels of the study (CheXpert / phantom), shown only when it has no findings."""
    row: int | None = None
    """Global token row of the example token (keeps held-out examples apart from shown ones)."""

    @property
    def active(self) -> bool:
        return self.activation > 0


@cache
def template(name: str) -> str:
    """The text of ``data/prompts/<name>.txt`` (error naming the file when missing)."""
    path = PROMPT_DIR / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt template missing")
    return path.read_text().strip()


def level(activation: float, max_act: float) -> int:
    """Activation on OpenAI's 0-10 integer scale relative to the feature's maximum."""
    if max_act <= 0 or not math.isfinite(activation):
        return 0
    return max(0, min(10, math.floor(10 * activation / max_act)))


def mark_tokens(tokens: tuple[str, ...], acts: tuple[float, ...], threshold: float) -> str:
    """Join tokens, wrapping each run of tokens with activation > ``threshold`` in ``<<>>``.

    Leading whitespace of the first token of a run stays outside the markers, so
    ``" pleural", " effusion"`` becomes ``" <<pleural effusion>>"``.
    """
    out, inside = [], False
    for tok, act in zip(tokens, acts, strict=True):
        hot = act > threshold
        if hot and not inside:
            body = tok.lstrip()
            out.append(tok[: len(tok) - len(body)] + "<<" + body)
        elif not hot and inside:
            out.append(">>" + tok)
        else:
            out.append(tok)
        inside = hot
    return "".join(out) + (">>" if inside else "")


def describe_study(ex: Example) -> str:
    """An image example's study in words: its FINDINGS, else its positive labels."""
    text = " ".join((ex.findings or "").split())
    if text:
        text = text if len(text) <= _FINDINGS_CHARS else text[:_FINDINGS_CHARS] + " ..."
        return f"Report findings: {text}"
    if ex.labels:
        return f"No report text; the study is labelled with: {', '.join(ex.labels)}"
    return "No report text and no positive labels for this study"


def render_for_explainer(ex: Example, max_act: float) -> str:
    """One explainer example: marked text and its strongest activations, or an image summary."""
    if ex.kind == "image":
        where = f"row {ex.patch[0]}, column {ex.patch[1]}" if ex.patch else "unknown position"
        return (
            f"[image patch at {where}, activation {level(ex.activation, max_act)}/10] "
            f"{describe_study(ex)}"
        )
    text = " ".join(mark_tokens(ex.tokens, ex.acts, 0.0).split())
    hot = sorted(((w.act, w.text) for w in words(ex.tokens, ex.acts) if w.act > 0), reverse=True)
    listed = ", ".join(f'("{t}", {level(a, max_act)})' for a, t in hot[:5])
    return f"{text}\nActivations: {listed}"


def render_for_judge(ex: Example) -> str:
    """One detection example: plain text (no markers) or the image's report findings."""
    if ex.kind == "image":
        return f"[chest radiograph] {describe_study(ex)}"
    return " ".join("".join(ex.tokens).split())


def explain_messages(feature: int, examples: list[Example], max_act: float) -> list[dict]:
    """Chat messages asking for an explanation of ``feature`` from its ``examples``."""
    body = "\n\n".join(
        f"Example {i}: {render_for_explainer(ex, max_act)}" for i, ex in enumerate(examples, 1)
    )
    return [
        {"role": "system", "content": template("explain_system")},
        {
            "role": "user",
            "content": template("explain_user").format(feature=feature, examples=body),
        },
    ]


def detect_messages(explanation: str, examples: list[Example]) -> list[dict]:
    """Chat messages asking which of ``examples`` the explanation predicts as active."""
    body = "\n".join(f"Example {i}: {render_for_judge(ex)}" for i, ex in enumerate(examples, 1))
    user = template("detect_user").format(explanation=explanation, examples=body, n=len(examples))
    return [
        {"role": "system", "content": template("detect_system")},
        {"role": "user", "content": user},
    ]


def fuzz_messages(explanation: str, examples: list[Example]) -> list[dict]:
    """Chat messages asking whether each example's ``<<marks>>`` fit the explanation (fuzzing)."""
    body = "\n".join(
        f"Example {i}: {' '.join(mark_tokens(ex.tokens, ex.acts, 0.0).split())}"
        for i, ex in enumerate(examples, 1)
    )
    user = template("fuzz_user").format(explanation=explanation, examples=body, n=len(examples))
    return [
        {"role": "system", "content": template("fuzz_system")},
        {"role": "user", "content": user},
    ]


def simulate_messages(explanation: str, ex: Example) -> list[dict]:
    """Chat messages asking on which words of ``ex`` the explained feature fires, and how much."""
    excerpt = " ".join("".join(ex.tokens).split())
    user = template("simulate_user").format(explanation=explanation, excerpt=excerpt)
    return [
        {"role": "system", "content": template("simulate_system")},
        {"role": "user", "content": user},
    ]


_LEVEL_LINE = re.compile(
    r"^\s*(?:[-*]\s*|\d+[.)]\s+)?[\"'`]?(.+?)[\"'`]?\s*[:=]\s*(\d+(?:\.\d+)?)\s*$"
)
_NONE = re.compile(r"\bnone\b", re.IGNORECASE)


def parse_simulation(answer: str | None, tokens: tuple[str, ...]) -> list[int]:
    """Predicted level (0-10) per token from ``word: level`` lines; every token of a listed
    word gets its level, all others 0. An answer without such lines must say ``none``."""
    levels: dict[str, int] = {}
    for line in (answer or "").splitlines():
        match = _LEVEL_LINE.match(line)
        if match:
            word = match.group(1).strip().lower()
            levels[word] = max(levels.get(word, 0), min(10, round(float(match.group(2)))))
    if not levels and not _NONE.search(answer or ""):
        raise MalformedAnswerError(
            f"expected 'word: level' lines or 'none', got {(answer or '')[-200:]!r}"
        )
    out = [0] * len(tokens)
    for w in words(tokens, (0.0,) * len(tokens)):
        level = levels.get(w.text.lower(), 0)
        out[w.start : w.end] = [level] * (w.end - w.start)
    return out


_EXPLANATION = re.compile(r"\[?\s*EXPLANATION\s*\]?\s*:\s*(.+)", re.IGNORECASE)


def parse_explanation(answer: str | None) -> str:
    """The explanation from the last ``[EXPLANATION]:`` line, else the last non-empty line."""
    lines = [ln.strip() for ln in (answer or "").splitlines() if ln.strip()]
    if not lines:
        raise MalformedAnswerError("empty answer")
    text = lines[-1]
    for line in reversed(lines):
        match = _EXPLANATION.search(line)
        if match:
            text = match.group(1)
            break
    text = text.strip().strip("*").strip().strip('"').strip()
    if not text:
        raise MalformedAnswerError(f"no explanation in {answer[-200:]!r}")
    return text  # workbench.label.text.clean_label bounds and cleans it


_LIST = re.compile(r"\[([^\[\]]*)\]")


def parse_detection(answer: str | None, n: int) -> list[int]:
    """The last bracketed list of ``n`` 0/1 values in ``answer``."""
    for body in reversed(_LIST.findall(answer or "")):
        items = [s.strip().strip("'\"") for s in body.split(",") if s.strip()]
        if len(items) == n and all(s in ("0", "1") for s in items):
            return [int(s) for s in items]
    raise MalformedAnswerError(f"expected a list of {n} values 0/1, got {(answer or '')[-200:]!r}")


def detection_probabilities(content: list | None, n: int) -> list[float] | None:
    """P(1) / (P(0) + P(1)) per example from chat log-probs (delphi's probability score).

    ``content`` is ``choice.logprobs.content``: one entry per generated token with
    ``token`` and ``top_logprobs``. The last ``n`` tokens that read '0' or '1' are the
    answers; None when the server returned no usable log-probs.
    """
    if not content:
        return None
    answers = [e for e in content if getattr(e, "token", "").strip() in ("0", "1")][-n:]
    if len(answers) != n:
        return None
    probs = []
    for entry in answers:
        lp = {"0": -math.inf, "1": -math.inf}
        for alt in getattr(entry, "top_logprobs", None) or [entry]:
            key = alt.token.strip()
            if key in lp:
                lp[key] = max(lp[key], alt.logprob)
        p0, p1 = math.exp(lp["0"]), math.exp(lp["1"])
        probs.append(p1 / (p0 + p1) if p0 + p1 > 0 else 0.5)
    return probs
