"""Reading BAPPS trees (the LPIPS paper's Berkeley-Adobe Perceptual Patch Similarity data).

Layout, under the ``dataset`` folder the LPIPS authors distribute (called ROOT here)::

    ROOT/2afc/{train,val}/{subset}/{ref,p0,p1}/NNNNNN.png + judge/NNNNNN.npy
    ROOT/jnd/val/{subset}/{p0,p1}/NNNNNN.png             + same/NNNNNN.npy

A subset is named by its split and folder, e.g. ``val/traditional`` or ``train/mix``. Everything
that can be checked from the listing (missing folders, counts, names that do not line up,
non-images, empty subsets) and every judge/same value is checked when a dataset is built, before
any model runs; a damaged image is reported when it is read. Every problem is an
InvalidInputError naming the path and the fix.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InvalidInputError
from ..io.images import IMAGE_SUFFIXES, load_image_uint8

MODES = ("2afc", "jnd")
# (image folders, value folder, what the value means) per protocol
LAYOUT: dict[str, tuple[tuple[str, ...], str, str]] = {
    "2afc": (("ref", "p0", "p1"), "judge", "the fraction of people who preferred p1"),
    "jnd": (("p0", "p1"), "same", "the fraction of people who said the pair looks the same"),
}
# The paper's order; subsets it does not know come after, alphabetically.
PAPER_ORDER = ("traditional", "cnn", "mix", "superres", "deblur", "color", "frameinterp")
LOAD_SIZE = 64
DOCS_HINT = "see docs/bapps.md"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InvalidInputError(f"unknown BAPPS protocol {mode!r}: choose one of {', '.join(MODES)}")
    return mode


def mode_root(root: str | Path, mode: str) -> Path:
    """ROOT/<mode>, after checking that ROOT is a BAPPS ``dataset`` folder."""
    check_mode(mode)
    root = Path(root)
    if not root.exists():
        raise InvalidInputError(f"{root}: no such folder (expected the BAPPS 'dataset' folder holding 2afc/ and "
                                f"jnd/; {DOCS_HINT})")
    if not root.is_dir():
        raise InvalidInputError(f"{root}: is a file, expected the BAPPS 'dataset' folder holding 2afc/ and jnd/")
    base = root / mode
    if not base.is_dir():
        inner = [p for p in _visible_dirs(root) if (p / mode).is_dir()]
        if root.name in MODES or (root / "val").is_dir() or (root / "train").is_dir():
            hint = f"pass the folder above it ({root.parent}), which holds 2afc/ and jnd/"
        elif inner:
            hint = f"did you mean {inner[0]}?"
        else:
            found = sorted(p.name + "/" for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            hint = (f"found {', '.join(found[:8]) or 'no folders'}; pass the BAPPS 'dataset' folder that holds "
                    f"2afc/ and jnd/ ({DOCS_HINT})")
        raise InvalidInputError(f"{root}: no {mode}/ folder here: {hint}")
    return base


def _subset_sort_key(subset: str) -> tuple:
    split, _, name = subset.partition("/")
    rank = PAPER_ORDER.index(name) if name in PAPER_ORDER else len(PAPER_ORDER)
    return (split, rank, name)


def _visible_dirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]


def list_subsets(root: str | Path, mode: str = "2afc") -> list[str]:
    """Every ``split/name`` folder under ROOT/<mode>, e.g. ``['train/traditional', 'val/cnn']``:
    splits alphabetically, subsets in the paper's order within a split."""
    base = mode_root(root, mode)
    found = [f"{split.name}/{sub.name}" for split in _visible_dirs(base) for sub in _visible_dirs(split)]
    return sorted(found, key=_subset_sort_key)


def default_subsets(root: str | Path, mode: str = "2afc") -> list[str]:
    """What the protocols evaluate when no subset is named: every ``val/*`` subset present
    (for JND that is val/traditional and val/cnn)."""
    available = list_subsets(root, mode)
    chosen = [s for s in available if s.startswith("val/")]
    if not chosen:
        base = Path(root) / mode
        listed = ", ".join(available) if available else "no subsets at all"
        raise InvalidInputError(f"{base}: no val/ subsets (found {listed}); name the subsets to evaluate with "
                                f"--datasets SPLIT/NAME")
    return chosen


def resolve_subsets(root: str | Path, mode: str, subsets: list[str] | tuple[str, ...] | str | None = None
                    ) -> list[str]:
    """Check the requested subsets exist; None means :func:`default_subsets`.

    A bare name (``cnn``) means ``val/cnn``; duplicates are dropped, order is kept."""
    if subsets is None:
        return default_subsets(root, mode)
    if isinstance(subsets, str):
        subsets = [subsets]
    available = list_subsets(root, mode)
    out: list[str] = []
    for raw in subsets:
        name = str(raw).strip().strip("/").replace("\\", "/")
        if name and "/" not in name:
            name = f"val/{name}"
        if name not in available:
            listed = ", ".join(available) if available else "none"
            raise InvalidInputError(f"{Path(root) / mode}: no subset {str(raw)!r}; available: {listed}")
        if name not in out:
            out.append(name)
    if not out:
        raise InvalidInputError("no BAPPS subsets named: pass at least one to --datasets, or leave it out for "
                                "every val subset")
    return out


