"""The HDF5 image cache of a quality database, and the torch Datasets that stream its images.

A database's images are decoded once (BMP, PNG, JPEG of any size) into one HDF5 file of uint8
RGB pixels (``io.store.ImageStore``; schema in datasets/README.md); later evaluation and training
runs read them back with one contiguous slice each. The cache is tied to its table by a
fingerprint of the rows (distorted and reference paths, in order), the resize setting, and every
source file's path, size and modification time: a cache built from other files, another table or
a changed file is stale and is never read as if it were current.

``ImageDataset`` (from the cache) and ``TableImageDataset`` (straight from the files, for
``--no-cache``) yield the same items, ``(row, uint8 (H, W, 3) tensor)``, so a scorer does not
care which it got.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import InvalidInputError, StoreError
from .table import QualityTable, relative_path

if TYPE_CHECKING:
    from ..io.store import ImageStore

Progress = Callable[[int], None]
DECODE_THREADS = 4  # PIL releases the GIL while decoding; more threads than this stop paying off


def resolve_short_side(table: QualityTable, short_side: int | None) -> int:
    """The shorter side images are resized to: ``short_side`` when given (0 = full size), else
    what the database's protocol asks (SPAQ: 512), else 0."""
    if short_side is None:
        return int(table.short_side or 0)
    if isinstance(short_side, bool) or int(short_side) != short_side or short_side < 0:
        raise InvalidInputError(f"--short-side {short_side}: expected a whole number of pixels >= 1 (0: full size)")
    return int(short_side)


def load_database_image(path: str | Path, short_side: int = 0) -> np.ndarray:
    """uint8 (H, W, 3) RGB of an image file, its shorter side resized to ``short_side`` (bicubic,
    aspect kept) unless 0. The one decoder the cache and the uncached datasets share."""
    from ..io.images import load_image_uint8

    rgb = load_image_uint8(path)
    if short_side and min(rgb.shape[:2]) != short_side:
        from PIL import Image

        h, w = rgb.shape[:2]
        scale = short_side / min(h, w)
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        rgb = np.array(Image.fromarray(rgb, "RGB").resize(size, Image.BICUBIC))  # a writable copy
    return np.ascontiguousarray(rgb)


