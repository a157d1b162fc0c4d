"""Building a KADID-10k-style database from your own images: what ``iqa distort`` runs.

Layout written (the one KADID-10k ships, so database readers and GraphIQA pretraining read it)::

    OUT/images/<ref>.png           each reference, re-encoded losslessly (8-bit RGB)
    OUT/images/<ref>_TT_LL.png     type TT (01..25) at level LL (01..05)
    OUT/listing.csv                dist_img,ref_img,type,level -- no scores

The distortions start from the 8-bit reference exactly as written, so a full-reference metric
compares the two files and nothing else. Reference names are the input stems made safe (letters,
digits, '.' and '-'; '_' becomes '-' so that '<ref>_TT_LL' splits unambiguously) and unique.

Every image file is written atomically and the listing last, after every image, so a listing
exists only for a finished run (a stale one is removed when a run starts). Images are processed by
a bounded pool of worker processes when there are several; the result does not depend on the
number of workers or the order (``distortions.distortion_rng``).
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import InvalidInputError

LISTING_NAME = "listing.csv"
IMAGES_DIR = "images"
LISTING_HEADER = ("dist_img", "ref_img", "type", "level")
FORMATS = {"png": "PNG", "bmp": "BMP", "tif": "TIFF"}  # lossless only: a lossy container would add its own damage


@dataclass(frozen=True)
class DistortPlan:
    """Everything a run needs, validated: sources, their reference names, what to write where."""

    sources: tuple[Path, ...]
    names: tuple[str, ...]
    out_dir: Path
    types: tuple[int, ...]
    levels: tuple[int, ...]
    seed: int
    fmt: str = "png"
    stretch: bool = False

    @property
    def images_dir(self) -> Path:
        return self.out_dir / IMAGES_DIR

    @property
    def listing(self) -> Path:
        return self.out_dir / LISTING_NAME

    @property
    def n_distorted(self) -> int:
        return len(self.sources) * len(self.types) * len(self.levels)

    def reference_file(self, name: str) -> str:
        return f"{name}.{self.fmt}"

    def distorted_file(self, name: str, type_id: int, level: int) -> str:
        return f"{name}_{type_id:02d}_{level:02d}.{self.fmt}"


@dataclass(frozen=True)
class DistortResult:
    out_dir: Path
    listing: Path
    references: tuple[tuple[str, str], ...]  # (source path, reference file name)
    n_distorted: int
    types: tuple[int, ...]
    levels: tuple[int, ...]
    approximate_types: tuple[int, ...]
    seed: int
    stretch: bool
    fmt: str
    workers: int
    seconds: float

    def to_dict(self) -> dict:
        return {"out": str(self.out_dir), "listing": str(self.listing), "n_references": len(self.references),
                "n_distorted": self.n_distorted,
                "references": [{"source": s, "ref_img": r} for s, r in self.references],
                "types": list(self.types), "levels": list(self.levels),
                "approximate_types": list(self.approximate_types), "seed": self.seed, "stretch": self.stretch,
                "format": self.fmt, "workers": self.workers, "seconds": self.seconds,
                "images_per_second": self.n_distorted / self.seconds if self.seconds > 0 else None}


# -- planning -----------------------------------------------------------------------------------------

def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for image files (hidden entries skipped);
    sorted per folder, duplicates dropped, order of the inputs kept."""
    from .io.images import IMAGE_SUFFIXES, is_image_path

    found: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InvalidInputError(f"{path}: no such file or folder (check the path)")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_path(p)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                raise InvalidInputError(f"{path}: folder holds no images (looked for {suffixes})")
        else:
            files = [path]
        for f in files:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                found.append(f)
    if not found:
        raise InvalidInputError("no input images given: name image files or folders holding them")
    return found


def reference_names(paths: Sequence[Path]) -> list[str]:
    """Safe, unique (case-insensitively) names from the file stems: 'my photo_1.JPG' -> 'my-photo-1';
    a second 'x' becomes 'x-2'."""
    names: list[str] = []
    taken: set[str] = set()
    for path in paths:
        base = re.sub(r"[^A-Za-z0-9.-]+", "-", path.stem).strip("-.") or "image"
        name, k = base, 2
        while name.lower() in taken:
            name, k = f"{base}-{k}", k + 1
        taken.add(name.lower())
        names.append(name)
    return names


