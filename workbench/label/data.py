"""What ``label`` reads from ``features.duckdb``: features to label, their examples, negatives.

Positive examples come from ``feature_examples`` (written by ``analyse``): the first
``n_explain`` of the 'top' group are shown to the explainer; the rest of the top group and
the 'quantile' group (activations spread over the whole range, as delphi samples them) are
held out for detection scoring. Image-token examples carry their study's FINDINGS.

Negative examples (delphi's "non-activating" contexts) are drawn once per run into a
:class:`NegativePool`: random report-token windows of the same width as the stored contexts,
and random studies for image examples. A window is a negative for a feature when the feature
is silent on every token of it (``feature_acts``), a study when the feature never fires in it
(``study_features``). *Hard* negatives (:meth:`NegativePool.draw_hard`) are the silent ones
that hold the feature's own words or concept: "No pleural effusion." for a feature that fires
on asserted effusions, so that a label naming only the word cannot pass.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from typing import NamedTuple

import duckdb

from workbench.label.prompts import Example
from workbench.label.text import words

LABEL_TABLES = (
    "feature_stats",
    "feature_examples",
    "feature_concepts",
    "feature_labels",
    "studies",
    "study_labels",
    "study_features",
    "tokens",
)


class ConceptHint(NamedTuple):
    """A feature's best concept association from ``feature_concepts`` (rank 1)."""

    concept: str
    source: str
    auroc: float


class FeatureExamples(NamedTuple):
    """A feature's explainer examples, held-out activating examples and best concept."""

    feature: int
    max_act: float
    explain: list[Example]
    held_out: list[Example]
    hint: ConceptHint | None = None


def concept_hints(con: duckdb.DuckDBPyConnection, features: list[int]) -> dict[int, ConceptHint]:
    """The rank-1 concept (with a computable AUROC) of each of ``features``."""
    rows = con.execute(
        "SELECT feature, concept, source, auroc FROM feature_concepts "
        "WHERE rank = 1 AND auroc IS NOT NULL AND feature IN (SELECT unnest(?::INTEGER[]))",
        [features],
    ).fetchall()
    return {int(f): ConceptHint(c, s, float(a)) for f, c, s, a in rows}


def select_features(
    con: duckdb.DuckDBPyConnection,
    features: tuple[int, ...],
    concept: str | None,
    top_n: int,
) -> list[int]:
    """Features to label: an explicit list, the best ``top_n`` for a concept, or the most
    frequent ``top_n`` live features (0: all live features), in that order of precedence."""
    if features:
        known = {r[0] for r in con.execute("SELECT feature FROM feature_stats").fetchall()}
        missing = sorted(set(features) - known)
        if missing:
            raise ValueError(f"features {missing} are not in feature_stats of this run")
        return list(dict.fromkeys(features))
    limit = f"LIMIT {int(top_n)}" if top_n > 0 else ""
    if concept:
        rows = con.execute(
            "SELECT c.feature FROM feature_concepts c JOIN feature_stats s USING (feature) "
            "WHERE lower(c.concept) = lower(?) AND c.auroc IS NOT NULL AND NOT s.dead "
            f"ORDER BY c.auroc DESC, c.feature {limit}",
            [concept],
        ).fetchall()
        if not rows:
            raise ValueError(f"concept {concept!r} has no scored features (see table concepts)")
        return [r[0] for r in rows]
    rows = con.execute(
        f"SELECT feature FROM feature_stats WHERE NOT dead ORDER BY frequency DESC, feature {limit}"
    ).fetchall()
    return [r[0] for r in rows]


def study_labels(con: duckdb.DuckDBPyConnection, studies: list[int]) -> dict[int, tuple]:
    """Positive labels of each study (phantom names and CheXpert labels), sorted."""
    rows = con.execute(
        "SELECT study_id, list(DISTINCT concept ORDER BY concept) FROM study_labels "
        "WHERE value = 1 AND concept <> 'No Finding' "
        "AND study_id IN (SELECT unnest(?::BIGINT[])) GROUP BY study_id",
        [sorted(set(studies))],
    ).fetchall()
    return {int(s): tuple(c) for s, c in rows}


def _example(row: tuple, labels: dict[int, tuple]) -> Example:
    tok_row, study, kind, tokens, acts, center, act, findings, prow, pcol = row
    is_image = kind == "image"
    return Example(
        study_id=int(study),
        kind="image" if is_image else "text",
        tokens=tuple(tokens or ()),
        acts=tuple(float(a) for a in (acts or ())),
        center=int(center or 0),
        activation=float(act),
        findings=findings if is_image else None,
        patch=(int(prow), int(pcol)) if is_image and prow is not None else None,
        labels=labels.get(int(study), ()) if is_image else (),
        row=int(tok_row),
    )


