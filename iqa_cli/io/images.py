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


def load_image_uint8(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8, the representation the patch store and the BAPPS baselines use."""
    rgb = load_image_rgba(path)[..., :3]
    return (rgb * 255.0).round().astype(np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) from the header only."""
    with _open_header(Path(path)) as img:
        return img.height, img.width


def heatmap_format(path: str | Path, option: str = "--spatial-map") -> str:
    """The PIL format a heat-map file name asks for (.png, .jpg, .tif, .webp, ...); a name that is
    not an image PIL can write is refused before any work."""
    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise InvalidInputError(f"{path}: {option} writes an image; give a file name ending in .png (or .jpg, .tif, "
                                f".webp), not '{suffix or 'no suffix'}'")
    return fmt


def save_heatmap(path: str | Path, distance_map: np.ndarray, vmax: float | None = None) -> Path:
    """Write an (H, W) distance map as a colour image at the image's resolution, in the format the
    file name asks for (inferno colormap; 0 is black, ``vmax`` -- default the map's maximum -- is
    white-yellow)."""
    fmt = heatmap_format(path)
    from matplotlib import colormaps

    from .files import atomic_path

    d = np.asarray(distance_map, dtype=np.float64)
    top = float(vmax) if vmax else float(d.max())
    scaled = np.clip(d / top, 0, 1) if top > 0 else np.zeros_like(d)
    rgb = (colormaps["inferno"](scaled)[..., :3] * 255).round().astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format=fmt)
    return Path(path)
