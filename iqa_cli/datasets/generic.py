"""Any database described by one CSV: ``dist,ref,score`` (full-reference) or ``image,score``.

Image paths are relative to the CSV's folder (absolute paths work too). Columns are found by
their usual names, or named by options; optional columns give the content id, distortion type,
level and official split. The score column may be left out (scores NaN: a list of images to
score). Without ``higher_better`` the score is taken as higher = better unless its column is
called DMOS.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidInputError
from .layout import (FileCheck, Folder, check_root, column_index, listing, named_file, parse_int, parse_number,
                     read_csv_table)
from .table import KINDS, PROTOCOLS, QualityTable, make_rows

# option -> the header names tried when the option is not given
AUTO_COLUMNS = {
    "dist_column": ("dist", "distorted", "dist_img", "distorted_image", "image", "img", "image_name", "filename",
                    "file", "path", "name"),
    "ref_column": ("ref", "reference", "ref_img", "reference_image"),
    "score_column": ("score", "mos", "dmos", "quality", "rating", "mos_zscore"),
    "content_column": ("content",),
    "type_column": ("type", "distortion", "distortion_type"),
    "level_column": ("level", "distortion_level"),
    "split_column": ("split", "set"),
}


def generic_csv(root: Path, csv: str | None = None) -> Path | None:
    """The CSV of a generic database: ``root`` itself when it is a .csv file, ``csv`` under root
    when given, else the one .csv in root; None when there is none (or several)."""
    if root.is_file():
        return root if root.suffix.lower() == ".csv" else None
    if csv is not None:
        return named_file(root, csv, "csv", "database CSV")
    found = [p for p in Folder(root).files() if p.suffix.lower() == ".csv"]
    return found[0] if len(found) == 1 else None


def read_csv_database(root: str | Path, csv: str | None = None, dist_column: str | None = None,
                      ref_column: str | None = None, score_column: str | None = None,
                      content_column: str | None = None, type_column: str | None = None,
                      level_column: str | None = None, split_column: str | None = None,
                      higher_better: bool | None = None, score_name: str | None = None,
                      kind: str | None = None, protocol: str | None = None) -> QualityTable:
    """A database from one CSV (see the module doc). ``root`` is the CSV file, or its folder."""
    root = Path(root)
    if not root.is_file():
        check_root(root, "database (or the CSV file itself)")
    path = generic_csv(root, csv)
    if path is None:
        found = [p.name for p in Folder(root).files() if p.suffix.lower() == ".csv"] if root.is_dir() else []
        what = f"{len(found)} CSV files ({listing(found, 3)}): name one with csv=NAME" if found else "no CSV file"
        raise InvalidInputError(f"{root}: {what} (a generic database is one CSV: dist,ref,score or image,score)")
    if kind is not None and kind not in KINDS:
        raise InvalidInputError(f"kind {kind!r}: choose one of {', '.join(KINDS)}")
    if protocol is not None and protocol not in PROTOCOLS:
        raise InvalidInputError(f"protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    base = path.parent
    header, records = read_csv_table(path, "database")
    given = {"dist_column": dist_column, "ref_column": ref_column, "score_column": score_column,
             "content_column": content_column, "type_column": type_column, "level_column": level_column,
             "split_column": split_column}
    cols: dict[str, int | None] = {}
    used: set[int] = set()
    for option, name in given.items():
        if name is not None:
            index = column_index(header, [name])
            if index is None:
                raise InvalidInputError(f"{path}: no column {name!r} ({option}); the header has "
                                        f"{listing(header, 12)}")
        else:
            index = column_index(header, AUTO_COLUMNS[option])
            index = None if index in used else index  # 'image' may not serve as both dist and ref
        cols[option] = index
        if index is not None:
            used.add(index)
    if cols["dist_column"] is None:
        raise InvalidInputError(f"{path}: no image column (tried {', '.join(AUTO_COLUMNS['dist_column'][:6])}, ...); "
                                f"the header has {listing(header, 12)}; name it with dist_column=NAME")
    if not records:
        raise InvalidInputError(f"{path}: no rows after the header")
    score_header = header[cols["score_column"]] if cols["score_column"] is not None else ""
    if higher_better is None:
        higher_better = score_header.strip().lower() != "dmos"
    check = FileCheck(base, "listed")
    out: dict[str, list] = {k: [] for k in ("dist", "ref", "score", "content", "type", "level", "split")}
    for line, cells in records:
        def cell(option):
            j = cols[option]
            return cells[j] if j is not None and j < len(cells) else ""

        if not cell("dist_column"):
            raise InvalidInputError(f"{path}: line {line}: empty image path")
        dist = check.resolve_relative(base, cell("dist_column"))
        ref = check.resolve_relative(base, cell("ref_column")) if cell("ref_column") else None
        out["dist"].append(dist)
        out["ref"].append(ref)
        out["score"].append(parse_number(cell("score_column"), path, line, score_header or "score")
                            if cols["score_column"] is not None else float("nan"))
        out["content"].append(cell("content_column") or Path(ref if ref is not None else dist).stem)
        out["type"].append(cell("type_column"))
        out["level"].append(parse_int(cell("level_column"), path, line, "level") if cell("level_column") else 0)
        out["split"].append(cell("split_column"))
    check.raise_missing()
    has_refs = cols["ref_column"] is not None
    has_split = any(out["split"])
    rows = make_rows(path.parent, **out)
    options = {"csv": path.name, "higher_better": bool(higher_better),
               **{k: header[v] for k, v in cols.items() if v is not None}}
    return QualityTable("csv", path.parent, kind or ("synthetic" if has_refs else "authentic"),
                        score_name or score_header or "score", bool(higher_better), None,
                        protocol or ("official" if has_split else "content" if has_refs else "image"), rows,
                        options=options)

