"""LIVE In the Wild Image Quality Challenge (CLIVE; Ghadiyaram & Bovik 2016): 1,162 authentic photos.

    ROOT/Images/*.bmp|*.JPG                  the images (1,162)
    ROOT/Images/trainingImages/              the 7 training images
    ROOT/Data/AllImages_release.mat          AllImages_release: 1,169 names
    ROOT/Data/AllMOS_release.mat             AllMOS_release: 1,169 MOS (0-100, higher = better)

The first 7 entries of the .mat files are the training images: dropped, as everyone does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from .layout import FileCheck, check_root, load_mat, mat_numbers, mat_strings, require_child
from .table import QualityTable, make_rows

N_TRAINING = 7
IMAGES_FILE, IMAGES_VAR = "AllImages_release.mat", "AllImages_release"
MOS_FILE, MOS_VAR = "AllMOS_release.mat", "AllMOS_release"


def read_clive(root: str | Path) -> QualityTable:
    """CLIVE: the 1,162 test images (the 7 training images dropped)."""
    root = check_root(root, "LIVE In the Wild Challenge (CLIVE)")
    image_dir = require_child(root, "Images", "CLIVE images", "folder")
    data_dir = require_child(root, "Data", "CLIVE .mat files", "folder")
    names_path = require_child(data_dir, IMAGES_FILE, "CLIVE image names")
    mos_path = require_child(data_dir, MOS_FILE, "CLIVE MOS")
    names = mat_strings(load_mat(names_path, [IMAGES_VAR], f"CLIVE image names ({IMAGES_VAR})")[IMAGES_VAR],
                        names_path, IMAGES_VAR)
    mos = mat_numbers(load_mat(mos_path, [MOS_VAR], f"CLIVE MOS ({MOS_VAR})")[MOS_VAR], mos_path, MOS_VAR)
    if len(names) != len(mos):
        raise InvalidInputError(f"{data_dir}: {IMAGES_VAR} has {len(names)} entries but {MOS_VAR} {len(mos)}; they "
                                "must line up")
    if len(names) <= N_TRAINING:
        raise InvalidInputError(f"{names_path}: {len(names)} entries, expected the 7 training images and then the "
                                "test images (1,169 in all)")
    names, mos = names[N_TRAINING:], mos[N_TRAINING:]
    bad = np.flatnonzero(~np.isfinite(mos))
    if len(bad):
        raise InvalidInputError(f"{mos_path}: {MOS_VAR} entry {int(bad[0]) + N_TRAINING + 1} is not a number")
    check = FileCheck(root, "CLIVE")
    dist = [check.resolve(image_dir, name) for name in names]
    warnings = check.finish([image_dir])
    rows = make_rows(root, dist, score=mos)
    return QualityTable("clive", root, "authentic", "MOS", True, (0.0, 100.0), "image", rows, warnings=warnings)
