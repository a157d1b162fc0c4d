"""KonIQ-10k (Hosu et al. 2020): 10,073 authentic photographs, crowd MOS, official sets.

    ROOT/1024x768/*.jpg                           the originals
    ROOT/512x384/*.jpg                            the official downscaled copy
    ROOT/koniq10k_scores_and_distributions.csv    image_name,c1,...,c5,c_total,MOS,SD,MOS_zscore
    ROOT/koniq10k_distributions_sets.csv          (optional) ... with a ``set`` column:
                                                  training 7058 / validation 1000 / test 2015

``MOS`` is on 1-5, ``MOS_zscore`` on about 0-100, both higher = better. With the sets file the
table carries the official split (train / val / test); without it, evaluations split by image.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidInputError
from .layout import FileCheck, Folder, check_root, column_index, parse_number, read_csv_table, require_child
from .table import QualityTable, make_rows

SCORE_FILE = "koniq10k_scores_and_distributions.csv"
SETS_FILE = "koniq10k_distributions_sets.csv"
RESOLUTIONS = ("1024x768", "512x384")
SCORES = {"MOS": (1.0, 5.0), "MOS_zscore": (0.0, 100.0)}


def read_koniq10k(root: str | Path, resolution: str = "auto", score: str = "MOS") -> QualityTable:
    """KonIQ-10k from the ``resolution`` folder (auto: 1024x768 when present, else 512x384),
    scored by ``score`` (MOS or MOS_zscore)."""
    if resolution not in ("auto", *RESOLUTIONS):
        raise InvalidInputError(f"KonIQ-10k resolution {resolution!r}: choose auto, {', '.join(RESOLUTIONS)}")
    names = {s.lower(): s for s in SCORES}
    if str(score).lower() not in names:
        raise InvalidInputError(f"KonIQ-10k score {score!r}: choose one of {', '.join(SCORES)}")
    score = names[str(score).lower()]
    root = check_root(root, "KonIQ-10k")
    folder = Folder(root)
    if resolution == "auto":
        image_dir = next((p for p in map(folder.get, RESOLUTIONS) if p is not None and p.is_dir()), None)
        if image_dir is None:
            raise InvalidInputError(f"{root}: no 1024x768/ or 512x384/ folder here (the KonIQ-10k images)")
    else:
        image_dir = require_child(root, resolution, f"KonIQ-10k {resolution} images", "folder")
    path = require_child(root, SCORE_FILE, "KonIQ-10k scores")
    header, records = read_csv_table(path, "KonIQ-10k scores")
    col_name, col_score = column_index(header, ["image_name"]), column_index(header, [score])
    if col_name is None or col_score is None:
        raise InvalidInputError(f"{path}: header {','.join(header)[:80]!r} has no image_name and {score} columns; "
                                "this is not the KonIQ-10k score file")
    splits = _read_sets(folder.get(SETS_FILE))
    check = FileCheck(root, "KonIQ-10k")
    dist, scores, split = [], [], []
    for line, cells in records:
        if len(cells) <= max(col_name, col_score) or not cells[col_name]:
            raise InvalidInputError(f"{path}: line {line} has no image_name or {score} cell")
        dist.append(check.resolve(image_dir, cells[col_name]))
        scores.append(parse_number(cells[col_score], path, line, score))
        split.append(splits.get(cells[col_name].lower(), "") if splits else "")
    if not dist:
        raise InvalidInputError(f"{path}: no rows after the header")
    warnings = check.finish([image_dir])
    if splits and not all(split):
        warnings += (f"{sum(1 for s in split if not s)} image(s) are in no set of {SETS_FILE}",)
    rows = make_rows(root, dist, score=scores, split=split)
    return QualityTable("koniq10k", root, "authentic", score, True, SCORES[score], "official" if splits else "image",
                        rows, options={"resolution": image_dir.name, "score": score}, warnings=warnings)


def _read_sets(path: Path | None) -> dict[str, str]:
    """image name (lower case) -> set, from the optional sets file."""
    if path is None or not path.is_file():
        return {}
    header, records = read_csv_table(path, "KonIQ-10k sets")
    col_name, col_set = column_index(header, ["image_name"]), column_index(header, ["set"])
    if col_name is None or col_set is None:
        raise InvalidInputError(f"{path}: header {','.join(header)[:80]!r} has no image_name and set columns; this "
                                "is not the KonIQ-10k sets file")
    return {cells[col_name].lower(): cells[col_set] for _, cells in records
            if len(cells) > max(col_name, col_set) and cells[col_set]}