def table_fingerprint(table: QualityTable, short_side: int | None = None) -> str:
    """sha256 over the table's (dist, ref) rows, the resize setting and every source file's
    relative path, size and modification time (the files are stat'ed, not read)."""
    side = resolve_short_side(table, short_side)
    root = table.root
    h = hashlib.sha256()
    rows = [[relative_path(d, root), None if r is None else relative_path(r, root)]
            for d, r in zip(table.rows["dist"], table.rows["ref"])]
    h.update(json.dumps({"schema_version": 1, "short_side": side, "rows": rows}).encode())
    for path in table.image_paths():
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise InvalidInputError(f"{path}: no such file (it was listed when the database was read)") from None
        h.update(f"{relative_path(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_dir() -> Path:
    """Where iqa keeps caches nobody named: $IQA_CACHE_DIR, else $XDG_CACHE_HOME/iqa, else ~/.cache/iqa."""
    base = os.environ.get("IQA_CACHE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iqa"


def default_cache_path(table: QualityTable, suffix: str = "") -> Path:
    """A database's cache file when the user names none: one per database folder under
    ``cache_dir()``, keyed by format and folder, so nothing is ever written into the database.
    ``suffix`` tells apart the caches of one database ("" the image cache, ".grepq-features" ...)."""
    key = hashlib.sha1(str(Path(table.root).resolve()).encode()).hexdigest()[:12]
    return cache_dir() / f"{table.database}-{Path(table.root).name}-{key}{suffix}.h5"


@dataclass(frozen=True)
class CacheResult:
    path: Path
    built: bool  # False: an up-to-date cache was already there
    fingerprint: str
    n_rows: int
    n_images: int
    n_bytes: int  # pixel bytes stored
    short_side: int
    seconds: float

    def to_dict(self) -> dict:
        return {"cache": str(self.path), "built": self.built, "fingerprint": self.fingerprint, "n_rows": self.n_rows,
                "n_images": self.n_images, "n_bytes": self.n_bytes, "short_side": self.short_side,
                "seconds": self.seconds}


def cache_is_fresh(path: str | Path, table: QualityTable, short_side: int | None = None) -> bool:
    """True when ``path`` is a valid image cache built from exactly this table and these files."""
    from ..io.store import image_store_fingerprint

    return image_store_fingerprint(path) == table_fingerprint(table, short_side)


def open_image_cache(path: str | Path, table: QualityTable, short_side: int | None = None) -> "ImageStore":
    """The :class:`~iqa_cli.io.store.ImageStore` at ``path``, checked against ``table``: a stale
    cache (other rows, other files, changed files, another resize) is a StoreError."""
    from ..io.store import ImageStore

    store = ImageStore.open(path)
    if store.fingerprint != table_fingerprint(table, short_side) or store.n_rows != len(table):
        raise StoreError(f"{path}: image cache is stale (built from other files, rows or resize than "
                         f"{table.root}); rebuild it with iqa patchify --from-db {table.root} --format "
                         f"{table.database} --out {path} --force, or delete it")
    return store


def build_image_cache(table: QualityTable, out: str | Path, progress: Progress | None = None,
                      short_side: int | None = None, force: bool = False) -> CacheResult:
    """Decode every image of ``table`` once into the image cache ``out`` (atomic: written to
    ``out.partial``, renamed on success, nothing left behind on failure). An up-to-date cache is
    left alone unless ``force``; a file at ``out`` that is not an image cache is refused unless
    ``force``. ``progress(n)`` is called as images are stored."""
    from ..io.files import check_output_path
    from ..io.store import ImageStoreWriter, image_store_fingerprint, is_foreign_image_store

    out = Path(out)
    check_output_path(out, "--out", inputs=[table.root])
    side = resolve_short_side(table, short_side)
    if len(table) == 0:
        raise InvalidInputError(f"{table.root}: the table has no rows; nothing to cache")
    fingerprint = table_fingerprint(table, side)
    start = time.perf_counter()
    if not force and image_store_fingerprint(out) == fingerprint:
        return _result(out, False, start)
    if not force and is_foreign_image_store(out):
        raise InvalidInputError(f"{out}: exists and is not an iqa image cache; choose another --out path (or "
                                "--force to overwrite it)")
    root = table.root
    order: list[str] = []  # files in the order they are stored: each row's reference, then its image
    index: dict[str, int] = {}
    for dist, ref in zip(table.rows["dist"], table.rows["ref"]):
        for path in (ref, dist):
            if path is not None and path not in index:
                index[path] = len(order)
                order.append(path)
    threads = min(DECODE_THREADS, os.cpu_count() or 1)
    with ImageStoreWriter(out, fingerprint=fingerprint, database=table.database, short_side=side) as writer, \
            ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()  # decodes run ahead of the writer, a bounded number at a time
        upcoming = iter(order)
        while True:
            while len(pending) < 4 * threads and (path := next(upcoming, None)) is not None:
                pending.append((path, pool.submit(load_database_image, path, side)))
            if not pending:
                break
            path, decoded = pending.popleft()
            writer.add_image(relative_path(path, root), decoded.result())
            if progress is not None:
                progress(1)
        dist = [index[p] for p in table.rows["dist"]]
        ref = [-1 if p is None else index[p] for p in table.rows["ref"]]
        writer.commit(dist, ref, table.rows["name"].tolist())
    return _result(out, True, start)


def _result(out: Path, built: bool, start: float) -> CacheResult:
    from ..io.store import ImageStore

    with ImageStore.open(out) as store:
        n_bytes = int((store.height * store.width * 3).sum())
        return CacheResult(out, built, store.fingerprint, store.n_rows, store.n_images, n_bytes, store.short_side,
                           time.perf_counter() - start)


def ensure_image_cache(table: QualityTable, path: str | Path, progress: Progress | None = None,
                       short_side: int | None = None) -> tuple["ImageStore", CacheResult]:
    """The cache at ``path`` for ``table``: reused when fresh, (re)built otherwise. Returns the
    opened ImageStore and the CacheResult."""
    result = build_image_cache(table, path, progress=progress, short_side=short_side)
    return open_image_cache(path, table, short_side), result


# -- torch datasets ------------------------------------------------------------------------------
def _rows(n: int, rows: Sequence[int] | np.ndarray | None) -> np.ndarray:
    out = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    if out.size and (out.min() < 0 or out.max() >= n):
        raise IndexError(f"rows outside [0, {n})")
    return out


def _check_which(which: str) -> str:
    if which not in ("dist", "ref"):
        raise ValueError(f"which must be 'dist' or 'ref', not {which!r}")
    return which


class ImageDataset:
    """A torch Dataset over an image cache: item ``i`` is ``(row, uint8 (H, W, 3) tensor)`` for
    ``rows[i]`` (default: every table row), its distorted image or (``which="ref"``) its
    reference. Picklable; each DataLoader worker opens the file itself."""

    def __init__(self, store, which: str = "dist", rows: Sequence[int] | np.ndarray | None = None):
        self.store = store
        self.which = _check_which(which)
        self.rows = _rows(store.n_rows, rows)
        if which == "ref" and (store.image_index(self.rows, "ref") < 0).any():
            raise InvalidInputError(f"{store.path}: some rows have no reference image")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import torch

        row = int(self.rows[i])
        return row, torch.from_numpy(self.store.read_row(row, self.which))

    def sizes(self) -> np.ndarray:
        """(len, 2) int64 (H, W) of every item, for batching images of one size together."""
        images = self.store.image_index(self.rows, self.which)
        return np.stack([self.store.height[images], self.store.width[images]], axis=1)


class TableImageDataset:
    """The same items as :class:`ImageDataset`, decoded from the table's files on every read
    (``--no-cache`` runs), resized as the cache would (``short_side``: None = the table's)."""

    def __init__(self, table: QualityTable, which: str = "dist", rows: Sequence[int] | np.ndarray | None = None,
                 short_side: int | None = None):
        self.which = _check_which(which)
        self.rows = _rows(len(table), rows)
        self.paths = table.rows[which].tolist()
        if which == "ref" and any(self.paths[r] is None for r in self.rows):
            raise InvalidInputError(f"{table.root}: some rows have no reference image")
        self.short_side = resolve_short_side(table, short_side)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import torch

        row = int(self.rows[i])
        return row, torch.from_numpy(load_database_image(self.paths[row], self.short_side))
