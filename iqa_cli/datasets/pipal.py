"""PIPAL (Jinjin et al., NTIRE 2021 perceptual IQA challenge), training set: 200 references,
116 distorted versions each (7 groups, restoration outputs included), Elo scores.

    ROOT/Train_Ref/A0001.bmp ...                   references (ids up to A0248, not contiguous)
    ROOT/Distortion_1/ ... Distortion_4/           distorted A0001_GG_II.bmp (group GG 00-06), as
                                                   shipped, or merged into any one folder
    ROOT/Train_Label/A0001.txt ...                 "A0001_00_00.bmp,1520.0648" per line, no header

Elo, higher = better. Only the training labels are public, so the table has no official split:
evaluations split it by reference content.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InvalidInputError
from .layout import FileCheck, Folder, check_root, parse_number, text_lines
from .table import QualityTable, make_rows

NAME_RE = re.compile(r"^(?P<ref>[^_]+)_(?P<group>\d{2})_(?P<index>\d+)\.[A-Za-z0-9]+$")
REF_FOLDERS = ("Train_Ref", "Ref", "Reference", "References")
LABEL_FOLDERS = ("Train_Label", "Label", "Labels")


def pipal_folders(root: Path) -> tuple[Path | None, Path | None, list[Path]]:
    """(reference folder, label folder, distorted-image folders) of a PIPAL tree."""
    folder = Folder(root)
    ref = next((p for p in map(folder.get, REF_FOLDERS) if p is not None and p.is_dir()), None)
    labels = next((p for p in map(folder.get, LABEL_FOLDERS) if p is not None and p.is_dir()), None)
    if ref is None or labels is None:
        return ref, labels, []  # not PIPAL: do not list the other (possibly huge) folders
    others = [p for p in folder.folders() if p not in (ref, labels) and Folder(p).images()]
    return ref, labels, others


def read_pipal(root: str | Path) -> QualityTable:
    """PIPAL's training set from ``Train_Label/*.txt``."""
    root = check_root(root, "PIPAL")
    ref_dir, label_dir, dist_dirs = pipal_folders(root)
    if ref_dir is None or label_dir is None:
        missing = " and ".join(n for n, p in (("Train_Ref/", ref_dir), ("Train_Label/", label_dir)) if p is None)
        raise InvalidInputError(f"{root}: no {missing} here (PIPAL's references and label files)")
    if not dist_dirs:
        raise InvalidInputError(f"{root}: no folder of distorted images (Distortion_1/ ... or one merged folder)")
    label_files = sorted(p for p in Folder(label_dir).files() if p.suffix.lower() == ".txt")
    if not label_files:
        raise InvalidInputError(f"{label_dir}: no .txt label files (A0001.txt ...)")
    check = FileCheck(root, "PIPAL")
    cols: dict[str, list] = {k: [] for k in ("dist", "ref", "score", "content", "type")}
    seen: dict[str, str] = {}
    for path in label_files:
        for line, text in text_lines(path):
            parts = [p.strip() for p in text.split(",")]
            match = NAME_RE.match(parts[0]) if len(parts) == 2 else None
            if match is None:
                raise InvalidInputError(f"{path}: line {line}: expected '<distorted name>,<Elo>' like "
                                        f"'A0001_00_00.bmp,1520.0648', found {text[:60]!r}; this is not a PIPAL label "
                                        "file")
            key = parts[0].lower()
            if key in seen:
                raise InvalidInputError(f"{path}: line {line}: {parts[0]} is listed twice (first in {seen[key]})")
            seen[key] = f"{path.name} line {line}"
            score = parse_number(parts[1], path, line, "Elo score")
            ref = match.group("ref")
            cols["dist"].append(check.resolve_any(dist_dirs, parts[0]))
            cols["ref"].append(check.resolve(ref_dir, f"{ref}.bmp"))
            cols["score"].append(score)
            cols["content"].append(ref)
            cols["type"].append(match.group("group"))
    warnings = check.finish(dist_dirs)
    rows = make_rows(root, **cols)
    return QualityTable("pipal", root, "restoration", "Elo", True, (900.0, 1850.0), "content", rows,
                        warnings=warnings)
