"""The patch grid and foreground selection used to cut renders into patches (numpy only, no I/O).

A render is cut on a regular grid of ``size`` x ``size`` tiles whose top-left corners are
``(y, x) = (i * stride, j * stride)`` for every tile that fits entirely inside the image, in
row-major order (top row first, left to right). Which tiles are kept is decided once per view
from the *reference* render's foreground mask, and the same positions are then cut from every
distorted render of that model, so reference and distorted patches always line up.

Foreground mask (``foreground_mask``):

* Alpha: when the reference has an alpha channel that is not fully opaque, a pixel is foreground
  when ``alpha >= 128`` (alpha >= 0.5). A fully opaque alpha channel carries no mask (many tools
  write RGBA with alpha 255 everywhere), so the background-colour rule below is used instead.
* Background colour: otherwise a pixel is foreground when any channel differs from the background
  colour by more than ``tolerance`` (default 8 of 255, which absorbs compression noise and
  antialiasing fringes). The background colour is either given (``R,G,B``) or ``auto``: the most
  common colour on the image's one-pixel border.

A tile is kept when its foreground fraction (foreground pixels / size²) is ``>= min_foreground``
(0.6 by default, the threshold of the released Graphics-LPIPS data).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Union

import numpy as np

from ..errors import InvalidInputError

Background = Union[str, tuple[int, int, int]]  # "auto" or an explicit (R, G, B)

ALPHA_THRESHOLD = 128  # alpha >= 0.5 of 255 marks a foreground pixel
DEFAULT_TOLERANCE = 8  # max per-channel |pixel - background| still counted as background


@dataclass(frozen=True)
class PatchSpec:
    """How renders are cut: tile size, grid stride, foreground threshold and background rule."""

    size: int = 64
    stride: int = 64
    min_foreground: float = 0.6
    background: Background = "auto"
    tolerance: int = DEFAULT_TOLERANCE

    def __post_init__(self) -> None:
        if int(self.size) != self.size or self.size < 1:
            raise InvalidInputError(f"patch size must be a positive integer, got {self.size}")
        if int(self.stride) != self.stride or self.stride < 1:
            raise InvalidInputError(f"stride must be a positive integer, got {self.stride}")
        if not 0.0 <= float(self.min_foreground) <= 1.0:
            raise InvalidInputError(f"min-foreground must be in [0, 1], got {self.min_foreground}")
        if not 0 <= int(self.tolerance) <= 255:
            raise InvalidInputError(f"background tolerance must be in [0, 255], got {self.tolerance}")
        object.__setattr__(self, "background", parse_background(self.background))

    @property
    def background_text(self) -> str:
        return background_text(self.background)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["background"] = self.background_text
        return d


def parse_background(value: Background) -> Background:
    """``"auto"`` or ``"R,G,B"`` (or an (R, G, B) tuple) -> ``"auto"`` or a tuple of three ints."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        parts = [p.strip() for p in text.split(",")]
    else:
        parts = list(value)
    try:
        rgb = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise InvalidInputError(f"background {value!r}: expected 'auto' or R,G,B with three integers in 0..255 "
                                "(e.g. --background 255,255,255)")
    return rgb  # type: ignore[return-value]


def background_text(value: Background) -> str:
    return value if isinstance(value, str) else ",".join(str(int(c)) for c in value)


def grid_positions(height: int, width: int, size: int, stride: int) -> np.ndarray:
    """Top-left corners (y, x) of every size x size tile that fits, row-major; int64 (n, 2)."""
    if height < size or width < size:
        return np.zeros((0, 2), dtype=np.int64)
    ys = np.arange(0, height - size + 1, stride, dtype=np.int64)
    xs = np.arange(0, width - size + 1, stride, dtype=np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def border_colour(rgb: np.ndarray) -> tuple[int, int, int]:
    """The most common colour on the one-pixel border of an (H, W, 3) uint8 image (ties: lowest)."""
    rgb = np.asarray(rgb)
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]]).reshape(-1, 3).astype(np.int64)
    packed = (border[:, 0] << 16) | (border[:, 1] << 8) | border[:, 2]
    values, counts = np.unique(packed, return_counts=True)
    best = int(values[np.argmax(counts)])
    return (best >> 16) & 255, (best >> 8) & 255, best & 255


def has_alpha_mask(image: np.ndarray) -> bool:
    """True when ``image`` is (H, W, 4) and its alpha channel is not uniformly opaque."""
    return image.ndim == 3 and image.shape[2] == 4 and bool((image[..., 3] < 255).any())


