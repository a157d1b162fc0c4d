"""Mesh-quality databases: DB.csv + renders (or published Graphics-LPIPS patch folders) -> patch store.

Layouts (documented for users in datasets/README.md)::

    RENDERS/references/<model>.png            one view per model
    RENDERS/stimuli/<stimulus>.png
    RENDERS/references/<model>/<view>.png     several views: one folder per model / stimulus,
    RENDERS/stimuli/<stimulus>/<view>.png     the same view file names in both

    ROOT/References_patches*/<model>_Ref_P<p>.png      --from-patches (published Graphics-LPIPS
    ROOT/*Stimuli_patches*/<stimulus>_P<p>.png          patches), p = 1..nbPatchesVP1

``patchify`` is the library entry point (validates everything before any work, never prints);
``plan_patchify`` + ``run_patchify`` are its two halves, so a caller can size a progress bar or
learn that the store is already up to date before any patch is cut.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import InvalidInputError
from ..io.images import IMAGE_SUFFIXES, image_size
from ..io.patches import PatchSpec, cut_patches, foreground_mask, select_tiles

Progress = Callable[[int], None]

SOURCE_RENDERS = "renders"
SOURCE_PATCHES = "patches"
FLAG_NO_FOREGROUND = "no-foreground"  # same value as io.store.FLAG_NO_FOREGROUND (kept h5py-free here)
_MAX_LISTED = 8  # names quoted in one error line before "... and N more"


# ---------------------------------------------------------------------------------------------
# DB.csv
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DbRow:
    model: str
    stimulus: str
    mos: float = math.nan  # NaN when the CSV has no MOS column
    split: str = ""
    n_patches: int | None = None  # nbPatchesVP1 (only read for --from-patches)
    line: int = 0  # line number in the CSV (header = line 1)


@dataclass(frozen=True)
class DbTable:
    path: Path
    rows: tuple[DbRow, ...]
    has_mos: bool
    has_split: bool
    sha256: str  # of the CSV bytes

    @property
    def models(self) -> list[str]:
        """Model names in order of first appearance."""
        return list(dict.fromkeys(r.model for r in self.rows))

    def rows_by_model(self) -> dict[str, list[DbRow]]:
        """Each model's rows, models in order of first appearance."""
        groups: dict[str, list[DbRow]] = {}
        for row in self.rows:
            groups.setdefault(row.model, []).append(row)
        return groups


def _listing(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


def _check_name(value: str, what: str, line: int, path: Path) -> str:
    if value == "":
        raise InvalidInputError(f"{path}: line {line} has an empty {what} name; every row needs model and stimulus")
    if "/" in value or "\\" in value or value in (".", ".."):
        raise InvalidInputError(f"{path}: line {line}: {what} name {value!r} is not a plain file name "
                                "(no '/' or '\\'); name renders by model and stimulus only")
    return value


def read_db_csv(path: str | Path, *, require_counts: bool = False) -> DbTable:
    """Read and validate DB.csv: columns ``model,stimulus`` required; ``MOS`` (or ``mos``) and
    ``split`` optional; ``nbPatchesVP1`` required when ``require_counts`` (patch imports).
    Column names match case-insensitively; extra columns are ignored."""
    from ..io.files import require_regular_file

    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file (give the database CSV with --db)")
    require_regular_file(path, "the database CSV file")  # /dev/zero would be read until memory runs out
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: not UTF-8 text; save the CSV as UTF-8") from None
    numbered: list[tuple[int, list[str]]] = []  # (file line where the record starts, cells)
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        start = 1
        for rec in reader:
            numbered.append((start, rec))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise InvalidInputError(f"{path}: not a readable CSV ({exc})") from None
    numbered = [(n, r) for n, r in numbered if any(cell.strip() for cell in r)]  # blank lines do not count
    records = [r for _, r in numbered]
    if not records:
        raise InvalidInputError(f"{path}: empty CSV; expected a header row model,stimulus[,MOS][,split] and one row "
                                "per stimulus")
    header = [h.strip() for h in records[0]]
    lower: dict[str, list[int]] = {}
    for i, name in enumerate(header):
        lower.setdefault(name.lower(), []).append(i)

    def column(name: str) -> int | None:
        hits = lower.get(name.lower(), [])
        if len(hits) > 1:
            raise InvalidInputError(f"{path}: column {name!r} appears {len(hits)} times in the header; keep one")
        return hits[0] if hits else None

    wanted = ["model", "stimulus"] + (["nbPatchesVP1"] if require_counts else [])
    missing = [c for c in wanted if column(c) is None]
    if missing:
        raise InvalidInputError(f"{path}: CSV lacks required column(s) {', '.join(missing)} (found: "
                                f"{', '.join(header) or 'nothing'}); the header must name "
                                f"{','.join(wanted)} and optionally MOS and split")
    c_model, c_stim = column("model"), column("stimulus")
    c_mos, c_split = column("mos"), column("split")
    c_count = column("nbPatchesVP1") if require_counts else None

    rows: list[DbRow] = []
    bad_mos: list[str] = []
    bad_count: list[str] = []
    seen: dict[str, list[int]] = {}
    for line, rec in numbered[1:]:
        cells = [c.strip() for c in rec] + [""] * max(0, len(header) - len(rec))
        model = _check_name(cells[c_model], "model", line, path)
        stim = _check_name(cells[c_stim], "stimulus", line, path)
        seen.setdefault(stim, []).append(line)
        mos = math.nan
        if c_mos is not None:
            raw = cells[c_mos]
            try:
                mos = float(raw)
            except ValueError:
                mos = math.nan
            if not math.isfinite(mos):
                bad_mos.append(f"line {line} ({raw!r})" if raw else f"line {line} (empty)")
        count = None
        if c_count is not None:
            raw = cells[c_count]
            try:
                count = int(float(raw))
                if count < 0 or count != float(raw):
                    raise ValueError
            except ValueError:
                bad_count.append(f"line {line} ({raw!r})")
        split = cells[c_split] if c_split is not None else ""
        rows.append(DbRow(model, stim, mos, split, count, line))
    if not rows:
        raise InvalidInputError(f"{path}: the CSV has a header but no rows; add one row per stimulus")
    dups = [f"{name} (lines {', '.join(map(str, lines))})" for name, lines in seen.items() if len(lines) > 1]
    if dups:
        raise InvalidInputError(f"{path}: duplicate stimulus names: {_listing(dups)}; every stimulus must appear once")
    if bad_mos:
        raise InvalidInputError(f"{path}: MOS must be a finite number on every row, not at {_listing(bad_mos)}; "
                                "fix those rows or drop the MOS column")
    if bad_count:
        raise InvalidInputError(f"{path}: nbPatchesVP1 must be a non-negative integer, not at {_listing(bad_count)}")
    return DbTable(path, tuple(rows), c_mos is not None, c_split is not None, hashlib.sha256(data).hexdigest())


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StimulusSource:
    name: str
    mos: float
    split: str
    files: tuple[Path, ...]  # one per view (renders) or one per patch (imports)


@dataclass(frozen=True)
class ModelSource:
    name: str
    views: tuple[str, ...]  # view names ("" for a single-view render layout)
    reference: tuple[Path, ...]  # one per view (renders) or one per reference patch (imports)
    stimuli: tuple[StimulusSource, ...]


def _natural_key(text: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t != ""]


class _Folder:
    """One directory listing: image files by stem and sub-folders by name (one listdir, no stats)."""

    def __init__(self, path: Path):
        self.path = path
        self.images: dict[str, list[str]] = {}
        self.dirs: set[str] = set()
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        for e in entries:
            if e.is_dir():
                self.dirs.add(e.name)
            else:
                stem, dot, suffix = e.name.rpartition(".")
                if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES:
                    self.images.setdefault(stem, []).append(e.name)

    def image(self, stem: str) -> Path | None:
        names = self.images.get(stem)
        if not names:
            return None
        if len(names) > 1:
            pngs = [n for n in names if n.lower().endswith(".png")]
            if len(pngs) != 1:
                raise InvalidInputError(f"{self.path}: several images named {stem!r} ({', '.join(sorted(names))}); "
                                        "keep one")
            return self.path / pngs[0]
        return self.path / names[0]

    def views(self) -> list[str]:
        return sorted(self.images, key=_natural_key)


def resolve_renders(renders: str | Path, table: DbTable) -> tuple[ModelSource, ...]:
    """Find every render the CSV needs; all missing files are reported in one error."""
    renders = Path(renders)
    if not renders.is_dir():
        raise InvalidInputError(f"{renders}: no such folder (RENDERS must hold references/ and stimuli/)")
    for sub in ("references", "stimuli"):
        if not (renders / sub).is_dir():
            raise InvalidInputError(f"{renders}: no {sub}/ folder; expected RENDERS/references/<model>.png and "
                                    "RENDERS/stimuli/<stimulus>.png (see datasets/README.md)")
    refs, stims = _Folder(renders / "references"), _Folder(renders / "stimuli")
    missing: list[str] = []
    models = []
    for model, rows in table.rows_by_model().items():
        if model in refs.dirs:
            if refs.image(model) is not None:
                raise InvalidInputError(f"{renders}: both references/{model}/ and an image references/{model}.* "
                                        "exist; keep the folder (several views) or the file (one view)")
            folder = _Folder(refs.path / model)
            views = tuple(folder.views())
            if not views:
                missing.append(f"references/{model}/<view>.png")
                continue
            reference = tuple(folder.image(v) for v in views)
        else:
            views = ("",)
            ref = refs.image(model)
            if ref is None:
                missing.append(f"references/{model}.png")
                reference = (renders / "references" / f"{model}.png",)
            else:
                reference = (ref,)
        stimuli = []
        for row in rows:
            if views == ("",):
                f = stims.image(row.stimulus)
                if f is None:
                    missing.append(f"stimuli/{row.stimulus}.png")
                files = (f,)
            else:
                sub = _Folder(stims.path / row.stimulus)
                files = tuple(sub.image(v) for v in views)
                missing += [f"stimuli/{row.stimulus}/{v}.png" for v, f in zip(views, files) if f is None]
            stimuli.append(StimulusSource(row.stimulus, row.mos, row.split, files))
        models.append(ModelSource(model, views, reference, tuple(stimuli)))
    if missing:
        raise InvalidInputError(f"{len(missing)} render file(s) missing under {renders}: {_listing(missing)}; "
                                "every CSV row needs its reference and stimulus renders (see datasets/README.md)")
    return tuple(models)


def _one_folder(root: Path, pattern: str, what: str) -> Path:
    hits = sorted(p for p in root.glob(pattern) if p.is_dir())
    if len(hits) != 1:
        found = "none" if not hits else ", ".join(p.name for p in hits)
        raise InvalidInputError(f"{root}: expected exactly one {pattern} folder of {what} patches, found {found}")
    return hits[0]


def resolve_patch_folders(root: str | Path, table: DbTable) -> tuple[tuple[ModelSource, ...], float]:
    """Published Graphics-LPIPS patches: (sources, threshold parsed from the folder name or NaN)."""
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(f"{root}: no such folder (--from-patches needs the folder holding "
                                "References_patches*/ and *Stimuli_patches*/)")
    ref_dir = _one_folder(root, "References_patches*", "reference")
    stim_dir = _one_folder(root, "*Stimuli_patches*", "stimulus")
    ref_names = {e.name for e in os.scandir(ref_dir)}
    stim_names = {e.name for e in os.scandir(stim_dir)}
    missing: list[str] = []
    models = []
    for model, rows in table.rows_by_model().items():
        n_ref = max(int(r.n_patches or 0) for r in rows)
        names = [f"{model}_Ref_P{p}.png" for p in range(1, n_ref + 1)]
        missing += [f"{ref_dir.name}/{n}" for n in names if n not in ref_names]
        stimuli = []
        for row in rows:
            snames = [f"{row.stimulus}_P{p}.png" for p in range(1, int(row.n_patches or 0) + 1)]
            missing += [f"{stim_dir.name}/{n}" for n in snames if n not in stim_names]
            stimuli.append(StimulusSource(row.stimulus, row.mos, row.split, tuple(stim_dir / n for n in snames)))
        models.append(ModelSource(model, ("",), tuple(ref_dir / n for n in names), tuple(stimuli)))
    if missing:
        raise InvalidInputError(f"{len(missing)} patch file(s) missing under {root}: {_listing(missing)}; the CSV's "
                                "nbPatchesVP1 must match the patch files")
    match = re.search(r"thre?th?([0-9]*\.?[0-9]+)", ref_dir.name)
    threshold = float(match.group(1)) if match else math.nan
    return tuple(models), threshold


# ---------------------------------------------------------------------------------------------
# plan / run
# ---------------------------------------------------------------------------------------------

def _fingerprint(table: DbTable, source: str, params: dict, models: Sequence[ModelSource], root: Path) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"schema_version": 1, "source": source, "params": params, "csv": table.sha256},
                        sort_keys=True).encode())
    for m in models:
        for p in (*m.reference, *(f for s in m.stimuli for f in s.files)):
            st = os.stat(p)
            try:
                rel = p.relative_to(root).as_posix()
            except ValueError:
                rel = p.as_posix()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class PatchifyPlan:
    """Everything validated and resolved; ``run_patchify`` does the work."""

    out: Path
    source: str  # "renders" | "patches"
    root: Path  # RENDERS or the --from-patches ROOT
    db_csv: Path
    spec: PatchSpec
    models: tuple[ModelSource, ...]
    fingerprint: str
    up_to_date: bool  # a valid store with the same fingerprint exists (and not force)
    n_units: int  # renders (or patch files) that a build reads: the progress total
    unit: str  # "renders" | "patch files"
    import_threshold: float = math.nan  # imports: threshold read from the folder name

    @property
    def n_stimuli(self) -> int:
        return sum(len(m.stimuli) for m in self.models)


