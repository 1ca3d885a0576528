"""The segmentation_results table: replace-by-model+dataset, and the documented queries."""

import re
from pathlib import Path

import duckdb

from segmentation.evaluate import aggregate
from segmentation.results_db import ResultRow, read_results, write_results

DOC = Path(__file__).parents[2] / "docs" / "segmentation.md"


def _rows(ged, dice_f, dice_m):
    return [
        ResultRow("all", "ged", ged, 4),
        ResultRow("sex=F", "dice", dice_f, 2),
        ResultRow("sex=M", "dice", dice_m, 2),
    ]


def test_write_replaces_only_its_model_and_dataset(tmp_path):
    db = tmp_path / "f.duckdb"
    write_results(db, "ssn", "phantom-nodules", _rows(0.2, 0.7, 0.8), "test", 100, "a.pt")
    write_results(db, "unet", "phantom-nodules", _rows(0.4, 0.6, 0.9), "test", 100, "b.pt")
    write_results(db, "ssn", "phantom-nodules", _rows(0.1, 0.75, 0.85), "test", 100, "c.pt")
    rows = read_results(db)
    assert len(rows) == 6
    ssn = {r["metric"] + r["subgroup"]: r["value"] for r in read_results(db, model="ssn")}
    assert ssn["gedall"] == 0.1 and {r["checkpoint"] for r in read_results(db, "ssn")} == {"c.pt"}
    assert read_results(db, model="unet")[0]["checkpoint"] == "b.pt"


def test_documented_queries_run(tmp_path):
    db = tmp_path / "f.duckdb"
    write_results(db, "ssn", "phantom-nodules", _rows(0.1, 0.7, 0.8))
    write_results(db, "unet", "phantom-nodules", _rows(0.4, 0.6, 0.9))
    queries = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(queries) >= 2
    con = duckdb.connect(str(db), read_only=True)
    ged = con.execute(queries[0]).fetchall()
    assert ged == [("ssn", 0.1), ("unet", 0.4)]
    by_sex = con.execute(queries[1]).fetchall()
    assert by_sex == [("ssn", "phantom-nodules", 0.7, 0.8), ("unet", "phantom-nodules", 0.6, 0.9)]


def test_aggregate_means_per_subgroup():
    per_image = [
        {"meta": {"sex": "F", "age_group": "<40"}, "metrics": {"dice": 1.0}},
        {"meta": {"sex": "M", "age_group": None}, "metrics": {"dice": 0.5}},
        {"meta": {"sex": "F", "age_group": "<40"}, "metrics": {"dice": 0.0}},
    ]
    rows = {(r.subgroup, r.metric): (r.value, r.n_images) for r in aggregate(per_image)}
    assert rows == {
        ("all", "dice"): (0.5, 3),
        ("sex=F", "dice"): (0.5, 2),
        ("sex=M", "dice"): (0.5, 1),
        ("age=<40", "dice"): (0.5, 2),
    }
