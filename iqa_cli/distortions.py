"""The 25 KADID-10k distortion types, 5 levels each, as pure functions.

KADIS-700k ships pristine images and a MATLAB generator; GraphIQA pretrains on these labels and
GRepQ's low-level encoder learns from this kind of damage. This module re-implements the generator
from its description (docs/distortions.md) with numpy, scipy
and Pillow only, so that ``iqa distort`` runs wherever the package does.

Every distortion is ``f(image, level, rng) -> image``: ``image`` is float64 RGB in [0, 1] of shape
(H, W, 3), ``level`` is 1..5, ``rng`` a numpy Generator (only the random types draw from it).
``distort()`` validates, derives the generator from a seed and finishes the range (see below);
``DISTORTION_TYPES`` is the table (parameters, group, ordered by strength, exact or approximate).

Range convention (the ``mapmm`` question). The original stretches the input to [0, 1] with a
global min-max stretch before distorting and stretches the result again afterwards. A known
Python port only clips. We clip by default: the reference written next to the distorted images is
then the very image every distortion started from, the no-change levels (mean shift and contrast
change at level 3) give back the reference, and a mean shift stays a mean shift (a final stretch
turns ``clip(I + 0.15)`` into a contrast gain). ``stretch=True`` reproduces the original's two
stretches for users who want them.

MATLAB conventions kept: ``imfilter(..., 'replicate')`` is a correlation with replicated borders;
``imgaussfilt(sigma)`` uses a (2*ceil(2*sigma)+1)-tap kernel; ``fspecial('disk')`` is the exact
pixel/disk overlap; colour conversions follow MATLAB's definitions (sRGB, D65 white point
[0.9504, 1, 1.0888]; ``rgb2ycbcr`` with BT.601 studio ranges; ``rgb2gray`` weights 0.2989, 0.5870,
0.1140). Randomness comes from numpy, so no output can equal MATLAB's bit for bit; types 6, 15 and
22 are approximations even in distribution (see the table's notes).
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np
from scipy import ndimage

from .errors import InvalidInputError

RGBImage = np.ndarray  # float64 (H, W, 3) in [0, 1]
Distortion = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

# The five parameter values of each type, level 1..5 (KADID-10k's imdist_generator).
LEVEL_VALUES: dict[int, tuple[float, ...]] = {
    1: (0.1, 0.5, 1, 2, 5),
    2: (1, 2, 4, 6, 8),
    3: (1, 2, 4, 6, 10),
    4: (1, 3, 6, 8, 12),
    5: (1, 3, 6, 8, 12),
    6: (64, 48, 32, 16, 8),
    7: (0.4, 0.2, 0.1, 0, -0.4),
    8: (1, 2, 3, 6, 9),
    9: (16, 32, 45, 120, 400),
    10: (43, 36, 24, 7, 4),
    11: (0.001, 0.002, 0.003, 0.005, 0.01),
    12: (0.0001, 0.0005, 0.001, 0.002, 0.003),
    13: (0.001, 0.005, 0.01, 0.02, 0.03),
    14: (0.001, 0.005, 0.01, 0.02, 0.05),
    15: (0.01, 0.03, 0.05, 0.1, 0.15),
    16: (0.1, 0.2, 0.4, 0.7, 1.1),
    17: (0.05, 0.1, 0.2, 0.4, 0.8),
    18: (0.15, 0.08, 0, -0.08, -0.15),
    19: (0.05, 0.1, 0.2, 0.5, 1),
    20: (20, 40, 60, 80, 100),
    21: (0.01, 0.05, 0.1, 0.2, 0.5),
    22: (20, 16, 13, 10, 7),
    23: (2, 4, 6, 8, 10),
    24: (1, 2, 3, 6, 12),
    25: (0.3, 0.15, 0, -0.4, -0.6),
}


def level_value(type_id: int, level: int) -> float:
    return LEVEL_VALUES[type_id][level - 1]


# == MATLAB filtering conventions ===================================================================

def correlate_replicate(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``imfilter(image, kernel, 'replicate')``: correlation (not convolution) with replicated
    borders, channel by channel. ``kernel`` is 2-D with odd sides; large kernels go through the FFT
    (same result to rounding, ten times faster for the 17x17 disk)."""
    if kernel.size <= 49:
        if image.ndim == 2:
            return ndimage.correlate(image, kernel, mode="nearest")
        return np.stack([ndimage.correlate(image[..., c], kernel, mode="nearest") for c in range(image.shape[2])], -1)
    ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(image, ((ry, ry), (rx, rx)) + ((0, 0),) * (image.ndim - 2), mode="edge")
    shape = (padded.shape[0] + 2 * ry, padded.shape[1] + 2 * rx)  # a full linear convolution fits
    spectrum = np.fft.rfft2(kernel[::-1, ::-1], shape)
    if image.ndim == 3:
        spectrum = spectrum[..., None]
    full = np.fft.irfft2(np.fft.rfft2(padded, shape, axes=(0, 1)) * spectrum, shape, axes=(0, 1))
    return full[2 * ry:2 * ry + image.shape[0], 2 * rx:2 * rx + image.shape[1]]