@dataclass(frozen=True)
class PatchifyResult:
    store: Path
    built: bool  # False: the store was already up to date (nothing done)
    source: str
    fingerprint: str
    patch_size: int
    stride: int
    min_foreground: float
    background: str
    n_models: int
    n_stimuli: int
    n_views: int  # total views over all models
    n_patches: int  # distorted patches
    n_reference: int  # reference patches (once per model)
    n_read: int  # renders (or patch files) read by this run; 0 when up to date
    unit: str
    no_foreground: tuple[str, ...]  # models without any usable tile (their stimuli flagged)
    warnings: tuple[str, ...]
    seconds: float
    has_mos: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["store"] = str(self.store)
        d["min_foreground"] = None if math.isnan(self.min_foreground) else self.min_foreground
        d["no_foreground"] = list(self.no_foreground)
        d["warnings"] = list(self.warnings)
        return d


def plan_patchify(renders: str | Path | None, db_csv: str | Path, out: str | Path, spec: PatchSpec | None = None, *,
                  from_patches: str | Path | None = None, force: bool = False) -> PatchifyPlan:
    """Validate inputs, find every source file (all missing ones in one error), fingerprint them,
    and decide whether the store at ``out`` is already up to date. Writes nothing."""
    from ..io.store import is_foreign_file, store_fingerprint

    spec = spec if spec is not None else PatchSpec()
    out = Path(out)
    if renders is not None and from_patches is not None:
        raise InvalidInputError("give RENDERS or --from-patches ROOT, not both")
    if renders is None and from_patches is None:
        raise InvalidInputError("missing RENDERS folder (or --from-patches ROOT for published patch folders)")
    if out.is_dir():
        raise InvalidInputError(f"{out}: is a folder; --out must name the .h5 file to write")
    if not force and is_foreign_file(out):
        raise InvalidInputError(f"{out}: exists and is not an iqa patch store; choose another --out, or use --force "
                                "to overwrite it")
    if from_patches is not None:
        table = read_db_csv(db_csv, require_counts=True)
        root = Path(from_patches)
        models, threshold = resolve_patch_folders(root, table)
        source, unit = SOURCE_PATCHES, "patch files"
        params: dict = {}
    else:
        table = read_db_csv(db_csv)
        root = Path(renders)
        models = resolve_renders(root, table)
        threshold = math.nan
        source, unit = SOURCE_RENDERS, "renders"
        params = spec.to_dict()
    fingerprint = _fingerprint(table, source, params, models, root)
    up_to_date = not force and store_fingerprint(out) == fingerprint
    n_units = sum(len(m.reference) + sum(len(s.files) for s in m.stimuli) for m in models)
    return PatchifyPlan(out, source, root, table.path, spec, models, fingerprint, up_to_date, n_units, unit, threshold)


