"""Writing output files so that a failed or interrupted run never leaves half a file behind."""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, writers are not guarded against each other
    fcntl = None


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


class OutputLock:
    """An exclusive advisory lock on ``<path>.lock`` while one process writes ``path``.

    Two runs writing the same output would otherwise clobber each other's temporary file. The
    lock file is removed on release; a lock taken on a file that another process removed in the
    meantime is retried on the new file, so two writers never both think they hold it."""

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        from ..errors import InvalidInputError

        if fcntl is None or self._fd is not None:
            return
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise InvalidInputError(f"{self.path}: another {self.what} is writing it right now (lock "
                                        f"{self.lock_path.name}); wait for it to finish, or choose another output "
                                        "path") from None
            try:
                same_file = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same_file = False
            if same_file:
                self._fd = fd
                return
            os.close(fd)  # the holder released and removed it between our open and our lock: try again

    @property
    def held(self) -> bool:
        """True while this process holds the lock, or where locks are not available."""
        return self._fd is not None or fcntl is None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.lock_path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing drops the lock
        self._fd = None