@lru_cache(maxsize=64)
def gaussian_kernel1d(sigma: float) -> np.ndarray:
    """The 1-D factor of ``imgaussfilt(sigma)``'s kernel: 2*ceil(2*sigma)+1 taps, summing to 1."""
    radius = int(math.ceil(2 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-x ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    k.flags.writeable = False
    return k


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """``imgaussfilt(image, sigma)``: separable Gaussian, replicated borders, every channel."""
    k = gaussian_kernel1d(float(sigma))
    out = ndimage.correlate1d(image, k, axis=0, mode="nearest")
    return ndimage.correlate1d(out, k, axis=1, mode="nearest")


@lru_cache(maxsize=32)
def disk_kernel(radius: float) -> np.ndarray:
    """``fspecial('disk', radius)``: each tap is the area of its pixel square covered by the disk of
    that radius centred on the middle tap (integrated in closed form), normalised to sum 1."""
    r = float(radius)
    n = int(math.ceil(r - 0.5))

    def arc(a: float, b: float) -> float:  # integral of sqrt(r^2 - x^2) from a to b, |a|, |b| <= r
        def antiderivative(x: float) -> float:
            return 0.5 * (x * math.sqrt(max(r * r - x * x, 0.0)) + r * r * math.asin(max(-1.0, min(1.0, x / r))))
        return antiderivative(b) - antiderivative(a)

    def covered(x0: float, x1: float, y0: float, y1: float) -> float:
        lo, hi = max(x0, -r), min(x1, r)
        if lo >= hi:
            return 0.0
        cuts = {lo, hi}
        for y in (y0, y1):  # where the circle crosses the square's top and bottom edges
            if abs(y) < r:
                c = math.sqrt(r * r - y * y)
                cuts.update(x for x in (-c, c) if lo < x < hi)
        cuts = sorted(cuts)
        area = 0.0
        for a, b in zip(cuts, cuts[1:]):  # on each piece the chord's top and bottom are each a line or the arc
            s = math.sqrt(r * r - ((a + b) / 2) ** 2)
            top_is_edge, bottom_is_edge = s > y1, -s < y0  # strict: a tangent edge still follows the arc
            if min(y1, s) <= max(y0, -s):
                continue
            top = y1 * (b - a) if top_is_edge else arc(a, b)
            bottom = y0 * (b - a) if bottom_is_edge else -arc(a, b)
            area += top - bottom
        return area

    kernel = np.array([[covered(x - 0.5, x + 0.5, y - 0.5, y + 0.5) for x in range(-n, n + 1)]
                       for y in range(-n, n + 1)])
    kernel /= kernel.sum()
    kernel.flags.writeable = False
    return kernel


def motion_kernel(length: float, angle: float) -> np.ndarray:
    """``fspecial('motion', length, angle)``'s definition: a segment of ``length`` pixels through the
    centre at ``angle`` degrees counter-clockwise; each tap weighs 1 - (distance from the pixel centre
    to the segment), zero from 1 px away; normalised. ``length`` 1 is the identity."""
    half = max(float(length) - 1.0, 0.0) / 2.0
    phi = math.radians(angle % 180.0)
    ux, uy = math.cos(phi), -math.sin(phi)  # image rows grow downwards
    n = int(math.ceil(half)) + 1
    y, x = np.mgrid[-n:n + 1, -n:n + 1].astype(np.float64)
    along = np.clip(x * ux + y * uy, -half, half)
    dist = np.hypot(x - along * ux, y - along * uy)
    kernel = np.clip(1.0 - dist, 0.0, None)
    return kernel / kernel.sum()


# == colour conversions (MATLAB's definitions, written once) ========================================

_SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805],
                         [0.2126, 0.7152, 0.0722],
                         [0.0193, 0.1192, 0.9505]])
_XYZ_TO_SRGB = np.linalg.inv(_SRGB_TO_XYZ)
_D65 = np.array([0.9504, 1.0, 1.0888])  # MATLAB's whitepoint('d65')
_LAB_DELTA = 6.0 / 29.0

_YCBCR = np.array([[65.481, 128.553, 24.966],
                   [-37.797, -74.203, 112.0],
                   [112.0, -93.786, -18.214]]) / 255.0
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0]) / 255.0
_YCBCR_INV = np.linalg.inv(_YCBCR)
_GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140])


