"""Reading image files into arrays the models accept.

Every loader returns RGB in [0, 1] so callers never care whether a file was grey, palette,
RGBA or 16-bit. Errors name the file and say what to do.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InvalidInputError, IQAWarning
from .files import require_regular_file

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


# warnings.catch_warnings swaps process-wide state: readers on several threads take turns around it.
_HEADER_LOCK = threading.Lock()
_WARNED_LARGE: set[str] = set()  # files already reported as over PIL's warning limit (once each)


def _open_header(path: Path) -> Image.Image:
    """Image.open (the header only) of a regular file. PIL's DecompressionBombWarning for an image
    between its size limits becomes one IQAWarning line naming the file; above the hard limit,
    one InvalidInputError."""
    require_regular_file(path, "an image file")  # a FIFO would block, /dev/zero never ends
    with _HEADER_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            img = Image.open(path)
        except UnidentifiedImageError:
            raise InvalidInputError(f"{path}: not an image PIL can read (expected PNG, JPEG, BMP, TIFF or "
                                    "WebP)") from None
        except Image.DecompressionBombError as exc:
            raise _too_large(path, exc) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise InvalidInputError(f"{path}: damaged or truncated image ({exc}); re-export the file") from None
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            if str(path) in _WARNED_LARGE:
                continue
            _WARNED_LARGE.add(str(path))
            warnings.warn(IQAWarning(f"{path}: {img.width}x{img.height} is {img.width * img.height:,} pixels, over "
                                     f"PIL's decompression-bomb warning limit of {Image.MAX_IMAGE_PIXELS:,}; "
                                     "loading it anyway (it takes a lot of memory)"), stacklevel=3)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return img


def _open(path: Path) -> Image.Image:
    path = Path(path)
    img = _open_header(path)
    try:
        img.load()  # decode now so a truncated file fails here, not later in a worker
    except Image.DecompressionBombError as exc:
        raise _too_large(path, exc) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInputError(f"{path}: damaged or truncated image ({exc}); re-export the file") from None
    return img


def _too_large(path: Path, exc: Exception) -> InvalidInputError:
    """PIL refuses images above Image.MAX_IMAGE_PIXELS (a decompression-bomb guard)."""
    detail = str(exc).split(", could be")[0]  # "Image size (N pixels) exceeds limit of M pixels"
    return InvalidInputError(f"{path}: too large to open ({detail}); downscale or crop the image")


def _to_float_rgba(img: Image.Image) -> np.ndarray:
    """(H, W, 4) float32 in [0, 1], whatever the file's mode and bit depth."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / peak, 0.0, 1.0).astype(np.float32)
        return np.dstack([grey, grey, grey, np.ones_like(grey)])
    if img.mode == "F":
        grey = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        return np.dstack([grey, grey, grey, np.ones_like(grey)])
    rgba = img.convert("RGBA")  # handles L, LA, P (with transparency), RGB, CMYK, 1
    return np.asarray(rgba, dtype=np.float32) / 255.0