def patchify(renders: str | Path | None, db_csv: str | Path, out: str | Path, spec: PatchSpec | None = None, *,
             from_patches: str | Path | None = None, force: bool = False,
             progress: Progress | None = None) -> PatchifyResult:
    """Build (or confirm up to date) the patch store ``out`` from renders or published patches.

    ``progress(n)`` is called as renders (or patch files) are read. Never prints; problems are
    InvalidInputError / StoreError with a one-line message, and no output file is left behind.
    """
    return run_patchify(plan_patchify(renders, db_csv, out, spec, from_patches=from_patches, force=force),
                        progress=progress)


def run_patchify(plan: PatchifyPlan, progress: Progress | None = None) -> PatchifyResult:
    t0 = time.perf_counter()
    advance = progress or (lambda n=1: None)
    n_read = 0
    if not plan.up_to_date:
        if plan.source == SOURCE_RENDERS:
            _check_render_sizes(plan)
            n_read = _build_from_renders(plan, advance)
        else:
            n_read = _build_from_patches(plan, advance)
    return _summarise(plan, built=not plan.up_to_date, n_read=n_read, seconds=time.perf_counter() - t0)


def _check_render_sizes(plan: PatchifyPlan) -> None:
    """Every reference render must hold at least one tile, and every distorted render must have its
    reference's size (header reads only, before any work)."""
    bad: list[str] = []
    tile = plan.spec.size
    for m in plan.models:
        ref_sizes = [image_size(p) for p in m.reference]
        small = [(p, hw) for p, hw in zip(m.reference, ref_sizes) if min(hw) < tile]
        if small:
            p, (h, w) = small[0]
            raise InvalidInputError(f"--patch-size {tile} is larger than the renders: {_rel(p, plan.root)} is "
                                    f"{w}x{h}, so no {tile}x{tile} tile fits in it; choose --patch-size {min(h, w)} "
                                    "or less")
        for s in m.stimuli:
            for ref, ref_hw, f in zip(m.reference, ref_sizes, s.files):
                hw = image_size(f)
                if hw != ref_hw:
                    bad.append(f"{_rel(f, plan.root)} is {hw[1]}x{hw[0]} but {_rel(ref, plan.root)} is "
                               f"{ref_hw[1]}x{ref_hw[0]}")
    if bad:
        raise InvalidInputError(f"{len(bad)} render(s) differ in size from their reference: {_listing(bad, 4)}; "
                                "render every stimulus at its reference's size (width x height)")


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