def _srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    return np.where(rgb <= 0.04045, rgb / 12.92, ((np.maximum(rgb, 0.04045) + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(lin: np.ndarray) -> np.ndarray:
    return np.where(lin <= 0.0031308, lin * 12.92, 1.055 * np.maximum(lin, 0.0031308) ** (1 / 2.4) - 0.055)


def rgb2lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> CIE L*a*b* (L in [0, 100]), D65 white as MATLAB's ``rgb2lab``."""
    xyz = _srgb_to_linear(rgb) @ _SRGB_TO_XYZ.T / _D65
    f = np.where(xyz > _LAB_DELTA ** 3, np.cbrt(xyz), xyz / (3 * _LAB_DELTA ** 2) + 4.0 / 29.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], -1)


def lab2rgb(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* -> sRGB, the inverse of ``rgb2lab``; out-of-gamut colours are not clipped."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], -1)
    xyz = np.where(f > _LAB_DELTA, f ** 3, 3 * _LAB_DELTA ** 2 * (f - 4.0 / 29.0)) * _D65
    return _linear_to_srgb(xyz @ _XYZ_TO_SRGB.T)


def rgb2ycbcr(rgb: np.ndarray) -> np.ndarray:
    """MATLAB's ``rgb2ycbcr`` for doubles: Y in [16, 235]/255, Cb and Cr in [16, 240]/255."""
    return rgb @ _YCBCR.T + _YCBCR_OFFSET


def ycbcr2rgb(ycbcr: np.ndarray) -> np.ndarray:
    """The inverse of ``rgb2ycbcr``; not clipped."""
    return (ycbcr - _YCBCR_OFFSET) @ _YCBCR_INV.T


def rgb2gray(rgb: np.ndarray) -> np.ndarray:
    """MATLAB's ``rgb2gray``: 0.2989 R + 0.5870 G + 0.1140 B."""
    return rgb @ _GRAY_WEIGHTS


def rgb2hsv(rgb: np.ndarray) -> np.ndarray:
    """Hue in [0, 1), saturation (max - min) / max (0 for black), value max -- MATLAB's ``rgb2hsv``."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    s = np.divide(delta, v, out=np.zeros_like(v), where=v > 0)
    safe = np.where(delta > 0, delta, 1.0)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, v], -1)


def hsv2rgb(hsv: np.ndarray) -> np.ndarray:
    """The standard sextant formula (MATLAB's ``hsv2rgb``); a negative saturation is extrapolated
    past grey towards the complementary hue, so values may leave [0, 1]."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    h6 = (h % 1.0) * 6.0
    sextant = np.floor(h6).astype(int) % 6
    frac = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.empty(hsv.shape, dtype=np.float64)
    for c in range(3):
        out[..., c] = np.choose(sextant, [choice[c] for choice in choices])
    return out


# == shared helpers =================================================================================

def tone_curve(x: np.ndarray, points: list[tuple[float, float]]) -> np.ndarray:
    """The original's ``curves``: an interpolating not-a-knot spline through (0, 0), ``points`` and
    (1, 1), clamped to [0, 1] (three points give a parabola, four a single cubic)."""
    from scipy.interpolate import CubicSpline

    knots = [(0.0, 0.0), *points, (1.0, 1.0)]
    spline = CubicSpline([k[0] for k in knots], [k[1] for k in knots], bc_type="not-a-knot")
    return np.clip(spline(x), 0.0, 1.0)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _from_uint8(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float64) / 255.0


def minmax_stretch(x: np.ndarray) -> np.ndarray:
    """``mapmm``: a global min-max stretch to [0, 1]; a constant array is returned clipped."""
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-12:
        return np.clip(x, 0.0, 1.0)
    return (x - lo) / (hi - lo)


def _shift_replicate(channel: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[y, x] = channel[y - dy, x - dx], borders replicated."""
    h, w = channel.shape
    rows = np.clip(np.arange(h) - dy, 0, h - 1)
    cols = np.clip(np.arange(w) - dx, 0, w - 1)
    return channel[rows][:, cols]


def _keys_weights(t: np.ndarray) -> list[np.ndarray]:
    """Cubic-convolution (Keys, a = -0.5, MATLAB's 'cubic') weights of the taps at -1, 0, 1, 2."""
    a = -0.5

    def near(d):  # |d| <= 1
        return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1

    def far(d):  # 1 < |d| < 2
        return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a

    return [far(1 + t), near(t), near(1 - t), far(2 - t)]


def cubic_sample(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bicubic (Keys) samples of an (H, W, C) image at fractional (rows, cols), borders replicated."""
    h, w, channels = image.shape
    planes = [np.ascontiguousarray(image[..., c]).ravel() for c in range(channels)]
    r0, c0 = np.floor(rows), np.floor(cols)
    wr, wc = _keys_weights(rows - r0), _keys_weights(cols - c0)
    r0, c0 = r0.astype(np.intp), c0.astype(np.intp)
    col_index = [np.clip(c0 + j - 1, 0, w - 1) for j in range(4)]
    out = np.zeros((channels,) + rows.shape, dtype=np.float64)
    for i in range(4):
        row_start = np.clip(r0 + i - 1, 0, h - 1) * w
        for j in range(4):
            index, weight = row_start + col_index[j], wr[i] * wc[j]
            for c, plane in enumerate(planes):  # one flat gather per channel is the fast path in numpy
                out[c] += weight * plane.take(index)
    return np.moveaxis(out, 0, -1)


def _resize_nearest_index(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """MATLAB ``imresize(..., 'nearest')``'s source index of each output index (0-based)."""
    u = (np.arange(1, n_out + 1) / scale) + 0.5 * (1 - 1 / scale)
    return np.clip(np.floor(u + 0.5).astype(int) - 1, 0, n_in - 1)


def _pil_roundtrip(image: np.ndarray, **save_args) -> np.ndarray:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(to_uint8(image)).save(buffer, **save_args)
    buffer.seek(0)
    with PILImage.open(buffer) as decoded:
        return _from_uint8(decoded.convert("RGB"))


# == the 25 distortions ==============================================================================

def blur_gaussian(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """1. Gaussian blur: ``imgaussfilt`` with sigma 0.1 ... 5."""
    return gaussian_blur(image, level_value(1, level))


def blur_lens(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """2. Lens blur: a disk kernel of radius 1 ... 8, replicated borders."""
    return correlate_replicate(image, disk_kernel(level_value(2, level)))


def blur_motion(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """3. Motion blur: a line kernel of length 1 ... 10 at a uniform random angle in [0, 180)."""
    angle = float(rng.uniform(0.0, 180.0))
    return correlate_replicate(image, motion_kernel(level_value(3, level), angle))


def color_diffusion(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """4. Colour diffusion: a*, b* blurred with sigma 1.5a + 2 and multiplied by a; L kept."""
    amount = level_value(4, level)
    lab = rgb2lab(image)
    lab[..., 1:] = gaussian_blur(lab[..., 1:], 1.5 * amount + 2.0) * amount
    return np.clip(lab2rgb(lab), 0.0, 1.0)


def color_shift(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """5. Colour shift: the green channel moved by ``amount`` px in a random direction, blended in
    where the image has edges (smoothed Sobel magnitude of the grey image, stretched, floored at 0.1,
    then stretched between its 1st and 99th percentiles)."""
    amount = level_value(5, level)
    grey = rgb2gray(image)
    sobel = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
    magnitude = np.hypot(correlate_replicate(grey, sobel), correlate_replicate(grey, sobel.T))
    weight = np.clip(minmax_stretch(gaussian_blur(magnitude, 4.0)), 0.1, 1.0)
    lo, hi = np.percentile(weight, [1.0, 99.0])
    weight = np.clip((weight - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.ones_like(weight)
    direction = rng.standard_normal(2)
    direction /= max(float(np.linalg.norm(direction)), 1e-12)
    dy, dx = (int(v) for v in np.round(direction * amount))
    out = image.copy()
    out[..., 1] = _shift_replicate(image[..., 1], dy, dx) * weight + image[..., 1] * (1.0 - weight)
    return out


def color_quantization(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """6. Colour quantization (approximate): a median-cut palette of n colours, applied with
    Floyd-Steinberg dithering (Pillow), for MATLAB's minimum-variance ``rgb2ind(I, n)``."""
    from PIL import Image as PILImage

    n = int(level_value(6, level))
    source = PILImage.fromarray(to_uint8(image))
    palette = np.asarray(source.quantize(colors=n, method=PILImage.Quantize.MEDIANCUT,
                                         dither=PILImage.Dither.NONE).getpalette()[:3 * n], dtype=np.uint8)
    palette = palette.reshape(-1, 3)
    # every one of the 256 palette slots holds one of the n colours, so dithering cannot pick a stray one
    padded = np.resize(palette, (256, 3))
    holder = PILImage.new("P", (1, 1))
    holder.putpalette(padded.reshape(-1).tolist())
    quantized = source.quantize(palette=holder, dither=PILImage.Dither.FLOYDSTEINBERG)
    return _from_uint8(quantized.convert("RGB"))


def color_saturation_hsv(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """7. Colour saturation 1: HSV saturation multiplied by 0.4 ... -0.4."""
    hsv = rgb2hsv(image)
    hsv[..., 1] *= level_value(7, level)
    return np.clip(hsv2rgb(hsv), 0.0, 1.0)


def color_saturation_lab(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """8. Colour saturation 2: a*, b* multiplied by 1 ... 9."""
    lab = rgb2lab(image)
    lab[..., 1:] *= level_value(8, level)
    return np.clip(lab2rgb(lab), 0.0, 1.0)


def jpeg2000(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """9. JPEG2000 at compression ratio 16 ... 400 (OpenJPEG through Pillow, irreversible 9/7
    wavelet with the colour transform, one quality layer at the target rate)."""
    ratio = level_value(9, level)
    resolutions = max(1, min(6, int(math.log2(min(image.shape[:2]))) - 1))
    return _pil_roundtrip(image, format="JPEG2000", quality_mode="rates", quality_layers=[ratio],
                          irreversible=True, mct=1, num_resolutions=resolutions)


def jpeg(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """10. JPEG at quality 43 ... 4 (libjpeg through Pillow, 4:2:0 chroma)."""
    return _pil_roundtrip(image, format="JPEG", quality=int(level_value(10, level)), subsampling="4:2:0")


def noise_white(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """11. White noise: N(0, var) added to every RGB sample."""
    sigma = math.sqrt(level_value(11, level))
    return np.clip(image + rng.normal(0.0, sigma, image.shape), 0.0, 1.0)


def noise_color_component(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """12. White noise in the colour components: N(0, var) added in YCbCr (clipped there, as
    ``imnoise`` does), back to RGB."""
    sigma = math.sqrt(level_value(12, level))
    ycbcr = np.clip(rgb2ycbcr(image) + rng.normal(0.0, sigma, image.shape), 0.0, 1.0)
    return np.clip(ycbcr2rgb(ycbcr), 0.0, 1.0)


def noise_impulse(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """13. Impulse noise: a fraction d of the samples (each channel on its own) set to 0 or 1."""
    density = level_value(13, level)
    u = rng.random(image.shape)
    out = image.copy()
    out[u < density / 2] = 0.0
    out[(u >= density / 2) & (u < density)] = 1.0
    return out


def noise_multiplicative(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """14. Multiplicative noise: I + n*I with n uniform, mean 0, variance var (``imnoise`` speckle)."""
    var = level_value(14, level)
    n = math.sqrt(12.0 * var) * (rng.random(image.shape) - 0.5)
    return np.clip(image + n * image, 0.0, 1.0)


def nonlocal_means(channel: np.ndarray, sigma: float, patch_radius: int = 2, search_radius: int = 5,
                   h_factor: float = 0.4) -> np.ndarray:
    """Non-local means (Buades et al.) of one channel with noise level ``sigma``: each pixel becomes
    the weighted mean of the pixels within ``search_radius`` whose (2r+1)^2 neighbourhoods look
    alike, weight exp(-max(d2 - 2 sigma^2, 0) / (h_factor sigma)^2)."""
    pad = search_radius + patch_radius
    # float32 halves the time; the weights and means stay within 1e-6 of float64's
    padded = np.pad(channel.astype(np.float32), pad, mode="reflect")
    h, w = channel.shape
    inner = padded[search_radius:search_radius + h + 2 * patch_radius,
                   search_radius:search_radius + w + 2 * patch_radius]
    size = 2 * patch_radius + 1
    total = np.zeros((h, w), dtype=np.float32)
    weights = np.zeros((h, w), dtype=np.float32)
    h2 = np.float32((h_factor * sigma) ** 2)
    floor = np.float32(2 * sigma ** 2)
    for dy in range(-search_radius, search_radius + 1):
        for dx in range(-search_radius, search_radius + 1):
            moved = padded[search_radius + dy:search_radius + dy + h + 2 * patch_radius,
                           search_radius + dx:search_radius + dx + w + 2 * patch_radius]
            d2 = ndimage.uniform_filter((inner - moved) ** 2, size=size, mode="nearest")
            d2 = d2[patch_radius:patch_radius + h, patch_radius:patch_radius + w]
            weight = np.exp(-np.maximum(d2 - floor, 0) / h2)
            total += weight * moved[patch_radius:patch_radius + h, patch_radius:patch_radius + w]
            weights += weight
    return (total / weights).astype(np.float64)


def denoise(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """15. Denoise (approximate): N(0, var) added and clipped, then each channel denoised by
    non-local means at the known noise level, for the original's pretrained DnCNN."""
    sigma = math.sqrt(level_value(15, level))
    noisy = np.clip(image + rng.normal(0.0, sigma, image.shape), 0.0, 1.0)
    return np.clip(np.stack([nonlocal_means(noisy[..., c], sigma) for c in range(3)], -1), 0.0, 1.0)


def brighten(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """16. Brighten: the tone curve through (0.5, 0.5 + a/2) on RGB (weight 2) and on Lab L (weight 1)."""
    point = [(0.5, 0.5 + level_value(16, level) / 2)]
    lab = rgb2lab(image)
    lab[..., 0] = tone_curve(lab[..., 0] / 100.0, point) * 100.0
    return (2.0 * tone_curve(image, point) + np.clip(lab2rgb(lab), 0.0, 1.0)) / 3.0


def darken(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """17. Darken: the tone curve through (0.5, 0.5 - a/2) on RGB."""
    return tone_curve(image, [(0.5, 0.5 - level_value(17, level) / 2)])


def mean_shift(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """18. Mean shift: I + a with a = 0.15, 0.08, 0, -0.08, -0.15 (level 3 changes nothing)."""
    return np.clip(image + level_value(18, level), 0.0, 1.0)


def jitter(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """19. Jitter: five times, every pixel resampled (bicubic) at an offset drawn from N(0, a^2)."""
    amount = level_value(19, level)
    h, w = image.shape[:2]
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    out = image
    for _ in range(5):
        dy = rng.normal(0.0, amount, (h, w))
        dx = rng.normal(0.0, amount, (h, w))
        out = cubic_sample(out, rows + dy, cols + dx)
    return np.clip(out, 0.0, 1.0)


PATCH = 16  # non-eccentricity patch side
PATCH_REACH = 8  # how far a patch may land from where it was taken
BLOCK = 32  # colour block side


def non_eccentricity(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """20. Non-eccentricity patch: n times, a random 16x16 patch of the input pasted at most 8 px
    away (each axis) from where it was taken."""
    h, w = image.shape[:2]
    out = image.copy()
    for _ in range(int(level_value(20, level))):
        y = int(rng.integers(PATCH_REACH, h - PATCH - PATCH_REACH + 1))
        x = int(rng.integers(PATCH_REACH, w - PATCH - PATCH_REACH + 1))
        dy, dx = (int(v) for v in rng.integers(-PATCH_REACH, PATCH_REACH + 1, 2))
        out[y + dy:y + dy + PATCH, x + dx:x + dx + PATCH] = image[y:y + PATCH, x:x + PATCH]
    return out


def pixelate(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """21. Pixelate: nearest-neighbour downscale by z = 0.95 - s^0.6, nearest upscale back."""
    z = 0.95 - level_value(21, level) ** 0.6
    h, w = image.shape[:2]
    small_h, small_w = max(1, math.ceil(z * h)), max(1, math.ceil(z * w))
    down_r, down_c = _resize_nearest_index(h, small_h, z), _resize_nearest_index(w, small_w, z)
    up_r = _resize_nearest_index(small_h, h, h / small_h)
    up_c = _resize_nearest_index(small_w, w, w / small_w)
    return image[down_r][:, down_c][up_r][:, up_c]


def multi_otsu_thresholds(samples: np.ndarray, n_thresholds: int, bins: int = 256) -> np.ndarray:
    """``n_thresholds`` thresholds maximising Otsu's between-class variance over a ``bins``-bin
    histogram of ``samples`` (on their own range), found exactly by dynamic programming. A threshold
    is the upper edge of the last bin of its class."""
    lo, hi = float(samples.min()), float(samples.max())
    if hi - lo <= 1e-12:
        return np.full(n_thresholds, hi)
    counts, edges = np.histogram(samples, bins=bins, range=(lo, hi))
    p = counts / counts.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    cum_p = np.concatenate([[0.0], np.cumsum(p)])
    cum_m = np.concatenate([[0.0], np.cumsum(p * centres)])
    # score[i, j]: (mass * mean)^2 / mass of the class holding bins i .. j-1 (i < j)
    mass = cum_p[None, :] - cum_p[:, None]
    moment = cum_m[None, :] - cum_m[:, None]
    valid = np.triu(np.ones((bins + 1, bins + 1), dtype=bool), 1)
    score = np.where(valid & (mass > 0), moment ** 2 / np.where(mass > 0, mass, 1.0), 0.0)
    score[~valid] = -np.inf
    best = score[0].copy()  # best[j]: one class over bins 0 .. j-1
    choices = []
    for _ in range(n_thresholds):
        candidates = best[:, None] + score  # previous classes end at i, the new one spans i .. j-1
        choices.append(np.argmax(candidates, axis=0))
        best = candidates[choices[-1], np.arange(bins + 1)]
    cuts, end = [], bins
    for choice in reversed(choices):
        end = int(choice[end])
        cuts.append(end)
    return edges[np.array(sorted(cuts))]


def quantization(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """22. Quantization (approximate): N Otsu thresholds over all RGB samples (exact multi-Otsu on a
    256-bin histogram, for MATLAB's ``multithresh`` search); each sample becomes the threshold at or
    below it (the first threshold below the first one)."""
    thresholds = multi_otsu_thresholds(image.ravel(), int(level_value(22, level)))
    values = np.concatenate([thresholds[:1], thresholds])
    return values[np.searchsorted(thresholds, image, side="left")]


def color_block(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """23. Colour block: n opaque 32x32 squares of a uniform random colour at random positions."""
    h, w = image.shape[:2]
    out = image.copy()
    for _ in range(int(level_value(23, level))):
        y, x = int(rng.integers(0, h - BLOCK + 1)), int(rng.integers(0, w - BLOCK + 1))
        out[y:y + BLOCK, x:x + BLOCK] = rng.random(3)
    return out


def sharpen(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """24. High sharpen: ``imsharpen`` (unsharp mask of Lab L, Gaussian sigma 3) with amount 1 ... 12."""
    lab = rgb2lab(image)
    lightness = lab[..., 0]
    lab[..., 0] = lightness + level_value(24, level) * (lightness - gaussian_blur(lightness, 3.0))
    return np.clip(lab2rgb(lab), 0.0, 1.0)


def contrast_change(image: RGBImage, level: int, rng: np.random.Generator) -> RGBImage:
    """25. Contrast change: the tone curve through (0.25, 0.25 - a/4) and (0.75, 0.75 + a/4) on RGB
    (level 3, a = 0, is the identity)."""
    a = level_value(25, level)
    return tone_curve(image, [(0.25, 0.25 - a / 4), (0.75, 0.75 + a / 4)])


# == the table ========================================================================================

@dataclass(frozen=True)
class DistortionType:
    """One KADID-10k distortion type.

    ``ordered``: quality falls from level 1 to level 5 (all but mean shift and contrast change,
    whose level 3 changes nothing). ``random``: draws from the generator. ``fidelity``: "exact" when
    the algorithm is the original's (random draws and codecs necessarily differ from MATLAB's),
    "approximate" when a different algorithm stands in; ``note`` says how."""

    id: int
    name: str
    slug: str
    group: str
    parameter: str
    values: tuple[float, ...]
    ordered: bool
    random: bool
    fidelity: str
    note: str
    min_size: int = 1
    function: Distortion = field(repr=False, compare=False, default=None)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("function")
        out["values"] = list(self.values)
        return out


def _t(id_, name, group, parameter, function, *, ordered=True, random=False, fidelity="exact", note="",
       min_size=1) -> DistortionType:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return DistortionType(id_, name, slug, group, parameter, LEVEL_VALUES[id_], ordered, random, fidelity, note,
                          min_size, function)


_RANDOM_NOTE = "random draws come from numpy, not MATLAB's stream"
DISTORTION_TYPES: tuple[DistortionType, ...] = (
    _t(1, "Gaussian blur", "blur", "sigma", blur_gaussian, note="imgaussfilt kernel, replicated borders"),
    _t(2, "Lens blur", "blur", "radius", blur_lens, note="disk kernel = exact pixel/disk overlap"),
    _t(3, "Motion blur", "blur", "length", blur_motion, random=True,
       note="line kernel from fspecial('motion')'s definition (taps at the segment ends may differ "
            f"slightly from MATLAB's rasterisation); {_RANDOM_NOTE}"),
    _t(4, "Colour diffusion", "colour", "amount", color_diffusion),
    _t(5, "Colour shift", "colour", "amount", color_shift, random=True,
       note="shifted green channel's borders replicated; " + _RANDOM_NOTE),
    _t(6, "Colour quantization", "colour", "colours", color_quantization, fidelity="approximate",
       note="Pillow median-cut palette + Floyd-Steinberg dithering for MATLAB's minimum-variance rgb2ind"),
    _t(7, "Colour saturation 1", "colour", "factor", color_saturation_hsv),
    _t(8, "Colour saturation 2", "colour", "factor", color_saturation_lab),
    _t(9, "JPEG2000", "compression", "ratio", jpeg2000,
       note="OpenJPEG (Pillow) at the same compression ratio; MATLAB's encoder differs, so the bytes do"),
    _t(10, "JPEG", "compression", "quality", jpeg, note="libjpeg (Pillow), 4:2:0 chroma"),
    _t(11, "White noise", "noise", "variance", noise_white, random=True, note=_RANDOM_NOTE),
    _t(12, "White noise in colour component", "noise", "variance", noise_color_component, random=True,
       note=_RANDOM_NOTE),
    _t(13, "Impulse noise", "noise", "density", noise_impulse, random=True, note=_RANDOM_NOTE),
    _t(14, "Multiplicative noise", "noise", "variance", noise_multiplicative, random=True, note=_RANDOM_NOTE),
    _t(15, "Denoise", "noise", "variance", denoise, random=True, fidelity="approximate",
       note="non-local means (5x5 patches, 11x11 search, h = 0.4 sigma) per channel for the pretrained DnCNN; "
            + _RANDOM_NOTE),
    _t(16, "Brighten", "brightness", "amount", brighten),
    _t(17, "Darken", "brightness", "amount", darken),
    _t(18, "Mean shift", "brightness", "shift", mean_shift, ordered=False,
       note="levels run from +0.15 through 0 (level 3, no change) to -0.15"),
    _t(19, "Jitter", "spatial", "amount", jitter, random=True,
       note="bicubic = Keys cubic convolution, replicated borders; " + _RANDOM_NOTE),
    _t(20, "Non-eccentricity patch", "spatial", "patches", non_eccentricity, random=True,
       note="patches copied from the input; " + _RANDOM_NOTE, min_size=PATCH + 2 * PATCH_REACH),
    _t(21, "Pixelate", "spatial", "s", pixelate, note="MATLAB imresize 'nearest' index rule, both ways"),
    _t(22, "Quantization", "spatial", "thresholds", quantization, fidelity="approximate",
       note="exact multi-Otsu on a 256-bin histogram (dynamic programming) for MATLAB's multithresh search"),
    _t(23, "Colour block", "spatial", "blocks", color_block, random=True, note=_RANDOM_NOTE, min_size=BLOCK),
    _t(24, "High sharpen", "sharpness/contrast", "amount", sharpen, note="imsharpen: Lab L, sigma 3"),
    _t(25, "Contrast change", "sharpness/contrast", "amount", contrast_change, ordered=False,
       note="levels run from +0.3 (more contrast) through 0 (level 3, no change) to -0.6"),
)
_BY_ID = {t.id: t for t in DISTORTION_TYPES}
_BY_SLUG = {t.slug: t for t in DISTORTION_TYPES}
APPROXIMATE_TYPES = tuple(t.id for t in DISTORTION_TYPES if t.fidelity == "approximate")


def distortion_type(key: int | str) -> DistortionType:
    """A type by number (1..25, also as text) or by slug ('gaussian-blur', 'jpeg2000', ...)."""
    text = str(key).strip().lower()
    if text.isdigit() and int(text) in _BY_ID:
        return _BY_ID[int(text)]
    if text in _BY_SLUG:
        return _BY_SLUG[text]
    raise InvalidInputError(f"unknown distortion type '{key}': expected a number 1..25 or a name such as "
                            "'gaussian-blur' or 'jpeg' (see docs/distortions.md)")


def parse_selection(text: str, what: str, last: int, names: bool = False) -> list[int]:
    """'1,3,10-12' -> [1, 3, 10, 11, 12]: numbers (and ranges) between 1 and ``last``; with ``names``,
    type slugs too. Sorted, without repeats."""
    chosen: set[int] = set()
    for part in (p.strip() for p in str(text).split(",")):
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if match:
            first, end = int(match.group(1)), int(match.group(2))
            if not 1 <= first <= end <= last:
                raise InvalidInputError(f"{what} range '{part}' is not within 1-{last} (write e.g. 1-{last})")
            chosen.update(range(first, end + 1))
        elif part.isdigit() and 1 <= int(part) <= last:
            chosen.add(int(part))
        elif names and part and not part.isdigit():
            chosen.add(distortion_type(part).id)
        else:
            raise InvalidInputError(f"{what} '{part or text}' is not a number 1..{last} or a range such as 1-{last} "
                                    f"(got '{text}')")
    return sorted(chosen)


# == seeds and the public entry point =================================================================

def image_digest(image: np.ndarray) -> bytes:
    """A content hash of an image, rounded to 16 bits first so that an 8-bit picture hashes the same
    whether it arrives as float32 (``io.images``) or float64 (``uint8 / 255``)."""
    pixels = np.round(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 65535.0).astype("<u2")
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).digest()


def distortion_rng(seed: int, digest: bytes, type_id: int) -> np.random.Generator:
    """The generator of one (image, type) under ``seed``, independent of the order in which images,
    types and levels are produced and of the process producing them.

    The five levels of a type start from the same generator (common random numbers): every random
    type draws the same things in the same order at every level, so level 4's noise is level 3's
    scaled up, its patches and blocks extend level 3's, its motion-blur angle and colour-shift
    direction are level 3's. Each level keeps the distribution the original gives it, and the levels
    of one image differ in strength only."""
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words, int(type_id)]))


def check_image(image: np.ndarray) -> np.ndarray:
    """float64 (H, W, 3) in [0, 1], or a one-line error."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise InvalidInputError(f"expected an RGB image of shape (H, W, 3), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInputError(f"expected float RGB in [0, 1], got {array.dtype} (divide 8-bit images by 255)")
    array = array.astype(np.float64)
    if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
        raise InvalidInputError("expected float RGB in [0, 1], found values outside it (or NaN); clip the image first")
    return array


def check_size(height: int, width: int, kind: DistortionType, name: str = "the image") -> None:
    if min(height, width) < kind.min_size:
        raise InvalidInputError(f"{name} is {width}x{height} but {kind.name.lower()} (type {kind.id}) needs at least "
                                f"{kind.min_size}x{kind.min_size}; use larger images or leave type {kind.id} out "
                                "(--types)")


def distort(image: np.ndarray, type: int | str, level: int, seed_or_rng: int | np.random.Generator | None = None,
            *, stretch: bool = False) -> np.ndarray:
    """Distortion ``type`` (1..25 or its slug) at ``level`` (1..5) of a float RGB (H, W, 3) image in
    [0, 1]; returns float64 of the same shape in [0, 1].

    ``seed_or_rng``: an int seed makes the result depend only on (seed, image content, type, level)
    -- the rule ``iqa distort --seed`` follows (``distortion_rng``: the levels of one type share their
    random draws); a Generator is used as given; None draws fresh entropy.
    ``stretch``: the original's min-max stretch of the input and of the result (``mapmm``) instead
    of clipping the result (the default; see the module docstring)."""
    kind = distortion_type(type)
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 1 <= level <= 5:
        raise InvalidInputError(f"level must be an integer 1..5, got {level!r}")
    x = check_image(image)
    check_size(x.shape[0], x.shape[1], kind)
    if isinstance(seed_or_rng, np.random.Generator):
        rng = seed_or_rng
    elif seed_or_rng is None:
        rng = np.random.default_rng()
    else:
        if isinstance(seed_or_rng, bool) or not isinstance(seed_or_rng, (int, np.integer)) or seed_or_rng < 0:
            raise InvalidInputError(f"seed must be a non-negative integer, got {seed_or_rng!r}")
        rng = distortion_rng(int(seed_or_rng), image_digest(x), kind.id)
    if stretch:
        x = minmax_stretch(x)
    out = kind.function(x, int(level), rng)
    return minmax_stretch(out) if stretch else np.clip(out, 0.0, 1.0)
