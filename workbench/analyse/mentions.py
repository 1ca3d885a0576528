"""Mention-level scores: does a feature fire on "effusion present" or on the word "effusion"?

A study-level AUROC cannot tell the two apart: a feature that fires on "effusion" in "No
pleural effusion." still separates positive from negative studies as long as most negative
reports do not mention effusion at all. Here every report section in the store is run
through the labeller (:func:`workbench.cxr.labeller.context.report_mentions`), each mention
is mapped to the store rows of its tokens, and for every (feature, concept):

- ``mean_<status>``: the mean, over the concept's mentions with that status (asserted,
  negated, uncertain, historical), of the feature's largest activation on the mention's
  tokens (0 where it is silent). A mention of several tokens is one sample, so "pleural
  effusion" weighs as much as "PTX";
- ``selectivity``: the AUROC of that activation for present mentions (asserted or historical:
  "stable effusion" is there) against negated ones. 1 = fires only when the finding is
  present, 0.5 = fires on the word whatever it says, NULL without both kinds of mention.

Token text is aligned to the study's own report section (``studies.findings`` /
``studies.impression``) ignoring whitespace, which works for byte-level BPE and SentencePiece
tokens alike; where a section is not known or does not align, the concatenated token text is
labelled instead (right for byte-level tokens, whose text keeps its spaces).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from workbench.analyse.inputs import AnalyseError
from workbench.cxr.labeller.context import report_mentions
from workbench.stats import auroc_sparse

STATUS_ORDER = ("asserted", "negated", "uncertain", "historical")
PRESENT = ("asserted", "historical")
_SPECIAL = re.compile(r"^<[^<>\s]+>$")  # </s>, <|eot_id|>, <image>: no report text


def _squeeze(text: str) -> tuple[str, list[int]]:
    """``text`` without whitespace, and the offset in ``text`` of each kept character."""
    keep = [i for i, c in enumerate(text) if not c.isspace()]
    return "".join(text[i] for i in keep), keep


def token_spans(tokens: list[str], reference: str | None) -> tuple[str, list[tuple[int, int]]]:
    """The text to label and each token's character range in it ((k, k) for no text).

    Aligns the tokens to ``reference`` when their non-space characters spell it (special
    tokens such as ``</s>`` are skipped); else returns the tokens' own concatenation.
    """
    if reference:
        ref, where = _squeeze(reference)
        spans, pos = [], 0
        for tok in tokens:
            bare = "".join(tok.replace("\u2581", " ").split())
            if bare and ref.startswith(bare, pos):
                spans.append((where[pos], where[pos + len(bare) - 1] + 1))
                pos += len(bare)
            elif not bare or _SPECIAL.match(bare):
                at = where[pos] if pos < len(where) else len(reference)
                spans.append((at, at))
            else:
                break
        else:
            return reference, spans
    spans, at = [], 0
    for tok in tokens:
        lead = len(tok) - len(tok.lstrip())
        spans.append((at + lead, at + len(tok.rstrip()) if tok.strip() else at + lead))
        at += len(tok)
    return "".join(tokens), spans


def section_mentions(
    rows: np.ndarray, tokens: list[str], reference: str | None
) -> list[tuple[str, str, str | None, int, int, str, int, int]]:
    """Mentions of one report section: (concept, status, cue, start, end, text, row_lo, row_hi).

    ``rows`` are the store rows of the section's tokens, in order. A mention whose characters
    no token covers (a report cut short by the model's context) is left out.
    """
    text, spans = token_spans(tokens, reference)
    out = []
    for m in report_mentions(text):
        hit = [i for i, (a, b) in enumerate(spans) if a < m.end and b > m.start and b > a]
        if hit:
            out.append(
                (m.concept, m.status, m.cue, m.start, m.end, m.text,
                 int(rows[hit[0]]), int(rows[hit[-1]]))
            )  # fmt: skip
    return out


def _sections(con) -> Iterable[tuple[int, str, np.ndarray, list[str], str | None]]:
    """(study, section, rows, token texts, reference text) of every report section."""
    got = con.execute(
        """SELECT t.study_id, coalesce(t.section, 'report') AS section, list(t.row ORDER BY t.row),
                  list(t.token ORDER BY t.row),
                  any_value(CASE lower(t.section) WHEN 'findings' THEN s.findings
                                                  WHEN 'impression' THEN s.impression END)
           FROM tokens t LEFT JOIN studies s USING (study_id)
           WHERE t.kind IN ('report', 'generated')
           GROUP BY t.study_id, t.kind, 2 ORDER BY t.study_id, min(t.row)"""
    ).fetchall()
    for study, section, rows, toks, ref in got:
        yield study, section, np.asarray(rows, np.int64), [t or "" for t in toks], ref


def write_mentions(con, notes: list[str]) -> int:
    """``mentions``: every concept mention of the stored report tokens; returns the count."""
    cols: dict[str, list] = {k: [] for k in (
        "study_id", "section", "concept", "status", "cue", "char_start", "char_end", "text",
        "row_lo", "row_hi")}  # fmt: skip
    for study, section, rows, toks, ref in _sections(con):
        for m in section_mentions(rows, toks, ref):
            for key, value in zip(list(cols)[2:], m):
                cols[key].append(value)
            cols["study_id"].append(study)
            cols["section"].append(section)
    n = len(cols["study_id"])
    if not n:
        notes.append("no concept mentions in the stored report tokens: feature_mentions empty")
        return 0
    table = pa.table({"mention_id": np.arange(n, dtype=np.int64), **cols})
    con.register("_m", table)
    con.execute("INSERT INTO mentions SELECT * FROM _m")
    con.unregister("_m")
    return n


def _mention_maxima(con, acts: str) -> dict[str, np.ndarray]:
    """Every feature's largest activation on each mention's tokens (non-zero only)."""
    return con.execute(
        f"""WITH mt AS (SELECT mention_id, unnest(range(row_lo, row_hi + 1)) AS row
                        FROM mentions)
            SELECT a.feature, mt.mention_id, max(a.value) AS v
            FROM {acts} a JOIN mt ON a.row = mt.row GROUP BY ALL"""
    ).fetchnumpy()


def score_mentions(
    feats: np.ndarray,
    mention: np.ndarray,
    vals: np.ndarray,
    concept_idx: np.ndarray,
    status: np.ndarray,
    n_concepts: int,
    d_sae: int,
) -> dict[str, np.ndarray]:
    """Per (feature, concept) [d_sae, C]: n_fired, mean per status, selectivity.

    ``feats``/``mention``/``vals``: the non-zero (feature, mention, max activation) entries;
    ``concept_idx``/``status``: per mention its concept column and status name.
    """  # fmt: skip
    F, C, M = d_sae, n_concepts, len(concept_idx)
    key = np.asarray(feats, np.int64) * C + concept_idx[mention]
    out = {"n_fired": np.bincount(key, minlength=F * C).reshape(F, C)}
    for s in STATUS_ORDER:
        of_s = status == s
        n = np.bincount(concept_idx[of_s], minlength=C).astype(np.float64)
        w = np.where(of_s[mention], vals, 0.0)
        sums = np.bincount(key, weights=w, minlength=F * C).reshape(F, C)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"mean_{s}"] = np.where(n > 0, sums / n, np.nan)
    labels = np.full((M, C), np.nan)
    present, negated = np.isin(status, PRESENT), status == "negated"
    labels[np.flatnonzero(present), concept_idx[present]] = 1.0
    labels[np.flatnonzero(negated), concept_idx[negated]] = 0.0
    out["selectivity"] = auroc_sparse(feats, mention, vals, labels, 0, F)
    return out


def write_feature_mentions(con, acts: str, d_sae: int, notes: list[str]) -> None:
    """``mentions`` and ``feature_mentions`` (rows where the feature fires on a mention)."""
    if not write_mentions(con, notes):
        return
    meta = con.execute("SELECT concept, status FROM mentions ORDER BY mention_id").fetchnumpy()
    names, concept_idx = np.unique(np.asarray(meta["concept"], object), return_inverse=True)
    got = _mention_maxima(con, acts)
    feats = np.asarray(got["feature"], np.int64)
    if feats.size and feats.max() >= d_sae:
        raise AnalyseError(f"feature {feats.max()} in the activations exceeds d_sae={d_sae}")
    s = score_mentions(
        feats, np.asarray(got["mention_id"], np.int64), np.asarray(got["v"], np.float64),
        concept_idx, np.asarray(meta["status"], object), len(names), d_sae,
    )  # fmt: skip
    f_idx, c_idx = np.nonzero(s["n_fired"])
    table = {
        "feature": f_idx.astype(np.int32),
        "concept": names[c_idx],
        "n_fired": s["n_fired"][f_idx, c_idx].astype(np.int32),
        **{f"mean_{k}": pa.array(s[f"mean_{k}"][f_idx, c_idx], from_pandas=True)
           for k in STATUS_ORDER},
        "selectivity": pa.array(s["selectivity"][f_idx, c_idx], from_pandas=True),
    }  # fmt: skip
    con.register("_fm", pa.table(table))
    con.execute("INSERT INTO feature_mentions SELECT * FROM _fm ORDER BY feature, concept")
    con.unregister("_fm")