# -- image reading (threads overlap PNG decoding with cutting and writing) ----------------------

def _read_rgba(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) or (H, W, 4): alpha kept when the file has one (for the foreground mask)."""
    from ..io.images import _open, _to_float_rgba

    img = _open(path)
    if img.mode in ("RGB", "RGBA"):
        return np.asarray(img)
    return (_to_float_rgba(img) * 255.0).round().astype(np.uint8)


def _read_rgb(path: Path) -> np.ndarray:
    arr = _read_rgba(path)
    return arr[..., :3]


def _prefetch(fn: Callable, items: Iterable, workers: int = 2, depth: int = 4) -> Iterator:
    """fn(item) for each item, in order, computed up to ``depth`` items ahead on threads."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _build_from_renders(plan: PatchifyPlan, advance: Progress) -> int:
    from ..io.store import StoreWriter

    spec = plan.spec
    s = spec.size
    n_read = 0
    with StoreWriter(plan.out, patch_size=s, stride=spec.stride, min_foreground=spec.min_foreground,
                     background=spec.background_text, fingerprint=plan.fingerprint, source=SOURCE_RENDERS) as writer:
        for m in plan.models:
            positions, ref_patches = [], []
            for ref in m.reference:
                image = _read_rgba(ref)
                mask = foreground_mask(image, spec.background, spec.tolerance)
                pos = select_tiles(mask, s, spec.stride, spec.min_foreground)
                positions.append(pos)
                ref_patches.append(cut_patches(image, pos, s))
            advance(len(m.reference))
            n_read += len(m.reference)
            reference = np.concatenate(ref_patches) if ref_patches else np.zeros((0, s, s, 3), np.uint8)
            model_index = writer.add_model(m.name, reference, views=m.views)
            total = len(reference)
            view = np.concatenate([np.full(len(p), v, np.int16) for v, p in enumerate(positions)])
            number = np.concatenate([np.arange(len(p)) for p in positions])
            ys = np.concatenate([p[:, 0] for p in positions])
            xs = np.concatenate([p[:, 1] for p in positions])
            refs = np.arange(total)
            if total == 0:
                for st in m.stimuli:
                    writer.add_stimulus(model_index, st.name, reference, view=view, number=number, y=ys, x=xs,
                                        ref=refs, mos=st.mos, split=st.split, flag=FLAG_NO_FOREGROUND)
                    advance(len(st.files))
                continue

            def load(st: StimulusSource, positions=positions) -> np.ndarray:
                return np.concatenate([cut_patches(_read_rgb(f), p, s) for f, p in zip(st.files, positions)])

            for st, patches in zip(m.stimuli, _prefetch(load, m.stimuli, workers=_workers())):
                writer.add_stimulus(model_index, st.name, patches, view=view, number=number, y=ys, x=xs, ref=refs,
                                    mos=st.mos, split=st.split)
                advance(len(st.files))
                n_read += len(st.files)
        writer.commit()
    return n_read


