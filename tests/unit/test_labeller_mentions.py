"""Mention-level labeller: every mention's span and status on hand-written report sentences.

Each case lists the expected mentions in text order as (concept, status, mentioned text);
the text must be exactly ``report[start:end]``, the finding's noun phrase with its pre-modifiers
("small left effusion"; see test_labeller_phrase.py). Covers comma lists under one negation,
"no X to suggest Y", "without Y", mixed-case section headers, blank lines, hedges,
pseudo-negations ("no change in"), removal/resolution and history ("stable", "again seen").
"""

from __future__ import annotations

import pytest

from workbench.cxr.labeller.context import STATUS_VALUE, label_report, report_mentions
from workbench.cxr.labeller.nlp import STATUSES, collapse, pipeline

A, N, U, H = "asserted", "negated", "uncertain", "historical"

CASES = [
    # one negation over a comma list (the sentence), with "or"/"nor"/"evidence of"
    (
        "No focal consolidation, suspicious pulmonary opacity, large pleural effusion, or "
        "pneumothorax.",
        [("consolidation", N, "focal consolidation"), ("opacity", N, "pulmonary opacity"),
         ("pleural_effusion", N, "large pleural effusion"), ("pneumothorax", N, "pneumothorax")],
    ),
    ("No pleural effusion, pneumothorax, or focal consolidation is seen.",
     [("pleural_effusion", N, "pleural effusion"), ("pneumothorax", N, "pneumothorax"),
      ("consolidation", N, "focal consolidation")]),
    ("No evidence of pneumothorax or pleural effusion.",
     [("pneumothorax", N, "pneumothorax"), ("pleural_effusion", N, "pleural effusion")]),
    ("Neither pneumothorax nor effusion.",
     [("pneumothorax", N, "pneumothorax"), ("pleural_effusion", N, "effusion")]),
    ("No large pleural effusion.", [("pleural_effusion", N, "large pleural effusion")]),
    ("There are no rib fractures.", [("rib_fracture", N, "rib fractures")]),
    ("No evidence of acute rib fracture.", [("rib_fracture", N, "acute rib fracture")]),
    # "no X to suggest Y", "without Y"
    ("There is no pleural line to suggest pneumothorax.", [("pneumothorax", N, "pneumothorax")]),
    ("No focal opacity to suggest pneumonia.",
     [("opacity", N, "focal opacity"), ("pneumonia", N, "pneumonia")]),
    ("Without cardiomegaly.", [("cardiomegaly", N, "cardiomegaly")]),
    ("Mild cardiomegaly without pulmonary edema or effusion.",
     [("cardiomegaly", A, "Mild cardiomegaly"), ("edema", N, "pulmonary edema"),
      ("pleural_effusion", N, "effusion")]),
    ("There is persistent small left effusion without pneumothorax.",
     [("pleural_effusion", H, "small left effusion"), ("pneumothorax", N, "pneumothorax")]),
    # section headers in any case, with or without a line break or full stop before them
    ("FINDINGS: No pneumothorax\nIMPRESSION: Cardiomegaly.",
     [("pneumothorax", N, "pneumothorax"), ("cardiomegaly", A, "Cardiomegaly")]),
    ("Findings: no effusion. Impression: Pneumothorax.",
     [("pleural_effusion", N, "effusion"), ("pneumothorax", A, "Pneumothorax")]),
    ("findings:no edema\nimpression:pacemaker in place",
     [("edema", N, "edema"), ("pacemaker", A, "pacemaker")]),
    ("No effusion IMPRESSION: Pneumothorax",
     [("pleural_effusion", N, "effusion"), ("pneumothorax", A, "Pneumothorax")]),
    ("no effusion. impression : pneumothorax.",
     [("pleural_effusion", N, "effusion"), ("pneumothorax", A, "pneumothorax")]),
    ("COMPARISON: None. FINDINGS: There is no edema. Impression: Mild pulmonary edema cannot be "
     "excluded.", [("edema", N, "edema"), ("edema", U, "Mild pulmonary edema")]),
    # a blank line ends a sentence, a wrapped line does not
    ("No pneumothorax.\n\nPleural effusion.",
     [("pneumothorax", N, "pneumothorax"), ("pleural_effusion", A, "Pleural effusion")]),
    ("There is no pleural effusion or\n pneumothorax\n\n Cardiomegaly",
     [("pleural_effusion", N, "pleural effusion"), ("pneumothorax", N, "pneumothorax"),
      ("cardiomegaly", A, "Cardiomegaly")]),
    ("Small left pleural\n   effusion.",
     [("pleural_effusion", A, "Small left pleural\n   effusion")]),
    # scopes: "but", ";", a new clause, a size word after a comma
    ("There is no evidence of edema, but a small left effusion is present.",
     [("edema", N, "edema"), ("pleural_effusion", A, "small left effusion")]),
    ("Heart is enlarged but there is no effusion.",
     [("cardiomegaly", A, "Heart is enlarged"), ("pleural_effusion", N, "effusion")]),
    ("No new consolidation; persistent left lower lobe atelectasis.",
     [("consolidation", N, "consolidation"), ("atelectasis", H, "left lower lobe atelectasis")]),
    ("No pneumothorax, small left effusion.",
     [("pneumothorax", N, "pneumothorax"), ("pleural_effusion", A, "small left effusion")]),
    ("Effusion has increased and pneumothorax has resolved.",
     [("pleural_effusion", A, "Effusion"), ("pneumothorax", N, "pneumothorax")]),
    ("Pneumothorax and effusion are not seen.",
     [("pneumothorax", N, "Pneumothorax"), ("pleural_effusion", N, "effusion")]),
    ("Endotracheal tube terminates 4 cm above the carina. No pneumothorax.",
     [("endotracheal_tube", A, "Endotracheal tube"), ("pneumothorax", N, "pneumothorax")]),
    ("Bilateral effusions, left greater than right, and bibasilar atelectasis.",
     [("pleural_effusion", A, "Bilateral effusions"), ("atelectasis", A, "bibasilar atelectasis")]),
    # following negations
    ("Pneumothorax is not seen.", [("pneumothorax", N, "Pneumothorax")]),
    ("No pneumothorax is identified.", [("pneumothorax", N, "pneumothorax")]),
    ("Previously noted left pleural effusion has resolved.",
     [("pleural_effusion", N, "left pleural effusion")]),
    ("Previously seen nodule is no longer visualized.", [("nodule", N, "nodule")]),
    ("The heart is no longer enlarged.", [("cardiomegaly", N, "heart is no longer enlarged")]),
    ("Pacemaker has been removed. The NG tube is in the stomach.",
     [("pacemaker", N, "Pacemaker"), ("enteric_tube", A, "NG tube")]),
    ("The right PICC line has been removed, and there is a new left IJ central line.",
     [("central_line", N, "right PICC line"), ("central_line", A, "left IJ central line")]),
    ("Interval resolution of the left pneumothorax.", [("pneumothorax", N, "left pneumothorax")]),
    ("Resolved right pleural effusion.", [("pleural_effusion", N, "right pleural effusion")]),
    ("The enteric tube tip is not visualized.", [("enteric_tube", A, "enteric tube")]),
    # uncertainty, before and after the mention; the nearest cue wins over a negation
    ("Possible atelectasis, no effusion.",
     [("atelectasis", U, "atelectasis"), ("pleural_effusion", N, "effusion")]),
    ("Small right effusion versus pleural thickening.",
     [("pleural_effusion", U, "Small right effusion"), ("pleural_other", U, "pleural thickening")]),
    ("Atelectasis versus consolidation at the left base.",
     [("atelectasis", U, "Atelectasis"), ("consolidation", U, "consolidation")]),
    ("Pneumothorax is not excluded.", [("pneumothorax", U, "Pneumothorax")]),
    ("Left lower lobe pneumonia is not excluded.",
     [("pneumonia", U, "Left lower lobe pneumonia")]),
    ("A right apical pneumothorax cannot be excluded.",
     [("pneumothorax", U, "right apical pneumothorax")]),
    ("Cannot exclude small left pleural effusion.",
     [("pleural_effusion", U, "small left pleural effusion")]),
    ("Effusion is likely.", [("pleural_effusion", U, "Effusion")]),
    ("Consolidation is unlikely.", [("consolidation", U, "Consolidation")]),
    ("Questionable nodule in the right upper lobe.", [("nodule", U, "nodule")]),
    ("There may be a small right effusion.", [("pleural_effusion", U, "small right effusion")]),
    ("Findings suggestive of pulmonary edema.", [("edema", U, "pulmonary edema")]),
    ("Right basilar opacity concerning for pneumonia.",
     [("opacity", A, "Right basilar opacity"), ("pneumonia", U, "pneumonia")]),
    ("Opacity at the right base likely reflects atelectasis.",
     [("opacity", A, "Opacity"), ("atelectasis", U, "atelectasis")]),
    ("Evaluate for pneumothorax.", [("pneumothorax", U, "pneumothorax")]),
    ("r/o pneumonia.", [("pneumonia", U, "pneumonia")]),
    ("Nodular opacity in the left upper lobe may represent a nodule.",
     [("nodule", U, "Nodular opacity"), ("nodule", U, "nodule")]),
    ("Findings are consistent with pulmonary edema.", [("edema", A, "pulmonary edema")]),
    # history: known, unchanged, again seen; "no change in" is not a negation
    ("Stable moderate cardiomegaly.", [("cardiomegaly", H, "moderate cardiomegaly")]),
    ("Small left pleural effusion is unchanged.",
     [("pleural_effusion", H, "Small left pleural effusion")]),
    ("The endotracheal tube is unchanged in position.",
     [("endotracheal_tube", H, "endotracheal tube")]),
    ("History of right rib fracture.", [("rib_fracture", H, "right rib fracture")]),
    ("Again seen is a left lower lobe consolidation.",
     [("consolidation", H, "left lower lobe consolidation")]),
    ("Cardiomegaly is again noted.", [("cardiomegaly", H, "Cardiomegaly")]),
    ("Patient is status post median sternotomy.", [("sternotomy_wires", H, "median sternotomy")]),
    ("No interval change in cardiomegaly.", [("cardiomegaly", H, "cardiomegaly")]),
    ("No change in the moderate right pleural effusion.",
     [("pleural_effusion", H, "moderate right pleural effusion")]),
    ("Chronic blunting of the left costophrenic angle.",
     [("pleural_effusion", H, "blunting of the left costophrenic angle")]),
    ("Unchanged position of the right-sided pacemaker with leads in the right atrium.",
     [("pacemaker", H, "right-sided pacemaker")]),
    # statements of normality are negated mentions
    ("Heart size is top normal.", [("cardiomegaly", N, "Heart size is top normal")]),
    ("Costophrenic angles are sharp.",
     [("pleural_effusion", N, "Costophrenic angles are sharp")]),
    ("No acute cardiopulmonary process. Sternotomy wires.",
     [("sternotomy_wires", A, "Sternotomy wires")]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:50] for c in CASES])
