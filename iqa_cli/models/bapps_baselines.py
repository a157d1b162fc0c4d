"""The classic baselines of the LPIPS paper, on uint8 RGB images (N, H, W, 3), numpy/scipy only.

  l2_distance(colorspace="RGB")   mean((x0 - x1)^2) with x = 2u/255 - 1 in [-1, 1]
  l2_distance(colorspace="Lab")   0.5 * mean((lab0/100 - lab1/100)^2)
  dssim_distance                  (1 - SSIM) / 2: RGB on the uint8 values (data range 255),
                                  Lab with data range 100; SSIM with a 7x7 uniform window,
                                  K1 0.01, K2 0.03, sample covariance, border of 3 dropped,
                                  averaged over channels (scikit-image's defaults of the time)

They keep their published definitions and are deliberately not merged with the registry's
PSNR/SSIM (which follow Wang et al.'s reference: luma, Gaussian window, downsampling).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

from ..errors import InvalidInputError

COLORSPACES = ("Lab", "RGB")

# sRGB (linear) -> XYZ, and the D65 / 2 degree reference white (the values scikit-image uses)
_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]])
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])


# -- colour --------------------------------------------------------------------------------------
def srgb_to_lab(rgb) -> np.ndarray:
    """CIELAB (D65, 2 degree observer) of sRGB images: uint8 (..., 3) in 0..255, or floats in
    [0, 1]; float64 (..., 3) with L in [0, 100]. Same constants as skimage.color.rgb2lab."""
    arr = np.asarray(rgb)
    if arr.shape[-1:] != (3,):
        raise InvalidInputError(f"expected RGB images with 3 channels last, found shape {arr.shape}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float64) / 255.0
    else:
        arr = arr.astype(np.float64)
    linear = np.where(arr > 0.04045, ((arr + 0.055) / 1.055) ** 2.4, arr / 12.92)
    xyz = linear @ _XYZ_FROM_RGB.T
    t = xyz / _D65_WHITE
    f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16.0 / 116.0)
    lightness = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([lightness, a, b], axis=-1)


# -- baselines -----------------------------------------------------------------------------------
def _check_pair(img0, img1) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(img0), np.asarray(img1)
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
        raise InvalidInputError(f"expected two uint8 batches (N, H, W, 3) of one shape, found {a.shape} and {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise InvalidInputError(f"expected uint8 images (0..255), found {a.dtype} and {b.dtype}")
    return a, b


def check_colorspace(colorspace: str) -> str:
    for name in COLORSPACES:
        if str(colorspace).lower() == name.lower():
            return name
    raise InvalidInputError(f"--colorspace {colorspace}: choose Lab or RGB")


def l2_distance(img0, img1, colorspace: str = "Lab") -> np.ndarray:
    """(N,) L2 baseline distances between uint8 RGB batches (N, H, W, 3) (or one (H, W, 3) pair)."""
    a, b = _check_pair(img0, img1)
    if check_colorspace(colorspace) == "RGB":
        x0 = a.astype(np.float64) / 255.0 * 2.0 - 1.0
        x1 = b.astype(np.float64) / 255.0 * 2.0 - 1.0
        return np.mean((x0 - x1) ** 2, axis=(1, 2, 3))
    lab0, lab1 = srgb_to_lab(a), srgb_to_lab(b)
    return 0.5 * np.mean((lab0 / 100.0 - lab1 / 100.0) ** 2, axis=(1, 2, 3))


def ssim(x, y, data_range: float, win_size: int = 7, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """(N,) mean SSIM of batches (N, H, W, C) of floats, averaged over pixels and channels.

    Uniform win_size x win_size window, sample covariance, and the win_size//2 border (where the
    window leaves the image) dropped, as scikit-image's structural_similarity does."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 4:
        raise InvalidInputError(f"expected two (N, H, W, C) batches of one shape, found {x.shape} and {y.shape}")
    if min(x.shape[1:3]) < win_size:
        raise InvalidInputError(f"SSIM needs images of at least {win_size}x{win_size}, found "
                                f"{x.shape[1]}x{x.shape[2]}")
    size = (1, win_size, win_size, 1)  # filter rows and columns of every image and channel separately

    def box(z):
        return uniform_filter(z, size=size)

    n_px = win_size * win_size
    cov_norm = n_px / (n_px - 1)
    ux, uy = box(x), box(y)
    vx = cov_norm * (box(x * x) - ux * ux)
    vy = cov_norm * (box(y * y) - uy * uy)
    vxy = cov_norm * (box(x * y) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    return s[:, pad:s.shape[1] - pad, pad:s.shape[2] - pad, :].mean(axis=(1, 2, 3), dtype=np.float64)


def dssim_distance(img0, img1, colorspace: str = "Lab") -> np.ndarray:
    """(N,) DSSIM = (1 - SSIM) / 2 between uint8 RGB batches (N, H, W, 3)."""
    a, b = _check_pair(img0, img1)
    if check_colorspace(colorspace) == "RGB":
        return (1.0 - ssim(a, b, data_range=255.0)) / 2.0
    return (1.0 - ssim(srgb_to_lab(a), srgb_to_lab(b), data_range=100.0)) / 2.0


BASELINES = {"l2": l2_distance, "ssim": dssim_distance}