def _read_patch(path: Path, size: int) -> np.ndarray:
    arr = _read_rgb(path)
    if arr.shape[:2] != (size, size):
        raise InvalidInputError(f"{path}: patch is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size} like the "
                                "other patches of this import")
    return arr


def _build_from_patches(plan: PatchifyPlan, advance: Progress) -> int:
    from ..io.store import StoreWriter

    first = next((p for m in plan.models for p in m.reference), None)
    if first is None:
        first = next((f for m in plan.models for st in m.stimuli for f in st.files), None)
    if first is not None:
        h, w = image_size(first)
        if h != w:
            raise InvalidInputError(f"{first}: patch is {w}x{h}; imported patches must be square")
        s = h
    else:
        s = plan.spec.size
    n_read = 0

    def load(files: Sequence[Path]) -> np.ndarray:
        if not files:
            return np.zeros((0, s, s, 3), np.uint8)
        return np.stack([_read_patch(f, s) for f in files])

    with StoreWriter(plan.out, patch_size=s, stride=-1, min_foreground=plan.import_threshold, background="",
                     fingerprint=plan.fingerprint, source=SOURCE_PATCHES) as writer:
        for m in plan.models:
            reference = load(m.reference)
            advance(len(m.reference))
            n_read += len(m.reference)
            model_index = writer.add_model(m.name, reference, views=m.views)
            flag = FLAG_NO_FOREGROUND if len(reference) == 0 else ""
            for st, patches in zip(m.stimuli, _prefetch(lambda st: load(st.files), m.stimuli, workers=_workers())):
                n = len(patches)
                minus = np.full(n, -1)
                writer.add_stimulus(model_index, st.name, patches, view=np.zeros(n), number=np.arange(n), y=minus,
                                    x=minus, ref=np.arange(n), mos=st.mos, split=st.split, flag=flag)
                advance(len(st.files))
                n_read += len(st.files)
        writer.commit()
    return n_read