def load_image_rgba(path: str | Path) -> np.ndarray:
    """(H, W, 4) float32 in [0, 1]; alpha is 1 where the file has none."""
    return _to_float_rgba(_open(Path(path)))


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Load an image as float32 (3, H, W) in [0, 1].

    Alpha is dropped (not composited): perceptual metrics compare the colour a renderer wrote.
    ``size`` (H, W) resizes with bicubic filtering, as the LPIPS tools do.
    """
    img = _open(Path(path))
    if size is not None and (img.height, img.width) != tuple(size):
        if img.mode not in ("RGB", "RGBA", "L"):
            img = Image.fromarray((_to_float_rgba(img) * 255).round().astype(np.uint8), "RGBA")
        img = img.resize((size[1], size[0]), Image.BICUBIC)
    rgb = _to_float_rgba(img)[..., :3]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


# 8-bit modes PIL converts to RGB with the same values as the float path (alpha dropped, not composited)
_EIGHT_BIT_MODES = frozenset({"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr"})


def load_image_uint8(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8, the representation the patch store, the image cache and the BAPPS
    baselines use. 8-bit files convert directly (about 10x faster than through floats for BMP);
    16-bit and float files go through load_image_rgba's scaling."""
    img = _open(Path(path))
    if img.mode in _EIGHT_BIT_MODES:
        return np.array(img.convert("RGB"), dtype=np.uint8)
    rgb = _to_float_rgba(img)[..., :3]
    return (rgb * 255.0).round().astype(np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) from the header only."""
    with _open_header(Path(path)) as img:
        return img.height, img.width


RAW_MAP_SUFFIXES = {".npy": "NPY", ".tif": "TIFF-F", ".tiff": "TIFF-F"}  # the float distances themselves


def heatmap_format(path: str | Path, option: str = "--spatial-map") -> str:
    """How a heat-map file name asks to be written: 'NPY' or 'TIFF-F' (raw float32 distances), or the
    PIL format of a colour image (.png, .jpg, .webp, ...). Other names are refused before any work."""
    suffix = Path(path).suffix.lower()
    if suffix in RAW_MAP_SUFFIXES:
        return RAW_MAP_SUFFIXES[suffix]
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise InvalidInputError(f"{path}: {option} writes an image; give a file name ending in .png (or .jpg, .webp; "
                                f".npy or .tif for raw float maps), not '{suffix or 'no suffix'}'")
    return fmt


def colorize(distance_map: np.ndarray, vmax: float | None = None) -> tuple[np.ndarray, float]:
    """(H, W) distances -> (H, W, 3) uint8 inferno colours, and the value shown white-yellow
    (``vmax``, default the map's maximum; 0 is black)."""
    from matplotlib import colormaps

    d = np.asarray(distance_map, dtype=np.float64)
    top = float(vmax) if vmax else float(np.nanmax(d)) if d.size else 0.0
    scaled = np.clip(d / top, 0, 1) if top > 0 else np.zeros_like(d)
    return (colormaps["inferno"](scaled)[..., :3] * 255).round().astype(np.uint8), top


def with_colorbar(rgb: np.ndarray, top: float) -> np.ndarray:
    """The heat map with a colour bar strip on its right: the inferno scale from 0 (bottom) to ``top``,
    labelled at 0, top/2 and top. The map keeps its pixels at (0, 0)-(W, H)."""
    from matplotlib import colormaps
    from PIL import ImageDraw, ImageFont

    h = rgb.shape[0]
    labels = [f"{v:.3g}" for v in (top, top / 2, 0.0)]
    font = ImageFont.load_default()
    text_w = max(int(np.ceil(font.getlength(t))) for t in labels)
    bar_w, gap = 10, 4
    strip = Image.new("RGB", (gap + bar_w + gap + text_w + gap, h), (255, 255, 255))
    ramp = colormaps["inferno"](np.linspace(1, 0, h))[:, :3]
    strip.paste(Image.fromarray((np.repeat(ramp[:, None, :], bar_w, axis=1) * 255).round().astype(np.uint8)),
                (gap, 0))
    draw = ImageDraw.Draw(strip)
    ascent = font.getbbox("0")[3]
    for text, y in zip(labels, (0, (h - ascent) // 2, h - ascent - 1)):
        draw.text((gap + bar_w + gap, max(0, y)), text, fill=(0, 0, 0), font=font)
    return np.concatenate([rgb, np.asarray(strip)], axis=1)


def save_heatmap(path: str | Path, distance_map: np.ndarray, vmax: float | None = None,
                 colorbar: bool = True) -> Path:
    """Write an (H, W) distance map as the file name asks: .npy / .tif the raw float32 distances;
    .png an inferno colour image at the image's resolution with a colour bar on its right (unless
    ``colorbar`` is False); .jpg / .webp / ... the colour image alone. Colours run from black (0) to
    white-yellow (``vmax``, default each map's own maximum: pass one value to compare maps)."""
    fmt = heatmap_format(path)
    from .files import atomic_path

    with atomic_path(path) as tmp:
        if fmt == "NPY":
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(distance_map, dtype=np.float32))
        elif fmt == "TIFF-F":
            Image.fromarray(np.asarray(distance_map, dtype=np.float32), mode="F").save(tmp, format="TIFF")
        else:
            rgb, top = colorize(distance_map, vmax)
            if colorbar and fmt == "PNG":
                rgb = with_colorbar(rgb, top)
            Image.fromarray(rgb).save(tmp, format=fmt)
    return Path(path)