def plan_distort(inputs: Sequence[str | Path], out_dir: str | Path, types: Sequence[int] | None = None,
                 levels: Sequence[int] | None = None, seed: int = 0, fmt: str = "png",
                 stretch: bool = False) -> DistortPlan:
    """Check everything before any work: inputs readable images large enough for the chosen types,
    types and levels known, the output folder writable and apart from the inputs."""
    from .distortions import DISTORTION_TYPES, check_size, distortion_type
    from .io.files import check_output_path
    from .io.images import image_size

    types = tuple(sorted({distortion_type(t).id for t in (types or [t.id for t in DISTORTION_TYPES])}))
    levels = tuple(sorted(set(levels or range(1, 6))))
    bad = [lv for lv in levels if isinstance(lv, bool) or not isinstance(lv, (int, np.integer)) or not 1 <= lv <= 5]
    if bad:
        raise InvalidInputError(f"levels must be integers 1..5, got {bad[0]!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    fmt = str(fmt).lower().lstrip(".")
    fmt = "tif" if fmt == "tiff" else fmt
    if fmt not in FORMATS:
        raise InvalidInputError(f"--format '{fmt}' is not one of {', '.join(FORMATS)} (lossless formats only: a lossy "
                                "one would add its own compression to every distortion)")
    out_dir = Path(out_dir)
    sources = collect_images(inputs)
    check_output_path(out_dir, "--out", folder=True, inputs=list(inputs))
    check_output_path(out_dir / IMAGES_DIR, "--out", folder=True, inputs=list(inputs))
    kinds = [distortion_type(t) for t in types]
    for source in sources:
        height, width = image_size(source)
        for kind in kinds:
            check_size(height, width, kind, name=str(source))
    plan = DistortPlan(tuple(sources), tuple(reference_names(sources)), out_dir, types, levels, int(seed), fmt,
                       bool(stretch))
    images_dir = plan.images_dir.resolve()
    inside = {p.name for p in sources if p.resolve().parent == images_dir}
    if inside:  # sources inside OUT/images: refuse any output that would replace one of them
        outputs = {plan.reference_file(n) for n in plan.names}
        outputs |= {plan.distorted_file(n, t, lv) for n in plan.names for t in types for lv in levels}
        clash = sorted(inside & outputs)
        if clash:
            raise InvalidInputError(f"{plan.images_dir / clash[0]}: --out would write over this input image; choose "
                                    "an output folder apart from the inputs")
    return plan


# -- running ------------------------------------------------------------------------------------------

def _save(path: Path, image_uint8: np.ndarray, fmt: str) -> None:
    from PIL import Image

    from .io.files import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(image_uint8).save(tmp, format=FORMATS[fmt])


def distort_one(plan: DistortPlan, index: int) -> list[tuple[str, str, int, int]]:
    """Write one reference and all its distorted versions; return their listing rows."""
    from .distortions import distort, distortion_rng, image_digest, to_uint8
    from .io.images import load_image_uint8

    name = plan.names[index]
    reference = load_image_uint8(plan.sources[index])
    ref_file = plan.reference_file(name)
    _save(plan.images_dir / ref_file, reference, plan.fmt)
    image = reference.astype(np.float64) / 255.0
    digest = image_digest(image)
    rows = []
    for type_id in plan.types:
        for level in plan.levels:
            rng = distortion_rng(plan.seed, digest, type_id)  # the same start for every level (see distortion_rng)
            out = distort(image, type_id, level, rng, stretch=plan.stretch)
            dist_file = plan.distorted_file(name, type_id, level)
            _save(plan.images_dir / dist_file, to_uint8(out), plan.fmt)
            rows.append((dist_file, ref_file, type_id, level))
    return rows


POOL_MIN_OUTPUTS = 100  # below this, starting worker processes (about a second each) costs more than it saves


def default_workers(n_images: int, n_outputs: int) -> int:
    """One process per core up to 8, never more than there are images; one when the job is small."""
    if n_outputs < POOL_MIN_OUTPUTS:
        return 1
    return max(1, min(os.cpu_count() or 1, 8, n_images))


def run_distort(plan: DistortPlan, workers: int | None = None,
                advance: Callable[[int], None] | None = None) -> DistortResult:
    """Write the plan's images (``workers`` processes; default one per core, at most 8, for jobs of
    at least 100 images) and, last, the listing. ``advance(n)`` is called as each reference's n
    distorted images are done."""
    from .distortions import APPROXIMATE_TYPES
    from .io.files import OutputLock, write_csv

    if workers is None:
        workers = default_workers(len(plan.sources), plan.n_distorted)
    workers = max(1, min(int(workers), len(plan.sources)))
    advance = advance or (lambda n: None)
    start = time.perf_counter()
    lock = OutputLock(plan.listing, "iqa distort run")
    lock.acquire()
    try:
        plan.listing.unlink(missing_ok=True)  # a listing exists only for a finished run
        per_image: dict[int, list] = {}
        if workers == 1:
            for i in range(len(plan.sources)):
                per_image[i] = distort_one(plan, i)
                advance(len(per_image[i]))
        else:
            for i, rows in _pooled(plan, workers):
                per_image[i] = rows
                advance(len(rows))
        rows = [row for i in range(len(plan.sources)) for row in per_image[i]]
        write_csv(plan.listing, LISTING_HEADER, rows)
    finally:
        lock.release()
    approximate = tuple(t for t in plan.types if t in APPROXIMATE_TYPES)
    references = tuple((str(s), plan.reference_file(n)) for s, n in zip(plan.sources, plan.names))
    return DistortResult(plan.out_dir, plan.listing, references, len(rows), plan.types, plan.levels, approximate,
                         plan.seed, plan.stretch, plan.fmt, workers, time.perf_counter() - start)


def _pooled(plan: DistortPlan, workers: int):
    """(index, rows) as images finish, at most 2 x workers images in flight. Worker processes are
    spawned (not forked) so a parent holding threads (torch, a progress bar) cannot deadlock them."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pending = deque(range(len(plan.sources)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        running: dict = {}
        try:
            while pending or running:
                while pending and len(running) < 2 * workers:
                    i = pending.popleft()
                    running[pool.submit(distort_one, plan, i)] = i
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield running.pop(future), future.result()
        finally:
            for future in running:
                future.cancel()


def distort_images(inputs: Sequence[str | Path], out_dir: str | Path, types: Sequence[int] | None = None,
                   levels: Sequence[int] | None = None, seed: int = 0, fmt: str = "png", stretch: bool = False,
                   workers: int | None = None, advance: Callable[[int], None] | None = None) -> DistortResult:
    """Plan and run: the library form of ``iqa distort IMAGES... --out DIR``."""
    return run_distort(plan_distort(inputs, out_dir, types, levels, seed, fmt, stretch), workers, advance)
