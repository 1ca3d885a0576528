"""NegEx termsets of the report labeller: negation, uncertainty and history cues.

Each termset is the dict negspacy's ``Negex`` component takes (``pseudo_negations``,
``preceding_negations``, ``following_negations``, ``termination``), as phrases matched on
lower-cased spaCy tokens. The negation set starts from negspacy's ``en_clinical`` list and is
adapted to chest X-ray reports the way CheXpert's labeller is (Irvin et al. 2019, section 3.1):
"versus", "rule out", "evaluate for" and "unlikely" are uncertainty, not negation; removal
and resolution ("interval removal of", "has resolved") negate a device or finding; "no change
in" does not negate. A second and a third ``Negex`` instance, each with its own extension
name, read the uncertainty and history termsets below.

All three share one termination list, so a cue's scope (the part of the sentence it can
reach) is the same for every status. A comma or "and" followed by a size word ends a scope
("No pneumothorax, small left effusion."), except "large"/"severe"/"significant", which
qualify a negated item more often than they start a new one ("No focal consolidation, large
pleural effusion, or pneumothorax.").
"""

from __future__ import annotations

from itertools import product

from negspacy.termsets import termset

_SIZES = ("small", "moderate", "mild", "trace", "minimal", "tiny", "new", "increased",
          "increasing", "persistent", "stable", "unchanged", "enlarged")  # fmt: skip

TERMINATION: tuple[str, ...] = (
    "but", "however", "although", "though", "whereas", "while", "except", "aside from",
    "apart from", "other than", "with the exception of", "which", "there is", "there are",
    "there has been", "there have been", "nevertheless", "yet", "secondary to",
    "cause of", "source of", "reason for",
    *(f"{a} {b}{s}" for a, b, s in product((",", "and", "with"), ("", "a ", "an "), _SIZES)),
    ", the", ", a", ", an", ", there", "and the", "and a", "and an", "and there", ";",
)  # fmt: skip

PSEUDO_NEGATIONS: tuple[str, ...] = (
    "no change", "no significant change", "no interval change", "no definite change",
    "no significant interval change", "no substantial change", "no appreciable change",
    "no increase", "no decrease", "no progression", "no improvement", "no worsening",
    "no interval increase", "no interval decrease", "not changed", "not significantly changed",
    "not increased", "not decreased", "not improved", "not worsened", "without change",
    "without interval change", "without significant change", "not only", "no further",
    "not necessarily", "gram negative", "not ruled out", "not been ruled out", "not excluded",
    "not be excluded", "tip is not visualized", "tip is not seen", "tip is not identified",
    "tip is not well seen", "tip is not well visualized", "tips are not visualized",
    "tip not visualized", "tip is not clearly visualized",
)  # fmt: skip

PRECEDING_NEGATIONS: tuple[str, ...] = (
    "no", "not", "nor", "neither", "without", "absence of", "absent", "negative for",
    "free of", "clear of", "no evidence of", "no sign of", "no signs of", "without evidence of",
    "without signs of", "fails to reveal", "no longer", "resolution of", "resolved",
    "removal of", "removed", "interval removal of", "rather than", "instead of", "never",
)  # fmt: skip

FOLLOWING_NEGATIONS: tuple[str, ...] = (
    "not", "no longer", "absent", "ruled out", "was ruled out", "were ruled out",
    "disappeared", "resolved", "has resolved", "have resolved", "removed", "been removed",
    "has healed", "have healed", "free",
)  # fmt: skip

_UNSURE = ("cannot exclude", "can not exclude", "can't exclude", "cannot rule out",
           "can not rule out", "can't rule out", "difficult to exclude", "hard to exclude",
           "difficult to rule out", "not excluded", "not ruled out")  # fmt: skip

PRECEDING_UNCERTAIN: tuple[str, ...] = (
    *_UNSURE, "possible", "possibly", "probable", "probably", "likely", "unlikely", "presumed",
    "potential", "potentially", "suspected", "suspect", "may", "might", "could", "questionable",
    "questionably", "question of", "equivocal", "indeterminate", "borderline", "suspicious for",
    "concern for", "concerning for", "worrisome for", "suggest", "suggests", "suggesting",
    "suggestive of", "versus", "vs", "vs.", "differential", "r/o", "rule out", "to exclude",
    "evaluate for", "evaluation for", "assess for", "assessment for",
)  # fmt: skip

