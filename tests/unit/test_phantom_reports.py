"""Reports say what the ground truth says, in varied MIMIC-style wording."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import pytest

from workbench.cxr.findings import CHEXPERT_LABELS, CHEXPERT_OF, DEVICES, FINDINGS
from workbench.cxr.phantom.cohort import PREVALENCE, plan_subjects, rng_for, subject_studies
from workbench.cxr.phantom.reports import merge_labels, phrases, write_report

COMPARISON_WORDS = re.compile(
    r"\b(interval|unchanged|increased|decreased|resolved|stable|previously|no longer|"
    r"has been|persistent|worsening|improving|now)\b",
    re.I,
)


@pytest.fixture(scope="module")
def corpus() -> list[tuple[dict, object]]:
    out = []
    for subject, first, n in plan_subjects(11, 600, (0.8, 0.1)):
        for study in subject_studies(11, subject, first, n):
            out.append((study, write_report(study, rng_for(11, 4, study["study_index"]))))
    return out


def test_prevalences_in_requested_band(corpus):
    n = len(corpus)
    counts = Counter(c for s, _ in corpus for c in [*s["findings"], *s["devices"]])
    for name in PREVALENCE:
        assert 0.08 <= counts[name] / n <= 0.37, (name, counts[name] / n)
    normal = sum(not s["findings"] and not s["devices"] for s, _ in corpus) / n
    assert 0.12 <= normal <= 0.3
    assert all(1 <= k <= 4 for k in Counter(s["subject_id"] for s, _ in corpus).values())


def test_labels_follow_ground_truth(corpus):
    for study, report in corpus:
        present = {**study["findings"], **study["devices"]}
        for name in FINDINGS:
            primary = CHEXPERT_OF[name][0]
            if name in present:
                expected = -1.0 if name in report.hedged else 1.0
                assert report.labels[primary] in (expected, 1.0), (name, report.sections)
            else:
                assert report.labels[primary] in (0.0, None), (name, report.sections)
        has_dev = any(d in present for d in DEVICES)
        assert (report.labels["Support Devices"] == 1.0) == has_dev
        pathology = [k for k in CHEXPERT_LABELS if k not in ("No Finding", "Support Devices")]
        if report.labels["No Finding"] == 1.0:
            assert not any(report.labels[k] in (1.0, -1.0) for k in pathology)
        if not study["findings"]:
            assert report.labels["No Finding"] == 1.0


def test_negations_and_normal_statements(corpus):
    for study, report in corpus:
        absent = not {"pleural_effusion", "pneumothorax"} & set(study["findings"])
        if absent and not study["changes"]:
            assert report.labels["Pleural Effusion"] == 0.0
            assert report.labels["Pneumothorax"] == 0.0
    texts = " ".join(r.sections["findings"] for _, r in corpus)
    assert "No pleural effusion or pneumothorax." in texts
    assert any(p in texts for p in phrases()["clear_lungs"])


def test_hedging_is_uncertain(corpus):
    hedged = [(s, r) for s, r in corpus if r.hedged]
    assert len(hedged) > 10
    for _, report in hedged:
        for name in report.hedged:
            assert report.labels[CHEXPERT_OF[name][0]] in (-1.0, 1.0)
    assert any(r.labels[CHEXPERT_OF[n][0]] == -1.0 for _, r in hedged for n in r.hedged)


def test_comparison_language_only_with_a_prior(corpus):
    with_change = 0
    for study, report in corpus:
        text = report.sections["findings"] + " " + report.sections["impression"]
        if study["prior_study_id"] is None:
            assert not COMPARISON_WORDS.search(text), text
            assert report.sections["comparison"] == "None."
        elif any(c != "unchanged" for c in study["changes"].values()):
            with_change += bool(COMPARISON_WORDS.search(text))
    assert with_change > 50


def test_new_devices_are_described_as_placed(corpus):
    hits = total = 0
    for study, report in corpus:
        for name, change in study["changes"].items():
            if name in DEVICES and change == "new":
                total += 1
                hits += bool(
                    re.search(
                        r"interval|has been placed|\bnew(ly)?\b", report.sections["findings"], re.I
                    )
                )
    assert total > 10 and hits == total


def test_wording_varies_per_finding(corpus):
    sentences = defaultdict(Counter)
    for _study, report in corpus:
        for sent in re.split(r"(?<=\.) ", report.sections["findings"]):
            for name in ("pleural_effusion", "pneumothorax", "consolidation", "pacemaker"):
                if name.split("_")[0] in sent.lower():
                    sentences[name][re.sub(r"\d+(\.\d+)?", "#", sent)] += 1
    for name, counts in sentences.items():
        assert len(counts) >= 8, (name, counts.most_common(3))
        assert counts.most_common(1)[0][1] < 0.35 * sum(counts.values()), name


def test_findings_are_compact(corpus):
    words = [len(r.sections["findings"].split()) for _, r in corpus]
    assert sorted(words)[int(0.97 * len(words))] <= 80 and max(words) <= 110
    assert min(words) >= 4
    assert 25 <= sum(words) / len(words) <= 60


def test_merge_labels_priority():
    merged = merge_labels(
        [{"Edema": 0.0}, {"Edema": -1.0}, {"Atelectasis": 0.0}, {"Atelectasis": 1.0}]
    )
    assert merged["Edema"] == -1.0 and merged["Atelectasis"] == 1.0
    assert merged["No Finding"] is None and merged["Pneumonia"] is None
    assert merge_labels([{"Support Devices": 1.0}])["No Finding"] == 1.0


def test_report_is_deterministic(corpus):
    study, report = corpus[5]
    again = write_report(study, rng_for(11, 4, study["study_index"]))
    assert again == report


def test_every_template_fills_for_every_parameter_set():
    from workbench.cxr.phantom.cohort import sample_params
    from workbench.cxr.phantom.reports import _fill, _vars

    ph = phrases()
    families = [ph["present"], ph["hedged"], *ph["change"].values()]
    for name in FINDINGS + DEVICES:
        for seed in range(25):
            p = sample_params(name, rng_for(seed, 99))
            v = _vars(name, p)
            for desc in ph["desc"][name]:
                v["desc"] = _fill(desc, v).lower()
                for fam in families:
                    for key in (name, f"{name}_low", f"{name}_high"):
                        for entry in fam.get(key, []):
                            text = _fill(entry["text"] if isinstance(entry, dict) else entry, v)
                            assert "{" not in text and "  " not in text, text
                            assert text[0].isupper() or text[0].isdigit(), text
                            assert text.endswith("."), text
