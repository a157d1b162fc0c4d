"""Photographs for the no-reference benchmarks (niqe_throughput.py, score_image_throughput.py).

scikit-image's bundled samples (no download), each resized with bicubic interpolation to cover
width x height and centre-cropped; beyond the seven, mirrored copies (left-right, up-down, both)
make more, so n images hold n distinct arrays for n <= 28.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "stereo_motorcycle:0", "stereo_motorcycle:1")
WIDTH, HEIGHT = 512, 384


def photographs(n: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """n uint8 (height, width, 3) photographs, stacked."""
    from skimage import data

    base = []
    for name in PHOTOS:
        name, _, part = name.partition(":")
        img = getattr(data, name)()
        img = img[int(part)] if part else img
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
        pil = Image.fromarray(img)
        scale = max(width / pil.width, height / pil.height)
        pil = pil.resize((max(width, round(pil.width * scale)), max(height, round(pil.height * scale))),
                         Image.BICUBIC)
        left, top = (pil.width - width) // 2, (pil.height - height) // 2
        base.append(np.asarray(pil.crop((left, top, left + width, top + height))))
    variants = [lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: a[::-1, ::-1]]
    out = [variants[(i // len(base)) % 4](base[i % len(base)]) for i in range(n)]
    return np.ascontiguousarray(np.stack(out))


def write_photographs(folder: Path, n: int, width: int = WIDTH, height: int = HEIGHT) -> list[Path]:
    """``photographs(n, width, height)`` as PNG files photo_000.png ... in ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(photographs(n, width, height)):
        path = folder / f"photo_{i:03d}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths
