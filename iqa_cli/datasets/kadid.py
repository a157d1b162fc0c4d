"""KADID-10k (Lin et al. 2019), the `iqa distort` output in its layout, and KADIS-700k's pristine list.

    ROOT/images/I01.png ... I81.png             references
    ROOT/images/I01_01_01.png ...               distorted: <ref>_<type 01-25>_<level 01-05>
    ROOT/dmos.csv                               dist_img,ref_img,dmos,var  (dmos is a MOS, 1-5, higher = better)
    ROOT/listing.csv                            dist_img,ref_img,type,level  (iqa distort: no scores)

    KADIS/ref_imgs/*.png                        pristine images (no scores)
    KADIS/kadis700k_ref_imgs.csv                ref_im,dist_type_1,dist_type_2 (the generator uses dist_type_1)
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..errors import InvalidInputError
from .layout import (FileCheck, Folder, check_root, column_index, named_file, parse_int, parse_number, read_csv_table,
                     require_child)
from .table import QualityTable, make_rows

KADID_TYPES = (
    "Gaussian blur", "lens blur", "motion blur", "colour diffusion", "colour shift", "colour quantization",
    "colour saturation 1", "colour saturation 2", "JPEG2000", "JPEG", "white noise",
    "white noise in colour component", "impulse noise", "multiplicative noise", "denoise", "brighten", "darken",
    "mean shift", "jitter", "non-eccentricity patch", "pixelate", "quantization", "colour block", "high sharpen",
    "contrast change",
)
SCORE_FILE = "dmos.csv"
LISTING_FILE = "listing.csv"  # what `iqa distort` writes beside images/
NAME_RE = re.compile(r"^(?P<ref>.+)_(?P<type>\d{2})_(?P<level>\d{2})\.[A-Za-z0-9]+$")
KADIS_FILE = "kadis700k_ref_imgs.csv"


def kadid_listing(root: Path, listing_name: str | None = None) -> Path | None:
    """The score/listing CSV of a KADID-layout folder: ``listing_name`` when given, else dmos.csv,
    else listing.csv; None when neither is there."""
    folder = Folder(root)
    if listing_name is not None:
        return named_file(root, listing_name, "listing", "KADID-10k listing")
    for name in (SCORE_FILE, LISTING_FILE):
        path = folder.get(name)
        if path is not None and path.is_file():
            return path
    return None


def read_kadid10k(root: str | Path, listing: str | None = None) -> QualityTable:
    """KADID-10k, or the `iqa distort` output in its layout (``listing.csv`` without scores: NaN)."""
    root = check_root(root, "KADID-10k")
    images = require_child(root, "images", "KADID-10k images", "folder")
    path = kadid_listing(root, listing)
    if path is None:
        raise InvalidInputError(f"{root}: no {SCORE_FILE} or {LISTING_FILE} here (the KADID-10k scores, or the "
                                "listing iqa distort writes)")
    header, records = read_csv_table(path, "KADID-10k")
    col_dist, col_ref = column_index(header, ["dist_img"]), column_index(header, ["ref_img"])
    col_score = column_index(header, ["dmos", "mos"])
    col_type, col_level = column_index(header, ["type"]), column_index(header, ["level"])
    if col_dist is None or col_ref is None or (col_score is None and (col_type is None or col_level is None)):
        raise InvalidInputError(f"{path}: header {','.join(header)[:80]!r} is not KADID-10k's "
                                "(dist_img,ref_img,dmos,var) nor iqa distort's (dist_img,ref_img,type,level); this is "
                                "not a KADID-10k score file (a database of your own: --format csv)")
    if not records:
        raise InvalidInputError(f"{path}: no rows after the header")
    check = FileCheck(root, "KADID-10k")
    cols: dict[str, list] = {k: [] for k in ("dist", "ref", "score", "content", "type", "type_name", "level")}
    seen: dict[str, int] = {}
    for line, cells in records:
        need = max(c for c in (col_dist, col_ref, col_score, col_type, col_level) if c is not None)
        if len(cells) <= need:
            raise InvalidInputError(f"{path}: line {line} has {len(cells)} cells, the header {len(header)}")
        dist_name, ref_name = cells[col_dist], cells[col_ref]
        if not dist_name or not ref_name:
            raise InvalidInputError(f"{path}: line {line}: empty image name")
        if dist_name.lower() in seen:
            raise InvalidInputError(f"{path}: line {line}: {dist_name} is listed twice (first on line "
                                    f"{seen[dist_name.lower()]})")
        seen[dist_name.lower()] = line
        score = parse_number(cells[col_score], path, line, "score") if col_score is not None else math.nan
        match = NAME_RE.match(dist_name)
        if col_type is not None and cells[col_type] != "":
            raw = cells[col_type]
            kind = f"{parse_int(raw, path, line, 'type'):02d}" if _is_number(raw) else raw
        else:
            kind = match.group("type") if match else ""
        if col_level is not None and cells[col_level] != "":
            level = parse_int(cells[col_level], path, line, "level")
        else:
            level = int(match.group("level")) if match else 0
        cols["dist"].append(check.resolve(images, dist_name))
        cols["ref"].append(check.resolve(images, ref_name))
        cols["score"].append(score)
        cols["content"].append(Path(ref_name).stem)
        cols["type"].append(kind)
        number = int(kind) if kind.isdigit() else 0
        cols["type_name"].append(KADID_TYPES[number - 1] if 1 <= number <= len(KADID_TYPES) else "")
        cols["level"].append(level)
    warnings = check.finish([images])
    rows = make_rows(root, **cols)
    options = {"listing": path.name}
    return QualityTable("kadid10k", root, "synthetic", "MOS", True, (1.0, 5.0), "content", rows, options=options,
                        warnings=warnings)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_kadis700k(root: str | Path) -> QualityTable:
    """KADIS-700k's pristine images: one row per reference image, no score, ``type`` the one
    distortion type (``dist_type_1``) the original generator applies to it, level 0."""
    root = check_root(root, "KADIS-700k")
    images = require_child(root, "ref_imgs", "KADIS-700k pristine images", "folder")
    path = require_child(root, KADIS_FILE, "KADIS-700k image list")
    header, records = read_csv_table(path, "KADIS-700k")
    col_name, col_type = column_index(header, ["ref_im"]), column_index(header, ["dist_type_1"])
    if col_name is None or col_type is None:
        raise InvalidInputError(f"{path}: header {','.join(header)[:80]!r} is not KADIS-700k's "
                                "(ref_im,dist_type_1,dist_type_2); this is not the KADIS-700k image list")
    check = FileCheck(root, "KADIS-700k")
    dist, types, names = [], [], []
    for line, cells in records:
        if len(cells) <= max(col_name, col_type) or not cells[col_name]:
            raise InvalidInputError(f"{path}: line {line}: expected ref_im and dist_type_1, found {','.join(cells)!r}")
        number = parse_int(cells[col_type], path, line, "dist_type_1")
        if not 1 <= number <= len(KADID_TYPES):
            raise InvalidInputError(f"{path}: line {line}: dist_type_1 {number} is not a KADID type (1-25)")
        dist.append(check.resolve(images, cells[col_name]))
        types.append(f"{number:02d}")
        names.append(KADID_TYPES[number - 1])
    if not dist:
        raise InvalidInputError(f"{path}: no rows after the header")
    warnings = check.finish([images])
    rows = make_rows(root, dist, type=types, type_name=names)
    return QualityTable("kadis700k", root, "pristine", "", True, None, "content", rows, warnings=warnings)

