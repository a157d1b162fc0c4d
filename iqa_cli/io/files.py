"""Reading inputs and writing outputs safely: only regular files are read, outputs never land on
an input, and a failed, full or interrupted run never leaves half a file behind."""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator, Sequence

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, writers are not guarded against each other
    fcntl = None

# -- inputs ----------------------------------------------------------------------------------------
_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_file_kind(path: str | Path) -> str | None:
    """'a FIFO (named pipe)', 'a character device', ... when ``path`` exists and is neither a regular
    file nor a folder; None otherwise. Reading such a file blocks forever (a FIFO nobody writes) or
    never ends (/dev/zero), so every opener refuses them before reading a byte."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    for test, kind in _SPECIAL_KINDS:
        if test(mode):
            return kind
    return None


def require_regular_file(path: str | Path, what: str, error: type[Exception] | None = None) -> Path:
    """``path`` if it is a regular file (or a link to one); else ``error`` (InvalidInputError by
    default) naming the path: missing, a folder, or a special file, with what was expected."""
    from ..errors import InvalidInputError

    error = error or InvalidInputError
    path = Path(path)
    kind = special_file_kind(path)
    if kind is not None:
        raise error(f"{path}: is {kind}, not a regular file; give {what}")
    if path.is_dir():
        raise error(f"{path}: is a folder, expected {what}")
    if not path.is_file():
        raise error(f"{path}: no such file (check the path)")
    return path


# -- outputs ---------------------------------------------------------------------------------------
def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _nearest_existing(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path(path.anchor or ".")


def _probe_writable(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (None when one can). A real attempt, not
    os.access: permission bits say nothing for root, read-only mounts or /proc."""
    try:
        fd, name = tempfile.mkstemp(prefix=".iqa-write-test-", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(name)
    return None


Inputs = "Iterable[str | Path | None] | dict[str, str | Path | None]"


def _named_inputs(inputs) -> list[tuple[str, Path]]:
    """(how to name it, path) of each input given: a mapping option -> path, or plain paths."""
    pairs = inputs.items() if isinstance(inputs, dict) else ((None, p) for p in inputs)
    return [(f"the input {p} ({label})" if label else f"the input {p}", Path(p)) for label, p in pairs if p is not None]


def check_output_path(path: str | Path, option: str, folder: bool = False, inputs: Inputs = ()) -> Path:
    """Fail before any work when ``path`` cannot be written: a file expected but a folder is there
    (or the reverse, with ``folder``), a special file (/dev/null, a FIFO) is there, a parent that
    should be a folder is a file, or no file can be created in the nearest existing folder.
    Missing parent folders are fine: writers create them.

    ``inputs`` are the files and folders the command reads (plain paths, or a mapping from the
    option that names each to its path): an output may not be one of them, nor lie inside an input
    folder (it would replace or join the inputs)."""
    from ..errors import InvalidInputError

    path = Path(path)
    target = path.resolve()
    for name, src in _named_inputs(inputs):
        if _same_path(path, src):
            raise InvalidInputError(f"{path}: {option} would write over {name}; choose an output path outside the "
                                    "inputs")
        if src.is_dir() and src.resolve() in target.parents:
            raise InvalidInputError(f"{path}: {option} lies inside the input folder {src}, so it would replace or mix "
                                    "with the inputs; choose a path outside the inputs")
    kind = special_file_kind(path)
    if kind is not None:
        raise InvalidInputError(f"{path}: is {kind}, not a {'folder' if folder else 'regular file'}; {option} writes "
                                f"a {'folder' if folder else 'file'} (choose another path)")
    if folder and path.exists() and not path.is_dir():
        raise InvalidInputError(f"{path}: is a file, expected a folder for {option} (choose another path)")
    if not folder and path.is_dir():
        raise InvalidInputError(f"{path}: is a folder, expected a file path to write for {option}")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InvalidInputError(f"{path}: cannot be written, {parent} is a file, not a folder "
                                        f"(choose another {option} path)")
            why = _probe_writable(parent)
            if why is not None:
                raise InvalidInputError(f"{path}: cannot be written, no file can be created in {parent} ({why}); "
                                        f"choose another {option} path")
            break
    return path


def check_output_paths(outputs: Iterable[tuple[str | Path | None, str, bool]], inputs: Inputs = ()) -> None:
    """The one check every command runs on its outputs before any work: each (path, option,
    is_folder) with check_output_path against all the inputs, and no two outputs on one path."""
    from ..errors import InvalidInputError

    inputs = dict(inputs) if isinstance(inputs, dict) else [p for p in inputs if p is not None]
    given = [(Path(p), option, folder) for p, option, folder in outputs if p is not None]
    for path, option, folder in given:
        check_output_path(path, option, folder=folder, inputs=inputs)
    for i, (a, option_a, _) in enumerate(given):
        for b, option_b, _ in given[i + 1:]:
            if _same_path(a, b):
                raise InvalidInputError(f"{b}: {option_a} and {option_b} name the same file, so one would replace "
                                        "the other; give them different paths")


# -- failed writes -----------------------------------------------------------------------------------
_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "errno = 28,", "errno = 122,")
NEARLY_FULL_BYTES = 1 << 20


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(_nearest_existing(path) if not path.is_dir() else path).free
    except OSError:
        return None


