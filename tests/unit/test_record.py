"""Recording logic that needs no model: token filtering, rank shares, input collections."""

from __future__ import annotations

import json

import pytest

from workbench.config import ConfigError, parse_config
from workbench.cxr.collection import Collection, Item, Skipped, load_collection
from workbench.cxr.images import CXRDataError
from workbench.record.run import (
    RecordConfig,
    RecordError,
    keep_mask,
    my_share,
    part_dir,
    token_metadata,
)


def _tok(kind, section, image_index=None, **kw):
    return {"kind": kind, "section": section, "image_index": image_index, "token_id": 7, **kw}


TOKENS = [
    _tok("prompt", "template"),  # BOS
    _tok("prompt", "system"),
    _tok("prompt", "instruction"),
    *[_tok("image", "current_frontal", 0, patch_row=0, patch_col=c) for c in range(4)],
    _tok("prompt", "instruction"),
    *[_tok("image", "current_lateral", 1, patch_row=0, patch_col=c) for c in range(4)],
    _tok("prompt", "indication"),
    _tok("prompt", "technique"),
    _tok("prompt", "comparison"),
    _tok("prompt", "template"),
    _tok("report", "findings"),
    _tok("report", "findings"),
]


def _kept(image_tokens, prompt_tokens):
    mask = keep_mask(TOKENS, image_tokens, prompt_tokens)
    return [i for i, k in enumerate(mask) if k]


def test_study_filter_drops_intermediate_image_tokens_and_boilerplate():
    # first/last of each image, the study's own prompt text, every report token
    assert _kept("first_last", "sections") == [3, 6, 8, 11, 12, 13, 14, 16, 17]


def test_filter_modes():
    assert _kept("all", "none") == [3, 4, 5, 6, 8, 9, 10, 11, 16, 17]
    assert _kept("none", "none") == [16, 17]
    assert _kept("none", "all") == [0, 1, 2, 7, 12, 13, 14, 15, 16, 17]


def test_token_metadata_columns():
    keep = keep_mask(TOKENS, "first_last", "none")
    cols = token_metadata(TOKENS, keep, subject_id=42)
    assert cols["kind"] == ["image", "image", "image", "image", "report", "report"]
    assert cols["patch_col"] == [0, 3, 0, 3, None, None]
    assert cols["subject_id"] == [42] * 6
    assert set(cols) >= {"position", "token_id", "token", "kind", "section", "patch_row"}


def test_rank_shares_are_disjoint_and_cover_everything():
    items = [Item(i, 1, {}, "x") for i in (5, 1, 9, 3, 7)]
    col = Collection("table", items, [Skipped(4, "bad")])
    shares = [my_share(col, 0, r, 2) for r in range(2)]
    ids = [sorted(it.study_id for it in s.items) + [s.study_id for s in s.skipped] for s in shares]
    assert sorted(ids[0] + ids[1]) == [1, 3, 4, 5, 7, 9]
    assert not set(ids[0]) & set(ids[1])
    limited = my_share(col, 3, 0, 1)  # the first three ids: 1, 3, 4
    assert [it.study_id for it in limited.items] == [1, 3]
    assert [s.study_id for s in limited.skipped] == [4]


def test_part_dir_single_and_sharded(tmp_path):
    assert part_dir(tmp_path, 0, 1) == tmp_path
    assert part_dir(tmp_path, 1, 2) == tmp_path / "rank1"
    (tmp_path / "rank0").mkdir()
    (tmp_path / "rank0" / "manifest.json").write_text("{}")
    assert part_dir(tmp_path, 0, 1) == tmp_path / "rank0"  # resume a sharded store alone
    single = tmp_path / "single"
    single.mkdir()
    (single / "manifest.json").write_text("{}")
    with pytest.raises(RecordError, match="single-process store"):
        part_dir(single, 0, 2)


def test_config_from_cli_and_validation():
    cfg = parse_config(RecordConfig, ["--layer", "3", "--image-tokens", "all", "--split", "test"])
    assert (cfg.layer, cfg.image_tokens, cfg.split) == (3, "all", "test")
    with pytest.raises(SystemExit):
        parse_config(RecordConfig, ["--image-tokens", "some"])
    with pytest.raises(ValueError, match="layer"):
        RecordConfig(layer=-2).validate()
    with pytest.raises(ConfigError):
        from workbench.config import from_dict

        from_dict(RecordConfig, {"layers": 3})


def test_table_collections(tmp_path):
    csv = tmp_path / "r.csv"
    csv.write_text('study_id,text\n12,"Small left effusion."\n7,""\n3,No pneumothorax.\n')
    col = load_collection(csv)
    assert col.kind == "table"
    assert [(it.study_id, it.findings) for it in col.items] == [
        (3, "No pneumothorax."),
        (12, "Small left effusion."),
    ]
    assert col.skipped == [Skipped(7, "empty 'text'")]
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("\n".join(json.dumps({"report": t}) for t in ("a b", "c d")) + "\n")
    col = load_collection(jsonl, text_column="report")
    assert [it.study_id for it in col.items] == [0, 1]  # row numbers without an id column
    with pytest.raises(ValueError, match="no column 'text'"):
        load_collection(jsonl)
    with pytest.raises(ValueError, match="unknown table format"):
        (tmp_path / "r.xlsx").write_text("x")
        load_collection(tmp_path / "r.xlsx")