# -- listing and validation ----------------------------------------------------------------------
@dataclass(frozen=True)
class SubsetListing:
    """The files of one subset, matched by name across its folders (sorted by name)."""

    mode: str
    subset: str
    folder: Path
    names: tuple[str, ...]
    images: dict[str, tuple[Path, ...]]  # folder name -> one path per item
    values: tuple[Path, ...]  # the judge/ or same/ .npy files

    def __len__(self) -> int:
        return len(self.names)


def _list_folder(folder: Path, allowed: frozenset[str], what: str, plural: str) -> dict[str, Path]:
    """stem -> path of the visible entries of ``folder``; anything else is an error."""
    entries: dict[str, Path] = {}
    with os.scandir(folder) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue  # .DS_Store and friends
            path = Path(entry.path)
            if not entry.is_file() or path.suffix.lower() not in allowed:
                kind = "a folder" if entry.is_dir() else f"not {what}"
                raise InvalidInputError(f"{path}: {kind}, but {folder.name}/ may hold only {plural} "
                                        f"({', '.join(sorted(allowed))}); move it out of the BAPPS tree")
            stem = path.stem
            if stem in entries:
                raise InvalidInputError(f"{entries[stem]} and {path.name} share the name {stem!r}: keep one file "
                                        f"per item in {folder}")
            entries[stem] = path
    return entries


def _first_missing(a: dict[str, Path], b: dict[str, Path]) -> str | None:
    for stem in a:
        if stem not in b:
            return stem
    return None


def scan_subset(root: str | Path, mode: str, subset: str) -> SubsetListing:
    """List one subset and check that its folders line up (names, counts, file kinds)."""
    base = mode_root(root, mode)
    subset = resolve_subsets(root, mode, [subset])[0]
    folder = base / subset
    image_folders, value_folder, _ = LAYOUT[mode]
    wanted = (*image_folders, value_folder)
    missing = [name for name in wanted if not (folder / name).is_dir()]
    if missing:
        holds = ", ".join(f"{w}/" for w in wanted)
        raise InvalidInputError(f"{folder}: missing {', '.join(m + '/' for m in missing)} (a {mode} subset holds "
                                f"{holds}; re-extract the BAPPS archive)")
    listed = {name: _list_folder(folder / name, IMAGE_SUFFIXES, "an image", "images") for name in image_folders}
    listed[value_folder] = _list_folder(folder / value_folder, frozenset({".npy"}), "a .npy file", ".npy files")
    counts = {name: len(files) for name, files in listed.items()}
    if not any(counts.values()):
        raise InvalidInputError(f"{folder}: empty subset (no files in {', '.join(w + '/' for w in wanted)}); "
                                f"re-extract it or leave it out of --datasets")
    first = wanted[0]
    for other in wanted[1:]:
        a, b = listed[first], listed[other]
        if a.keys() == b.keys():
            continue
        only_a, only_b = _first_missing(a, b), _first_missing(b, a)
        example = (f"{only_a} is in {first}/ but not {other}/" if only_a is not None
                   else f"{only_b} is in {other}/ but not {first}/")
        if counts[first] != counts[other]:
            problem = f"{first}/ has {counts[first]} files but {other}/ has {counts[other]}"
        else:
            problem = f"names in {first}/ and {other}/ do not line up"
        raise InvalidInputError(f"{folder}: {problem} ({example}); every item needs one file of the same name in "
                                f"each of {', '.join(w + '/' for w in wanted)}")
    names = tuple(sorted(listed[first]))
    return SubsetListing(mode, subset, folder, names,
                         {name: tuple(listed[name][s] for s in names) for name in image_folders},
                         tuple(listed[value_folder][s] for s in names))


def count_items(root: str | Path, mode: str, subsets: list[str] | None = None, limit: int | None = None
                ) -> dict[str, int]:
    """Items per subset that an evaluation will read (listing only; validates the folders)."""
    limit = _check_limit(limit)
    out = {}
    for subset in resolve_subsets(root, mode, subsets):
        n = len(scan_subset(root, mode, subset))
        out[subset] = n if limit is None else min(n, limit)
    return out


def _check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or int(limit) != limit or limit < 1:
        raise InvalidInputError(f"--limit {limit}: expected a whole number of items >= 1")
    return int(limit)


