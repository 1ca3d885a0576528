"""MAIRA-2's prompts, rendered piece by piece so every character knows its section.

The texts are MAIRA-2's (shared/reference/maira2.md section 3, "Reporting prompt", "Phrase
grounding prompt" and "Chat template"): a Vicuna-style ``USER: ... ASSISTANT:`` conversation
with a fixed system sentence and no newlines. Messages are built in the chat-template format
(the content items carry an extra ``section`` key the template ignores) and rendered by
:func:`render`, which does what :data:`CHAT_TEMPLATE` does; a test checks the two agree.

Sections: ``system`` and ``template`` (conversation scaffolding), ``instruction`` (fixed
task text), ``indication``, ``technique``, ``comparison``, ``prior_report``, ``phrase``,
``findings`` (the teacher-forced assistant turn, kind ``report``), and for images the image's
role (``current_frontal``, ``current_lateral``, ``prior_frontal``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

SYSTEM_PROMPT = (
    "You are an expert radiology assistant tasked with interpreting a chest X-ray study. "
)
MISSING_SECTION = "N/A"
IMAGE_PLACEHOLDER = "<image>"

# MAIRA-2's chat_template.json, verbatim (maira2.md section 3).
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    "{% endif %}You are an expert radiology assistant tasked with interpreting a chest X-ray "
    'study. {% for message in messages %}{% if message["role"] == "user" %}USER: {% else %}'
    'ASSISTANT: {% endif %}{% for item in message["content"] %}{% if item["type"] == "text" %}'
    '{{ item["text"] }}{% elif item["type"] == "image" %}<image>{% endif %}{% endfor %}'
    '{% if message["role"] == "user" %} {% else %}{{eos_token}}{% endif %}{% endfor %}'
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)

_FINDINGS_INSTRUCTION = (
    " Provide a structured description of the findings in the radiology study in comparison "
    "to the prior frontal image."
)
_GROUNDING_INSTRUCTION = (
    " Each finding should be described as a self-contained plain-text sentence. If the finding "
    "is groundable, locate the finding in the current frontal chest X-ray image, with bounding "
    "boxes indicating all locations where it can be seen in the current frontal image. "
    "Otherwise, generate just the ungrounded finding without bounding boxes."
)
_PHRASE_INSTRUCTION = (
    " Repeat the following finding as a grounded phrase with bounding boxes indicating all "
    "locations where it can be seen in the given chest X-ray image. Finding: "
)


class Segment(NamedTuple):
    """A piece of the rendered prompt; image segments stand for one ``<image>`` each."""

    text: str
    section: str
    kind: str = "prompt"  # "prompt" | "report" (image segments are labelled "image" later)
    image_index: int | None = None


class Prompt(NamedTuple):
    """A rendered prompt as ordered segments; ``text`` is the chat-template string."""

    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        return "".join(seg.text for seg in self.segments)


def section_text(section: str | None) -> str:
    """The section, or ``N/A`` when it is None, not a string, or empty."""
    return section if isinstance(section, str) and section else MISSING_SECTION


def _text(text: str, section: str = "instruction") -> dict:
    return {"type": "text", "text": text, "section": section}


def _image(index: int, role: str) -> dict:
    return {"type": "image", "index": index, "section": role}


def image_items(has_lateral: bool, has_prior: bool) -> list[dict]:
    """The "Given the current frontal image..." items with the images in prompt order."""
    if not has_prior and not has_lateral:
        return [_text("Given the current frontal image only"), _image(0, "current_frontal")]
    items = [_text("Given the current frontal image"), _image(0, "current_frontal")]
    if has_prior:
        if has_lateral:
            items += [_text(" the current lateral image"), _image(1, "current_lateral")]
        items += [_text(" and the prior frontal image"), _image(1 + has_lateral, "prior_frontal")]
    else:
        items += [_text(" and the current lateral image"), _image(1, "current_lateral")]
    return items


@dataclass(frozen=True)
class ReportingRequest:
    """What a MAIRA-2 findings prompt is made of (``format_and_preprocess_reporting_input``).

    The images themselves are not part of it: only which of them the prompt has slots for.
    """

    has_lateral: bool = False
    """The prompt has a slot for the current lateral image."""
    has_prior: bool = False
    """The prompt has a slot for the prior frontal image (and a PRIOR_REPORT section)."""
    indication: str | None = None
    """INDICATION section text (None or empty: "None")."""
    technique: str | None = None
    """TECHNIQUE section text."""
    comparison: str | None = None
    """COMPARISON section text."""
    prior_report: str | None = None
    """The prior study's report; only rendered when ``has_prior``."""
    get_grounding: bool = False
    """Ask for grounded findings (boxes) instead of plain findings."""
    assistant_text: str | None = None
    """Findings teacher-forced as the assistant turn; None adds the generation prompt."""


