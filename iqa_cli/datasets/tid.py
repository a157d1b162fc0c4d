"""TID2013 and TID2008 (Ponomarenko et al.): 25 references, 24 (17) types x 5 (4) levels.

    ROOT/reference_images/I01.BMP ... i25.bmp     (case varies between copies)
    ROOT/distorted_images/i01_01_1.bmp ...        iRR_TT_L: reference RR, type TT, level L
    ROOT/mos_with_names.txt                       "<MOS> <name>" per line, no header
    ROOT/mos.txt                                  TID2008 copies without names: one MOS per line,
                                                  in the sorted (reference, type, level) order

MOS on 0-9, higher = better; split by reference content.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InvalidInputError
from .layout import FileCheck, Folder, check_root, listing, parse_number, require_child, text_lines
from .table import QualityTable, make_rows

TID2013_TYPES = (
    "additive Gaussian noise", "noise in colour components", "spatially correlated noise", "masked noise",
    "high-frequency noise", "impulse noise", "quantization noise", "Gaussian blur", "denoising", "JPEG",
    "JPEG2000", "JPEG transmission errors", "JPEG2000 transmission errors", "non-eccentricity pattern noise",
    "local block-wise distortions", "mean shift", "contrast change", "colour saturation change",
    "multiplicative Gaussian noise", "comfort noise", "lossy compression of noisy images",
    "colour quantization with dither", "chromatic aberrations", "sparse sampling and reconstruction",
)
# name -> (number of types, number of levels)
EDITIONS = {"tid2013": (24, 5), "tid2008": (17, 4)}
NAME_RE = re.compile(r"^i(\d{2})_(\d{2})_(\d)\.bmp$", re.IGNORECASE)
SCORE_FILE = "mos_with_names.txt"


def read_tid2013(root: str | Path) -> QualityTable:
    """TID2013: 3000 images from ``mos_with_names.txt``."""
    return _read_tid(root, "tid2013")


def read_tid2008(root: str | Path) -> QualityTable:
    """TID2008: 1700 images from ``mos_with_names.txt``, or ``mos.txt`` in sorted file order."""
    return _read_tid(root, "tid2008")


def tid_edition(root: Path) -> str:
    """'tid2013' or 'tid2008' for a folder holding a TID layout: the folder name when it says,
    else the types and levels the score file names (TID2008 stops at type 17, level 4)."""
    for edition in EDITIONS:
        if edition in root.name.lower():
            return edition
    names = Folder(root)
    listing_file = names.get(SCORE_FILE)
    if listing_file is not None and listing_file.is_file():
        for _, line in text_lines(listing_file):
            match = NAME_RE.match(line.split()[-1]) if line.split() else None
            if match and (int(match.group(2)) > 17 or int(match.group(3)) > 4):
                return "tid2013"
        return "tid2008"
    return "tid2008"  # only mos.txt: the TID2008 form


def _read_tid(root: str | Path, edition: str) -> QualityTable:
    root = check_root(root, edition.upper())
    n_types, n_levels = EDITIONS[edition]
    ref_dir = require_child(root, "reference_images", f"{edition.upper()} reference images", "folder")
    dist_dir = require_child(root, "distorted_images", f"{edition.upper()} distorted images", "folder")
    folder = Folder(root)
    names_file = folder.get(SCORE_FILE)
    if names_file is not None and names_file.is_file():
        score_path = names_file
        entries = _read_named_scores(score_path, edition)
    elif edition == "tid2008" and folder.get("mos.txt") is not None:
        score_path = folder.get("mos.txt")
        entries = _read_ordered_scores(score_path, dist_dir)
    else:
        also = " (or mos.txt)" if edition == "tid2008" else ""
        raise InvalidInputError(f"{root}: no {SCORE_FILE}{also} here (the {edition.upper()} scores)")
    if not entries:
        raise InvalidInputError(f"{score_path}: no scores in it (expected one '<MOS> <image name>' per line)")
    other = "tid2013" if edition == "tid2008" else None
    check = FileCheck(root, edition.upper())
    dist, ref, score, content, types, names, level = [], [], [], [], [], [], []
    seen: dict[str, int] = {}
    for line, mos, name in entries:
        match = NAME_RE.match(name)
        if match is None:
            raise InvalidInputError(f"{score_path}: line {line}: {name!r} is not a TID image name like i01_01_1.bmp; this "
                                    f"is not a {edition.upper()} score file")
        rr, tt, lv = (int(g) for g in match.groups())
        if not 1 <= tt <= n_types or not 1 <= lv <= n_levels:
            hint = f" (it looks like TID2013: use --format {other})" if other else ""
            raise InvalidInputError(f"{score_path}: line {line}: {name} has type {tt}, level {lv}; {edition.upper()} has "
                                    f"types 1-{n_types} and levels 1-{n_levels}{hint}")
        key = name.lower()
        if key in seen:
            raise InvalidInputError(f"{score_path}: line {line}: {name} is listed twice (first on line {seen[key]})")
        seen[key] = line
        dist.append(check.resolve(dist_dir, name))
        ref.append(check.resolve(ref_dir, f"I{rr:02d}.BMP"))
        score.append(mos)
        content.append(f"I{rr:02d}")
        types.append(f"{tt:02d}")
        names.append(TID2013_TYPES[tt - 1])
        level.append(lv)
    warnings = check.finish([dist_dir])
    rows = make_rows(root, dist, ref, score, content, types, names, level)
    return QualityTable(edition, root, "synthetic", "MOS", True, (0.0, 9.0), "content", rows, warnings=warnings)


def _read_named_scores(path: Path, edition: str) -> list[tuple[int, float, str]]:
    out = []
    for line, text in text_lines(path):
        parts = text.split()
        if len(parts) != 2:
            raise InvalidInputError(f"{path}: line {line}: expected '<MOS> <image name>' (e.g. "
                                    f"'5.51429 i01_01_1.bmp'), found {text[:60]!r}; this is not a "
                                    f"{edition.upper()} {SCORE_FILE}")
        out.append((line, parse_number(parts[0], path, line, "MOS"), parts[1]))
    return out


def _read_ordered_scores(path: Path, dist_dir: Path) -> list[tuple[int, float, str]]:
    """mos.txt carries no names: pair its lines with the distorted images sorted by (ref, type, level)."""
    images = []
    for p in Folder(dist_dir).images():
        match = NAME_RE.match(p.name)
        if match:
            images.append((tuple(int(g) for g in match.groups()), p.name))
    images.sort()
    lines = text_lines(path)
    if len(lines) != len(images):
        raise InvalidInputError(f"{path}: {len(lines)} scores for {len(images)} TID images in {dist_dir.name}/; "
                                f"without {SCORE_FILE} every image must be present to pair scores by order "
                                f"(first images: {listing([n for _, n in images], 3) or 'none'})")
    return [(line, parse_number(text, path, line, "MOS"), name) for (line, text), (_, name) in zip(lines, images)]
