"""Image localisation of features against the phantom's ground-truth masks.

For every feature that lives mostly on image tokens and every phantom concept with a mask
(findings and devices, ``masks/pXX/pSUBJECT/sSTUDY/<frontal dicom>/<concept>.png``), over the
studies where the concept is present:

- the **pointing game** (Zhang et al. 2018): the fraction of studies whose peak patch (the
  frontal image patch where the feature is largest) lies inside the mask dilated by one
  patch; a study where the feature is silent on the image is a miss;
- the **patch AUROC**: activation (0 when silent) of patches that overlap the mask against
  the other patches of the same images.

Masks are mapped to the patch grid the way the processor maps the image: the central square
of the image (MAIRA-2 resizes the short side and centre-crops) cut into the grid stored in
``tokens.patch_row / patch_col``; a patch's coverage is the share of its pixels in the mask.
Only the current frontal image counts (section ``current_frontal``; for stores without image
sections, the first image of the study).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from workbench.analyse.concepts import MAX_BLOCK_ENTRIES
from workbench.stats import auroc_sparse

_FRONTAL = """
    CREATE TEMP TABLE _frontal AS
    SELECT row, study_id, patch_row, patch_col FROM tokens
    WHERE kind = 'image' AND patch_row IS NOT NULL AND patch_col IS NOT NULL
      AND (section = 'current_frontal'
           OR NOT EXISTS (SELECT 1 FROM tokens WHERE section = 'current_frontal'))
    QUALIFY row_number() OVER (PARTITION BY study_id, patch_row, patch_col ORDER BY row) = 1
"""


def patch_coverage(mask: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """Share of each patch's pixels inside ``mask`` ([H, W] bool) on an n_rows x n_cols grid
    over the image's central square."""
    h, w = mask.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = mask[top : top + side, left : left + side].astype(np.float32)
    img = Image.fromarray(square, mode="F").resize((n_cols, n_rows), Image.Resampling.BOX)
    return np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)