def reporting_messages(request: ReportingRequest) -> list[dict]:
    """Chat messages for (grounded) findings generation; the prior report needs a prior image."""
    r = request
    items = image_items(r.has_lateral, r.has_prior)
    if r.has_prior:
        items += [_text(" PRIOR_REPORT: "), _text(section_text(r.prior_report), "prior_report")]
    instruction = _FINDINGS_INSTRUCTION + (_GROUNDING_INSTRUCTION if r.get_grounding else "")
    items += [
        _text(instruction + " INDICATION: "),
        _text(section_text(r.indication), "indication"),
        _text(" TECHNIQUE: "),
        _text(section_text(r.technique), "technique"),
        _text(" COMPARISON: "),
        _text(section_text(r.comparison), "comparison"),
    ]
    return _with_assistant([{"role": "user", "content": items}], r.assistant_text)


def phrase_grounding_messages(phrase: str, assistant_text: str | None = None) -> list[dict]:
    """Chat messages asking to ground ``phrase`` on the current frontal image."""
    items = [
        _text("Given the current frontal image"),
        _image(0, "current_frontal"),
        _text(_PHRASE_INSTRUCTION),
        _text(phrase, "phrase"),
    ]
    return _with_assistant([{"role": "user", "content": items}], assistant_text)


def _with_assistant(messages: list[dict], assistant_text: str | None) -> list[dict]:
    if assistant_text is not None:
        content = [{"type": "text", "text": assistant_text, "section": "findings"}]
        messages.append({"role": "assistant", "content": content})
    return messages


def render(messages: list[dict], eos_token: str, add_generation_prompt: bool) -> Prompt:
    """Render ``messages`` as :data:`CHAT_TEMPLATE` does, keeping each piece's section.

    Everything from the assistant turn's text on (including its EOS) is kind ``report``.
    """
    segments = [Segment(SYSTEM_PROMPT, "system")]
    for message in messages:
        is_user = message["role"] == "user"
        kind = "prompt" if is_user else "report"
        segments.append(Segment("USER: " if is_user else "ASSISTANT: ", "template"))
        for item in message["content"]:
            if item["type"] == "text":
                segments.append(Segment(item["text"], item.get("section", "instruction"), kind))
            elif item["type"] == "image":
                segments.append(Segment(IMAGE_PLACEHOLDER, item["section"], kind, item["index"]))
        if is_user:
            segments.append(Segment(" ", "template"))
        else:
            segments.append(Segment(eos_token, "findings", "report"))
    if add_generation_prompt:
        segments.append(Segment("ASSISTANT: ", "template"))
    return Prompt(tuple(seg for seg in segments if seg.text))


def reporting_prompt(request: ReportingRequest, eos_token: str = "</s>") -> Prompt:
    """The rendered findings prompt; the generation prompt is added without assistant text."""
    messages = reporting_messages(request)
    return render(messages, eos_token, add_generation_prompt=request.assistant_text is None)


def phrase_grounding_prompt(
    phrase: str, assistant_text: str | None = None, eos_token: str = "</s>"
) -> Prompt:
    """The rendered phrase-grounding prompt.

    Unlike the original (which drops ``assistant_text`` here, a bug), a given assistant text
    is rendered as the assistant turn; without it the prompt is identical.
    """
    messages = phrase_grounding_messages(phrase, assistant_text)
    return render(messages, eos_token, add_generation_prompt=assistant_text is None)
