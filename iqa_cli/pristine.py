"""Pristine patch sets and pristine Gaussians: the data side of NIQE and GRepQ's zero-shot score.

``build_pristine_store`` cuts a folder of pristine photographs into the tiles GRepQ's recipe keeps
(NIQE's sharpness rule, then GRepQ's colourfulness rule; ``io/patches.py``) and caches them in a
pristine store (``io/store.py``). ``fit_pristine_model`` fits NIQE's pristine Gaussian, either
exactly as the official ``estimatemodelparam.m`` does from a folder (whole images, NIQE's own
sharpness rule with replicated borders, no colour rule), or from a store's patches (each patch
is scored as an image of one block; the result is cached in the store). The Gaussian can replace
the official one: ``NIQE(pristine=model)`` or ``save_pristine_model`` + ``NIQE(pristine=path)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from .errors import InvalidInputError
from .io.images import is_image_path, load_image_uint8
from .io.patches import above_fraction_of_max, cut_patches, select_pristine

Progress = Callable[..., None]
DEFAULT_PATCH_SIZE = 96
DEFAULT_SHARPNESS = 0.75
DEFAULT_COLOURFULNESS = 0.80
SHARPNESS_PADDING = "zero"  # GRepQ's recipe; NIQE's own rule (fit from a folder) replicates


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted by relative path."""
    folder = Path(folder)
    if not folder.exists():
        raise InvalidInputError(f"{folder}: no such folder of pristine images (check the path)")
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: is a file, expected a folder of pristine images")
    files = sorted((p for p in folder.rglob("*") if p.is_file() and is_image_path(p)),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise InvalidInputError(f"{folder}: no image files (.png, .jpg, .bmp, .tif, .webp) in this folder")
    return files


def _check_threshold(value: float, option: str) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise InvalidInputError(f"{option} must be in [0, 1] (a fraction of the image's best tile), got {value}")
    return float(value)


@dataclass(frozen=True)
class PristinePlan:
    """Everything validated; ``run_pristine_store`` does the work."""

    root: Path
    out: Path
    images: tuple[Path, ...]
    patch_size: int
    sharpness: float
    colourfulness: float
    fingerprint: str
    up_to_date: bool


@dataclass(frozen=True)
class PristineResult:
    store: Path
    built: bool  # False: the store was already up to date
    fingerprint: str
    patch_size: int
    sharpness: float
    colourfulness: float
    sharpness_padding: str
    n_images: int  # image files in the folder
    n_used: int  # images that gave at least one patch
    n_tiles: int  # whole tiles over all images
    n_sharp: int  # tiles left by the sharpness rule
    n_patches: int  # tiles kept (sharp and colourful)
    too_small: tuple[str, ...]  # images smaller than one patch (skipped)
    seconds: float

    @property
    def warnings(self) -> tuple[str, ...]:
        if not self.too_small:
            return ()
        names = ", ".join(self.too_small[:5]) + (" ..." if len(self.too_small) > 5 else "")
        return (f"{len(self.too_small)} image(s) smaller than {self.patch_size}x{self.patch_size} skipped: {names}",)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["store"] = str(self.store)
        d["too_small"] = list(self.too_small)
        d["warnings"] = list(self.warnings)
        return d


def plan_pristine_store(images: str | Path, out: str | Path, *, patch_size: int = DEFAULT_PATCH_SIZE,
                        sharpness: float = DEFAULT_SHARPNESS, colourfulness: float = DEFAULT_COLOURFULNESS,
                        force: bool = False) -> PristinePlan:
    """Validate, list and fingerprint the images; decide whether ``out`` is up to date. Writes nothing."""
    from .io.store import pristine_store_fingerprint

    root, out = Path(images), Path(out)
    if int(patch_size) != patch_size or patch_size < 8:
        raise InvalidInputError(f"--patch-size must be an integer of at least 8 pixels, got {patch_size}")
    sharpness = _check_threshold(sharpness, "--sharpness")
    colourfulness = _check_threshold(colourfulness, "--colourfulness")
    if out.is_dir():
        raise InvalidInputError(f"{out}: is a folder; --out must name the .h5 file to write")
    if not force and out.exists() and pristine_store_fingerprint(out) is None:
        raise InvalidInputError(f"{out}: exists and is not an iqa pristine store; choose another --out, or use "
                                "--force to overwrite it")
    files = tuple(list_images(root))
    params = {"kind": "pristine-store", "schema_version": 1, "patch_size": int(patch_size), "sharpness": sharpness,
              "colourfulness": colourfulness, "sharpness_padding": SHARPNESS_PADDING}
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for p in files:
        st = os.stat(p)
        h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    fingerprint = h.hexdigest()
    up_to_date = not force and pristine_store_fingerprint(out) == fingerprint
    return PristinePlan(root, out, files, int(patch_size), sharpness, colourfulness, fingerprint, up_to_date)


def run_pristine_store(plan: PristinePlan, progress: Optional[Progress] = None) -> PristineResult:
    """Build the store (unless up to date). Never prints; no file is left behind on error."""
    from .io.store import PristineStore, PristineStoreWriter

    t0 = time.perf_counter()
    advance = progress or (lambda n=1: None)
    if plan.up_to_date:
        with PristineStore.open(plan.out) as store:
            table = store.images
            return PristineResult(plan.out, False, plan.fingerprint, plan.patch_size, plan.sharpness,
                                  plan.colourfulness, store.sharpness_padding, len(plan.images),
                                  int((table["count"] > 0).sum()), int(table["n_tiles"].sum()),
                                  int(table["n_sharp"].sum()), store.n_patches,
                                  _too_small(plan, table), time.perf_counter() - t0)
    s = plan.patch_size
    too_small: list[str] = []
    n_used = n_tiles = n_sharp = 0
    with PristineStoreWriter(plan.out, patch_size=s, sharpness=plan.sharpness, colourfulness=plan.colourfulness,
                             sharpness_padding=SHARPNESS_PADDING, fingerprint=plan.fingerprint,
                             root=str(plan.root)) as writer:
        for path in plan.images:
            rgb = load_image_uint8(path)
            name = path.relative_to(plan.root).as_posix()
            h, w = rgb.shape[:2]
            if h < s or w < s:
                too_small.append(name)
            sel = select_pristine(rgb, s, plan.sharpness, plan.colourfulness, padding=SHARPNESS_PADDING)
            writer.add_image(name, cut_patches(rgb, sel.positions, s), y=sel.positions[:, 0], x=sel.positions[:, 1],
                             height=h, width=w, n_tiles=sel.n_tiles, n_sharp=sel.n_sharp)
            n_used += bool(len(sel.positions))
            n_tiles += sel.n_tiles
            n_sharp += sel.n_sharp
            advance(1)
        if writer.n_patches == 0:
            detail = (f"all {len(plan.images)} image(s) are smaller than {s}x{s}" if len(too_small) == len(plan.images)
                      else f"{len(too_small)} of {len(plan.images)} image(s) smaller than {s}x{s}, the others have no "
                           "tile with texture and colour")
            raise InvalidInputError(f"{plan.root}: no usable pristine patch ({detail}); give sharp colour photographs "
                                    f"of at least {s}x{s} pixels, or lower --sharpness / --colourfulness")
        writer.commit()
    return PristineResult(plan.out, True, plan.fingerprint, s, plan.sharpness, plan.colourfulness, SHARPNESS_PADDING,
                          len(plan.images), n_used, n_tiles, n_sharp, writer.n_patches, tuple(too_small),
                          time.perf_counter() - t0)


def _too_small(plan: PristinePlan, table) -> tuple[str, ...]:
    s = plan.patch_size
    small = (table["height"] < s) | (table["width"] < s)
    return tuple(str(n) for n in table["name"][small])


def build_pristine_store(images: str | Path, out: str | Path, *, patch_size: int = DEFAULT_PATCH_SIZE,
                         sharpness: float = DEFAULT_SHARPNESS, colourfulness: float = DEFAULT_COLOURFULNESS,
                         force: bool = False, progress: Optional[Progress] = None) -> PristineResult:
    """``iqa patchify --pristine IMAGES/ --out OUT.h5``: GRepQ's pristine patch set of a folder."""
    plan = plan_pristine_store(images, out, patch_size=patch_size, sharpness=sharpness, colourfulness=colourfulness,
                               force=force)
    return run_pristine_store(plan, progress)


# ---------------------------------------------------------------------------------------------
# NIQE's pristine Gaussian
# ---------------------------------------------------------------------------------------------

def fit_pristine_model(source, *, sharpness: float = DEFAULT_SHARPNESS, grey: str = "rgb2gray",
                       block_size: int | None = None, device: str = "cpu", batch_size: int = 256,
                       progress: Optional[Progress] = None):
    """NIQE's pristine Gaussian (an MVG of 36 features) from a folder of pristine images or a
    pristine store (a ``PristineStore`` or the path of one).

    Folder: the official ``estimatemodelparam.m`` -- per image, the blocks whose mean sigma
    exceeds ``sharpness`` x the image's best block (0: all blocks), features of the whole image.
    Store: every stored patch is one block (``block_size`` = the store's patch size); the Gaussian
    is cached in the store, keyed by NIQE's feature settings, and reused on the next call.
    Save it with ``models.niqe.save_pristine_model`` to use it as ``NIQE(pristine=path)``."""
    from .io.store import PristineStore

    if isinstance(source, PristineStore):
        return _fit_from_store(source, grey, device, batch_size, progress)
    path = Path(source)
    if path.is_file():
        with PristineStore.open(path) as store:
            return _fit_from_store(store, grey, device, batch_size, progress)
    return _fit_from_folder(path, _check_threshold(sharpness, "sharpness"), grey, block_size, device, progress)


def _fit_from_store(store, grey: str, device: str, batch_size: int, progress: Optional[Progress]):
    import torch

    from .models.mvg import fit_mvg
    from .models.niqe import niqe_feature_key, niqe_features, to_grey

    advance = progress or (lambda n=1: None)

    def compute(st):
        rows = []
        for block in st.iter_patches(batch_size):
            img = torch.from_numpy(block).to(device).permute(0, 3, 1, 2).to(torch.float64) / 255.0
            rows.append(niqe_features(to_grey(img, grey), st.patch_size)[0][:, 0].cpu())
            advance(len(block))
        features = torch.cat(rows)
        if _complete_rows(features) < 2:
            raise InvalidInputError(f"{st.path}: {_complete_rows(features)} of {st.n_patches} stored patch(es) have "
                                    "NIQE features (textured patches); a pristine Gaussian needs at least 2; rebuild "
                                    "the store from more images")
        return fit_mvg(features)

    return store.mvg("niqe", niqe_feature_key(store.patch_size, grey), compute)


def _fit_from_folder(folder: Path, sharpness: float, grey: str, block_size: int | None, device: str,
                     progress: Optional[Progress]):
    import torch

    from .models.mvg import fit_mvg
    from .models.niqe import BLOCK_SIZE, niqe_features, to_grey

    advance = progress or (lambda n=1: None)
    block = int(block_size or BLOCK_SIZE)
    rows, too_small = [], 0
    for path in list_images(folder):
        rgb = load_image_uint8(path)
        advance(1)
        if rgb.shape[0] < block or rgb.shape[1] < block:
            too_small += 1
            continue
        img = torch.from_numpy(rgb).to(device).permute(2, 0, 1).unsqueeze(0).to(torch.float64) / 255.0
        features, sharp = niqe_features(to_grey(img, grey), block)
        keep = torch.from_numpy(above_fraction_of_max(sharp[0].cpu().numpy(), sharpness))
        rows.append(features[0].cpu()[keep])
    kept = torch.cat(rows) if rows else torch.zeros(0, 36, dtype=torch.float64)
    usable = _complete_rows(kept)
    if usable < 2:
        raise InvalidInputError(f"{folder}: no usable pristine patch ({usable} textured {block}x{block} block(s); "
                                f"{too_small} image(s) smaller than {block}x{block}); NIQE's pristine model needs "
                                f"sharp photographs of at least {block}x{block} pixels")
    return fit_mvg(kept)


def _complete_rows(features) -> int:
    """Blocks whose 36 features all exist (a flat block's AGGD fits fail: NaN)."""
    import torch

    return int((~torch.isnan(features).any(dim=-1)).sum())


def grepq_pristine_mvg(source, encoder, batch_size: int = 256):
    """GRepQ's pristine Gaussian: the low-level encoder's 128-d features of every patch of a pristine
    store (a ``PristineStore`` or its path), cached in the store under the encoder's weights hash."""
    from .io.store import PristineStore
    from .models.grepq import pristine_mvg
    from .models.mvg import weights_hash

    if not isinstance(source, PristineStore):
        with PristineStore.open(source) as store:
            return grepq_pristine_mvg(store, encoder, batch_size)
    import numpy as np

    def compute(store):
        return pristine_mvg(encoder, np.concatenate(list(store.iter_patches(batch_size))), batch_size)

    return source.mvg("grepq-low", weights_hash(encoder), compute)
