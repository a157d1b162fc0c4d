"""Small BAPPS-shaped trees for tests (generated PNGs and judge/same .npy files).

    root = make_bapps_tree(tmp_path / "dataset", {"2afc": ["val/traditional"], "jnd": ["val/cnn"]}, n=6)

Images are smooth random textures; p0 and p1 are the reference with noise of different
strengths, and the human values follow the noise (people prefer the less noisy version, call a
weakly distorted pair "same") with some randomness, quantised like votes of 5 (2AFC) or 3 (JND)
people. Layout and names follow the real data: ``NNNNNN.png`` / ``NNNNNN.npy``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SUBSETS = {"2afc": ["val/traditional", "val/cnn"], "jnd": ["val/traditional", "val/cnn"]}


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.uniform(0, 255, size=(max(2, size // 8), max(2, size // 8), 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse, "RGB").resize((size, size), Image.BICUBIC), dtype=np.float64)
    return smooth + rng.normal(0, 8, size=smooth.shape)


def _distort(rng: np.random.Generator, base: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(base + rng.normal(0, sigma, size=base.shape), 0, 255).round().astype(np.uint8)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, "RGB").save(path)


def make_bapps_tree(root: str | Path, subsets: dict[str, list[str]] | None = None, n: int | dict[str, int] = 6,
                    seed: int = 0, size: int = 64) -> Path:
    """Write a BAPPS ``dataset`` folder at ``root`` and return it.

    subsets: protocol -> subset names, e.g. {"2afc": ["val/traditional", "train/mix"], "jnd": ["val/cnn"]}.
    n: items per subset, or a dict keyed "2afc/val/cnn" (missing keys get 6).
    size: image side in pixels (64 like BAPPS; other sizes exercise the resize).
    """
    root = Path(root)
    subsets = DEFAULT_SUBSETS if subsets is None else subsets
    rng = np.random.default_rng(seed)
    for mode, names in subsets.items():
        for subset in names:
            count = n.get(f"{mode}/{subset}", 6) if isinstance(n, dict) else n
            folder = root / mode / subset
            for sub in (("ref", "p0", "p1", "judge") if mode == "2afc" else ("p0", "p1", "same")):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                stem = f"{i:06d}"
                base = _texture(rng, size)
                s0, s1 = rng.uniform(2, 40, size=2)
                if mode == "2afc":
                    _save(folder / "ref" / f"{stem}.png", np.clip(base, 0, 255).round().astype(np.uint8))
                    _save(folder / "p0" / f"{stem}.png", _distort(rng, base, s0))
                    _save(folder / "p1" / f"{stem}.png", _distort(rng, base, s1))
                    prefer_p1 = 1.0 / (1.0 + np.exp((s1 - s0) / 6.0))
                    judge = rng.binomial(5, prefer_p1) / 5.0
                    np.save(folder / "judge" / f"{stem}.npy", np.array([judge], dtype=np.float64))
                else:
                    _save(folder / "p0" / f"{stem}.png", _distort(rng, base, 2.0))
                    _save(folder / "p1" / f"{stem}.png", _distort(rng, base, s1))
                    looks_same = 1.0 / (1.0 + np.exp((s1 - 15.0) / 4.0))
                    same = rng.binomial(3, looks_same) / 3.0
                    np.save(folder / "same" / f"{stem}.npy", np.array([same], dtype=np.float64))
    return root