FOLLOWING_UNCERTAIN: tuple[str, ...] = (
    *_UNSURE, "cannot be excluded", "can not be excluded", "can't be excluded",
    "cannot be ruled out", "can not be ruled out", "could not be excluded", "not be excluded",
    "cannot be entirely excluded", "cannot be completely excluded", "is possible",
    "are possible", "is suspected", "are suspected", "suspected", "is questioned",
    "questioned", "is likely", "are likely", "is unlikely", "are unlikely", "unlikely",
    "is probable", "versus", "vs", "vs.", "could be present", "may be present",
)  # fmt: skip

# "No focal consolidation to suggest pneumonia": the inference belongs to the negation.
PSEUDO_UNCERTAIN: tuple[str, ...] = ("to suggest", "to indicate", "to represent",
                                     "that would suggest")  # fmt: skip

PRECEDING_HISTORICAL: tuple[str, ...] = (
    "unchanged", "stable", "persistent", "persisting", "chronic", "known", "old",
    "history of", "h/o", "status post", "s/p", "again seen", "again noted",
    "again demonstrated", "redemonstrated", "re-demonstrated", "previously seen",
    "previously noted", "previously described", "previously demonstrated", "prior",
    "no change in", "no significant change in", "no interval change in",
    "unchanged position of", "healing", "healed", "residual",
)  # fmt: skip

FOLLOWING_HISTORICAL: tuple[str, ...] = (
    "is unchanged", "are unchanged", "unchanged", "is stable", "are stable", "remains stable",
    "stable", "persists", "persist", "is again seen", "are again seen", "again seen",
    "again noted", "has not changed", "have not changed", "as before", "is redemonstrated",
    "are redemonstrated",
)  # fmt: skip


# Words that may stand between two mentions of one list ("effusion, focal consolidation or
# PTX are not seen"): a following cue reaches back across such a list, not across a clause.
LIST_GLUE: frozenset[str] = frozenset(
    (",", "/", "and", "or", "nor", "and/or", "the", "a", "an", "any", "left", "right",
     "bilateral", "small", "large", "moderate", "mild", "focal", "definite", "significant",
     "acute", "new", "overt", "frank", "pulmonary", "pleural", "lobe", "lower", "upper",
     "middle", "basilar", "apical")
)  # fmt: skip


def _termset(pseudo, preceding, following) -> dict[str, list[str]]:
    return {
        "pseudo_negations": list(pseudo),
        "preceding_negations": list(preceding),
        "following_negations": list(following),
        "termination": list(TERMINATION),
    }


def negation_termset() -> dict[str, list[str]]:
    """negspacy's ``en_clinical`` terms with the CheXpert-style changes, plus our own.

    Copies the lists: negspacy's ``termset.remove_patterns`` edits its module-level tables.
    """
    base = {k: list(v) for k, v in termset("en_clinical").get_patterns().items()}
    uncertain = set(PRECEDING_UNCERTAIN) | set(FOLLOWING_UNCERTAIN) | {"cannot", "can't", "cant"}
    uncertain |= {"rule out", "rules out", "evaluate for", "ro", "doubt"}
    pre = [t for t in base["preceding_negations"] if t not in uncertain]
    post = [t for t in base["following_negations"] if t not in uncertain]
    return _termset(
        dict.fromkeys([*base["pseudo_negations"], *PSEUDO_NEGATIONS]),
        dict.fromkeys([*pre, *PRECEDING_NEGATIONS]),
        dict.fromkeys([*post, *FOLLOWING_NEGATIONS]),
    )


def uncertainty_termset() -> dict[str, list[str]]:
    """Hedges: "possible", "may", "cannot be excluded", "versus", "concerning for", ..."""
    return _termset(PSEUDO_UNCERTAIN, PRECEDING_UNCERTAIN, FOLLOWING_UNCERTAIN)


def historical_termset() -> dict[str, list[str]]:
    """Statements that a finding is known or unchanged: "stable", "again seen", "history of"."""
    return _termset((), PRECEDING_HISTORICAL, FOLLOWING_HISTORICAL)