def is_disk_full(exc: BaseException, path: str | Path | None = None) -> bool:
    """True when ``exc`` says the device (or the quota) is full. Some writers hide the errno (torch
    .save raises "unexpected pos 576 vs 534"), so a failed write of ``path`` also counts when less
    than 1 MiB is left beside it."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS:
        return True
    text = str(exc)
    if any(marker in text for marker in _NO_SPACE_TEXT):
        return True
    if path is None:
        return False
    free = _free_bytes(Path(path))
    return free is not None and free < NEARLY_FULL_BYTES


def write_failure(path: str | Path, exc: BaseException, what: str = "it"):
    """The one-line error for a failed write of the user's ``path`` (never the temporary file's
    name), or None when ``exc`` is not about writing (a bug or the caller's own error)."""
    from ..errors import IQAError, WriteError

    if isinstance(exc, IQAError):
        return None
    path = Path(path)
    if is_disk_full(exc, path if not isinstance(exc, OSError) else None) or (
            isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS):
        detail = str(exc).partition("No space left on device: ")[2] if isinstance(exc, OSError) else ""
        if not detail:
            free = _free_bytes(path)
            detail = f"{free / 2**20:.1f} MiB free in {_nearest_existing(path)}" if free is not None else ""
        return WriteError(f"{path}: no space left on device while writing {what}" + (f" ({detail})" if detail else "")
                          + "; nothing was written (free some space, or choose a path on another disk)")
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc).strip().splitlines()[0]
        return WriteError(f"{path}: cannot be written ({reason}); nothing was written (choose another path)")
    return None


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str = "it") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.
    A failed write (disk full, read-only, ...) leaves nothing behind and is reported as one
    WriteError naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except Exception as exc:
        error = write_failure(path, exc, what)  # judged before the temporary file frees its space
        if error is None:
            raise
        raise error from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


class DeferredInterrupt:
    """While an output is being written, Ctrl-C is remembered and raised as KeyboardInterrupt at
    the writer's next ``check()``, not wherever the signal lands.

    C libraries call back into Python where an exception can only be printed and dropped: an
    interrupt that lands in an h5py object's finaliser prints "Exception ignored ...
    KeyboardInterrupt" and the run carries on to exit 0. A second Ctrl-C raises at once. Only the
    main thread can handle signals; elsewhere, and when SIGINT is ignored or handled by the
    caller, nothing changes."""

    def __init__(self) -> None:
        self.pending = False
        self._previous = None
        self._installed = False

    def _handler(self, signum, frame) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def start(self) -> "DeferredInterrupt":
        self.pending = False
        if self._installed or threading.current_thread() is not threading.main_thread():
            return self
        try:
            if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
                return self
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        except (ValueError, OSError):  # not the main interpreter
            pass
        return self

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed since start()."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def restore(self) -> None:
        """Put the previous handler back (a pending Ctrl-C is forgotten: the caller is failing anyway)."""
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def stop(self) -> None:
        """Restore the previous handler; a Ctrl-C still pending is raised now."""
        self.restore()
        self.check()

    def __enter__(self) -> "DeferredInterrupt":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.stop()
        else:
            self.restore()


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