def foreground_mask(image: np.ndarray, background: Background = "auto",
                    tolerance: int = DEFAULT_TOLERANCE) -> np.ndarray:
    """Boolean (H, W) mask of object pixels in a uint8 (H, W, 3) or (H, W, 4) reference render.

    Uses the alpha channel when it carries one (alpha >= 128), else the background colour rule
    (see the module docstring).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InvalidInputError(f"expected a uint8 (H, W, 3|4) image, got {image.dtype} {image.shape}")
    if has_alpha_mask(image):
        return image[..., 3] >= ALPHA_THRESHOLD
    rgb = image[..., :3]
    bg = parse_background(background)
    if bg == "auto":
        bg = border_colour(rgb)
    diff = np.abs(rgb.astype(np.int16) - np.asarray(bg, dtype=np.int16))
    return diff.max(axis=2) > int(tolerance)


def foreground_fractions(mask: np.ndarray, positions: np.ndarray, size: int) -> np.ndarray:
    """Fraction of foreground pixels in each size x size tile at ``positions``; float64 (n,)."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    if len(positions) == 0:
        return np.zeros(0, dtype=np.float64)
    # summed-area table with a zero row/column in front: sum of a tile in O(1)
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])
    y0, x0 = positions[:, 0], positions[:, 1]
    y1, x1 = y0 + size, x0 + size
    counts = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    return counts / float(size * size)


def select_tiles(mask: np.ndarray, size: int, stride: int, min_foreground: float) -> np.ndarray:
    """Grid positions (row-major, int64 (k, 2)) whose foreground fraction is >= min_foreground."""
    positions = grid_positions(mask.shape[0], mask.shape[1], size, stride)
    fractions = foreground_fractions(mask, positions, size)
    # a tiny epsilon so a fraction of exactly the threshold (e.g. 0.6 * 4096 pixels) is kept
    return positions[fractions >= float(min_foreground) - 1e-12]


def cut_patches(image: np.ndarray, positions: np.ndarray, size: int) -> np.ndarray:
    """Tiles of an (H, W, C) array at ``positions`` -> (k, size, size, 3) uint8, RGB only."""
    image = np.asarray(image)
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    out = np.empty((len(positions), size, size, 3), dtype=np.uint8)
    h, w = image.shape[:2]
    for i, (y, x) in enumerate(positions):
        if y < 0 or x < 0 or y + size > h or x + size > w:
            raise InvalidInputError(f"tile at (y={y}, x={x}) of size {size} does not fit a {h}x{w} image")
        out[i] = image[y:y + size, x:x + size, :3]
    return out


# ---------------------------------------------------------------------------------------------
# pristine patch selection (NIQE's sharpness rule, GRepQ's colourfulness rule)
# ---------------------------------------------------------------------------------------------
#
# A pristine patch set keeps, per image, the non-overlapping size x size tiles that are sharp and
# (for GRepQ) colourful. Both rules compare a tile with the best tile *of the same image*, so they
# are invariant to the image's intensity scale. A threshold of 0 switches a rule off.

GREPQ_GREY = (0.2989, 0.587, 0.114)  # GRepQ's grey for its sharpness rule (float, not rounded)
PADDINGS = ("zero", "replicate")  # GRepQ's sharpness rule pads with zeros; NIQE's own replicates


def gaussian_window(size: int = 7, sigma: float = 7 / 6) -> np.ndarray:
    """The normalised size x size Gaussian of NIQE (MATLAB ``fspecial('gaussian', 7, 7/6)``), float64."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma * sigma))
    return w / w.sum()


def sigma_map(grey: np.ndarray, padding: str = "zero") -> np.ndarray:
    """Local standard deviation sqrt(|w*G^2 - (w*G)^2|) of an (H, W) grey image, float64 (H, W).

    ``padding``: "zero" (GRepQ's rule) or "replicate" (NIQE's MSCN and its own pristine rule)."""
    from scipy.ndimage import correlate

    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    g = np.asarray(grey, dtype=np.float64)
    mode = "constant" if padding == "zero" else "nearest"
    w = gaussian_window()
    mu = correlate(g, w, mode=mode, cval=0.0)
    return np.sqrt(np.abs(correlate(g * g, w, mode=mode, cval=0.0) - mu * mu))


def tile_sums(values: np.ndarray, size: int) -> np.ndarray:
    """Sum of an (H, W) map over each non-overlapping size x size tile, row-major; float64 (n,).

    The map is cropped to whole tiles (the remainder on the bottom and right is dropped)."""
    values = np.asarray(values, dtype=np.float64)
    nh, nw = values.shape[0] // size, values.shape[1] // size
    crop = values[:nh * size, :nw * size]
    return crop.reshape(nh, size, nw, size).sum(axis=(1, 3)).reshape(-1)


def grepq_grey(rgb: np.ndarray) -> np.ndarray:
    """GRepQ's grey (0.2989 R + 0.587 G + 0.114 B) of an (H, W, 3) image in [0, 1], float64."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb[..., 0] * GREPQ_GREY[0] + rgb[..., 1] * GREPQ_GREY[1] + rgb[..., 2] * GREPQ_GREY[2]


