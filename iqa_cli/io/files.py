"""Writing output files so that a failed or interrupted run never leaves half a file behind."""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence


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
