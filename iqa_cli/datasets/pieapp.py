"""PieAPP (Prashnani et al. 2018): the test set's per-image error scores.

    ROOT/reference_images/test/ref_<n>.png
    ROOT/distorted_images/test/ref_<n>/distort_....png
    ROOT/labels/test/ref_<n>_per_image_score.csv     reference, distorted, error score (lower = better;
                                                     header cells may begin with a space)

The training and validation sets carry only pairwise preferences (``*_pairwise_labels.csv``),
which are not per-image scores: this table holds the test set, split "test". A row whose
distorted name is the reference itself (error 0) is scored against the reference image.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidInputError
from .layout import FileCheck, Folder, check_root, column_index, parse_number, read_csv_table, require_child
from .table import QualityTable, make_rows

SUFFIX = "_per_image_score.csv"


def pieapp_score_files(root: Path) -> list[Path]:
    labels = Folder(root).get("labels")
    test = Folder(labels).get("test") if labels is not None and labels.is_dir() else None
    if test is None or not test.is_dir():
        return []
    return sorted(p for p in Folder(test).files() if p.name.lower().endswith(SUFFIX))


def read_pieapp(root: str | Path) -> QualityTable:
    """PieAPP's test set with its per-image error scores."""
    root = check_root(root, "PieAPP")
    ref_dir = require_child(require_child(root, "reference_images", "PieAPP references", "folder"), "test",
                            "PieAPP test references", "folder")
    dist_root = require_child(require_child(root, "distorted_images", "PieAPP distorted images", "folder"), "test",
                              "PieAPP test distorted images", "folder")
    files = pieapp_score_files(root)
    if not files:
        raise InvalidInputError(f"{root}: no labels/test/ref_<n>{SUFFIX} files (PieAPP's per-image test scores)")
    check = FileCheck(root, "PieAPP")
    dist_folders = Folder(dist_root)
    cols: dict[str, list] = {k: [] for k in ("dist", "ref", "score", "content")}
    used_folders = []
    for path in files:
        header, records = read_csv_table(path, "PieAPP per-image score")
        col_ref = column_index(header, ["reference", "reference image", "ref"])
        col_dist = column_index(header, ["distorted", "distorted image", "image", "dist"])
        col_score = column_index(header, ["error score", "score", "per image score", "error"])
        if None in (col_ref, col_dist, col_score):
            if len(header) != 3:
                raise InvalidInputError(f"{path}: header {','.join(header)[:80]!r} is not PieAPP's (reference, "
                                        "distorted, error score); this is not a per-image score file")
            col_ref, col_dist, col_score = 0, 1, 2
        for line, cells in records:
            if len(cells) <= max(col_ref, col_dist, col_score):
                raise InvalidInputError(f"{path}: line {line} has {len(cells)} cells, expected reference, distorted, "
                                        "error score")
            ref_name, dist_name = cells[col_ref], cells[col_dist]
            score = parse_number(cells[col_score], path, line, "error score")
            ref = check.resolve(ref_dir, ref_name)
            folder = dist_folders.get(Path(ref_name).stem) or dist_root / Path(ref_name).stem
            if folder not in used_folders:
                used_folders.append(folder)
            if dist_name.lower() == ref_name.lower() and Folder(folder).get(dist_name) is None:
                dist = ref  # the reference itself, scored 0
            else:
                dist = check.resolve(folder, dist_name)
            cols["dist"].append(dist)
            cols["ref"].append(ref)
            cols["score"].append(score)
            cols["content"].append(Path(ref_name).stem)
    if not cols["dist"]:
        raise InvalidInputError(f"{files[0].parent}: the per-image score files hold no rows")
    warnings = check.finish(used_folders)
    rows = make_rows(root, split=["test"] * len(cols["dist"]), **cols)
    return QualityTable("pieapp", root, "synthetic", "error", False, None, "official", rows, warnings=warnings)