def dilate(inside: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by ``steps`` patches (8-neighbourhood)."""
    out = inside.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown[1:, 1:] |= out[:-1, :-1]
        grown[:-1, :-1] |= out[1:, 1:]
        grown[1:, :-1] |= out[:-1, 1:]
        grown[:-1, 1:] |= out[1:, :-1]
        out = grown
    return out


def read_mask(path: Path) -> np.ndarray:
    """A 0/255 PNG as bool [H, W]."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 127


def _mask_dir(root: Path, subject: int, study: int, frontal_path: str) -> Path:
    s = str(subject)
    dicom = Path(frontal_path).stem
    return root / "masks" / f"p{s[:2]}" / f"p{s}" / f"s{study}" / dicom


def patch_labels(con, root: Path, dilation: int, notes: list[str]) -> pa.Table | None:
    """(study, concept, patch_row, patch_col, coverage, inside_dilated) for every stored
    frontal patch of every positive study that has the concept's mask; None without any."""
    from workbench.cxr.findings import DEVICES, FINDINGS

    pos = con.execute(
        """SELECT l.study_id, l.concept, s.subject_id, s.frontal_path
           FROM study_labels l JOIN studies s USING (study_id)
           WHERE l.source = 'phantom' AND l.value = 1 AND s.frontal_path IS NOT NULL
             AND l.study_id IN (SELECT study_id FROM _frontal)
           ORDER BY l.study_id, l.concept"""
    ).fetchall()
    grids = {
        r[0]: (r[1] + 1, r[2] + 1)
        for r in con.execute(
            "SELECT study_id, max(patch_row), max(patch_col) FROM _frontal GROUP BY 1"
        ).fetchall()
    }
    cols: dict[str, list] = {k: [] for k in ("study_id", "concept", "patch_row", "patch_col",
                                             "coverage", "inside_dilated")}  # fmt: skip
    missing = 0
    for study, concept, subject, frontal in pos:
        if concept not in FINDINGS + DEVICES:
            continue
        path = _mask_dir(root, subject, study, frontal) / f"{concept}.png"
        if not path.exists():
            missing += 1
            continue
        n_rows, n_cols = grids[study]
        cover = patch_coverage(read_mask(path), n_rows, n_cols)
        near = dilate(cover > 0, dilation)
        r, c = np.indices(cover.shape)
        cols["study_id"] += [study] * cover.size
        cols["concept"] += [concept] * cover.size
        cols["patch_row"] += r.ravel().tolist()
        cols["patch_col"] += c.ravel().tolist()
        cols["coverage"] += cover.ravel().tolist()
        cols["inside_dilated"] += near.ravel().tolist()
    if missing:
        notes.append(f"{missing} positive (study, concept) pairs have no mask under {root}/masks")
    return pa.table(cols) if cols["study_id"] else None


def _peaks(con, acts: str) -> None:
    """``_fa`` (image-feature activations on frontal patches) and ``_peak`` per study."""
    con.execute(
        f"""CREATE TEMP TABLE _fa AS
            SELECT a.feature, f.study_id, f.patch_row, f.patch_col, a.value
            FROM {acts} a JOIN _frontal f ON a.row = f.row
            WHERE a.feature IN (SELECT feature FROM _loc_features)
              AND f.study_id IN (SELECT study_id FROM _pl)"""
    )
    con.execute(
        """CREATE TEMP TABLE _peak AS
           SELECT feature, study_id, arg_max(patch_row * 100000 + patch_col, value) AS cell
           FROM _fa GROUP BY ALL"""
    )


def _pointing(con, features: np.ndarray, concepts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pointing-game hits [F_loc, C] and positive studies per concept [C]."""
    hits = np.zeros((len(features), len(concepts)))
    got = con.execute(
        """SELECT p.feature, l.concept, count(*) AS hits FROM _peak p JOIN _pl l
             ON l.study_id = p.study_id AND l.patch_row * 100000 + l.patch_col = p.cell
           WHERE l.inside_dilated GROUP BY ALL"""
    ).fetchnumpy()
    col = {c: j for j, c in enumerate(concepts)}
    f_idx = np.searchsorted(features, np.asarray(got["feature"]))
    c_idx = np.array([col[c] for c in got["concept"]], np.int64)
    hits[f_idx, c_idx] = got["hits"]
    n = dict(con.execute("SELECT concept, count(DISTINCT study_id) FROM _pl GROUP BY 1").fetchall())
    return hits, np.array([n[c] for c in concepts], np.float64)


def _patch_entries(con, concepts: list[str], features: np.ndarray) -> tuple:
    """Labels [cells, C] (1 overlaps the mask, 0 not, NaN: concept absent in the study) and
    the (feature position, cell, value) entries of the activations, sorted by feature."""
    con.execute(
        """CREATE TEMP TABLE _cells AS
           SELECT (row_number() OVER (ORDER BY study_id, patch_row, patch_col) - 1)::BIGINT
                  AS idx, study_id, patch_row, patch_col
           FROM (SELECT DISTINCT study_id, patch_row, patch_col FROM _pl)"""
    )
    n_cells = con.execute("SELECT count(*) FROM _cells").fetchone()[0]
    lab = con.execute(
        "SELECT c.idx, l.concept, l.coverage > 0 AS inside FROM _pl l JOIN _cells c "
        "USING (study_id, patch_row, patch_col)"
    ).fetchnumpy()
    col = {c: j for j, c in enumerate(concepts)}
    labels = np.full((n_cells, len(concepts)), np.nan)
    c_idx = np.array([col[c] for c in lab["concept"]], np.int64)
    labels[np.asarray(lab["idx"]), c_idx] = np.asarray(lab["inside"], np.float64)
    got = con.execute(
        "SELECT a.feature, c.idx, a.value FROM _fa a JOIN _cells c "
        "USING (study_id, patch_row, patch_col) ORDER BY a.feature"
    ).fetchnumpy()
    con.execute("DROP TABLE _cells")
    where = np.searchsorted(features, np.asarray(got["feature"]))
    return labels, where, np.asarray(got["idx"], np.int64), np.asarray(got["value"], np.float64)


def _patch_scores(con, concepts: list[str], features: np.ndarray) -> dict[str, np.ndarray]:
    """Patch AUROC and mean activation inside / outside the mask per (feature, concept)."""
    labels, where, idx, vals = _patch_entries(con, concepts, features)
    F, C = len(features), len(concepts)
    auc = np.full((F, C), np.nan)
    bounds = np.searchsorted(where, np.arange(F + 1))
    f0 = 0
    while f0 < F:  # blocks of features with at most MAX_BLOCK_ENTRIES entries (memory)
        f1 = int(np.searchsorted(bounds, bounds[f0] + MAX_BLOCK_ENTRIES, side="right")) - 1
        f1 = min(max(f1, f0 + 1), F)
        sl = slice(bounds[f0], bounds[f1])
        auc[f0:f1] = auroc_sparse(where[sl], idx[sl], vals[sl], labels, f0, f1 - f0)
        f0 = f1
    inside, outside = labels == 1, labels == 0
    sums = {"in": np.zeros((F, C)), "out": np.zeros((F, C))}
    for name, mask in (("in", inside), ("out", outside)):
        for j in range(C):
            sums[name][:, j] = np.bincount(where, vals * mask[idx, j], minlength=F)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "patch_auroc": auc,
            "mean_inside": sums["in"] / inside.sum(0),
            "mean_outside": sums["out"] / outside.sum(0),
        }


def write_localisation(
    con, acts: str, data_root: Path | None, min_image: float, dilation: int, notes: list[str]
) -> None:
    """``feature_localisation`` for features with >= ``min_image`` of their mass on images."""
    if data_root is None or not (Path(data_root) / "masks").is_dir():
        notes.append("no masks/ in the dataset: feature_localisation not computed")
        return
    con.execute(_FRONTAL)
    table = patch_labels(con, Path(data_root), dilation, notes)
    if table is None:
        notes.append("no stored frontal patches of positive studies with masks: no localisation")
        con.execute("DROP TABLE _frontal")
        return
    con.register("_pl_src", table)
    con.execute("CREATE TEMP TABLE _pl AS SELECT * FROM _pl_src")
    con.unregister("_pl_src")
    con.execute(
        "CREATE TEMP TABLE _loc_features AS SELECT feature FROM feature_stats "
        f"WHERE NOT dead AND frac_image >= {float(min_image)}"
    )
    _peaks(con, acts)
    features = con.execute("SELECT feature FROM _loc_features ORDER BY 1").fetchnumpy()["feature"]
    features = np.asarray(features, np.int64)
    concepts = [r[0] for r in con.execute("SELECT DISTINCT concept FROM _pl ORDER BY 1").fetchall()]
    scores = _patch_scores(con, concepts, features)
    hits, n = _pointing(con, features, concepts)
    F, C = len(features), len(concepts)
    out = {
        "feature": np.repeat(features.astype(np.int32), C),
        "concept": np.tile(np.asarray(concepts, object), F),
        "n_studies": np.tile(n.astype(np.int32), F),
        "pointing_game": (hits / n).ravel(),
        **{k: pa.array(scores[k].ravel(), from_pandas=True)
           for k in ("patch_auroc", "mean_inside", "mean_outside")},
    }  # fmt: skip
    con.register("_loc", pa.table(out))
    con.execute("INSERT INTO feature_localisation SELECT * FROM _loc ORDER BY feature, concept")
    con.unregister("_loc")
    for name in ("_fa", "_peak", "_loc_features", "_pl", "_frontal"):
        con.execute(f"DROP TABLE {name}")