def _summarise(plan: PatchifyPlan, *, built: bool, n_read: int, seconds: float) -> PatchifyResult:
    from ..io.store import PatchStore

    with PatchStore.open(plan.out) as store:
        st, models = store.stimuli, store.models
        flagged = st[st["flag"] == FLAG_NO_FOREGROUND]
        no_fg = tuple(dict.fromkeys(flagged["model"]))
        warnings = []
        for name in no_fg:
            k = int((flagged["model"] == name).sum())
            if store.source == SOURCE_RENDERS:
                why = (f"no {store.patch_size}x{store.patch_size} tile of its reference render(s) is at least "
                       f"{store.min_foreground:g} foreground (check --background, or lower --min-foreground)")
            else:
                why = "its CSV rows list 0 patches (nbPatchesVP1)"
            warnings.append(f"model {name}: {why}; its {k} stimul{'us is' if k == 1 else 'i are'} stored with flag "
                            f"'{FLAG_NO_FOREGROUND}' and no patches, and are not scored")
        return PatchifyResult(
            store=plan.out, built=built, source=store.source, fingerprint=store.fingerprint,
            patch_size=store.patch_size, stride=store.stride, min_foreground=store.min_foreground,
            background=store.background, n_models=len(models), n_stimuli=len(st),
            n_views=int(models["n_views"].sum()), n_patches=store.n_patches, n_reference=store.n_reference,
            n_read=n_read, unit=plan.unit, no_foreground=no_fg, warnings=tuple(warnings), seconds=seconds,
            has_mos=store.has_mos)


# ---------------------------------------------------------------------------------------------
# counts CSV (Graphics-LPIPS format)
# ---------------------------------------------------------------------------------------------

def write_counts_csv(store_path: str | Path, out_csv: str | Path) -> Path:
    """Patch counts per stimulus as ``model,stimulus,MOS,nbPatchesVP1..nbPatchesVP4`` (more VP
    columns when a model has more than four views; MOS empty when unknown)."""
    from ..io.store import PatchStore

    out_csv = Path(out_csv)
    with PatchStore.open(store_path) as store:
        st = store.stimuli
        idx = store.patch_index(0, store.n_patches)
        n_vp = max(4, int(store.models["n_views"].max()) if len(store.models) else 4)
        counts = np.zeros((len(st), n_vp), dtype=np.int64)
        np.add.at(counts, (idx["stimulus"].astype(np.int64), idx["view"].astype(np.int64)), 1)
    from ..io.files import write_csv

    rows = ([row.model, row.stimulus, "" if not math.isfinite(row.mos) else repr(float(row.mos)), *counts[i].tolist()]
            for i, row in enumerate(st.itertuples(index=False)))
    return write_csv(out_csv, ["model", "stimulus", "MOS", *(f"nbPatchesVP{v + 1}" for v in range(n_vp))], rows)