def test_mention_spans_and_status(text, expected):
    got = report_mentions(text)
    assert [(m.concept, m.status, m.text) for m in got] == expected
    for m in got:
        assert text[m.start : m.end] == m.text
        assert m.value == STATUS_VALUE[m.status]


def test_table_is_large_and_covers_every_status():
    assert len(CASES) >= 60
    seen = {status for _, mentions in CASES for _, status, _ in mentions}
    assert seen == set(STATUSES)


def test_cue_names_the_deciding_phrase():
    got = report_mentions("Possible atelectasis, no effusion. Lungs are clear. Stable nodule.")
    cues = {(m.concept, m.cue) for m in got}
    assert {("atelectasis", "possible"), ("pleural_effusion", "no")} <= cues
    assert ("edema", "normal") in cues and ("nodule", "stable") in cues


def test_study_labels_keep_chexpert_semantics():
    lab = label_report("Stable cardiomegaly. No effusion. Possible pneumothorax.")
    assert lab.concepts["cardiomegaly"] == 1  # historical still means present
    assert lab.concepts["pleural_effusion"] == 0 and lab.concepts["pneumothorax"] == -1
    assert lab.chexpert["Cardiomegaly"] == 1.0 and lab.chexpert["Pneumothorax"] == -1.0
    assert lab.chexpert["No Finding"] is None and lab.concepts["nodule"] is None


def test_collapse_keeps_offsets():
    text = "No  pleural\n effusion.\n\nEdema"
    low, index = collapse(text)
    assert low == "no pleural effusion.\nedema"
    assert [text[index[i]] for i in range(len(low)) if not low[i].isspace()] == [
        c for c in text if not c.isspace()
    ]
    assert index[-1] == len(text)


def test_pipeline_is_offline_blank_english_with_negspacy():
    nlp = pipeline()
    assert nlp.meta["lang"] == "en"
    assert nlp.pipe_names == [
        "sentencizer", "cxr_boundaries", "cxr_mentions", "negex", "uncertainty", "history",
    ]  # fmt: skip
    doc = nlp("No effusion. Possible pneumothorax. Stable cardiomegaly.")
    flags = [(e.label_, e._.negex, e._.uncertain, e._.historical) for e in doc.ents]
    assert flags == [
        ("pleural_effusion", True, False, False),
        ("pneumothorax", False, True, False),
        ("cardiomegaly", False, False, True),
    ]