def split_examples(
    top: list[Example], quantile: list[tuple[int, Example]], n_explain: int
) -> tuple[list[Example], list[Example]]:
    """Explainer examples and held-out ones, never the same token in both.

    The explainer gets the strongest ``n_explain`` top examples, but at most two thirds of
    the feature's distinct examples so something is left to score. Held-out examples take
    the quantile groups in turn, highest first (so the first few already span the whole
    activation range), then the unused top examples.
    """
    distinct = {ex.row for ex in top} | {ex.row for _, ex in quantile}
    n_show = max(1, min(n_explain, (2 * len(distinct)) // 3)) if distinct else 0
    shown = top[:n_show]
    seen = {ex.row for ex in shown}
    groups: dict[int, list[Example]] = defaultdict(list)
    for q, ex in quantile:
        if ex.row not in seen:
            groups[q].append(ex)
    order = sorted(groups, reverse=True)
    interleaved = [
        groups[q][i]
        for i in range(max(map(len, groups.values()), default=0))
        for q in order
        if i < len(groups[q])
    ]
    held = []
    for ex in interleaved + top[n_show:]:
        if ex.row not in seen:
            seen.add(ex.row)
            held.append(ex)
    return shown, held


def load_examples(
    con: duckdb.DuckDBPyConnection, features: list[int], n_explain: int
) -> dict[int, FeatureExamples]:
    """Examples of ``features`` from ``feature_examples`` with their studies' findings."""
    rows = con.execute(
        """SELECT e.feature, e.example_group, e.quantile, e.row, e.study_id, e.kind,
                  e.context_tokens, e.context_acts, e.center, e.activation, s.findings,
                  e.patch_row, e.patch_col
           FROM feature_examples e LEFT JOIN studies s USING (study_id)
           WHERE e.feature IN (SELECT unnest(?::INTEGER[])) AND e.activation > 0
           ORDER BY e.feature, e.example_group DESC, e.quantile DESC NULLS FIRST, e.rank""",
        [features],
    ).fetchall()
    labels = study_labels(con, [r[4] for r in rows if r[5] == "image" and r[10] is None])
    max_acts = dict(
        con.execute(
            "SELECT feature, max_act FROM feature_stats "
            "WHERE feature IN (SELECT unnest(?::INTEGER[]))",
            [features],
        ).fetchall()
    )
    top: dict[int, list[Example]] = defaultdict(list)
    quantile: dict[int, list[tuple[int, Example]]] = defaultdict(list)
    for feature, group, q, *rest in rows:
        ex = _example(tuple(rest), labels)
        if group == "top":
            top[feature].append(ex)
        else:
            quantile[feature].append((q or 0, ex))
    hints = concept_hints(con, features)
    out = {}
    for f in features:
        shown, held = split_examples(top[f], quantile[f], n_explain)
        out[f] = FeatureExamples(f, float(max_acts.get(f) or 0.0), shown, held, hints.get(f))
    return out


class NegativePool:
    """Random non-activating candidates shared by every feature of one labelling run."""

    def __init__(self, con: duckdb.DuckDBPyConnection, n_windows: int, n_studies: int, seed: int):
        self.context = self._context_width(con)
        self.windows, self._window_fires = self._windows(con, n_windows, seed)
        self.studies, self._study_fires = self._studies(con, n_studies, seed)
        self._window_words = [_word_set(ex) for ex in self.windows]
        self._study_words = [_word_set(ex) for ex in self.studies]

    @staticmethod
    def _context_width(con) -> int:
        width = con.execute("SELECT max(len(context_tokens)) FROM feature_examples").fetchone()[0]
        return max(0, ((width or 1) - 1) // 2)

    def _windows(self, con, n: int, seed: int) -> tuple[list[Example], list[set[int]]]:
        c = self.context
        rows = con.execute(
            f"""WITH centre AS (
                   SELECT row, study_id, position FROM tokens WHERE kind = 'report'
                   ORDER BY hash(row + {int(seed)}) LIMIT {int(n)})
               SELECT c.row, c.study_id, list(t.token ORDER BY t.position),
                      list(t.row ORDER BY t.position)
               FROM centre c JOIN tokens t ON t.study_id = c.study_id
                    AND t.position BETWEEN c.position - {c} AND c.position + {c}
                    AND t.kind IN ('report', 'prompt', 'generated')
               GROUP BY c.row, c.study_id ORDER BY c.row"""
        ).fetchall()
        windows = [
            Example(int(s), "text", tuple(toks), (0.0,) * len(toks), 0, 0.0)
            for _, s, toks, _ in rows
        ]
        fires = self._fires_by_row(con, [list(r[3]) for r in rows], [r[1] for r in rows])
        return windows, fires

    @staticmethod
    def _fires_by_row(
        con, window_rows: list[list[int]], window_studies: list[int]
    ) -> list[set[int]]:
        """Features firing anywhere in each window (whole study without ``feature_acts``)."""
        has_acts = con.execute(
            "SELECT count(*) FROM duckdb_views() WHERE view_name = 'feature_acts'"
        ).fetchone()[0]
        if not window_rows:
            return []
        by_key: dict[int, set[int]] = defaultdict(set)
        if has_acts:
            keys = [list(rows) for rows in window_rows]
            sql = "SELECT row, feature FROM feature_acts WHERE row IN (SELECT unnest(?::BIGINT[]))"
        else:  # coarser but still correct: the feature is silent in the whole study
            keys = [[s] for s in window_studies]
            sql = (
                "SELECT study_id, feature FROM study_features "
                "WHERE study_id IN (SELECT unnest(?::BIGINT[]))"
            )
        wanted = sorted({k for ks in keys for k in ks})
        for key, feature in con.execute(sql, [wanted]).fetchall():
            by_key[key].add(feature)
        return [set().union(*(by_key[k] for k in ks)) for ks in keys]

    def _studies(self, con, n: int, seed: int) -> tuple[list[Example], list[set[int]]]:
        rows = con.execute(
            f"""SELECT s.study_id, s.findings,
                       list(DISTINCT f.feature) FILTER (f.feature IS NOT NULL)
                FROM (SELECT study_id, findings FROM studies
                      ORDER BY hash(study_id + {int(seed)}) LIMIT {int(n)}) s
                LEFT JOIN study_features f USING (study_id)
                GROUP BY s.study_id, s.findings ORDER BY s.study_id"""
        ).fetchall()
        labels = study_labels(con, [s for s, f, _ in rows if f is None])
        studies = [
            Example(int(s), "image", (), (), 0, 0.0, findings=f, labels=labels.get(int(s), ()))
            for s, f, _ in rows
        ]
        return studies, [set(fs or ()) for _, _, fs in rows]

    def draw(
        self, feature: int, n_text: int, n_image: int, seed: int, exclude_studies: set[int]
    ) -> list[Example]:
        """Up to ``n_text`` silent windows and ``n_image`` studies where ``feature`` never fires.

        Without ``feature_acts`` a window counts as silent only if its whole study is.
        """
        rng = random.Random(seed * 1_000_003 + feature)
        text = [ex for ex, fires in zip(self.windows, self._window_fires) if feature not in fires]
        image = [
            ex
            for ex, fires in zip(self.studies, self._study_fires)
            if feature not in fires and ex.study_id not in exclude_studies
        ]
        return rng.sample(text, min(n_text, len(text))) + rng.sample(
            image, min(n_image, len(image))
        )

    def draw_hard(
        self,
        feature: int,
        keys: set[str],
        counts: tuple[int, int],
        seed: int,
        exclude_studies: set[int],
    ) -> list[Example]:
        """Up to ``counts`` = (text, image) silent windows/studies holding a word of ``keys``.

        The words are the feature's own (its activating words, its concept's name), so these
        negatives look like positives to a label that only names words.
        """
        rng = random.Random(seed * 1_000_003 + feature + 17)
        text = [
            ex
            for ex, fires, ws in zip(self.windows, self._window_fires, self._window_words)
            if feature not in fires and ws & keys
        ]
        image = [
            ex
            for ex, fires, ws in zip(self.studies, self._study_fires, self._study_words)
            if feature not in fires and ex.study_id not in exclude_studies and ws & keys
        ]
        n_text, n_image = counts
        return rng.sample(text, min(n_text, len(text))) + rng.sample(
            image, min(n_image, len(image))
        )


_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*")


def _word_set(ex: Example) -> frozenset[str]:
    """Lower-cased words of a study's findings and labels, or of a window's central half
    (joined subwords): positives are centred on their activating word, and a hard negative
    must show its word with as much context ("No pleural effusion", not a cut "effusion")."""
    if ex.kind == "text":
        n = len(ex.tokens)
        lo, hi = n // 4, n - n // 4
        return frozenset(
            w.text.lower() for w in words(ex.tokens, ex.acts) if w.end > lo and w.start < hi
        )
    text = f"{ex.findings or ''} {' '.join(ex.labels)}".replace("_", " ").lower()
    return frozenset(_WORD.findall(text))
