"""Rule-based report labeller on hand-written MIMIC-style sentences."""

from __future__ import annotations

import pytest

from workbench.cxr.findings import CHEXPERT_LABELS
from workbench.cxr.labeller.context import (
    PHANTOM_CONCEPTS,
    label_report,
    label_reports,
    score_labels,
)

# (text, expected phantom-concept values; concepts not listed must be None)
CONCEPT_CASES = [
    ("No pleural effusion or pneumothorax.", {"pleural_effusion": 0, "pneumothorax": 0}),
    (
        "There is no focal consolidation, pleural effusion, or pneumothorax.",
        {"consolidation": 0, "pleural_effusion": 0, "pneumothorax": 0},
    ),
    ("Without evidence of pneumothorax.", {"pneumothorax": 0}),
    ("Heart size is normal.", {"cardiomegaly": 0}),
    ("The heart is not enlarged.", {"cardiomegaly": 0}),
    ("Normal heart size. Mediastinal contours are unremarkable.", {"cardiomegaly": 0}),
    ("Cannot exclude small left pleural effusion.", {"pleural_effusion": -1}),
    ("Possible small right pneumothorax.", {"pneumothorax": -1}),
    ("Left basilar opacity may represent atelectasis.", {"atelectasis": -1}),
    ("A right apical pneumothorax cannot be excluded.", {"pneumothorax": -1}),
    ("Moderate cardiomegaly with no edema.", {"cardiomegaly": 1, "edema": 0}),
    (
        "Small left pleural effusion with no pneumothorax.",
        {"pleural_effusion": 1, "pneumothorax": 0},
    ),
    ("No pneumothorax, small left effusion.", {"pneumothorax": 0, "pleural_effusion": 1}),
    ("No change in the moderate right pleural effusion.", {"pleural_effusion": 1}),
    (
        "Effusion has increased and pneumothorax has resolved.",
        {"pleural_effusion": 1, "pneumothorax": 0},
    ),
    ("Pneumothorax and effusion are not seen.", {"pneumothorax": 0, "pleural_effusion": 0}),
    ("Enlarged cardiac silhouette.", {"cardiomegaly": 1}),
    ("Mild enlargement of the cardiac silhouette is stable.", {"cardiomegaly": 1}),
    ("Pulmonary vascular congestion.", {"edema": 1}),
    ("Mild pulmonary edema without frank consolidation.", {"edema": 1, "consolidation": 0}),
    ("Nodular opacity in the right upper lobe.", {"nodule": 1}),
    ("Right lower lobe collapse.", {"atelectasis": 1}),
    ("Old healed fractures of the right fifth and sixth ribs.", {"rib_fracture": 1}),
    ("ET tube terminates 4 cm above the carina.", {"endotracheal_tube": 1}),
    ("NG tube courses below the diaphragm.", {"enteric_tube": 1}),
    ("Right PICC ends in the SVC.", {"central_line": 1}),
    ("Left subclavian central venous catheter in the mid SVC.", {"central_line": 1}),
    ("Dual-chamber pacer leads in standard position.", {"pacemaker": 1}),
    ("Sternotomy wires are intact.", {"sternotomy_wires": 1}),
    ("The endotracheal tube has been removed.", {"endotracheal_tube": 0}),
    (
        "Interval removal of the endotracheal and nasogastric tubes.",
        {"endotracheal_tube": 0, "enteric_tube": 0},
    ),
    ("The patient has been extubated.", {"endotracheal_tube": 0}),
    (
        "Lungs are clear.",
        {"consolidation": 0, "atelectasis": 0, "edema": 0},
    ),
    (
        "The lungs are clear except for left basilar atelectasis.",
        {"consolidation": 0, "atelectasis": 1, "edema": 0},
    ),
    ("No acute osseous abnormality.", {"rib_fracture": 0}),
    ("Costophrenic angles are sharp.", {"pleural_effusion": 0}),
    ("Pericardial effusion is suspected.", {}),
    ("Evaluation for pneumothorax is limited.", {"pneumothorax": -1}),
    ("Atelectasis is unlikely.", {"atelectasis": -1}),
    ("Enteric tube tip is not visualized but is below the diaphragm.", {"enteric_tube": 1}),
    ("The ET tube is 2 cm above the carina and could be withdrawn.", {"endotracheal_tube": 1}),
    ("The previously noted nodule is not seen on the current study.", {"nodule": 0}),
    ("Left chest tube in place with no pneumothorax.", {"pneumothorax": 0}),
    ("Nodular opacity in the left upper lobe may represent a nodule.", {"nodule": -1}),
    (
        "Blunting of the left costophrenic angle may reflect a small effusion.",
        {"pleural_effusion": -1},
    ),
    ("The heart size has decreased but remains enlarged.", {"cardiomegaly": 1}),
    ("The heart is no longer enlarged.", {"cardiomegaly": 0}),
    ("The right rib fracture has healed.", {"rib_fracture": 0}),
    (
        "The dual-chamber pacemaker generator over the left chest with leads in the right atrium "
        "and right ventricle has been removed.",
        {"pacemaker": 0},
    ),
    (
        "A 1.2 cm pulmonary nodule projecting over the right upper lobe cannot be excluded.",
        {"nodule": -1},
    ),
]


