"""SPAQ (Fang et al. 2020): 11,125 smartphone photographs, MOS 0-100 (higher = better).

    ROOT/TestImage/00001.jpg ...
    ROOT/Annotations/MOS and Image attribute scores.xlsx      columns "Image name", "MOS", attributes

The photos are large (about 4000x3000); the authors resize the shorter side to 512 before
scoring, which the table records as ``short_side = 512``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidInputError
from .layout import FileCheck, Folder, check_root, column_index, parse_number, read_sheets, require_child
from .table import QualityTable, make_rows

SCORE_FILE = "MOS and Image attribute scores.xlsx"
SHORT_SIDE = 512


def spaq_annotations(root: Path) -> Path | None:
    """Annotations/<the MOS spreadsheet>, or the one .xlsx in Annotations/; None when absent."""
    folder = Folder(root).get("Annotations")
    if folder is None or not folder.is_dir():
        return None
    listing = Folder(folder)
    path = listing.get(SCORE_FILE)
    if path is not None and path.is_file():
        return path
    sheets = [p for p in listing.files() if p.suffix.lower() == ".xlsx" and not p.name.startswith("~$")]
    return sheets[0] if len(sheets) == 1 else None


def read_spaq(root: str | Path) -> QualityTable:
    root = check_root(root, "SPAQ")
    image_dir = require_child(root, "TestImage", "SPAQ images", "folder")
    path = spaq_annotations(root)
    if path is None:
        raise InvalidInputError(f"{root}: no Annotations/{SCORE_FILE} here (the SPAQ scores)")
    for sheet, grid in read_sheets(path).items():
        header = grid[0] if grid else []
        col_name, col_mos = column_index(header, ["Image name", "image_name", "image"]), column_index(header, ["MOS"])
        if col_name is not None and col_mos is not None:
            break
    else:
        raise InvalidInputError(f"{path}: no sheet whose first row has 'Image name' and 'MOS' columns; this is not "
                                "SPAQ's score spreadsheet")
    check = FileCheck(root, "SPAQ")
    dist, scores = [], []
    for i, row in enumerate(grid[1:], start=2):
        name = row[col_name] if col_name < len(row) else ""
        if not name:
            continue  # blank rows
        dist.append(check.resolve(image_dir, name))
        value = row[col_mos] if col_mos < len(row) else ""
        scores.append(parse_number(value, path, f"sheet {sheet!r} row {i}", "MOS"))
    if not dist:
        raise InvalidInputError(f"{path}: no rows under the header")
    warnings = check.finish([image_dir])
    rows = make_rows(root, dist, score=scores)
    return QualityTable("spaq", root, "authentic", "MOS", True, (0.0, 100.0), "image", rows, warnings=warnings,
                        short_side=SHORT_SIDE)