def test_reports_tree_collection(tmp_path):
    study = tmp_path / "files" / "p10" / "p10000032" / "s50414267.txt"
    study.parent.mkdir(parents=True)
    study.write_text(
        "FINAL REPORT\n INDICATION: Cough.\n\n FINDINGS: Small left effusion.\n\n"
        " IMPRESSION: Effusion.\n"
    )
    bare = study.with_name("s50000001.txt")
    bare.write_text("FINAL REPORT\n IMPRESSION: Nothing acute.\n")
    col = load_collection(tmp_path)
    assert col.kind == "reports"
    [item] = col.items
    assert (item.study_id, item.subject_id) == (50414267, 10000032)
    assert item.findings == "Small left effusion." and item.source["indication"] == "Cough."
    assert [s.study_id for s in col.skipped] == [50000001]
    with pytest.raises(CXRDataError, match="neither"):
        (tmp_path / "empty").mkdir()
        load_collection(tmp_path / "empty")


def _tree(root):
    """Three reports: both sections, FINDINGS only, IMPRESSION only."""
    texts = {
        (10000032, 50000001): " FINDINGS: Small left effusion.\n\n IMPRESSION: Effusion.\n",
        (10000032, 50000002): " FINDINGS: Lungs are clear.\n",
        (10000099, 50000003): " IMPRESSION: No acute process.\n",
    }
    for (subject, study), body in texts.items():
        path = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("FINAL REPORT\n INDICATION: Cough.\n\n" + body)
    return root


def test_reports_tree_sections(tmp_path):
    root = _tree(tmp_path)
    got = {s: load_collection(root, sections=s) for s in ("findings", "impression", "both")}
    assert [(it.study_id, it.findings, it.impression) for it in got["findings"].items] == [
        (50000001, "Small left effusion.", None),
        (50000002, "Lungs are clear.", None),
    ]
    assert [s.study_id for s in got["findings"].skipped] == [50000003]
    assert "no FINDINGS" in got["findings"].skipped[0].reason
    assert [(it.study_id, it.impression) for it in got["impression"].items] == [
        (50000001, "Effusion."),
        (50000003, "No acute process."),
    ]
    assert [it.findings for it in got["impression"].items] == [None, None]
    [both] = got["both"].items
    assert (both.findings, both.impression) == ("Small left effusion.", "Effusion.")
    assert [s.study_id for s in got["both"].skipped] == [50000002, 50000003]
    only = load_collection(root, sections="both", only=[50000001, 7])
    assert [it.study_id for it in only.items] == [50000001] and only.skipped == []
    with pytest.raises(ValueError, match="sections must be one of"):
        load_collection(root, sections="all")


def test_table_sections_and_columns(tmp_path):
    csv = tmp_path / "r.csv"
    csv.write_text("study_id,findings,impression\n1,Small effusion.,Effusion.\n2,Clear lungs.,\n")
    both = load_collection(csv, sections="both")
    assert [(it.study_id, it.findings, it.impression) for it in both.items] == [
        (1, "Small effusion.", "Effusion.")
    ]
    assert both.skipped == [Skipped(2, "empty 'impression'")]
    # without the text column, a single section reads the column named after it
    imp = load_collection(csv, sections="impression")
    assert [(it.study_id, it.findings, it.impression) for it in imp.items] == [
        (1, None, "Effusion.")
    ]
    text = tmp_path / "t.csv"
    text.write_text("study_id,text\n5,No effusion.\n")
    [item] = load_collection(text, sections="impression").items
    assert (item.findings, item.impression) == (None, "No effusion.")
    with pytest.raises(ValueError, match=r"no column \['findings', 'impression'\]"):
        load_collection(text, sections="both")
    bad = tmp_path / "bad.csv"
    bad.write_text("study_id,text\nx,No effusion.\n")
    with pytest.raises(ValueError, match="row 1: study_id 'x' is not an integer"):
        load_collection(bad)


def test_study_ids_and_texts(tmp_path):
    from workbench.cxr.collection import study_ids, study_texts

    root = _tree(tmp_path / "tree")
    assert study_ids(root) == [50000001, 50000002, 50000003]
    assert study_texts(root, [50000001, 50000003]) == {
        50000001: ("Small left effusion.", "Effusion."),
        50000003: (None, "No acute process."),
    }
    csv = tmp_path / "r.csv"
    csv.write_text("text\nNo effusion.\nSmall effusion.\n")
    assert study_ids(csv) == [0, 1]
    assert study_texts(csv, [1]) == {1: ("Small effusion.", None)}
    assert study_texts(csv, [1], sections="impression") == {1: (None, "Small effusion.")}