def _read_one_number(path: Path, meaning: str) -> float:
    """The one number a judge/same .npy file holds. The header is read and checked first
    (numpy.lib.format), so a header claiming a huge array is refused before anything is allocated,
    and nothing is unpickled."""
    from ..io.files import require_regular_file

    require_regular_file(path, "a .npy file")

    def unreadable(reason: str) -> InvalidInputError:
        return InvalidInputError(f"{path}: not a readable .npy file ({reason}); re-extract the BAPPS archive")

    fmt = np.lib.format
    with open(path, "rb") as fh:
        head = fh.read(len(fmt.MAGIC_PREFIX))
        if head.startswith(b"PK"):  # an .npz archive under a .npy name
            raise InvalidInputError(f"{path}: an .npz archive, not a .npy file holding one number ({meaning}); "
                                    f"re-extract the BAPPS archive")
        if head != fmt.MAGIC_PREFIX:
            raise unreadable("no .npy header" if head else "empty file")
        fh.seek(0)
        try:
            version = fmt.read_magic(fh)
            reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran_order, dtype = reader(fh)
        except (ValueError, EOFError, SyntaxError, TypeError) as exc:
            raise unreadable(str(exc).strip().splitlines()[0][:100] if str(exc).strip() else type(exc).__name__
                             ) from None
        numeric = np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
        if math.prod(shape) != 1 or not numeric or dtype.hasobject:
            raise InvalidInputError(f"{path}: expected one number ({meaning}), found a {dtype} array of shape "
                                    f"{tuple(shape)}")
        data = fh.read(dtype.itemsize)
    if len(data) != dtype.itemsize:
        raise unreadable("truncated: the header promises one number but the data is missing")
    return float(np.frombuffer(data, dtype=dtype, count=1)[0])


def load_values(paths: tuple[Path, ...] | list[Path], what: str, meaning: str) -> np.ndarray:
    """Read judge/same .npy files (one number each), checking each lies in [0, 1]."""
    values = np.empty(len(paths), dtype=np.float64)
    for i, path in enumerate(paths):
        value = _read_one_number(Path(path), meaning)
        if not (0.0 <= value <= 1.0):  # also catches NaN
            raise InvalidInputError(f"{path}: {what} value {value:g} is outside [0, 1] (it is {meaning}); fix the "
                                    f"file or remove this item from every folder")
        values[i] = value
    return values


def load_patch(path: Path, load_size: int | None = LOAD_SIZE) -> torch.Tensor:
    """uint8 (3, S, S): the image as RGB, resized to S x S like the protocol's Resize(64).

    The original loader applies torchvision's Resize(64) (bilinear on the PIL image) to BAPPS's
    square 64x64 patches, which leaves them unchanged; other sizes are resized bilinearly here too.
    """
    rgb = load_image_uint8(path)
    if load_size is not None and rgb.shape[:2] != (load_size, load_size):
        from PIL import Image

        rgb = np.asarray(Image.fromarray(rgb, "RGB").resize((load_size, load_size), Image.BILINEAR))
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


class BappsDataset(Dataset):
    """One BAPPS subset: dict items of uint8 (3, S, S) image tensors, the float32 value
    (judge/same) and the item's index. Subclasses fix the protocol."""

    mode = "2afc"

    def __init__(self, root: str | Path, subset: str, load_size: int | None = LOAD_SIZE, limit: int | None = None):
        if load_size is not None and (isinstance(load_size, bool) or int(load_size) != load_size or load_size < 1):
            raise InvalidInputError(f"load size {load_size}: expected a whole number of pixels >= 1")
        limit = _check_limit(limit)
        listing = scan_subset(root, self.mode, subset)
        stop = len(listing) if limit is None else min(limit, len(listing))
        self.root = Path(root)
        self.subset = listing.subset
        self.folder = listing.folder
        self.load_size = load_size
        self.image_folders, self.value_folder, meaning = LAYOUT[self.mode]
        self.names: tuple[str, ...] = listing.names[:stop]
        self.image_paths: dict[str, tuple[Path, ...]] = {k: v[:stop] for k, v in listing.images.items()}
        self.value_paths: tuple[Path, ...] = listing.values[:stop]
        self.values: np.ndarray = load_values(self.value_paths, self.value_folder, meaning)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {name: load_patch(self.image_paths[name][index], self.load_size) for name in self.image_folders}
        item[self.value_folder] = torch.tensor(self.values[index], dtype=torch.float32)
        item["index"] = torch.tensor(index, dtype=torch.int64)
        return item


class TwoAFCDataset(BappsDataset):
    """A 2AFC subset (any split, e.g. ``val/cnn`` or ``train/mix``): items
    ``{"ref", "p0", "p1"}`` uint8 (3, S, S), ``"judge"`` float32 (fraction preferring p1), ``"index"``.
    ``judges`` holds every judge value as a float64 array."""

    mode = "2afc"

    @property
    def judges(self) -> np.ndarray:
        return self.values


class JNDDataset(BappsDataset):
    """A JND subset: items ``{"p0", "p1"}`` uint8 (3, S, S), ``"same"`` float32 (fraction who
    said "same"), ``"index"``. ``sames`` holds every value as a float64 array."""

    mode = "jnd"

    @property
    def sames(self) -> np.ndarray:
        return self.values


def open_subset(root: str | Path, mode: str, subset: str, load_size: int | None = LOAD_SIZE,
                limit: int | None = None) -> BappsDataset:
    cls = TwoAFCDataset if check_mode(mode) == "2afc" else JNDDataset
    return cls(root, subset, load_size=load_size, limit=limit)