@pytest.mark.parametrize(("text", "expected"), CONCEPT_CASES)
def test_phantom_concepts(text, expected):
    got = label_report(text).concepts
    assert set(got) == set(PHANTOM_CONCEPTS)
    assert {k: v for k, v in got.items() if v is not None} == expected


CHEXPERT_CASES = [
    (
        "Left basilar opacity may represent atelectasis or pneumonia.",
        {"Lung Opacity": 1.0, "Atelectasis": -1.0, "Pneumonia": -1.0},
    ),
    ("Pneumonia cannot be excluded.", {"Pneumonia": -1.0}),
    (
        "No focal consolidation to suggest pneumonia.",
        {"Consolidation": 0.0, "Pneumonia": 0.0, "No Finding": 1.0},
    ),
    (
        "Atelectasis vs. pneumonia in the left lower lobe.",
        {"Atelectasis": -1.0, "Pneumonia": -1.0, "Lung Opacity": -1.0},
    ),
    (
        "Heart size is mildly enlarged. There is mild pulmonary vascular congestion and small "
        "bilateral pleural effusions. Bibasilar atelectasis. No pneumothorax.",
        {
            "Cardiomegaly": 1.0,
            "Enlarged Cardiomediastinum": 1.0,  # parent of cardiomegaly (findings.CHEXPERT_OF)
            "Edema": 1.0,
            "Pleural Effusion": 1.0,
            "Atelectasis": 1.0,
            "Lung Opacity": 1.0,
            "Pneumothorax": 0.0,
        },
    ),
    (
        "Persistent left retrocardiac opacity likely reflecting atelectasis, though infection is "
        "not excluded.",
        {"Lung Opacity": 1.0, "Atelectasis": -1.0, "Pneumonia": -1.0},
    ),
    ("Widened mediastinum.", {"Enlarged Cardiomediastinum": 1.0}),
    (
        "Right apical pleural thickening. Left clavicle fracture.",
        {"Pleural Other": 1.0, "Fracture": 1.0},
    ),
    ("3 cm mass in the left upper lobe.", {"Lung Lesion": 1.0}),
    (
        "Right chest tube in place. No pneumothorax.",
        {"Support Devices": 1.0, "Pneumothorax": 0.0, "No Finding": 1.0},  # devices don't count
    ),
    ("No acute cardiopulmonary process.", {"No Finding": 1.0}),
    (
        "Heart size is normal. Lungs are clear. No acute osseous abnormality.",
        # only heart-size normals are CheXpert negatives; "lungs are clear" leaves labels blank
        {"Cardiomegaly": 0.0, "No Finding": 1.0},
    ),
]


@pytest.mark.parametrize(("text", "expected"), CHEXPERT_CASES)
def test_chexpert_labels(text, expected):
    got = label_report(text).chexpert
    assert list(got) == list(CHEXPERT_LABELS)
    assert {k: v for k, v in got.items() if v is not None} == expected


def test_mentions_record_cue_and_text():
    mentions = label_report("No pleural effusion. Possible pneumothorax.").mentions
    assert [(m.concept, m.value, m.cue) for m in mentions] == [
        ("pleural_effusion", 0, "no"),
        ("pneumothorax", -1, "possible"),
    ]
    assert mentions[0].text == "pleural effusion"


def test_empty_text_is_all_unmentioned_and_batch_api():
    empty, full = label_reports(["", "Cardiomegaly."])
    assert set(empty.chexpert.values()) == {None} and set(empty.concepts.values()) == {None}
    assert full.concepts["cardiomegaly"] == 1 and full.chexpert["No Finding"] is None
    assert label_report(None).mentions == []


def test_clause_boundaries_stop_negation():
    got = label_report(
        "No pleural effusion, but there is a small right pneumothorax. No edema; mild cardiomegaly."
    ).concepts
    assert got["pleural_effusion"] == 0 and got["pneumothorax"] == 1
    assert got["edema"] == 0 and got["cardiomegaly"] == 1


def test_multi_finding_report_with_devices():
    text = (
        "Endotracheal tube tip is 5 cm above the carina. Nasogastric tube extends into the "
        "stomach. Left subclavian central venous catheter terminates in the mid SVC. Left-sided "
        "pacemaker with leads in the right atrium and right ventricle. Median sternotomy wires. "
        "Small bilateral pleural effusions with bibasilar atelectasis. No pneumothorax. A 1.5 cm "
        "nodule projects over the left mid lung."
    )
    got = label_report(text).concepts
    positives = {k for k, v in got.items() if v == 1}
    assert positives == {
        "endotracheal_tube", "enteric_tube", "central_line", "pacemaker", "sternotomy_wires",
        "pleural_effusion", "atelectasis", "nodule",
    }  # fmt: skip
    assert got["pneumothorax"] == 0 and got["edema"] is None