def tile_sharpness(grey: np.ndarray, size: int, padding: str = "zero") -> np.ndarray:
    """delta = sum of the sigma map over every non-overlapping tile, row-major (``grid_positions``
    with stride = size). The sigma map is computed on the image cropped to whole tiles."""
    grey = np.asarray(grey, dtype=np.float64)
    nh, nw = grey.shape[0] // size, grey.shape[1] // size
    return tile_sums(sigma_map(grey[:nh * size, :nw * size], padding), size)


def above_fraction_of_max(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask: score > threshold * max(scores); a threshold of 0 keeps everything.

    This is the shape of both pristine rules (NIQE: sharpness, GRepQ: colourfulness)."""
    scores = np.asarray(scores, dtype=np.float64)
    if float(threshold) == 0.0 or len(scores) == 0:
        return np.ones(len(scores), dtype=bool)
    return scores > float(threshold) * scores.max()


def colourfulness(patches: np.ndarray) -> np.ndarray:
    """GRepQ's colourfulness of (n, s, s, 3) patches (uint8 or floats in [0, 1]); float64 (n,).

    rg = |R - G|, yb = |(R + G)/2 - B|, C = sqrt(std(rg)^2 + std(yb)^2) + sqrt(mean(rg)^2 + mean(yb)^2)
    with unbiased std, on the [0, 1] scale (absolute differences and weight 1, as GRepQ does)."""
    p = np.asarray(patches)
    p = p.astype(np.float64) / 255.0 if p.dtype == np.uint8 else p.astype(np.float64)
    n = p.shape[0]
    r, g, b = p[..., 0].reshape(n, -1), p[..., 1].reshape(n, -1), p[..., 2].reshape(n, -1)
    rg = np.abs(r - g)
    yb = np.abs((r + g) / 2 - b)
    spread = np.sqrt(rg.var(axis=1, ddof=1) + yb.var(axis=1, ddof=1))
    level = np.sqrt(rg.mean(axis=1) ** 2 + yb.mean(axis=1) ** 2)
    return spread + level


@dataclass(frozen=True)
class PristineSelection:
    """The tiles of one image that a pristine patch set keeps (row-major positions)."""

    positions: np.ndarray  # int64 (k, 2) top-left corners (y, x) of the kept tiles
    n_tiles: int  # whole tiles in the image
    n_sharp: int  # tiles left after the sharpness rule


def select_pristine(rgb: np.ndarray, size: int = 96, sharpness: float = 0.75, colourfulness_threshold: float = 0.80,
                    padding: str = "zero") -> PristineSelection:
    """GRepQ's pristine selection for one (H, W, 3) uint8 image.

    Non-overlapping size x size tiles; keep delta > ``sharpness`` * max delta (delta: the sigma map
    of GRepQ's grey, ``padding`` borders, summed over the tile); of those, keep C >
    ``colourfulness_threshold`` * max C over the survivors (``colourfulness``)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] < 3:
        raise InvalidInputError(f"expected a uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    positions = grid_positions(rgb.shape[0], rgb.shape[1], size, size)
    if len(positions) == 0:
        return PristineSelection(positions, 0, 0)
    delta = tile_sharpness(grepq_grey(rgb[..., :3] / 255.0), size, padding)
    sharp = positions[above_fraction_of_max(delta, sharpness)]
    colour = colourfulness(cut_patches(rgb, sharp, size))
    kept = sharp[above_fraction_of_max(colour, colourfulness_threshold)]
    return PristineSelection(kept, len(positions), len(sharp))
