"""The HDF5 patch store: one file per mesh-quality database (the only module importing h5py).

Schema version 1 (see datasets/README.md for the user-facing description)::

    attrs   iqa_store="patch-store", schema_version=1, patch_size, stride (-1: unknown, imported),
            min_foreground (NaN: unknown), background (str), fingerprint (hex), source ("renders"|"patches")
    /distorted              uint8 (N, s, s, 3), chunks of ~64 patches, uncompressed
    /reference              uint8 (M, s, s, 3), each model's reference patches once, contiguous per model
    /patch_index/stimulus   int64 (N,) row in /stimuli
    /patch_index/view       int16 (N,) view index within the model (0-based)
    /patch_index/number     int32 (N,) patch number within its view (0-based)
    /patch_index/y, x       int32 (N,) top-left corner in the render; -1 when unknown (imported)
    /patch_index/ref        int64 (N,) row in /reference of the matching reference patch
    /stimuli/model, stimulus, split   UTF-8 str (S,)   (split "" when unknown)
    /stimuli/mos            float64 (S,), NaN when unknown
    /stimuli/first, count   int64 (S,) the stimulus's rows in /distorted: [first, first + count)
    /stimuli/model_index    int32 (S,) row in /models
    /stimuli/flag           str (S,): "" or "no-foreground" (its model had no usable tile; count 0)
    /models/name            str (K,)
    /models/ref_first, ref_count   int64 (K,) the model's rows in /reference
    /models/n_views         int32 (K,)
    /models/views           str (K,) JSON list of the model's view names (extra, informative)

A stimulus's patches are contiguous, view-major then patch number; the stimuli of one model are
consecutive. Patch ``i`` of a stimulus pairs with reference row ``ref_first + i`` of its model.

Writing goes to ``<out>.partial`` beside the target and is renamed into place with os.replace on
success, so a killed run never leaves a corrupt store (a stale partial file is overwritten by the
next run). ``<out>.lock`` keeps a second writer of the same store out while one is at work.
Readers open the HDF5 file lazily on first read and never pickle the handle, so each DataLoader
worker reopens it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from ..errors import StoreError
from .files import DeferredInterrupt, OutputLock, is_disk_full, write_failure

SCHEMA_VERSION = 1
STORE_KIND = "patch-store"
FLAG_NO_FOREGROUND = "no-foreground"

# Room kept free on the store's disk while writing: HDF5 writes its metadata when objects close, and
# one of those writes failing on a full disk leaves the library in a state where closing the file
# crashes the process. Writes that would leave less than this free are refused beforehand.
WRITE_MARGIN_BYTES = 4 << 20

STIMULI_COLUMNS = ("model", "stimulus", "split", "mos", "first", "count", "model_index", "flag")
MODELS_COLUMNS = ("name", "ref_first", "ref_count", "n_views")
INDEX_COLUMNS = ("stimulus", "view", "number", "y", "x", "ref")
REQUIRED = ("distorted", "reference",
            *(f"patch_index/{c}" for c in INDEX_COLUMNS),
            *(f"stimuli/{c}" for c in STIMULI_COLUMNS),
            *(f"models/{c}" for c in MODELS_COLUMNS))

_STR = h5py.string_dtype("utf-8")
_INDEX_DTYPES = {"stimulus": np.int64, "view": np.int16, "number": np.int32, "y": np.int32, "x": np.int32,
                 "ref": np.int64}


def partial_path(path: str | Path) -> Path:
    """Where a store is written before it is renamed into place."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def _chunk_rows(patch_size: int) -> int:
    """About 64 patches per chunk, fewer for very large patches (chunks stay <= 4 MiB)."""
    return int(max(1, min(64, (4 << 20) // (patch_size * patch_size * 3))))


def _attr_str(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _attr_str(value.item())
    return str(value)


# ---------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------

class StoreWriter:
    """Builds a store incrementally in ``<path>.partial``; ``commit()`` renames it into place.

    Use as a context manager: leaving the block with an exception removes the partial file.
    Patches are appended in small blocks, so memory stays flat whatever the database size.

    >>> with StoreWriter(out, patch_size=64, stride=64, min_foreground=0.6, background="auto",
    ...                  fingerprint=fp, source="renders") as w:
    ...     m = w.add_model("bunny", ref_patches, views=["front"])
    ...     w.add_stimulus(m, "bunny_noise1", patches, view=v, number=n, y=y, x=x, mos=0.3)
    ...     w.commit()
    """

    def __init__(self, path: str | Path, *, patch_size: int, stride: int, min_foreground: float,
                 background: str, fingerprint: str, source: str, flush_patches: int = 1024):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.patch_size = int(patch_size)
        self._attrs = {"iqa_store": STORE_KIND, "schema_version": SCHEMA_VERSION, "patch_size": int(patch_size),
                       "stride": int(stride), "min_foreground": float(min_foreground), "background": str(background),
                       "fingerprint": str(fingerprint), "source": str(source)}
        self._flush_at = max(1, int(flush_patches))
        self._file: h5py.File | None = None
        self._lock = OutputLock(self.path, "iqa patchify")
        self._interrupt = DeferredInterrupt()
        self._hdf5_failures: list[BaseException] = []  # raised where HDF5 could only print them
        self._unraisable_hook = None
        self._excepthook = None
        self._committed = False
        self._buffers: dict[str, list[np.ndarray]] = {"distorted": [], "reference": []}
        self._buffered = {"distorted": 0, "reference": 0}
        self._rows = {"distorted": 0, "reference": 0}  # rows written + buffered
        self._index: dict[str, list[np.ndarray]] = {c: [] for c in INDEX_COLUMNS}
        self._stimuli: dict[str, list] = {c: [] for c in STIMULI_COLUMNS}
        self._models: dict[str, list] = {c: [] for c in (*MODELS_COLUMNS, "views")}

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "StoreWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._committed:
            self.abort()

    def open(self) -> None:
        try:
            with self._writing():
                self.partial.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()  # before touching the partial file: another writer may own it
            self._start_guards()
            with self._writing():
                if self.partial.exists():  # left by a killed run: its content is not trusted, start over
                    self.partial.unlink()
                self._file = h5py.File(self.partial, "w")
                s = self.patch_size
                for name in ("distorted", "reference"):
                    self._file.create_dataset(name, shape=(0, s, s, 3), maxshape=(None, s, s, 3), dtype=np.uint8,
                                              chunks=(_chunk_rows(s), s, s, 3))
        except BaseException:
            self.abort()  # a failing __enter__ gets no __exit__: drop the partial file and the lock here
            raise

    def abort(self) -> None:
        """Close and delete the partial file (nothing is left behind)."""
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - best effort while already failing
                pass
            self._file = None
        if not self._committed and self._lock.held:
            try:
                self.partial.unlink()
            except FileNotFoundError:
                pass
        self._lock.release()
        self._stop_guards(raise_pending=False)

    # -- failures while writing ---------------------------------------------------------------------
    # HDF5 writes metadata when objects are closed, from h5py's finalisers, where an error (a full
    # disk) or a Ctrl-C can only be printed ("Exception ignored in ... __dealloc__") and the run
    # goes on to crash or to exit 0. While a writer is open, such failures are collected instead and
    # raised at the writer's next step, and Ctrl-C waits for that step too.
    def _start_guards(self) -> None:
        self._interrupt.start()
        if self._unraisable_hook is None:
            # Cython prints a finaliser's error through sys.excepthook, then sys.unraisablehook
            self._unraisable_hook, self._excepthook = sys.unraisablehook, sys.excepthook
            sys.unraisablehook = self._collect_unraisable
            sys.excepthook = self._collect_printed

    def _stop_guards(self, raise_pending: bool = True) -> None:
        if self._unraisable_hook is not None:
            sys.unraisablehook, sys.excepthook = self._unraisable_hook, self._excepthook
            self._unraisable_hook = None
        if raise_pending:
            self._interrupt.stop()
        else:
            self._interrupt.restore()

    def _collect_unraisable(self, unraisable) -> None:
        if isinstance(unraisable.exc_value, (OSError, RuntimeError, KeyboardInterrupt)):
            self._hdf5_failures.append(unraisable.exc_value)
        else:
            self._unraisable_hook(unraisable)

    def _collect_printed(self, exc_type, exc, tb) -> None:
        if not isinstance(exc, (OSError, RuntimeError, KeyboardInterrupt)):
            self._excepthook(exc_type, exc, tb)

    def _ensure_room(self, nbytes: int) -> None:
        """Refuse (WriteError naming the store) a write that would leave the disk nearly full."""
        try:
            free = shutil.disk_usage(self.partial.parent).free
        except OSError:
            return
        if free < nbytes + WRITE_MARGIN_BYTES:
            raise OSError(errno.ENOSPC, f"No space left on device: {nbytes / 2**20:.1f} MiB more to write, "
                                        f"{free / 2**20:.1f} MiB free in {self.partial.parent} and "
                                        f"{WRITE_MARGIN_BYTES >> 20} MiB kept free")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One step of writing: a Ctrl-C pressed or an HDF5 failure collected meanwhile is raised at
        its end; a write error becomes a WriteError naming the store. A full disk first gets the
        partial file truncated, so that HDF5's closing writes find room and end cleanly."""
        try:
            yield
            self._interrupt.check()
            failures, self._hdf5_failures = self._hdf5_failures, []
            if any(isinstance(f, KeyboardInterrupt) for f in failures):
                raise KeyboardInterrupt
            if failures:
                raise failures[0]
        except Exception as exc:  # noqa: BLE001 - sorted below: write failures vs the caller's bugs
            full = any(is_disk_full(f) for f in (exc, *self._hdf5_failures))
            error = write_failure(self.path, exc if not full or isinstance(exc, OSError)
                                  else OSError(errno.ENOSPC, "No space left on device"), "the patch store")
            if error is None:
                raise
            if full:
                with contextlib.suppress(OSError):
                    os.truncate(self.partial, 0)
            raise error from None

    # -- content --------------------------------------------------------------------------------
    @property
    def n_patches(self) -> int:
        return self._rows["distorted"]

    @property
    def n_reference(self) -> int:
        return self._rows["reference"]

    def _check_patches(self, patches: np.ndarray, what: str) -> np.ndarray:
        patches = np.asarray(patches)
        s = self.patch_size
        if patches.ndim != 4 or patches.shape[1:] != (s, s, 3) or patches.dtype != np.uint8:
            raise ValueError(f"{what}: expected uint8 (n, {s}, {s}, 3) patches, got {patches.dtype} {patches.shape}")
        return patches

    def _append(self, name: str, patches: np.ndarray) -> int:
        first = self._rows[name]
        if len(patches):
            self._buffers[name].append(np.ascontiguousarray(patches))
            self._buffered[name] += len(patches)
            self._rows[name] += len(patches)
            if self._buffered[name] >= self._flush_at:
                self._flush(name)
        return first

    def _flush(self, name: str) -> None:
        if not self._buffered[name]:
            return
        with self._writing():
            block = np.concatenate(self._buffers[name]) if len(self._buffers[name]) > 1 else self._buffers[name][0]
            self._ensure_room(block.nbytes)
            ds = self._file[name]
            start = ds.shape[0]
            ds.resize(start + len(block), axis=0)
            ds[start:start + len(block)] = block
            del ds  # closed here, inside the step, so that its failures are this step's
        self._buffers[name].clear()
        self._buffered[name] = 0

    def add_model(self, name: str, reference: np.ndarray, views: Sequence[str] = ("",)) -> int:
        """Append one model's reference patches (all views, view-major); returns its model index."""
        reference = self._check_patches(reference, f"model {name}")
        self._interrupt.check()  # a Ctrl-C pressed while the caller read this model's renders
        first = self._append("reference", reference)
        m = self._models
        m["name"].append(str(name))
        m["ref_first"].append(first)
        m["ref_count"].append(len(reference))
        m["n_views"].append(len(views))
        m["views"].append(json.dumps([str(v) for v in views]))
        return len(m["name"]) - 1

    def add_stimulus(self, model_index: int, stimulus: str, patches: np.ndarray, *, view, number, y, x,
                     ref, mos: float = float("nan"), split: str = "", flag: str = "") -> int:
        """Append one stimulus's patches (view-major, then patch number); returns its stimulus row.

        ``ref`` is relative to the model's first reference row (the writer adds ``ref_first``).
        """
        patches = self._check_patches(patches, f"stimulus {stimulus}")
        self._interrupt.check()  # a Ctrl-C pressed while the caller read this stimulus's renders
        n = len(patches)
        if not 0 <= model_index < len(self._models["name"]):
            raise ValueError(f"stimulus {stimulus}: unknown model index {model_index}")
        columns = {"view": view, "number": number, "y": y, "x": x, "ref": ref}
        arrays = {}
        for key, value in columns.items():
            arr = np.asarray(value, dtype=_INDEX_DTYPES[key]).reshape(-1)
            if len(arr) != n:
                raise ValueError(f"stimulus {stimulus}: {key} has {len(arr)} entries for {n} patches")
            arrays[key] = arr
        ref_first = self._models["ref_first"][model_index]
        ref_count = self._models["ref_count"][model_index]
        if n and (arrays["ref"].min() < 0 or arrays["ref"].max() >= ref_count):
            raise ValueError(f"stimulus {stimulus}: reference index outside its model's {ref_count} patches")
        row = len(self._stimuli["model"])
        first = self._append("distorted", patches)
        arrays["ref"] = arrays["ref"] + ref_first
        arrays["stimulus"] = np.full(n, row, dtype=np.int64)
        for key in INDEX_COLUMNS:
            self._index[key].append(arrays[key])
        st = self._stimuli
        st["model"].append(self._models["name"][model_index])
        st["stimulus"].append(str(stimulus))
        st["split"].append("" if split is None else str(split))
        st["mos"].append(float("nan") if mos is None else float(mos))
        st["first"].append(first)
        st["count"].append(n)
        st["model_index"].append(int(model_index))
        st["flag"].append(str(flag))
        return row

    def commit(self) -> Path:
        """Write the tables and attributes, close, and rename the partial file into place."""
        if self._file is None:
            raise RuntimeError("StoreWriter.commit() without open()")
        self._flush("distorted")
        self._flush("reference")
        with self._writing():
            n, n_stimuli = self._rows["distorted"], len(self._stimuli["model"])
            self._ensure_room(n * 30 + (n_stimuli + len(self._models["name"])) * 256)  # the tables, roughly
            self._write_tables(self._file)
            self._file.flush()
            f, self._file = self._file, None  # a failed close must not be retried: HDF5 would crash
            f.close()
        os.replace(self.partial, self.path)
        self._committed = True
        self._lock.release()
        self._stop_guards()  # a Ctrl-C pressed after the last step: the store is whole, then stop
        return self.path

    def _write_tables(self, f: h5py.File) -> None:
        grp = f.create_group("patch_index")
        for key in INDEX_COLUMNS:
            parts = self._index[key]
            arr = np.concatenate(parts) if parts else np.zeros(0, dtype=_INDEX_DTYPES[key])
            grp.create_dataset(key, data=arr.astype(_INDEX_DTYPES[key], copy=False))
        st = self._stimuli
        grp = f.create_group("stimuli")
        for key in ("model", "stimulus", "split", "flag"):
            grp.create_dataset(key, data=np.array(st[key], dtype=object), dtype=_STR)
        grp.create_dataset("mos", data=np.array(st["mos"], dtype=np.float64))
        grp.create_dataset("first", data=np.array(st["first"], dtype=np.int64))
        grp.create_dataset("count", data=np.array(st["count"], dtype=np.int64))
        grp.create_dataset("model_index", data=np.array(st["model_index"], dtype=np.int32))
        m = self._models
        grp = f.create_group("models")
        grp.create_dataset("name", data=np.array(m["name"], dtype=object), dtype=_STR)
        grp.create_dataset("views", data=np.array(m["views"], dtype=object), dtype=_STR)
        grp.create_dataset("ref_first", data=np.array(m["ref_first"], dtype=np.int64))
        grp.create_dataset("ref_count", data=np.array(m["ref_count"], dtype=np.int64))
        grp.create_dataset("n_views", data=np.array(m["n_views"], dtype=np.int32))
        for key, value in self._attrs.items():
            f.attrs[key] = value


# ---------------------------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------------------------

def _require_store_file(path: Path, what: str, build: str, rebuild: str) -> None:
    """StoreError unless ``path`` is an existing regular HDF5 file: missing, a folder, a special file
    (a FIFO would block the HDF5 check) or other bytes each get their one line. ``what`` names the
    store ("patch store"), ``build`` how to make one, ``rebuild`` how to replace a damaged one."""
    from .files import require_regular_file

    if not path.exists() and not path.is_symlink():
        raise StoreError(f"{path}: no such {what} ({build})")
    require_regular_file(path, f"a {what} .h5 file ({build})", error=StoreError)
    try:
        is_hdf5 = h5py.is_hdf5(str(path))
    except Exception:  # noqa: BLE001 - h5py raises OSError or RuntimeError on damaged bytes
        is_hdf5 = False
    if not is_hdf5:
        raise StoreError(f"{path}: not an HDF5 file (corrupt, truncated or not a {what}); {rebuild}")


class _PerProcessHandle:
    """A reader's h5py handle, one per process: opened on first use (``_open_file``), reopened after
    a fork, dropped when pickled, so each DataLoader worker reads through a handle of its own.
    ``_handle_attrs`` names the objects a subclass keeps from the open file (datasets)."""

    _handle_attrs: tuple[str, ...] = ()
    _file: h5py.File | None = None
    _pid: int | None = None

    def _open_file(self) -> h5py.File:
        raise NotImplementedError

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = self._open_file()
            self._pid = os.getpid()
        return self._file

    def _drop_handle(self, state: dict) -> dict:
        for name in ("_file", "_pid", *self._handle_attrs):
            state[name] = None
        return state

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._drop_handle(self.__dict__)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return self._drop_handle(self.__dict__.copy())

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class PatchStore(_PerProcessHandle):
    """Read access to a patch store. ``PatchStore.open(path)`` validates; reads open lazily.

    Picklable: the h5py handle is dropped and reopened on first use in the new process (also
    after a fork), so each DataLoader worker has its own handle.
    """

    def __init__(self, path: str | Path, attrs: dict, n_patches: int, n_reference: int,
                 tables: dict[str, dict[str, np.ndarray]] | None = None, identity: tuple[int, ...] | None = None):
        self.path = Path(path)
        self.patch_size = int(attrs["patch_size"])
        self.stride = int(attrs["stride"])
        self.min_foreground = float(attrs["min_foreground"])
        self.background = _attr_str(attrs.get("background", ""))
        self.fingerprint = _attr_str(attrs.get("fingerprint", ""))
        self.source = _attr_str(attrs.get("source", ""))
        self.schema_version = int(attrs["schema_version"])
        self.n_patches = int(n_patches)
        self.n_reference = int(n_reference)
        self._tables = tables  # the stimuli and models tables, read and checked once by open()
        self._identity = identity  # the file open() validated; every later open must find the same one
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._stimuli = None
        self._models = None
        self._views: list[list[str]] | None = None

    # -- opening and validation -----------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> "PatchStore":
        """Validate a store: sizes and tables are read from one open and kept; patches are read
        later through handles opened on demand (one per process), each checked to be the very
        file validated here, so a store rebuilt or replaced meanwhile is reported, never mixed."""
        path = Path(path)
        rebuild = "rebuild it with iqa patchify --force"
        _require_store_file(path, "patch store", "build one with iqa patchify", rebuild)
        try:
            f = h5py.File(path, "r", rdcc_nbytes=8 << 20)
        except Exception as exc:  # noqa: BLE001 - damaged metadata: OSError, RuntimeError, KeyError, ...
            raise StoreError(f"{path}: unreadable patch store ({_first_line(exc)}); {rebuild}") from None
        try:
            attrs, n, m, tables = _validate(f, path, rebuild)
            identity = _identity(f, path)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - damaged datasets fail in many ways
            raise StoreError(f"{path}: unreadable patch store ({_first_line(exc)}); {rebuild}") from None
        finally:
            f.close()
        return cls(path, attrs, n, m, tables, identity=identity)

    # -- handle management ----------------------------------------------------------------------
    def _open_file(self) -> h5py.File:
        """A new handle (first use, or after a fork: the parent's is not ours to use), which must be
        the very file open() validated."""
        try:
            f = h5py.File(self.path, "r", rdcc_nbytes=8 << 20)
        except Exception as exc:  # noqa: BLE001 - missing, replaced by garbage, ...
            raise StoreError(f"{self.path}: the patch store can no longer be read ({_first_line(exc)}); it "
                             "changed on disk while in use: run the command again") from None
        if self._identity is not None and _identity(f, self.path) != self._identity:
            f.close()
            raise StoreError(f"{self.path}: the patch store changed on disk while it was being read (rebuilt or "
                             "replaced by another program); run the command again")
        return f

    def __repr__(self) -> str:
        return (f"PatchStore({str(self.path)!r}, patches={self.n_patches}, reference={self.n_reference}, "
                f"patch_size={self.patch_size}, source={self.source!r})")

    def require_patches(self) -> None:
        """StoreError unless the store holds at least one patch to score or train on."""
        if self.n_patches:
            return
        n = len(self.stimuli)
        why = ("no stimuli" if n == 0 else
               f"{n} stimul{'us' if n == 1 else 'i'}, none with a usable tile (every model flagged no-foreground)")
        raise StoreError(f"{self.path}: the patch store holds no patches ({why}), so there is nothing to score; "
                         "rebuild it with iqa patchify (check --background, or a lower --min-foreground or "
                         "--patch-size)")

    # -- tables ---------------------------------------------------------------------------------
    @property
    def stimuli(self):
        """pandas.DataFrame: model, stimulus, split, mos, first, count, model_index, flag."""
        if self._stimuli is None:
            import pandas as pd

            self._stimuli = pd.DataFrame(self._table("stimuli"))
        return self._stimuli

    @property
    def models(self):
        """pandas.DataFrame: name, ref_first, ref_count, n_views."""
        if self._models is None:
            import pandas as pd

            self._models = pd.DataFrame({k: v for k, v in self._table("models").items() if k != "views"})
        return self._models

    def _table(self, name: str) -> dict[str, np.ndarray]:
        if self._tables is None:  # built without open(): read now
            self._tables = _read_tables(self._h5())
        return self._tables[name]

    def view_names(self, model_index: int) -> list[str]:
        """The view names of a model (e.g. ['front', 'side']; [''] for a single unnamed view)."""
        if self._views is None:
            views = self._table("models")["views"]
            if views is not None:
                try:
                    self._views = [json.loads(v) for v in views]
                except ValueError:
                    raise StoreError(f"{self.path}: damaged models/views (not JSON lists of view names); rebuild it "
                                     "with iqa patchify --force") from None
            else:
                self._views = [[str(v) for v in range(int(n))] for n in self._table("models")["n_views"]]
        return list(self._views[int(model_index)])

    @property
    def has_mos(self) -> bool:
        return bool(np.isfinite(self.stimuli["mos"].to_numpy()).any())

    # -- patches --------------------------------------------------------------------------------
    def _range(self, start: int, stop: int, n: int) -> tuple[int, int]:
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= n:
            raise IndexError(f"rows [{start}, {stop}) outside [0, {n}) in {self.path}")
        return start, stop

    def _read(self, name: str, rows):
        """``/name[rows]``; HDF5's failures on damaged data become one StoreError line."""
        try:
            return self._h5()[name][rows]
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - OSError / RuntimeError from a damaged chunk
            raise StoreError(f"{self.path}: unreadable patch data in /{name} ({_first_line(exc)}); rebuild it with "
                             "iqa patchify --force") from None

    def read_distorted(self, start: int, stop: int) -> np.ndarray:
        start, stop = self._range(start, stop, self.n_patches)
        return self._read("distorted", slice(start, stop))

    def read_reference(self, start: int, stop: int) -> np.ndarray:
        start, stop = self._range(start, stop, self.n_reference)
        return self._read("reference", slice(start, stop))

    def read_distorted_rows(self, rows: np.ndarray) -> np.ndarray:
        """Patches at arbitrary rows (any order, repeats allowed), returned in the order given.

        Nearby rows are read as one contiguous slice (gaps of up to one chunk are read through),
        which is much faster than HDF5 point selection for the sampled patches of training.
        """
        return self._read_rows("distorted", rows, self.n_patches)

    def read_reference_rows(self, rows: np.ndarray) -> np.ndarray:
        return self._read_rows("reference", rows, self.n_reference)

    def _read_rows(self, name: str, rows: np.ndarray, n: int) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        s = self.patch_size
        if len(rows) == 0:
            return np.zeros((0, s, s, 3), dtype=np.uint8)
        if rows.min() < 0 or rows.max() >= n:
            raise IndexError(f"rows outside [0, {n}) in {self.path}")
        uniq, inverse = np.unique(rows, return_inverse=True)
        ds = self._h5()[name]
        gap = ds.chunks[0] if ds.chunks else 64
        breaks = np.flatnonzero(np.diff(uniq) > gap) + 1
        out = np.empty((len(uniq), s, s, 3), dtype=np.uint8)
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(uniq)]):
            a, b = int(uniq[lo]), int(uniq[hi - 1]) + 1
            block = self._read(name, slice(a, b))
            out[lo:hi] = block[uniq[lo:hi] - a]
        if len(uniq) == len(rows) and np.array_equal(uniq, rows):
            return out
        return out[inverse.reshape(-1)]

    def patch_refs(self, start: int, stop: int) -> np.ndarray:
        start, stop = self._range(start, stop, self.n_patches)
        return self._read("patch_index/ref", slice(start, stop)).astype(np.int64, copy=False)

    def patch_index(self, start: int, stop: int) -> dict[str, np.ndarray]:
        start, stop = self._range(start, stop, self.n_patches)
        return {c: self._read(f"patch_index/{c}", slice(start, stop)) for c in INDEX_COLUMNS}


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # HDF5's messages run over several lines
    return (text[:160] + "...") if len(text) > 160 else (text or type(exc).__name__)


def _identity(f: h5py.File, path: Path) -> tuple[int, ...]:
    """Which file ``f`` is: device, inode, size and modification time of its open descriptor."""
    try:
        st = os.fstat(f.id.get_vfd_handle())
    except Exception:  # noqa: BLE001 - a driver without a file descriptor: the path is the next best thing
        st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


_INT_COLUMNS = ("stimuli/first", "stimuli/count", "stimuli/model_index", "models/ref_first", "models/ref_count",
                "models/n_views", *(f"patch_index/{c}" for c in INDEX_COLUMNS))
_STR_COLUMNS = ("stimuli/model", "stimuli/stimulus", "stimuli/split", "stimuli/flag", "models/name")


def _read_tables(f: h5py.File) -> dict[str, dict[str, np.ndarray]]:
    """The per-stimulus and per-model tables, in memory (small: one row per stimulus or model)."""
    st, mo = f["stimuli"], f["models"]
    return {
        "stimuli": {"model": _read_str(st["model"]), "stimulus": _read_str(st["stimulus"]),
                    "split": _read_str(st["split"]), "mos": st["mos"][()].astype(np.float64),
                    "first": st["first"][()].astype(np.int64), "count": st["count"][()].astype(np.int64),
                    "model_index": st["model_index"][()].astype(np.int32), "flag": _read_str(st["flag"])},
        "models": {"name": _read_str(mo["name"]), "ref_first": mo["ref_first"][()].astype(np.int64),
                   "ref_count": mo["ref_count"][()].astype(np.int64), "n_views": mo["n_views"][()].astype(np.int32),
                   "views": _read_str(mo["views"]) if "views" in mo else None},
    }


def _validate(f: h5py.File, path: Path, rebuild: str) -> tuple[dict, int, int, dict]:
    """(attributes, patches, reference patches, tables) of a store that every later read can trust;
    StoreError naming what is wrong otherwise."""
    attrs = {k: f.attrs[k] for k in f.attrs.keys()}
    if _attr_str(attrs.get("iqa_store", "")) != STORE_KIND:
        raise StoreError(f"{path}: HDF5 file is not an iqa patch store (no iqa_store='{STORE_KIND}' "
                         "attribute); build one with iqa patchify")
    try:
        version = int(attrs.get("schema_version"))
    except (TypeError, ValueError):
        version = None
    if version != SCHEMA_VERSION:
        raise StoreError(f"{path}: patch store of schema version {version}, this iqa reads version "
                         f"{SCHEMA_VERSION}; {rebuild}")
    missing = [name for name in REQUIRED if not isinstance(f.get(name), h5py.Dataset)]
    missing += [a for a in ("patch_size", "stride", "min_foreground") if a not in attrs]
    if missing:
        raise StoreError(f"{path}: damaged or incomplete patch store (missing {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}); {rebuild}")
    try:
        s = int(attrs["patch_size"])
        int(attrs["stride"]), float(attrs["min_foreground"])
    except (TypeError, ValueError):
        raise StoreError(f"{path}: inconsistent patch store (patch_size, stride or min_foreground is not a "
                         f"number); {rebuild}") from None
    n = f["distorted"].shape[0] if f["distorted"].ndim else 0
    m = f["reference"].shape[0] if f["reference"].ndim else 0
    bad = [name for name in ("distorted", "reference")
           if f[name].ndim != 4 or f[name].shape[1:] != (s, s, 3) or f[name].dtype != np.uint8]
    bad += [f"patch_index/{c}" for c in INDEX_COLUMNS if f[f"patch_index/{c}"].shape != (n,)]
    k = f["stimuli/model"].shape
    bad += [f"stimuli/{c}" for c in STIMULI_COLUMNS if f[f"stimuli/{c}"].shape != k or len(k) != 1]
    km = f["models/name"].shape
    bad += [f"models/{c}" for c in MODELS_COLUMNS if f[f"models/{c}"].shape != km or len(km) != 1]
    if bad:
        raise StoreError(f"{path}: inconsistent patch store (bad shape of {', '.join(bad[:5])}); {rebuild}")
    bad = [name for name in _INT_COLUMNS if not np.issubdtype(f[name].dtype, np.integer)]
    bad += [name for name in _STR_COLUMNS if h5py.check_string_dtype(f[name].dtype) is None]
    if not np.issubdtype(f["stimuli/mos"].dtype, np.number):
        bad.append("stimuli/mos (not numbers)")
    if bad:
        raise StoreError(f"{path}: inconsistent patch store (bad type of {', '.join(bad[:5])}); {rebuild}")
    try:
        tables = _read_tables(f)
    except UnicodeDecodeError:
        raise StoreError(f"{path}: damaged patch store (names that are not UTF-8 text in /stimuli or /models); "
                         f"{rebuild}") from None
    bad = _table_problems(f, tables, n, m)
    if bad:
        raise StoreError(f"{path}: inconsistent patch store (bad {', '.join(bad[:5])}); {rebuild}")
    return attrs, n, m, tables


def _table_problems(f: h5py.File, tables: dict, n: int, m: int) -> list[str]:
    """Values that would make later reads fail or pair the wrong patches: rows that point outside
    /distorted, /reference or /models, and an index that contradicts the tables (checked in blocks:
    memory stays flat)."""
    st, mo = tables["stimuli"], tables["models"]
    first, count, index = st["first"], st["count"], st["model_index"].astype(np.int64)
    k = len(mo["name"])
    problems = []
    if len(first) and (first.min() < 0 or count.min() < 0 or (first + count).max() > n):
        problems.append("stimuli/first, count (rows outside /distorted)")
    if len(index) and (index.min() < 0 or index.max() >= k):
        problems.append("stimuli/model_index (rows outside /models)")
    ref_first, ref_count = mo["ref_first"], mo["ref_count"]
    if len(ref_first) and (ref_first.min() < 0 or ref_count.min() < 0 or (ref_first + ref_count).max() > m):
        problems.append("models/ref_first, ref_count (rows outside /reference)")
    if problems or n == 0:
        return problems
    stim_ds, ref_ds = f["patch_index/stimulus"], f["patch_index/ref"]
    for start in range(0, n, 1 << 20):
        rows = np.arange(start, min(n, start + (1 << 20)))
        stim = stim_ds[start:rows[-1] + 1].astype(np.int64)
        refs = ref_ds[start:rows[-1] + 1].astype(np.int64)
        if stim.min() < 0 or stim.max() >= len(first) or np.any(rows < first[stim]) or \
                np.any(rows >= first[stim] + count[stim]):
            problems.append("patch_index/stimulus (contradicts stimuli/first, count)")
            break
        model = index[stim]
        if refs.min() < 0 or refs.max() >= m:
            problems.append("patch_index/ref (rows outside /reference)")
            break
        if np.any(refs < ref_first[model]) or np.any(refs >= ref_first[model] + ref_count[model]):
            problems.append("patch_index/ref (outside its model's models/ref_first, ref_count)")
            break
    return problems


def _read_str(ds) -> np.ndarray:
    return np.asarray(ds.asstr()[()], dtype=object).reshape(-1)


def store_fingerprint(path: str | Path) -> str | None:
    """The fingerprint of a valid store at ``path``; None when there is none (missing, foreign,
    corrupt, other schema)."""
    try:
        with PatchStore.open(path) as store:
            return store.fingerprint
    except StoreError:
        return None


def is_foreign_file(path: str | Path) -> bool:
    """True when ``path`` exists and is not a patch store written by iqa (any schema version), so
    overwriting it could destroy someone's data."""
    from .files import special_file_kind

    path = Path(path)
    if not path.exists():
        return False
    if path.is_dir() or special_file_kind(path) is not None:
        return True
    try:
        if not h5py.is_hdf5(str(path)):
            return True
        with h5py.File(path, "r") as f:
            return _attr_str(f.attrs.get("iqa_store", "")) != STORE_KIND
    except Exception:  # noqa: BLE001 - damaged HDF5: OSError, RuntimeError, ...
        return True


# ---------------------------------------------------------------------------------------------
# image store: whole images of a quality database (the eval-db / training cache)
# ---------------------------------------------------------------------------------------------
#
# Schema version 1 (see datasets/README.md)::
#
#     attrs   iqa_store="image-store", schema_version=1, fingerprint (hex), database (format name),
#             short_side (0: images at full size), n_images, n_rows
#     /pixels          uint8 (T,) every image's H*W*3 RGB bytes, concatenated; chunks of 1 MiB
#     /images/offset   int64 (K,) the image's first byte in /pixels
#     /images/height, width   int32 (K,)
#     /images/path     UTF-8 str (K,) the source file, relative to the table's root (POSIX)
#     /rows/dist       int64 (N,) table row -> row in /images of its distorted image
#     /rows/ref        int64 (N,) table row -> row in /images of its reference; -1 without one
#     /rows/name       UTF-8 str (N,) the table row's name (checks the store lines up with a table)
#
# Images of any size share one flat byte array, so a read is one contiguous slice whatever the
# size; each file is stored once (a reference shared by 125 KADID rows is one image).

IMAGE_STORE_KIND = "image-store"
IMAGE_SCHEMA_VERSION = 1
IMAGE_CHUNK_BYTES = 1 << 20
IMAGE_REQUIRED = ("pixels", "images/offset", "images/height", "images/width", "images/path", "rows/dist", "rows/ref",
                  "rows/name")


class ImageStoreWriter:
    """Builds an image store in ``<path>.partial``; ``commit()`` renames it into place.

    A context manager: leaving the block with an exception (or without commit) deletes the
    partial file and releases ``<path>.lock``. Images are buffered and written in blocks of
    about ``flush_bytes``, so memory stays flat whatever the database size.
    """

    def __init__(self, path: str | Path, *, fingerprint: str, database: str, short_side: int = 0,
                 flush_bytes: int = 64 << 20):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self._attrs = {"iqa_store": IMAGE_STORE_KIND, "schema_version": IMAGE_SCHEMA_VERSION,
                       "fingerprint": str(fingerprint), "database": str(database), "short_side": int(short_side or 0)}
        self._flush_at = max(1, int(flush_bytes))
        self._lock = OutputLock(self.path, "image cache build")
        self._file: h5py.File | None = None
        self._committed = False
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._written = 0  # bytes in /pixels
        self._images: dict[str, list] = {"offset": [], "height": [], "width": [], "path": []}

    def __enter__(self) -> "ImageStoreWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._committed:
            self.abort()

    def open(self) -> None:
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            if self.partial.exists():  # left by a killed run
                self.partial.unlink()
            self._file = h5py.File(self.partial, "w")
            self._file.create_dataset("pixels", shape=(0,), maxshape=(None,), dtype=np.uint8,
                                      chunks=(IMAGE_CHUNK_BYTES,))
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Close and delete the partial file (nothing is left behind)."""
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - best effort while already failing
                pass
            self._file = None
        if not self._committed and self._lock.held:
            try:
                self.partial.unlink()
            except FileNotFoundError:
                pass
        self._lock.release()

    @property
    def n_images(self) -> int:
        return len(self._images["path"])

    def add_image(self, path: str, image: np.ndarray) -> int:
        """Append one uint8 (H, W, 3) image; returns its row in /images."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{path}: expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        flat = np.ascontiguousarray(image).reshape(-1)
        self._images["offset"].append(self._written + self._buffered)
        self._images["height"].append(image.shape[0])
        self._images["width"].append(image.shape[1])
        self._images["path"].append(str(path))
        self._buffer.append(flat)
        self._buffered += flat.size
        if self._buffered >= self._flush_at:
            self._flush()
        return len(self._images["path"]) - 1

    def _flush(self) -> None:
        if not self._buffered:
            return
        ds = self._file["pixels"]
        block = np.concatenate(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        ds.resize(self._written + block.size, axis=0)
        ds[self._written:self._written + block.size] = block
        self._written += block.size
        self._buffer.clear()
        self._buffered = 0

    def commit(self, dist: Sequence[int], ref: Sequence[int], names: Sequence[str]) -> Path:
        """Write the row mapping (image rows of each table row's distorted image and reference,
        -1 for none) and the attributes, close, and rename into place."""
        if self._file is None:
            raise RuntimeError("ImageStoreWriter.commit() without open()")
        dist = np.asarray(dist, dtype=np.int64).reshape(-1)
        ref = np.asarray(ref, dtype=np.int64).reshape(-1)
        if len(dist) != len(ref) or len(dist) != len(names):
            raise ValueError("dist, ref and names must have one entry per table row")
        k = self.n_images
        if len(dist) and (dist.min() < 0 or dist.max() >= k or ref.min() < -1 or ref.max() >= k):
            raise ValueError(f"row mapping points outside the {k} stored images")
        self._flush()
        f = self._file
        grp = f.create_group("images")
        grp.create_dataset("offset", data=np.asarray(self._images["offset"], dtype=np.int64))
        grp.create_dataset("height", data=np.asarray(self._images["height"], dtype=np.int32))
        grp.create_dataset("width", data=np.asarray(self._images["width"], dtype=np.int32))
        grp.create_dataset("path", data=np.array(self._images["path"], dtype=object), dtype=_STR)
        grp = f.create_group("rows")
        grp.create_dataset("dist", data=dist)
        grp.create_dataset("ref", data=ref)
        grp.create_dataset("name", data=np.array([str(n) for n in names], dtype=object), dtype=_STR)
        for key, value in {**self._attrs, "n_images": k, "n_rows": len(dist)}.items():
            f.attrs[key] = value
        f.flush()
        f.close()
        self._file = None
        os.replace(self.partial, self.path)
        self._committed = True
        self._lock.release()
        return self.path


class ImageStore(_PerProcessHandle):
    """Read access to an image store. ``ImageStore.open(path)`` validates; reads open lazily.

    Picklable: the h5py handle is dropped and reopened on first use in each process, so every
    DataLoader worker has its own handle. The small tables (offsets, sizes, row mapping) are read
    once at open and travel with the object.
    """

    def __init__(self, path: Path, attrs: dict, offset: np.ndarray, height: np.ndarray, width: np.ndarray,
                 dist: np.ndarray, ref: np.ndarray):
        self.path = Path(path)
        self.fingerprint = _attr_str(attrs.get("fingerprint", ""))
        self.database = _attr_str(attrs.get("database", ""))
        self.short_side = int(attrs.get("short_side", 0))
        self.schema_version = int(attrs["schema_version"])
        self.offset, self.height, self.width = offset, height, width
        self.dist_image, self.ref_image = dist, ref
        self._file: h5py.File | None = None
        self._pixels: h5py.Dataset | None = None  # looked up once per handle: a lookup costs more than a read
        self._pid: int | None = None

    @classmethod
    def open(cls, path: str | Path) -> "ImageStore":
        path = Path(path)
        rebuild = "rebuild it with iqa patchify --from-db ROOT --format NAME --out FILE --force"
        _require_store_file(path, "image cache", "build one with iqa patchify --from-db ROOT --out FILE", rebuild)
        try:
            with h5py.File(path, "r") as f:
                attrs = {k: f.attrs[k] for k in f.attrs.keys()}
                kind = _attr_str(attrs.get("iqa_store", ""))
                if kind != IMAGE_STORE_KIND:
                    raise StoreError(f"{path}: HDF5 file is not an iqa image cache (iqa_store={kind or 'none'}); "
                                     "build one with iqa patchify --from-db")
                try:
                    version = int(attrs.get("schema_version"))
                except (TypeError, ValueError):
                    version = None
                if version != IMAGE_SCHEMA_VERSION:
                    raise StoreError(f"{path}: image cache of schema version {version}, this iqa reads version "
                                     f"{IMAGE_SCHEMA_VERSION}; {rebuild}")
                missing = [name for name in IMAGE_REQUIRED if name not in f]
                if missing:
                    raise StoreError(f"{path}: incomplete image cache (missing {', '.join(missing[:5])}); {rebuild}")
                offset = f["images/offset"][()].astype(np.int64)
                height = f["images/height"][()].astype(np.int64)
                width = f["images/width"][()].astype(np.int64)
                dist = f["rows/dist"][()].astype(np.int64)
                ref = f["rows/ref"][()].astype(np.int64)
                k, n, total = len(offset), len(dist), f["pixels"].shape[0]
                bad = [] if len(height) == k and len(width) == k and f["images/path"].shape == (k,) else ["images/*"]
                bad += [] if len(ref) == n and f["rows/name"].shape == (n,) else ["rows/*"]
                if not bad and k and (offset.min() < 0 or (offset + height * width * 3).max() > total):
                    bad.append("images/offset (outside /pixels)")
                if not bad and n and (dist.min() < 0 or dist.max() >= k or ref.min() < -1 or ref.max() >= k):
                    bad.append("rows/dist, ref (outside /images)")
                if f["pixels"].dtype != np.uint8 or f["pixels"].ndim != 1:
                    bad.append("pixels (not a flat uint8 array)")
                if bad:
                    raise StoreError(f"{path}: inconsistent image cache (bad {', '.join(bad)}); {rebuild}")
        except StoreError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:  # a damaged file raises any of these
            raise StoreError(f"{path}: unreadable image cache ({exc}); {rebuild}") from None
        return cls(path, attrs, offset, height, width, dist, ref)

    # -- handle management ----------------------------------------------------------------------
    _handle_attrs = ("_pixels",)

    def _open_file(self) -> h5py.File:
        f = h5py.File(self.path, "r", rdcc_nbytes=16 << 20)
        self._pixels = f["pixels"]
        return f

    def __repr__(self) -> str:
        return (f"ImageStore({str(self.path)!r}, database={self.database!r}, rows={self.n_rows}, "
                f"images={self.n_images})")

    # -- facts ----------------------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return len(self.offset)

    @property
    def n_rows(self) -> int:
        return len(self.dist_image)

    def image_paths(self) -> list[str]:
        return _read_str(self._h5()["images/path"]).tolist()

    def row_names(self) -> list[str]:
        return _read_str(self._h5()["rows/name"]).tolist()

    def image_index(self, rows, which: str = "dist") -> np.ndarray:
        """Rows in /images of the given table rows' distorted images (``which="dist"``) or
        references (``"ref"``; -1 where a row has none)."""
        mapping = {"dist": self.dist_image, "ref": self.ref_image}.get(which)
        if mapping is None:
            raise ValueError(f"which must be 'dist' or 'ref', not {which!r}")
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexError(f"rows outside [0, {self.n_rows}) in {self.path}")
        return mapping[rows]

    def select(self, rows) -> "ImageStore":
        """The same file seen as the cache of ``table.select(rows)``: row i of the result is row
        ``rows[i]`` here (no data is copied; the file handle is opened anew on first read)."""
        import copy

        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexError(f"rows outside [0, {self.n_rows}) in {self.path}")
        view = copy.copy(self.__getstate__())
        out = ImageStore.__new__(ImageStore)
        out.__setstate__(view)
        out.dist_image, out.ref_image = self.dist_image[rows], self.ref_image[rows]
        return out

    def size(self, image: int) -> tuple[int, int]:
        """(H, W) of stored image ``image``."""
        return int(self.height[image]), int(self.width[image])

    # -- pixels ---------------------------------------------------------------------------------
    def read_image(self, image: int) -> np.ndarray:
        """Stored image ``image`` as uint8 (H, W, 3): one contiguous read."""
        image = int(image)
        if not 0 <= image < self.n_images:
            raise IndexError(f"image {image} outside [0, {self.n_images}) in {self.path}")
        h, w, start = int(self.height[image]), int(self.width[image]), int(self.offset[image])
        self._h5()
        return self._pixels[start:start + h * w * 3].reshape(h, w, 3)

    def read_row(self, row: int, which: str = "dist") -> np.ndarray | None:
        """The distorted image (or reference) of table row ``row``; None for a missing reference."""
        image = int(self.image_index([row], which)[0])
        return None if image < 0 else self.read_image(image)

    def read_batch(self, rows, which: str = "dist") -> np.ndarray:
        """uint8 (n, H, W, 3) for table rows whose images share one size (the usual batch)."""
        images = self.image_index(rows, which)
        if images.size == 0:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        if images.min() < 0:
            raise ValueError("a row in the batch has no reference")
        sizes = {(int(self.height[i]), int(self.width[i])) for i in images}
        if len(sizes) != 1:
            raise ValueError(f"images of different sizes in one batch: {sorted(sizes)[:3]}")
        h, w = sizes.pop()
        out = np.empty((len(images), h, w, 3), dtype=np.uint8)
        for k, i in enumerate(images):
            out[k] = self.read_image(int(i))
        return out


def image_store_fingerprint(path: str | Path) -> str | None:
    """The fingerprint of a valid image store at ``path``; None when there is none."""
    try:
        return ImageStore.open(path).fingerprint
    except StoreError:
        return None


def is_foreign_image_store(path: str | Path) -> bool:
    """True when ``path`` exists and is not an image store written by iqa (any schema version),
    so overwriting it could destroy someone's data (is_foreign_file's rule for the image store)."""
    path = Path(path)
    if not path.exists():
        return False
    if path.is_dir() or not path.is_file():
        return True
    try:
        if not h5py.is_hdf5(str(path)):
            return True
        with h5py.File(path, "r") as f:
            return _attr_str(f.attrs.get("iqa_store", "")) != IMAGE_STORE_KIND
    except Exception:  # noqa: BLE001 - a damaged HDF5 file raises OSError, RuntimeError, ...
        return True


# ---------------------------------------------------------------------------------------------
# pristine patch store (NIQE / GRepQ pristine Gaussians)
# ---------------------------------------------------------------------------------------------
#
# Schema version 1 (a separate kind: iqa_store="pristine-store")::
#
#     attrs   iqa_store, schema_version=1, patch_size, sharpness, colourfulness (rule thresholds;
#             0 = rule off), sharpness_padding ("zero"|"replicate"), fingerprint (hex), root (str)
#     /patches                  uint8 (N, s, s, 3), the kept tiles, image by image, row-major
#     /patch_index/image        int64 (N,) row in /images
#     /patch_index/y, x         int32 (N,) top-left corner in the image
#     /images/name              str (K,) path relative to the images folder
#     /images/height, width     int32 (K,)
#     /images/first, count      int64 (K,) the image's rows in /patches
#     /images/n_tiles, n_sharp  int64 (K,) whole tiles, and tiles left after the sharpness rule
#     /mvg/<extractor>          cached pristine Gaussians: mean (d,), cov (d, d) float64; attrs
#                               extractor, weights (hash of the extractor's weights), n_patches
#
# The store is written like the patch store (``<out>.partial`` renamed into place, ``<out>.lock``).
# The MVG cache is the one thing written into an existing store, in place, under the same lock:
# the entry is written under a temporary name and renamed, and an entry that cannot be read is
# simply computed again.

PRISTINE_KIND = "pristine-store"
PRISTINE_SCHEMA_VERSION = 1
PRISTINE_IMAGE_COLUMNS = ("name", "height", "width", "first", "count", "n_tiles", "n_sharp")
PRISTINE_REQUIRED = ("patches", "patch_index/image", "patch_index/y", "patch_index/x",
                     *(f"images/{c}" for c in PRISTINE_IMAGE_COLUMNS))


class PristineStoreWriter:
    """Builds a pristine store in ``<path>.partial``; ``commit()`` renames it into place.

    >>> with PristineStoreWriter(out, patch_size=96, sharpness=0.75, colourfulness=0.8,
    ...                          sharpness_padding="zero", fingerprint=fp, root="photos") as w:
    ...     w.add_image("a.png", patches, y=ys, x=xs, height=h, width=wd, n_tiles=40, n_sharp=9)
    ...     w.commit()
    """

    def __init__(self, path: str | Path, *, patch_size: int, sharpness: float, colourfulness: float,
                 sharpness_padding: str, fingerprint: str, root: str = ""):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.patch_size = int(patch_size)
        self._attrs = {"iqa_store": PRISTINE_KIND, "schema_version": PRISTINE_SCHEMA_VERSION,
                       "patch_size": self.patch_size, "sharpness": float(sharpness),
                       "colourfulness": float(colourfulness), "sharpness_padding": str(sharpness_padding),
                       "fingerprint": str(fingerprint), "root": str(root)}
        self._file: h5py.File | None = None
        self._lock = OutputLock(self.path, "iqa patchify")
        self._committed = False
        self.n_patches = 0
        self._index: dict[str, list[np.ndarray]] = {"image": [], "y": [], "x": []}
        self._images: dict[str, list] = {c: [] for c in PRISTINE_IMAGE_COLUMNS}

    def __enter__(self) -> "PristineStoreWriter":
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            if self.partial.exists():
                self.partial.unlink()
            self._file = h5py.File(self.partial, "w")
            s = self.patch_size
            self._file.create_dataset("patches", shape=(0, s, s, 3), maxshape=(None, s, s, 3), dtype=np.uint8,
                                      chunks=(_chunk_rows(s), s, s, 3))
        except BaseException:
            self.abort()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._committed:
            self.abort()

    def abort(self) -> None:
        """Close and delete the partial file (nothing is left behind)."""
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - best effort while already failing
                pass
            self._file = None
        if not self._committed and self._lock.held:
            try:
                self.partial.unlink()
            except FileNotFoundError:
                pass
        self._lock.release()

    def add_image(self, name: str, patches: np.ndarray, *, y, x, height: int, width: int, n_tiles: int,
                  n_sharp: int) -> int:
        """Append one image's kept tiles (uint8 (k, s, s, 3)) and their corners; returns its image row."""
        patches = np.asarray(patches)
        s = self.patch_size
        if patches.ndim != 4 or patches.shape[1:] != (s, s, 3) or patches.dtype != np.uint8:
            raise ValueError(f"image {name}: expected uint8 (n, {s}, {s}, 3) patches, got {patches.dtype} "
                             f"{patches.shape}")
        n = len(patches)
        ys, xs = np.asarray(y, np.int32).reshape(-1), np.asarray(x, np.int32).reshape(-1)
        if len(ys) != n or len(xs) != n:
            raise ValueError(f"image {name}: {len(ys)} y and {len(xs)} x for {n} patches")
        row = len(self._images["name"])
        if n:
            ds = self._file["patches"]
            ds.resize(self.n_patches + n, axis=0)
            ds[self.n_patches:self.n_patches + n] = patches
        self._index["image"].append(np.full(n, row, np.int64))
        self._index["y"].append(ys)
        self._index["x"].append(xs)
        for key, value in (("name", str(name)), ("height", int(height)), ("width", int(width)),
                           ("first", self.n_patches), ("count", n), ("n_tiles", int(n_tiles)),
                           ("n_sharp", int(n_sharp))):
            self._images[key].append(value)
        self.n_patches += n
        return row

    def commit(self) -> Path:
        if self._file is None:
            raise RuntimeError("PristineStoreWriter.commit() outside its with-block")
        f = self._file
        grp = f.create_group("patch_index")
        for key, dtype in (("image", np.int64), ("y", np.int32), ("x", np.int32)):
            parts = self._index[key]
            grp.create_dataset(key, data=np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype))
        grp = f.create_group("images")
        grp.create_dataset("name", data=np.array(self._images["name"], dtype=object), dtype=_STR)
        for key, dtype in (("height", np.int32), ("width", np.int32), ("first", np.int64), ("count", np.int64),
                           ("n_tiles", np.int64), ("n_sharp", np.int64)):
            grp.create_dataset(key, data=np.array(self._images[key], dtype=dtype))
        for key, value in self._attrs.items():
            f.attrs[key] = value
        f.flush()
        f.close()
        self._file = None
        os.replace(self.partial, self.path)
        self._committed = True
        self._lock.release()
        return self.path


class PristineStore(_PerProcessHandle):
    """Read access to a pristine store, and its cache of fitted pristine Gaussians (``mvg``).

    Picklable like PatchStore: the h5py handle is reopened lazily in each process."""

    def __init__(self, path: str | Path, attrs: dict, n_patches: int, n_images: int):
        self.path = Path(path)
        self.patch_size = int(attrs["patch_size"])
        self.sharpness = float(attrs["sharpness"])
        self.colourfulness = float(attrs["colourfulness"])
        self.sharpness_padding = _attr_str(attrs.get("sharpness_padding", ""))
        self.fingerprint = _attr_str(attrs.get("fingerprint", ""))
        self.root = _attr_str(attrs.get("root", ""))
        self.n_patches = int(n_patches)
        self.n_images = int(n_images)
        self._file: h5py.File | None = None
        self._pid: int | None = None

    @classmethod
    def open(cls, path: str | Path) -> "PristineStore":
        path = Path(path)
        rebuild = "rebuild it with iqa patchify --pristine IMAGES/ --force"
        _require_store_file(path, "pristine store", "build one with iqa patchify --pristine IMAGES/", rebuild)
        try:
            with h5py.File(path, "r") as f:
                attrs = {k: f.attrs[k] for k in f.attrs.keys()}
                kind = _attr_str(attrs.get("iqa_store", ""))
                if kind != PRISTINE_KIND:
                    found = f"an iqa {kind}" if kind else "not an iqa store"
                    raise StoreError(f"{path}: expected a pristine store (iqa patchify --pristine), found {found}")
                try:
                    version = int(attrs.get("schema_version"))
                except (TypeError, ValueError):
                    version = None
                if version != PRISTINE_SCHEMA_VERSION:
                    raise StoreError(f"{path}: pristine store of schema version {version}, this iqa reads version "
                                     f"{PRISTINE_SCHEMA_VERSION}; {rebuild}")
                missing = [name for name in PRISTINE_REQUIRED if name not in f]
                missing += [a for a in ("patch_size", "sharpness", "colourfulness") if a not in attrs]
                if missing:
                    raise StoreError(f"{path}: incomplete pristine store (missing {', '.join(missing[:5])}); {rebuild}")
                s = int(attrs["patch_size"])
                n = f["patches"].shape[0]
                k = f["images/name"].shape
                bad = ["patches"] if f["patches"].shape[1:] != (s, s, 3) or f["patches"].dtype != np.uint8 else []
                bad += [f"patch_index/{c}" for c in ("image", "y", "x") if f[f"patch_index/{c}"].shape != (n,)]
                bad += [f"images/{c}" for c in PRISTINE_IMAGE_COLUMNS if f[f"images/{c}"].shape != k]
                first, count = f["images/first"][()], f["images/count"][()]
                if len(first) and (first.min() < 0 or count.min() < 0 or (first + count).max() > n):
                    bad.append("images/first, count (rows outside /patches)")
                if bad:
                    raise StoreError(f"{path}: inconsistent pristine store (bad {', '.join(bad[:5])}); {rebuild}")
        except StoreError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"{path}: unreadable pristine store ({exc}); {rebuild}") from None
        return cls(path, attrs, n, k[0])

    def _open_file(self) -> h5py.File:
        # unlike a patch store's, no identity check: the MVG cache rewrites this store in place (a new inode)
        try:
            return h5py.File(self.path, "r", rdcc_nbytes=8 << 20)
        except Exception as exc:  # noqa: BLE001 - missing, replaced by garbage, ...
            raise StoreError(f"{self.path}: the pristine store can no longer be read ({_first_line(exc)}); it "
                             "changed on disk while in use: run the command again") from None

    def __repr__(self) -> str:
        return (f"PristineStore({str(self.path)!r}, patches={self.n_patches}, images={self.n_images}, "
                f"patch_size={self.patch_size}, sharpness={self.sharpness:g}, colourfulness={self.colourfulness:g})")

    # -- content --------------------------------------------------------------------------------
    @property
    def images(self):
        """pandas.DataFrame: name, height, width, first, count, n_tiles, n_sharp (one row per image)."""
        import pandas as pd

        g = self._h5()["images"]
        table = {"name": _read_str(g["name"])}
        table.update({c: g[c][()] for c in PRISTINE_IMAGE_COLUMNS if c != "name"})
        return pd.DataFrame(table)

    def read_patches(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """uint8 (n, s, s, 3) patches [start, stop) (all by default)."""
        stop = self.n_patches if stop is None else int(stop)
        if not 0 <= int(start) <= stop <= self.n_patches:
            raise IndexError(f"rows [{start}, {stop}) outside [0, {self.n_patches}) in {self.path}")
        return self._h5()["patches"][int(start):stop]

    def iter_patches(self, batch_size: int = 256):
        """Yield uint8 (<= batch_size, s, s, 3) blocks of patches in store order."""
        for start in range(0, self.n_patches, max(1, int(batch_size))):
            yield self.read_patches(start, min(start + max(1, int(batch_size)), self.n_patches))

    def patch_index(self) -> dict[str, np.ndarray]:
        """image (row in ``images``), y, x of every patch."""
        g = self._h5()["patch_index"]
        return {c: g[c][()] for c in ("image", "y", "x")}

    # -- cache of fitted pristine Gaussians -----------------------------------------------------
    @staticmethod
    def _mvg_name(extractor: str) -> str:
        return str(extractor).replace("/", "|")  # an HDF5 link name may not hold '/'

    def cached_mvgs(self) -> dict[str, str]:
        """extractor -> weights hash of every cached Gaussian."""
        f = self._h5()
        if "mvg" not in f:
            return {}
        return {_attr_str(g.attrs.get("extractor", k)): _attr_str(g.attrs.get("weights", ""))
                for k, g in f["mvg"].items() if not k.endswith(".partial")}

    def cached_mvg(self, extractor: str, weights: str):
        """The cached Gaussian of ``extractor`` with these weights (an MVG), or None."""
        from ..models.mvg import MVG
        import torch

        f = self._h5()
        key = f"mvg/{self._mvg_name(extractor)}"
        if key not in f:
            return None
        g = f[key]
        try:
            if _attr_str(g.attrs.get("weights", "")) != str(weights):
                return None
            mean, cov = np.asarray(g["mean"][()], np.float64), np.asarray(g["cov"][()], np.float64)
        except (KeyError, OSError, ValueError):
            return None  # a damaged entry: computed again
        if mean.ndim != 1 or cov.shape != (len(mean), len(mean)):
            return None
        return MVG(torch.from_numpy(mean), torch.from_numpy(cov))

    def mvg(self, extractor: str, weights: str, compute):
        """The pristine Gaussian of a feature extractor over this store's patches, computed once.

        ``extractor`` names the features (e.g. "niqe", "grepq-low"), ``weights`` is a hash of
        the extractor's weights (``models.mvg.weights_hash``; for a weight-free extractor, a
        version string of its settings). ``compute(store) -> MVG`` runs only when no entry with
        these weights is cached; its result replaces any entry of the same extractor with other
        weights. A store that cannot be written (read-only, held open elsewhere, locked) is
        not an error: the Gaussian is computed and returned without caching."""
        from ..models.mvg import MVG

        cached = self.cached_mvg(extractor, weights)
        if cached is not None:
            return cached
        model = compute(self)
        model = MVG(model.mean.detach().to("cpu").double(), model.cov.detach().to("cpu").double())
        self._write_mvg(extractor, weights, model.mean.numpy(), model.cov.numpy())
        return model

    def _write_mvg(self, extractor: str, weights: str, mean: np.ndarray, cov: np.ndarray) -> bool:
        from ..errors import IQAError

        lock = OutputLock(self.path, "iqa MVG cache")
        try:
            lock.acquire()
        except IQAError:
            return False
        try:
            self.close()  # our read handle would keep HDF5 from opening the file for writing
            name = self._mvg_name(extractor)
            with h5py.File(self.path, "r+") as f:
                grp = f.require_group("mvg")
                tmp = f"{name}.partial"
                if tmp in grp:
                    del grp[tmp]
                entry = grp.create_group(tmp)
                entry.create_dataset("mean", data=mean)
                entry.create_dataset("cov", data=cov)
                entry.attrs["extractor"] = str(extractor)
                entry.attrs["weights"] = str(weights)
                entry.attrs["n_patches"] = self.n_patches
                if name in grp:
                    del grp[name]
                grp.move(tmp, name)
            return True
        except (OSError, ValueError, KeyError):
            return False
        finally:
            lock.release()


def pristine_store_fingerprint(path: str | Path) -> str | None:
    """The fingerprint of a valid pristine store at ``path``; None when there is none."""
    try:
        return PristineStore.open(path).fingerprint
    except StoreError:
        return None



# ---------------------------------------------------------------------------------------------
# array cache (work that can always be recomputed: GRepQ's FSIM matrices and image features)
# ---------------------------------------------------------------------------------------------
#
# Schema version 1 (a separate kind: iqa_store="array-cache")::
#
#     attrs   iqa_store="array-cache", schema_version=1, purpose (what the arrays are, e.g.
#             "grepq-fsim/piq-fsimc"; a cache is only ever read for its own purpose)
#     /arrays/<key>   one array per key (a hex digest of everything the array depends on)
#
# Unlike the stores above, this file is a cache in the plain sense: an entry that is missing,
# damaged or of another purpose is computed again, never trusted. New entries are written into
# the existing file in place, under ``<path>.lock``, each under a temporary name then renamed; a
# new file is created as ``<path>.partial`` and renamed into place.

ARRAY_CACHE_KIND = "array-cache"
ARRAY_CACHE_SCHEMA_VERSION = 1


class ArrayCache:
    """Named numpy arrays in one HDF5 file, for results that are costly to compute and safe to
    recompute. ``read(keys)`` returns the entries present; ``write(entries)`` adds or replaces some.
    The file is opened only inside each call, so the object is cheap to pickle and never holds a
    handle another process would trip over."""

    def __init__(self, path: str | Path, purpose: str, option: str = "--cache"):
        self.path = Path(path)
        self.purpose = str(purpose)
        self.option = option

    def __repr__(self) -> str:
        return f"ArrayCache({str(self.path)!r}, purpose={self.purpose!r})"

    def _check(self, f: h5py.File) -> None:
        kind = _attr_str(f.attrs.get("iqa_store", ""))
        purpose = _attr_str(f.attrs.get("purpose", ""))
        if kind != ARRAY_CACHE_KIND:
            found = f"an iqa {kind}" if kind else "not an iqa cache"
            raise StoreError(f"{self.path}: expected an iqa cache of {self.purpose} for {self.option}, found {found}; "
                             f"choose another {self.option} path")
        if purpose != self.purpose:
            raise StoreError(f"{self.path}: this cache holds {purpose or 'something else'}, not {self.purpose}; "
                             f"choose another {self.option} path (or delete the file)")

    def _open_existing(self, mode: str) -> h5py.File | None:
        """The file opened and checked, or None when there is none yet."""
        if not self.path.exists():
            return None
        if not self.path.is_file():
            raise StoreError(f"{self.path}: is a folder, expected a cache .h5 file for {self.option}")
        try:
            if not h5py.is_hdf5(str(self.path)):
                raise StoreError(f"{self.path}: not an HDF5 file, so not an iqa cache; choose another {self.option} "
                                 "path")
            f = h5py.File(self.path, mode)
        except StoreError:
            raise
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.path}: unreadable cache ({str(exc).strip()[:80]}); delete it, it is rebuilt "
                             f"on the next run") from None
        try:
            self._check(f)
        except StoreError:
            f.close()
            raise
        return f

    def check(self) -> None:
        """Fail now (StoreError) when ``path`` holds something that is not this cache."""
        f = self._open_existing("r")
        if f is not None:
            f.close()

    def read(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The arrays of ``keys`` that the cache holds (damaged entries are left out)."""
        f = self._open_existing("r")
        if f is None:
            return {}
        out: dict[str, np.ndarray] = {}
        with f:
            group = f.get("arrays")
            if group is None:
                return out
            for key in keys:
                if key in group:
                    try:
                        out[key] = group[key][()]
                    except (OSError, KeyError, ValueError):
                        continue
        return out

    def write(self, entries: dict[str, np.ndarray]) -> bool:
        """Add (or replace) ``entries``. Returns False, writing nothing, when another process holds
        the file's lock or it cannot be written (read-only, full disk): the caller has the arrays
        and only loses the caching."""
        if not entries:
            return True
        from ..errors import IQAError

        lock = OutputLock(self.path, f"iqa cache of {self.purpose}")
        try:
            lock.acquire()
        except IQAError:
            return False
        try:
            if self.path.exists():
                with self._open_existing("r+") as f:
                    self._put(f, entries)
                return True
            partial = partial_path(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with h5py.File(partial, "w") as f:
                    f.attrs["iqa_store"] = ARRAY_CACHE_KIND
                    f.attrs["schema_version"] = ARRAY_CACHE_SCHEMA_VERSION
                    f.attrs["purpose"] = self.purpose
                    self._put(f, entries)
                os.replace(partial, self.path)
            finally:
                if partial.exists():
                    partial.unlink()
            return True
        except OSError:
            return False
        finally:
            lock.release()

    @staticmethod
    def _put(f: h5py.File, entries: dict[str, np.ndarray]) -> None:
        group = f.require_group("arrays")
        for key, value in entries.items():
            tmp = f"{key}.partial"
            if tmp in group:
                del group[tmp]
            group.create_dataset(tmp, data=np.asarray(value))
            if key in group:
                del group[key]
            group.move(tmp, key)