def test_score_labels_counts_and_f1():
    pred = [{"a": 1, "b": -1}, {"a": 0, "b": None}, {"a": 1, "b": 1}, {"a": None, "b": 0}]
    true = [{"a": 1, "b": 1}, {"a": 1, "b": 0}, {"a": 0, "b": 1}, {"a": 0, "b": 0}]
    s = score_labels(pred, true, ["a", "b"])
    assert s["a"][:4] == (1, 1, 1, 1) and s["a"].f1 == pytest.approx(0.5)
    assert s["b"][:4] == (1, 0, 1, 2) and s["b"].precision == 1.0 and s["b"].recall == 0.5
    loose = score_labels(pred, true, ["b"], uncertain_as_positive=True)["b"]
    assert loose.tp == 2 and loose.f1 == 1.0
    assert score_labels([{}], [{}], ["c"])["c"].f1 is None
    with pytest.raises(ValueError, match="1 predictions for 2"):
        score_labels(pred[:1], true[:2], ["a"])


def test_wrapped_lines_and_paragraphs():
    got = label_report(" There is no pleural effusion or\n pneumothorax\n\n Cardiomegaly").concepts
    assert got["pneumothorax"] == 0 and got["pleural_effusion"] == 0
    assert got["cardiomegaly"] == 1  # a blank line ends the negated sentence
    assert label_report("Nodule of 2.5 cm. No effusion.").concepts["nodule"] == 1


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    """~40 phantom studies (small images, no masks): MIMIC layout with known ground truth."""
    from workbench.cxr.phantom.run import PhantomConfig, generate

    root = tmp_path_factory.mktemp("phantom")
    generate(PhantomConfig(out=root, studies=40, size=64, masks=False, seed=3))
    return root


@pytest.mark.slow
def test_labeller_recovers_phantom_ground_truth(phantom_root):
    import csv

    from workbench.cxr.studies import iter_studies

    with (phantom_root / "phantom-labels.csv").open() as fh:
        truth = {int(r["study_id"]): {k: int(v) for k, v in r.items()} for r in csv.DictReader(fh)}
    records = list(iter_studies(phantom_root))
    assert len(records) >= 35
    labelled = [label_report(f"{r.findings} {r.impression or ''}") for r in records]
    preds = [lab.concepts for lab in labelled]
    trues = [truth[r.study_id] for r in records]
    # a hedged description (-1) of a present finding still says "present"
    scores = score_labels(preds, trues, PHANTOM_CONCEPTS, uncertain_as_positive=True)
    for name, s in scores.items():
        assert s.f1 is None or s.f1 >= 0.95, (name, s)
    assert sum(s.tp for s in scores.values()) >= 40
    strict = score_labels(preds, trues, PHANTOM_CONCEPTS)
    found = sum(s.tp for s in strict.values()) / sum(s.tp + s.fn for s in strict.values())
    assert found >= 0.85 and sum(s.fp for s in strict.values()) == 0
    # CheXpert labels agree with the phantom's own -chexpert.csv (its text-derived labels)
    agree = [
        lab.chexpert[k] == r.labels[k] for lab, r in zip(labelled, records) for k in CHEXPERT_LABELS
    ]
    assert sum(agree) / len(agree) >= 0.97


def test_report_labels_cli_writes_table_and_scores(tmp_path, capsys):
    import csv
    import json

    from workbench.cxr.labeller.run import main

    texts = tmp_path / "generated.jsonl"
    rows = [
        {"study_id": 1, "findings": "Moderate cardiomegaly. No pleural effusion."},
        {"study_id": 2, "findings": "Possible small left pleural effusion. ET tube in place."},
        {"study_id": 3, "findings": "Lungs are clear."},
    ]
    texts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    truth = tmp_path / "phantom-labels.csv"
    header = ["subject_id", "study_id", *PHANTOM_CONCEPTS]
    truth_rows = [[10, 1, *[0] * 13], [10, 2, *[0] * 13], [11, 3, *[0] * 13]]
    truth_rows[0][2] = 1  # cardiomegaly in study 1
    truth_rows[1][3] = truth_rows[2][3] = 1  # effusion in 2 and (missed by the text) 3
    with truth.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *truth_rows])
    out = tmp_path / "labels.csv"
    assert main(["--input", str(texts), "--out", str(out), "--truth", str(truth)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["texts"] == 3 and summary["scored"] == 3
    eff = summary["scores"]["pleural_effusion"]
    assert (eff["tp"], eff["fp"], eff["fn"]) == (1, 0, 1) and eff["f1"] == pytest.approx(2 / 3)
    assert summary["scores"]["cardiomegaly"]["f1"] == 1.0
    with out.open() as fh:
        table = {int(r["study_id"]): r for r in csv.DictReader(fh)}
    assert table[1]["cardiomegaly"] == "1" and table[1]["Pleural Effusion"] == "0"
    assert table[2]["pleural_effusion"] == "-1" and table[2]["endotracheal_tube"] == "1"
    assert table[3]["pneumothorax"] == "" and table[3]["No Finding"] == "1"
    texts.write_text('{"study_id": "x", "findings": "No effusion."}\n')
    assert main(["--input", str(texts), "--out", str(out)]) == 1
    assert "generated.jsonl: row 1: study_id 'x' is not an integer" in capsys.readouterr().err
