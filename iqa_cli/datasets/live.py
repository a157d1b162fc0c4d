"""LIVE IQA release 2 (Sheikh et al.): 29 references, 5 distortion folders, DMOS in .mat files.

    ROOT/refimgs/*.bmp
    ROOT/jp2k/ jpeg/ wn/ gblur/ fastfading/      img1.bmp ... imgN.bmp, plus info.txt
    ROOT/dmos_realigned.mat                      dmos_new, dmos_std, orgs   (1 x 982 each)
    ROOT/dmos.mat                                dmos, orgs                 (1 x 982 each)
    ROOT/refnames_all.mat                        refnames_all               (1 x 982 cell of names)

The 982 entries are the folders concatenated (jp2k 227, jpeg 233, wn 174, gblur 174,
fastfading 174), each numbered from img1. ``orgs == 1`` marks undistorted copies of the
reference: dropped, leaving 779 images. DMOS, lower = better; realigned by default.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from .layout import FileCheck, Folder, check_root, load_mat, mat_numbers, mat_strings, require_child, text_lines
from .table import QualityTable, make_rows

# (folder, entries in the official release, readable name), in the order of the .mat entries
FOLDERS = (("jp2k", 227, "JPEG2000"), ("jpeg", 233, "JPEG"), ("wn", 174, "white noise"),
           ("gblur", 174, "Gaussian blur"), ("fastfading", 174, "fast fading (JPEG2000 transmission errors)"))
DMOS_FILES = {"realigned": ("dmos_realigned.mat", "dmos_new"), "original": ("dmos.mat", "dmos")}
IMG_RE = re.compile(r"^img(\d+)\.bmp$", re.IGNORECASE)


def read_live(root: str | Path, dmos: str = "realigned") -> QualityTable:
    """LIVE release 2: the 779 distorted images (``orgs`` dropped) with realigned (default) or
    original DMOS."""
    if dmos not in DMOS_FILES:
        raise InvalidInputError(f"LIVE dmos option {dmos!r}: choose one of {', '.join(DMOS_FILES)}")
    root = check_root(root, "LIVE release 2 (databaserelease2)")
    ref_dir = require_child(root, "refimgs", "LIVE reference images", "folder")
    folders = [require_child(root, name, f"LIVE {name} images", "folder") for name, _, _ in FOLDERS]
    file_name, variable = DMOS_FILES[dmos]
    other = next(k for k in DMOS_FILES if k != dmos)
    dmos_path = Folder(root).get(file_name)
    if dmos_path is None or not dmos_path.is_file():
        raise InvalidInputError(f"{root}: no {file_name} here (the LIVE {dmos} DMOS); try the option dmos={other}")
    scores_mat = load_mat(dmos_path, [variable, "orgs"], f"LIVE {dmos} DMOS file ({variable}, orgs)")
    names_path = require_child(root, "refnames_all.mat", "LIVE reference names")
    names_mat = load_mat(names_path, ["refnames_all"], "LIVE reference names file (refnames_all)")
    scores = mat_numbers(scores_mat[variable], dmos_path, variable)
    orgs = mat_numbers(scores_mat["orgs"], dmos_path, "orgs")
    refnames = mat_strings(names_mat["refnames_all"], names_path, "refnames_all")
    n = len(scores)
    if len(orgs) != n or len(refnames) != n:
        raise InvalidInputError(f"{root}: {variable} has {n} entries, orgs {len(orgs)}, refnames_all {len(refnames)}; "
                                "they must line up (one per image of the five folders)")
    counts = _folder_counts(root, folders, n)
    check = FileCheck(root, "LIVE")
    cols: dict[str, list] = {k: [] for k in ("dist", "ref", "score", "content", "type", "type_name")}
    entry = 0
    for (name, _, title), folder, count in zip(FOLDERS, folders, counts):
        for number in range(1, count + 1):
            image = f"img{number}.bmp"
            if orgs[entry] == 1:
                check.note(folder, image)
            else:
                cols["dist"].append(check.resolve(folder, image))
                cols["ref"].append(check.resolve(ref_dir, refnames[entry]))
                cols["score"].append(scores[entry])
                cols["content"].append(Path(refnames[entry]).stem)
                cols["type"].append(name)
                cols["type_name"].append(title)
            entry += 1
    if not np.isfinite(np.asarray(cols["score"], dtype=np.float64)).all():
        raise InvalidInputError(f"{dmos_path}: {variable} holds NaN or infinite values for kept images")
    warnings = check.finish(folders)
    rows = make_rows(root, **cols)
    return QualityTable("live", root, "synthetic", "DMOS", False, (0.0, 100.0), "content", rows,
                        options={"dmos": dmos}, warnings=warnings)


def _folder_counts(root: Path, folders: list[Path], n_entries: int) -> list[int]:
    """Entries per folder. The official counts when the .mat files have the official 982 entries;
    otherwise (a cut-down copy) the highest imgN of each folder, from its files or its info.txt."""
    official = [count for _, count, _ in FOLDERS]
    if n_entries == sum(official):
        return official
    counts = []
    for folder in folders:
        highest = 0
        listing = Folder(folder)
        for path in listing.files():
            match = IMG_RE.match(path.name)
            if match:
                highest = max(highest, int(match.group(1)))
        info = listing.get("info.txt")
        if info is not None and info.is_file():
            highest = max(highest, _info_highest(info))
        counts.append(highest)
    if sum(counts) != n_entries:
        shown = ", ".join(f"{f.name} {c}" for f, c in zip(folders, counts))
        raise InvalidInputError(f"{root}: the .mat files have {n_entries} entries but the folders number "
                                f"{sum(counts)} images ({shown}); the official release has {sum(official)} "
                                f"({', '.join(f'{n} {c}' for n, c, _ in FOLDERS)})")
    return counts


def _info_highest(path: Path) -> int:
    """Highest imgN named in an info.txt ("<ref> <imgN.bmp> <parameter>"); blank and odd lines skipped."""
    highest = 0
    for _, line in text_lines(path):
        for token in line.split()[:3]:
            match = IMG_RE.match(token)
            if match:
                highest = max(highest, int(match.group(1)))
                break
    return highest
