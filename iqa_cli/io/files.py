"""Writing output files so that a failed or interrupted run never leaves half a file behind."""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence


def check_output_path(path: str | Path, option: str, folder: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Fail before any work when ``path`` cannot be written: a file expected but a folder is there
    (or the reverse, with ``folder``), or a parent that should be a folder is a file, or the nearest
    existing parent folder is not writable. Missing parent folders are fine: writers create them.

    ``inputs`` are the files and folders the command reads: an output may not be one of them, and
    an output folder may not be, or lie inside, an input folder (its files would replace the inputs)."""
    from ..errors import InvalidInputError

    path = Path(path)
    target = path.resolve()
    for source in inputs:
        src = Path(source).resolve()
        if target == src:
            raise InvalidInputError(f"{path}: {option} would write over the input {source}; choose an output path "
                                    "outside the inputs")
        if folder and src.is_dir() and src in target.parents:
            raise InvalidInputError(f"{path}: {option} lies inside the input folder {source}, so its files would mix "
                                    "with the inputs; choose a folder outside the inputs")
    if folder and path.exists() and not path.is_dir():
        raise InvalidInputError(f"{path}: is a file, expected a folder for {option} (choose another path)")
    if not folder and path.is_dir():
        raise InvalidInputError(f"{path}: is a folder, expected a file path to write for {option}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InvalidInputError(f"{path}: cannot be written, {parent} is a file, not a folder "
                                        f"(choose another {option} path)")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InvalidInputError(f"{path}: cannot be written, folder {parent} is not writable "
                                        f"(choose another {option} path)")
            break
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
    return Path(path)
