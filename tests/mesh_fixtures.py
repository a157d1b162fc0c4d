"""Generators for small synthetic mesh-quality databases (renders + DB.csv, published patch folders).

Shared by the patchify, store, engine and score-mesh-db tests. Everything is generated from a seed:
no real dataset is ever needed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

BACKGROUND = (255, 255, 255)  # flat background of renders written without alpha


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return path


def object_mask(size: tuple[int, int], seed: int) -> np.ndarray:
    """A filled ellipse covering a good part of the frame (a stand-in for a rendered mesh)."""
    h, w = size
    rng = np.random.default_rng(seed)
    cy, cx = h * rng.uniform(0.45, 0.55), w * rng.uniform(0.45, 0.55)
    ry, rx = h * rng.uniform(0.42, 0.48), w * rng.uniform(0.42, 0.48)
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def textured_object(size: tuple[int, int], seed: int) -> np.ndarray:
    """uint8 (H, W, 3) smooth colourful texture (never pure white, so it differs from the background)."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for _ in range(3):
        fy, fx, ph = rng.uniform(0.02, 0.12), rng.uniform(0.02, 0.12), rng.uniform(0, 2 * np.pi)
        chans.append(0.5 + 0.5 * np.sin(fy * yy + ph) * np.cos(fx * xx))
    tex = np.stack(chans, axis=-1)
    return (30 + 180 * tex).astype(np.uint8)


def distort(image: np.ndarray, kind: str, strength: float, seed: int) -> np.ndarray:
    """Noise or blur of a given strength in [0, 1] applied to an (H, W, 3) uint8 image."""
    rng = np.random.default_rng(seed)
    img = image.astype(np.float64)
    if kind == "noise":
        img = img + rng.normal(0.0, 60.0 * strength, img.shape)
    else:  # box blur, radius grows with strength
        r = max(1, int(round(6 * strength)))
        k = 2 * r + 1
        pad = np.pad(img, ((r, r), (r, r), (0, 0)), mode="edge")
        csum = pad.cumsum(axis=0).cumsum(axis=1)
        csum = np.pad(csum, ((1, 0), (1, 0), (0, 0)))
        img = (csum[k:, k:] - csum[:-k, k:] - csum[k:, :-k] + csum[:-k, :-k]) / (k * k)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def render(size: tuple[int, int], seed: int, alpha: bool, mask: np.ndarray | None = None) -> np.ndarray:
    """A reference render: the object on a white background, or RGBA with alpha 0 outside it."""
    mask = object_mask(size, seed) if mask is None else mask
    tex = textured_object(size, seed + 1000)
    if alpha:
        rgba = np.zeros(size + (4,), np.uint8)
        rgba[..., :3] = np.where(mask[..., None], tex, 0)
        rgba[..., 3] = np.where(mask, 255, 0)
        return rgba
    return np.where(mask[..., None], tex, np.array(BACKGROUND, np.uint8))


def make_render_db(root: Path, n_models: int = 2, n_stimuli_per_model: int = 3, size: tuple[int, int] = (192, 256),
                   views: int = 1, with_mos: bool = True, alpha: bool = True, seed: int = 0) -> tuple[Path, Path]:
    """Write ``root/renders`` (references/ + stimuli/) and ``root/DB.csv``; return (renders_dir, db_csv).

    Models are ``m0, m1, ...``; stimuli ``m{i}_s{j}`` alternate noise and blur with strength
    (j + 1) / n_stimuli_per_model, and MOS = 0.9 * strength (in [0, 1], increasing with strength).
    ``views > 1`` writes the multi-view layout with view names ``vp1, vp2, ...``. Distorted renders
    keep the reference's alpha channel when ``alpha``.
    """
    root = Path(root)
    renders = root / "renders"
    rows = []
    for i in range(n_models):
        model = f"m{i}"
        for v in range(views):
            view_seed = seed * 1000 + i * 10 + v
            ref = render(size, view_seed, alpha)
            ref_path = (renders / "references" / f"{model}.png" if views == 1
                        else renders / "references" / model / f"vp{v + 1}.png")
            save_png(ref_path, ref)
            for j in range(n_stimuli_per_model):
                stim = f"{model}_s{j}"
                strength = (j + 1) / n_stimuli_per_model
                rgb = distort(ref[..., :3], "noise" if j % 2 == 0 else "blur", strength, view_seed + 100 * j)
                out = np.dstack([rgb, ref[..., 3]]) if alpha else rgb
                stim_path = (renders / "stimuli" / f"{stim}.png" if views == 1
                             else renders / "stimuli" / stim / f"vp{v + 1}.png")
                save_png(stim_path, out)
                if v == 0:
                    rows.append((model, stim, 0.9 * strength))
    db = root / "DB.csv"
    with open(db, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "stimulus", "MOS"] if with_mos else ["model", "stimulus"])
        for model, stim, mos in rows:
            w.writerow([model, stim, f"{mos:.6f}"] if with_mos else [model, stim])
    return renders, db


def make_patch_db(root: Path, counts: dict[str, list[int]] | None = None, patch_size: int = 64,
                  folder_suffix: str = "_withVP_threth0.6", seed: int = 0) -> tuple[Path, Path]:
    """Published Graphics-LPIPS layout under ``root``: References_patches*/ and
    PlaylistsStimuli_patches*/ with random patches, and a CSV (model,stimulus,MOS,nbPatchesVP1..4).

    ``counts`` maps model -> nbPatchesVP1 of each of its stimuli (default two models, 3 stimuli).
    Returns (root, csv_path).
    """
    root = Path(root)
    counts = counts or {"bunny": [5, 5, 5], "dragon": [3, 3]}
    rng = np.random.default_rng(seed)
    ref_dir = root / f"References_patches{folder_suffix}"
    stim_dir = root / f"PlaylistsStimuli_patches{folder_suffix}"
    ref_dir.mkdir(parents=True, exist_ok=True)
    stim_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for model, per_stim in counts.items():
        for p in range(1, max(per_stim, default=0) + 1):
            save_png(ref_dir / f"{model}_Ref_P{p}.png", rng.integers(0, 256, (patch_size, patch_size, 3), np.uint8))
        for j, n in enumerate(per_stim):
            stim = f"{model}_simpL{j}_qp{j + 7}"
            for p in range(1, n + 1):
                save_png(stim_dir / f"{stim}_P{p}.png", rng.integers(0, 256, (patch_size, patch_size, 3), np.uint8))
            rows.append((model, stim, round(0.1 + 0.2 * j, 3), n))
    csv_path = root / "TexturedDB_20%_TestList_withnbPatchesPerVP_threth0.6.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "stimulus", "MOS", "nbPatchesVP1", "nbPatchesVP2", "nbPatchesVP3", "nbPatchesVP4"])
        for model, stim, mos, n in rows:
            w.writerow([model, stim, mos, n, n + 1, n + 2, n + 3])
    return root, csv_path
