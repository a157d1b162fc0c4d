"""What every database reader shares: case-insensitive names, one-line reports, number parsing.

Copies of the same database differ in the case of their names (TID's ``I01.BMP`` beside
``i25.bmp``, CSIQ's ``AWGN`` or ``awgn`` folders), so every lookup here ignores case. Missing
files are collected and reported in one error, with their count and the first few names, before
any image is read; extra images (on disk but in no score file) become one warning.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import InvalidInputError
from ..io.images import IMAGE_SUFFIXES
from .table import relative_path

DOCS_HINT = "see datasets/README.md"
MAX_LISTED = 5  # names quoted in one line before "... and N more"


def listing(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


class Folder:
    """The visible entries of one folder, looked up by name whatever their case.

    Listed once with os.scandir (no stat per file), so folders of 100,000 images stay quick.
    Two entries whose names differ only by case (``I25.BMP`` and ``i25.bmp``) make the lookup
    ambiguous: that is an error naming both."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, Path] = {}
        self._dirs: set[str] = set()
        clashes: list[str] = []
        if self.path.is_dir():
            with os.scandir(self.path) as it:
                listed = sorted(((e.name, e.is_dir()) for e in it if not e.name.startswith(".")))  # no .DS_Store
            for name, is_dir in listed:
                key = name.lower()
                if key in self.entries:
                    clashes.append(f"{self.entries[key].name} / {name}")
                self.entries[key] = self.path / name
                if is_dir:
                    self._dirs.add(key)
        if clashes:
            raise InvalidInputError(f"{self.path}: names that differ only by case: {listing(clashes)}; keep one "
                                    "file of each name")

    def __contains__(self, name: str) -> bool:
        return name.lower() in self.entries

    def get(self, name: str) -> Path | None:
        return self.entries.get(name.lower())

    def get_file(self, name: str) -> Path | None:
        """``name`` when it is a file (not a folder) here, else None."""
        key = name.lower()
        return None if key in self._dirs else self.entries.get(key)

    def files(self) -> list[Path]:
        return [p for k, p in self.entries.items() if k not in self._dirs]

    def images(self) -> list[Path]:
        return [p for p in self.files() if p.suffix.lower() in IMAGE_SUFFIXES]

    def folders(self) -> list[Path]:
        return [p for k, p in self.entries.items() if k in self._dirs]


