"""CSIQ (Larson & Chandler 2010): 30 references, 6 distortion types, DMOS in [0, 1] (lower = better).

    ROOT/src_imgs/<ref>.png
    ROOT/dst_imgs/<folder>/<ref>.<TYPE>.<level>.png    TYPE: AWGN BLUR JPEG jpeg2000 fnoise contrast
    ROOT/csiq.DMOS.xlsx                                 the official spreadsheet, or
    ROOT/csiq_label.txt                                 the common text export: "<distorted name> <dmos>"

The spreadsheet's column names are not documented reliably, so its columns are found by what
they hold: reference names that exist in ``src_imgs/`` (or whole distorted file names), type
names, whole-number levels and DMOS values in [0, 1]; header words break ties (``lev``, ``dmos``
but not ``std``). Folder names vary in case between copies (``awgn`` / ``AWGN``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..errors import InvalidInputError
from .layout import (FileCheck, Folder, check_root, listing, named_file, parse_number, read_sheets, require_child,
                     text_lines)
from .table import QualityTable, make_rows

# type id -> (token in file names, folder, readable name)
TYPES = {
    "awgn": ("AWGN", "awgn", "additive white Gaussian noise"),
    "jpeg": ("JPEG", "jpeg", "JPEG"),
    "jpeg2000": ("jpeg2000", "jpeg2000", "JPEG2000"),
    "fnoise": ("fnoise", "fnoise", "1/f pink noise"),
    "blur": ("BLUR", "blur", "Gaussian blur"),
    "contrast": ("contrast", "contrast", "contrast decrement"),
}
# spellings of the types seen in the spreadsheet and exports (letters and digits only, lower case)
_ALIASES = {
    "awgn": "awgn", "noise": "awgn", "whitenoise": "awgn", "wn": "awgn", "gaussiannoise": "awgn",
    "additivewhitegaussiannoise": "awgn", "additivegaussiannoise": "awgn",
    "jpeg": "jpeg", "jpg": "jpeg",
    "jpeg2000": "jpeg2000", "jp2k": "jpeg2000", "jpeg2k": "jpeg2000", "j2k": "jpeg2000",
    "fnoise": "fnoise", "1fnoise": "fnoise", "pinknoise": "fnoise", "1fpinknoise": "fnoise", "fpinknoise": "fnoise",
    "pinkgaussiannoise": "fnoise", "1fpinkgaussiannoise": "fnoise",
    "blur": "blur", "gblur": "blur", "gaussianblur": "blur",
    "contrast": "contrast", "contrastdecrement": "contrast", "contrastchange": "contrast",
}
SPREADSHEET = "csiq.DMOS.xlsx"
TEXT_EXPORT = "csiq_label.txt"
NAME_RE = re.compile(r"^(?P<ref>.+)\.(?P<type>[^.]+)\.(?P<level>\d+)\.png$", re.IGNORECASE)
_MAX_HEADER_ROWS = 10


def csiq_type(text) -> str | None:
    """The type id of a spelling ('AWGN', 'noise', 'jpeg 2000', '1/f noise', ...), or None."""
    return _ALIASES.get("".join(ch for ch in str(text).lower() if ch.isalnum()))


def csiq_labels(root: Path, labels: str | None = None) -> Path | None:
    """The score file of a CSIQ folder: ``labels`` when given; else csiq.DMOS.xlsx (or the one
    .xlsx in the folder); else csiq_label.txt; None when there is none."""
    folder = Folder(root)
    if labels is not None:
        return named_file(root, labels, "labels", "CSIQ score file")
    path = folder.get(SPREADSHEET)
    if path is not None and path.is_file():
        return path
    sheets = [p for p in folder.files() if p.suffix.lower() == ".xlsx" and not p.name.startswith("~$")]
    if len(sheets) == 1:
        return sheets[0]
    path = folder.get(TEXT_EXPORT)
    return path if path is not None and path.is_file() else None


def read_csiq(root: str | Path, labels: str | None = None) -> QualityTable:
    """CSIQ from the official spreadsheet or the ``csiq_label.txt`` export (``labels`` names
    another file of either kind)."""
    root = check_root(root, "CSIQ")
    src = require_child(root, "src_imgs", "CSIQ reference images", "folder")
    dst = require_child(root, "dst_imgs", "CSIQ distorted images", "folder")
    path = csiq_labels(root, labels)
    if path is None:
        raise InvalidInputError(f"{root}: no {SPREADSHEET} or {TEXT_EXPORT} here (the CSIQ scores); name another "
                                "score file with the option labels=FILE")
    refs = {p.stem.lower(): p.stem for p in Folder(src).images()}
    if path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
        entries = _read_spreadsheet(path, refs)
    else:
        entries = _read_text(path)
    dst_folders = Folder(dst)
    check = FileCheck(root, "CSIQ")
    cols: dict[str, list] = {k: [] for k in ("dist", "ref", "score", "content", "type", "type_name", "level")}
    seen: dict[tuple, str] = {}
    used_folders: list[Path] = []
    for where, ref, kind, level, dmos in entries:
        key = (ref.lower(), kind, level)
        if key in seen:
            raise InvalidInputError(f"{path}: {where}: {ref} {kind} level {level} is listed twice (first at "
                                    f"{seen[key]})")
        seen[key] = where
        token, folder_name, title = TYPES[kind]
        folder = dst_folders.get(folder_name) or dst / folder_name
        if folder not in used_folders:
            used_folders.append(folder)
        cols["dist"].append(check.resolve(folder, f"{ref}.{token}.{level}.png"))
        cols["ref"].append(check.resolve(src, f"{ref}.png"))
        cols["score"].append(dmos)
        cols["content"].append(refs.get(ref.lower(), ref))
        cols["type"].append(kind)
        cols["type_name"].append(title)
        cols["level"].append(level)
    if not entries:
        raise InvalidInputError(f"{path}: no scores in it")
    warnings = check.finish([*used_folders, *(f for f in dst_folders.folders() if f not in used_folders)])
    rows = make_rows(root, **cols)
    return QualityTable("csiq", root, "synthetic", "DMOS", False, (0.0, 1.0), "content", rows,
                        options={"labels": path.name}, warnings=warnings)


def _read_text(path: Path) -> list[tuple[str, str, str, int, float]]:
    """``<distorted name> <dmos>`` per line (a reference-name column in between is tolerated)."""
    out = []
    for line, text in text_lines(path):
        parts = text.replace(",", " ").split()
        match = NAME_RE.match(parts[0]) if len(parts) >= 2 else None
        kind = csiq_type(match.group("type")) if match else None
        if kind is None:
            raise InvalidInputError(f"{path}: line {line}: expected '<distorted name> <dmos>' with a name like "
                                    f"1600.AWGN.1.png, found {text[:60]!r}; this is not a CSIQ score file")
        dmos = parse_number(parts[-1], path, line, "DMOS")
        out.append((f"line {line}", match.group("ref"), kind, int(match.group("level")), dmos))
    return out


def _read_spreadsheet(path: Path, refs: dict[str, str]) -> list[tuple[str, str, str, int, float]]:
    problems = []
    for sheet, grid in read_sheets(path).items():
        found = _find_columns(grid, refs)
        if isinstance(found, str):
            problems.append(f"sheet {sheet!r}: {found}")
            continue
        header_row, columns = found
        return _spreadsheet_rows(path, sheet, grid, header_row, columns, refs)
    raise InvalidInputError(f"{path}: found no sheet with CSIQ image, type, level and DMOS columns "
                            f"({'; '.join(problems)[:200]}); export the scores as {TEXT_EXPORT} "
                            "('<distorted name> <dmos>' per line) instead")


def _is_float(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


# header words that name a column outright (lower case); content decides where none does
_NAMED = {
    "dmos": lambda h: "dmos" in h and "std" not in h,
    "type": lambda h: "type" in h,
    "level": lambda h: "lev" in h,
    "image": lambda h: h in ("image", "img", "name", "ref", "reference", "image name", "src", "source"),
}


def _find_columns(grid: list[list[str]], refs: dict[str, str]) -> tuple[int, dict[str, int]] | str:
    """(header row, {'image', 'type', 'level', 'dmos' -> column}) or why none was found.

    The header row is the one under which a column holds reference names that exist in
    ``src_imgs/`` (or whole distorted file names, which carry type and level). A column is taken
    by its header word where exactly one has it, else by content: type names, whole numbers 1-5,
    numbers in [0, 1]. 'type' and 'level' are absent when the image column holds file names."""
    best = "no column of reference names"
    for header_row in range(min(_MAX_HEADER_ROWS, len(grid))):
        header = [h.lower() for h in grid[header_row]]
        body = [row for row in grid[header_row + 1:] if any(row)]
        if not body:
            break
        width = max(len(r) for r in body)

        def share(j, test):
            vals = [r[j] for r in body if j < len(r) and r[j] != ""]
            return sum(1 for v in vals if test(v)) / len(vals) if vals else 0.0

        found = {
            "image": [j for j in range(width) if share(j, lambda v: v.lower() in refs) >= 0.9],
            "name": [j for j in range(width) if share(j, lambda v: NAME_RE.match(v) is not None) >= 0.9],
            "type": [j for j in range(width) if share(j, lambda v: csiq_type(v) is not None) >= 0.9],
            "level": [j for j in range(width)
                      if share(j, lambda v: _is_float(v) and float(v).is_integer() and 1 <= float(v) <= 5) >= 0.9],
        }
        found["dmos"] = [j for j in range(width) if j not in found["level"]
                         and share(j, lambda v: _is_float(v) and -0.2 <= float(v) <= 1.2) >= 0.9]
        top = body[0]
        found["image"] = [j for j in found["image"] if j < len(top) and top[j].lower() in refs]
        found["name"] = [j for j in found["name"] if j < len(top) and NAME_RE.match(top[j])]
        if not found["image"] and not found["name"]:
            continue  # the header is lower down: the row under this one is not data
        roles = ("dmos", "name") if not found["image"] else ("dmos", "image", "type", "level")
        columns, problem = {}, None
        for role in roles:
            named = [j for j, h in enumerate(header) if role in _NAMED and _NAMED[role](h)]
            pick = named if len(named) == 1 else found[role]
            if len(pick) != 1:
                problem = f"{len(pick)} columns could be the {role} (head one of them '{role}')"
                break
            columns[role] = pick[0]
        if problem:
            best = problem
            continue
        first = grid[header_row]
        key = columns.get("image", columns.get("name"))
        if key < len(first) and (first[key].lower() in refs or NAME_RE.match(first[key])):
            header_row -= 1  # no header row: the first row is data too
        return header_row, columns
    return best


def _spreadsheet_rows(path: Path, sheet: str, grid: list[list[str]], header_row: int, columns: dict[str, int],
                      refs: dict[str, str]) -> list[tuple[str, str, str, int, float]]:
    out = []
    for i in range(header_row + 1, len(grid)):
        row = grid[i]
        where = f"sheet {sheet!r} row {i + 1}"

        def cell(key):
            j = columns[key]
            return row[j] if j < len(row) else ""

        if "name" in columns:
            match = NAME_RE.match(cell("name"))
            if not cell("name"):
                continue
            if match is None or csiq_type(match.group("type")) is None:
                raise InvalidInputError(f"{path}: {where}: {cell('name')!r} is not a CSIQ image name like "
                                        "1600.AWGN.1.png")
            ref, kind, level = match.group("ref"), csiq_type(match.group("type")), int(match.group("level"))
        else:
            if not cell("image"):
                continue  # blank or trailing note rows
            ref, kind = cell("image"), csiq_type(cell("type"))
            if ref.lower() not in refs:
                raise InvalidInputError(f"{path}: {where}: reference {ref!r} is not in src_imgs/ (found "
                                        f"{listing(sorted(refs.values()))})")
            if kind is None:
                raise InvalidInputError(f"{path}: {where}: unknown distortion type {cell('type')!r} (CSIQ's: "
                                        f"{listing(sorted(TYPES), 6)})")
            level_text = cell("level")
            if not (_is_float(level_text) and float(level_text).is_integer()):
                raise InvalidInputError(f"{path}: {where}: level {level_text!r} is not a whole number")
            level = int(float(level_text))
        dmos = parse_number(cell("dmos"), path, where, "DMOS")
        out.append((where, ref, kind, level, dmos))
    return out