def check_root(root: str | Path, what: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise InvalidInputError(f"{root}: no such folder (expected the {what} folder; {DOCS_HINT})")
    if not root.is_dir():
        raise InvalidInputError(f"{root}: is a file, expected the {what} folder ({DOCS_HINT})")
    return root


def child(parent: Path | Folder, name: str) -> Path | None:
    """``parent/name`` whatever its case, or None."""
    folder = parent if isinstance(parent, Folder) else Folder(parent)
    return folder.get(name)


def require_child(root: Path, names: str | Sequence[str], what: str, kind: str = "file") -> Path:
    """The first of ``names`` present under root (any case); an error naming them when none is."""
    names = [names] if isinstance(names, str) else list(names)
    folder = Folder(root)
    for name in names:
        path = folder.get(name)
        if path is not None and (path.is_dir() if kind == "folder" else path.is_file()):
            return path
    wanted = " or ".join(f"{n}{'/' if kind == 'folder' else ''}" for n in names)
    raise InvalidInputError(f"{root}: no {wanted} here (the {what}; {DOCS_HINT})")


def named_file(root: Path, name: str, option: str, what: str) -> Path:
    """A file named by a reader option: absolute, or under root (any case); an error when absent."""
    path = Path(name)
    path = path if path.is_absolute() else (Folder(root).get(name) or root / name)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file (the {what} named by the '{option}' option)")
    return path


class FileCheck:
    """Resolves the file names a score file lists against the folders on disk, collecting every
    missing name; ``raise_missing`` then reports them all in one line."""

    def __init__(self, root: Path, what: str):
        self.root = Path(root)
        self.what = what
        self.missing: list[str] = []
        self._folders: dict[Path, Folder] = {}
        self._used: set[Path] = set()

    def folder(self, path: Path) -> Folder:
        if path not in self._folders:
            self._folders[path] = Folder(path)
        return self._folders[path]

    def resolve(self, folder: Path, name: str) -> Path:
        """``folder/name`` whatever the case; a missing file is noted and its would-be path returned."""
        found = self.folder(folder).get_file(name)
        if found is None:
            self.missing.append(self._relative(folder / name))
            return folder / name
        self._used.add(found)
        return found

    def resolve_relative(self, base: Path, text: str) -> Path:
        """A path listed in a file, relative to ``base`` (or absolute), every folder of it and the
        file name found whatever their case."""
        path = Path(text.replace("\\", "/"))
        if path.is_absolute():
            return self.resolve(path.parent, path.name)
        folder = base
        for part in path.parts[:-1]:
            if part == "..":
                folder = folder.parent
            elif part != ".":
                found = self.folder(folder).get(part)
                folder = found if found is not None and found.is_dir() else folder / part
        return self.resolve(folder, path.name)

    def resolve_any(self, folders: Sequence[Path], name: str) -> Path:
        """``name`` in whichever of ``folders`` holds it (any case); a name in two of them is an error."""
        found = [p for p in (self.folder(f).get_file(name) for f in folders) if p is not None]
        if len(found) > 1:
            raise InvalidInputError(f"{self.root}: {name} is in both {self._relative(found[0].parent)}/ and "
                                    f"{self._relative(found[1].parent)}/; keep one copy")
        if not found:
            where = folders[0] if len(folders) == 1 else self.root
            self.missing.append(self._relative(where / name) if len(folders) == 1 else name)
            return where / name
        self._used.add(found[0])
        return found[0]

    def note(self, folder: Path, name: str) -> None:
        """Mark ``folder/name`` as known (not extra) without requiring it, e.g. LIVE's dropped copies."""
        found = self.folder(folder).get_file(name)
        if found is not None:
            self._used.add(found)

    def _relative(self, path: Path) -> str:
        return relative_path(path, self.root)

    def extra_images(self, folders: Iterable[Path]) -> list[str]:
        """Images in ``folders`` that no row named (relative names, sorted)."""
        extra = []
        for folder in folders:
            if folder.is_dir():
                extra += [self._relative(p) for p in self.folder(folder).images() if p not in self._used]
        return sorted(extra)

    def raise_missing(self, extra: Sequence[str] = ()) -> None:
        if not self.missing:
            return
        note = f"; {len(extra)} image(s) on disk are in no score file ({listing(extra, 3)})" if extra else ""
        raise InvalidInputError(f"{self.root}: {len(self.missing)} {self.what} image(s) missing: "
                                f"{listing(self.missing)}{note}; restore them or fix the score file")

    def finish(self, folders: Iterable[Path]) -> tuple[str, ...]:
        """Raise for missing files (noting extras); otherwise return the extras as a warning."""
        extra = self.extra_images(folders)
        self.raise_missing(extra)
        if extra:
            return (f"{len(extra)} image(s) under {self.root} are in no score file and were left out: "
                    f"{listing(extra)}",)
        return ()


def parse_number(text: str, path: Path, line: int | str, what: str = "score") -> float:
    """A finite float, or a one-line error naming the file and line (``line`` may be a phrase
    such as "sheet 'x' row 4")."""
    where = f"line {line}" if isinstance(line, int) else line
    value = str(text).strip()
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        shown = repr(value) if value else "an empty cell"
        raise InvalidInputError(f"{path}: {where}: {what} {shown} is not a number; fix it or remove the row")
    return number


def parse_int(text: str, path: Path, line: int | str, what: str) -> int:
    number = parse_number(text, path, line, what)
    if number != int(number):
        where = f"line {line}" if isinstance(line, int) else line
        raise InvalidInputError(f"{path}: {where}: {what} {str(text).strip()!r} is not a whole number")
    return int(number)


def read_text(path: Path) -> str:
    data = path.read_bytes()
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise InvalidInputError(f"{path}: not a text file")  # unreachable: latin-1 decodes anything


def text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a text file; binary files refused."""
    data = path.read_bytes()
    if b"\0" in data[:4096]:
        raise InvalidInputError(f"{path}: a binary file, expected text ({DOCS_HINT})")
    return [(i, line.strip()) for i, line in enumerate(read_text(path).splitlines(), start=1) if line.strip()]


def read_csv_table(path: Path, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header with cells stripped, [(line, cells)]) of a CSV file; blank lines skipped."""
    if path.stat().st_size and b"\0" in path.read_bytes()[:4096]:
        raise InvalidInputError(f"{path}: a binary file, expected the {what} CSV ({DOCS_HINT})")
    text = read_text(path)
    rows: list[tuple[int, list[str]]] = []
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        start = 1
        for rec in reader:
            if any(cell.strip() for cell in rec):
                rows.append((start, [cell.strip() for cell in rec]))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise InvalidInputError(f"{path}: not a readable CSV ({exc})") from None
    if not rows:
        raise InvalidInputError(f"{path}: empty file, expected the {what} CSV ({DOCS_HINT})")
    return rows[0][1], rows[1:]


def column_index(header: Sequence[str], names: Sequence[str]) -> int | None:
    """Position of the first header cell equal to one of ``names`` (case and spaces ignored)."""
    keys = [_key(h) for h in header]
    for name in names:
        if _key(name) in keys:
            return keys.index(_key(name))
    return None


def _key(text: str) -> str:
    return "".join(ch for ch in str(text).lower() if ch.isalnum())


def cell_text(value) -> str:
    """A spreadsheet cell as text: '' for empty, '1600' for the number 1600.0."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def read_sheets(path: Path) -> dict[str, list[list[str]]]:
    """Every sheet of a spreadsheet (pandas + openpyxl) as rows of cell text."""
    import pandas as pd

    try:
        # keep_default_na=False: a cell reading "n/a" or "NA" is reported as such, not silently NaN
        sheets = pd.read_excel(path, sheet_name=None, header=None, dtype=object, keep_default_na=False)
    except ImportError as exc:
        raise InvalidInputError(f"{path}: reading .xlsx needs openpyxl ({exc}); pip install openpyxl") from None
    except Exception as exc:  # noqa: BLE001 - openpyxl/zipfile raise many kinds for a damaged file
        reason = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(f"{path}: not a readable spreadsheet ({reason})") from None
    return {str(name): [[cell_text(v) for v in row] for row in frame.itertuples(index=False)]
            for name, frame in sheets.items()}


def load_mat(path: Path, variables: Sequence[str], what: str) -> dict:
    """The named variables of a MATLAB file (scipy.io.loadmat); a missing variable means the
    file is of another kind and is a one-line error."""
    from scipy.io import loadmat

    try:
        data = loadmat(str(path), variable_names=list(variables))
    except NotImplementedError:
        raise InvalidInputError(f"{path}: a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it in MATLAB "
                                "with save(..., '-v7')") from None
    except (ValueError, TypeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(f"{path}: not a readable MATLAB .mat file ({reason}); expected the {what}") from None
    missing = [v for v in variables if v not in data]
    if missing:
        from scipy.io import whosmat

        found = sorted(name for name, _, _ in whosmat(str(path)))
        raise InvalidInputError(f"{path}: no variable {', '.join(missing)} in it (found {listing(found) or 'none'}); "
                                f"this is not the {what}")
    return data


def mat_strings(value, path: Path, variable: str) -> list[str]:
    """A MATLAB cell array (or char matrix) of strings as a flat Python list."""
    arr = np.asarray(value)
    out: list[str] = []
    if arr.dtype.kind in "US" and arr.ndim <= 1:
        return [str(v).strip() for v in arr.reshape(-1)]
    if arr.dtype.kind in "US":  # char matrix: one name per row
        return ["".join(row).strip() for row in arr.reshape(arr.shape[0], -1)]
    for cell in arr.reshape(-1, order="F"):
        item = np.asarray(cell).reshape(-1)
        if item.size == 1 and item.dtype.kind in "US":
            out.append(str(item[0]).strip())
        elif item.size and item.dtype.kind in "US":
            out.append("".join(str(c) for c in item).strip())
        else:
            raise InvalidInputError(f"{path}: variable {variable} holds {item.dtype} values, expected file names")
    return out


def mat_numbers(value, path: Path, variable: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iufb":
        raise InvalidInputError(f"{path}: variable {variable} holds {arr.dtype} values, expected numbers")
    return arr.astype(np.float64).reshape(-1, order="F")
