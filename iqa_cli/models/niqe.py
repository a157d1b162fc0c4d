"""NIQE (Mittal, Soundararajan, Bovik 2013): the official MATLAB algorithm, batched in torch.

A test image's 96x96 blocks give 36 natural-scene-statistics features each (18 at full scale, 18
at half scale); a Gaussian fitted to them is compared with the Gaussian of pristine patches
(``models/mvg.py``). Every step follows the MATLAB release (``computequality.m``), because the
AGGD shape is picked from a grid and so small departures (another grey, another resize) move
scores by more than the 4 significant digits users compare:

* grey: MATLAB ``rgb2gray`` of the uint8 image, rounded (or the Y of MATLAB's ``rgb2ycbcr``);
  float64 on the 0-255 scale, cropped to whole blocks;
* MSCN with the normalised 7x7 Gaussian (sigma 7/6) and replicated borders;
* per block, AGGD moment-matching fits on the grid 0.2:0.001:10 of the block and of its four
  neighbour products (circular shifts within the block);
* scale 2 by MATLAB's ``imresize(I, 0.5)``: bicubic widened by 1/scale for antialiasing, with
  MATLAB's contribution weights and mirror-symmetric borders (``imresize`` below; torch's own
  antialiased bicubic uses another kernel and costs about 0.3%);
* test Gaussian: NaN-ignoring mean, covariance of the complete rows (MATLAB ``nanmean``/``nancov``,
  which normalise a single row by 1, i.e. give a zero covariance);
* NIQE = sqrt(d pinv((Sigma_p + Sigma_t)/2) d^T).

All images of a batch share one size, so a folder of same-size images is one batch; the work is
torch from the grey image on (CPU or CUDA), no numpy in the per-image path. The official pristine
model ships in ``iqa_cli/data/niqe/`` (see its README for origin and licence).
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError, WeightsError
from .mvg import MVG, fit_mvg, mvg_distance
from .base import QualityMetric

BLOCK_SIZE = 96
N_FEATURES = 36
# MATLAB's rgb2gray: the first row of inv(NTSC RGB->YIQ), documented as 0.2989 / 0.5870 / 0.1140
RGB2GRAY = tuple(np.linalg.inv(np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647],
                                         [1.0, -1.106, 1.703]]))[0].tolist())
YCBCR_Y = (65.481, 128.553, 24.966)  # MATLAB rgb2ycbcr, RGB in [0, 1], plus 16
GREY_MODES = ("rgb2gray", "y")
SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))  # neighbour products: horizontal, vertical, two diagonals
ALPHA_GRID = 0.2 + 0.001 * np.arange(9801)  # 0.2:0.001:10
FEATURE_VERSION = "niqe-features-1"  # bump when the feature computation changes (MVG cache key)

PristineSource = Union[MVG, str, Path, None]


# ---------------------------------------------------------------------------------------------
# grey conversion
# ---------------------------------------------------------------------------------------------

def to_grey(img: torch.Tensor, mode: str = "rgb2gray") -> torch.Tensor:
    """(N, 3, H, W) floats in [0, 1] -> (N, H, W) float64 integers on the 0-255 scale.

    The image is first the uint8 image MATLAB would read (round(x * 255)); ``mode`` "rgb2gray" is
    MATLAB's ``rgb2gray`` (rounded), "y" the Y of MATLAB's ``rgb2ycbcr`` (16..235, rounded)."""
    if mode not in GREY_MODES:
        raise InvalidInputError(f"grey conversion {mode!r}: expected one of {', '.join(GREY_MODES)}")
    u8 = (img.to(torch.float64).clamp(0, 1) * 255).round()
    if mode == "rgb2gray":
        grey = u8[:, 0] * RGB2GRAY[0] + u8[:, 1] * RGB2GRAY[1] + u8[:, 2] * RGB2GRAY[2]
    else:
        grey = 16 + (u8[:, 0] * YCBCR_Y[0] + u8[:, 1] * YCBCR_Y[1] + u8[:, 2] * YCBCR_Y[2]) / 255
    return torch.floor(grey + 0.5)  # MATLAB rounds halves away from zero; every value is >= 0


# ---------------------------------------------------------------------------------------------
# MATLAB imresize (bicubic)
# ---------------------------------------------------------------------------------------------

def _cubic(x: torch.Tensor) -> torch.Tensor:
    """MATLAB's bicubic kernel (a = -0.5)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


@functools.lru_cache(maxsize=64)
def _contributions(in_length: int, out_length: int, scale: float, antialiasing: bool):
    """MATLAB imresize's ``contributions``: per output sample, input indices (0-based, mirrored at
    the borders as [1..n, n..1]) and normalised weights; columns that are zero everywhere dropped."""
    kernel_width = 4.0
    widen = scale < 1 and antialiasing
    if widen:
        kernel_width = kernel_width / scale
    x = torch.arange(1, out_length + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - kernel_width / 2)
    p = math.ceil(kernel_width) + 2
    indices = left[:, None] + torch.arange(p, dtype=torch.float64)[None, :]
    distance = u[:, None] - indices
    weights = scale * _cubic(scale * distance) if widen else _cubic(distance)
    weights = weights / weights.sum(dim=1, keepdim=True)
    aux = torch.cat([torch.arange(in_length), torch.arange(in_length - 1, -1, -1)])
    indices = aux[torch.remainder(indices.long() - 1, 2 * in_length)]
    keep = (weights != 0).any(dim=0)
    return weights[:, keep].contiguous(), indices[:, keep].contiguous()


def _resize_along(x: torch.Tensor, dim: int, out_length: int, scale: float, antialiasing: bool) -> torch.Tensor:
    weights, indices = _contributions(x.shape[dim], out_length, float(scale), bool(antialiasing))
    weights = weights.to(device=x.device, dtype=x.dtype)
    indices = indices.to(x.device)
    out = None
    for k in range(indices.shape[1]):  # a sum over the few taps keeps memory at one output's size
        picked = x.index_select(dim, indices[:, k])
        w = weights[:, k].reshape(-1, 1) if dim == x.ndim - 2 else weights[:, k]
        term = picked * w
        out = term if out is None else out + term
    return out


def imresize(x: torch.Tensor, scale: float | tuple[float, float] | None = None,
             size: tuple[int, int] | None = None, antialiasing: bool = True) -> torch.Tensor:
    """MATLAB's ``imresize(x, scale)`` / ``imresize(x, [h w])`` with the bicubic kernel, on the last
    two dims of ``x`` (any leading dims); float in, float out, no rounding or clamping.

    Output size ceil(scale * input) (or ``size``, with scale = size / input); antialiasing widens the
    kernel by 1/scale when shrinking; borders mirror symmetrically; the dimension with the smaller
    scale is resized first (height first on a tie), all as MATLAB does."""
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale and size")
    if not x.is_floating_point():
        raise ValueError(f"imresize expects a floating-point tensor, got {x.dtype}")
    in_h, in_w = x.shape[-2], x.shape[-1]
    if size is not None:
        out_h, out_w = int(size[0]), int(size[1])
        scales = (out_h / in_h, out_w / in_w)
    else:
        scales = (float(scale), float(scale)) if np.isscalar(scale) else (float(scale[0]), float(scale[1]))
        out_h, out_w = math.ceil(scales[0] * in_h), math.ceil(scales[1] * in_w)
    if min(scales) <= 0 or min(out_h, out_w) < 1:
        raise ValueError(f"imresize: bad scale {scales} for a {in_h}x{in_w} input")
    order = (0, 1) if scales[0] <= scales[1] else (1, 0)
    out_lengths = (out_h, out_w)
    for axis in order:
        x = _resize_along(x, x.ndim - 2 + axis, out_lengths[axis], scales[axis], antialiasing)
    return x


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _aggd_tables() -> np.ndarray:
    """(4, 9801) float64: alpha grid, rho(alpha) = G(2/a)^2/(G(1/a)G(3/a)) (increasing),
    sqrt(G(1/a)/G(3/a)) (sigma -> beta) and G(2/a)/G(1/a) (eta)."""
    from scipy.special import gamma

    a = ALPHA_GRID
    g1, g2, g3 = gamma(1 / a), gamma(2 / a), gamma(3 / a)
    return np.stack([a, g2 * g2 / (g1 * g3), np.sqrt(g1 / g3), g2 / g1])


def _aggd_fit(x: torch.Tensor, tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Moment-matching AGGD fit over the last dim: alpha, beta_l, beta_r and the grid index, (...).

    A side without samples gives NaN (MATLAB's mean of nothing) and then alpha = 0.2 (MATLAB's min
    of all-NaN differences returns the first grid point)."""
    alpha_grid, rho = tables[0], tables[1]
    n = x.shape[-1]
    neg, pos = x.clamp(max=0), x.clamp(min=0)  # cheaper than boolean masks, and the same sums
    neg_sq, pos_sq = (neg * neg).sum(-1), (pos * pos).sum(-1)
    left = torch.sqrt(neg_sq / torch.count_nonzero(neg, dim=-1))
    right = torch.sqrt(pos_sq / torch.count_nonzero(pos, dim=-1))
    gam = left / right
    r_hat = ((pos.sum(-1) - neg.sum(-1)) / n) ** 2 / ((neg_sq + pos_sq) / n)
    r_norm = r_hat * (gam ** 3 + 1) * (gam + 1) / (gam ** 2 + 1) ** 2
    # rho is increasing: the nearest grid point is one of the two around the insertion point
    hi = torch.searchsorted(rho, r_norm.contiguous()).clamp(1, rho.numel() - 1)
    lo = hi - 1
    index = torch.where((rho[lo] - r_norm) ** 2 <= (rho[hi] - r_norm) ** 2, lo, hi)  # ties: first, as argmin
    index = torch.where(torch.isnan(r_norm), torch.zeros_like(index), index)
    factor = tables[2][index]
    return alpha_grid[index], left * factor, right * factor, index


def _mscn(img: torch.Tensor, window: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """MSCN coefficients and the local sigma map of (N, H, W), replicated borders (MATLAB imfilter)."""
    mu = _filter_replicate(img, window)
    sigma = torch.sqrt((_filter_replicate(img * img, window) - mu * mu).abs())
    return (img - mu) / (sigma + 1), sigma


def _filter_replicate(x: torch.Tensor, window: np.ndarray) -> torch.Tensor:
    """Correlation of (N, H, W) with a small 2-D window, replicated borders, as a sum of shifted
    copies: float64 convolution has no fast kernel on CPU, and this is cheap for 7x7.

    The terms are added in row-major window order, each product rounded before the sum -- the
    order of scipy.ndimage's filters, so the result is bit for bit theirs. It matters: where the
    image is flat, I - mu is rounding noise whose sign moves pixels between the AGGD's left and
    right halves, and flat skies then shift NIQE in the 5th digit."""
    k = window.shape[-1]
    pad = k // 2
    h, w = x.shape[-2], x.shape[-1]
    padded = F.pad(x.unsqueeze(1), (pad, pad, pad, pad), mode="replicate").squeeze(1)
    out = torch.zeros_like(x)
    term = torch.empty_like(x)  # reused: a fresh buffer per term costs page faults on CPU
    for i in range(k):
        for j in range(k):
            torch.mul(padded[..., i:i + h, j:j + w], float(window[i, j]), out=term)
            out.add_(term)
    return out


def _blocks(x: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    """(N, H, W) with H, W multiples of the block -> (N, n_blocks, bh, bw), blocks row-major."""
    n, h, w = x.shape
    return x.reshape(n, h // bh, bh, w // bw, bw).permute(0, 1, 3, 2, 4).reshape(n, -1, bh, bw)


def _scale_features(mscn: torch.Tensor, bh: int, bw: int, tables: torch.Tensor) -> torch.Tensor:
    """The 18 features of every block at one scale: (N, n_blocks, 18)."""
    blocks = _blocks(mscn, bh, bw)
    alpha, beta_l, beta_r, _ = _aggd_fit(blocks.flatten(-2), tables)
    features = [alpha, (beta_l + beta_r) / 2]
    for shift in SHIFTS:
        product = blocks * torch.roll(blocks, shifts=shift, dims=(-2, -1))
        p_alpha, p_left, p_right, index = _aggd_fit(product.flatten(-2), tables)
        features += [p_alpha, (p_right - p_left) * tables[3][index], p_left, p_right]
    return torch.stack(features, dim=-1)


def check_niqe_size(height: int, width: int, block_size: int = BLOCK_SIZE, name: str = "images") -> None:
    if height < block_size or width < block_size:
        raise InvalidInputError(f"{name}: {width}x{height} pixels, but niqe needs at least {block_size}x{block_size} "
                                "(one block; use larger images)")


def niqe_features(grey: torch.Tensor, block_size: int = BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """NIQE features of a batch of grey images (N, H, W) on the 0-255 scale (``to_grey``).

    Returns ``features`` (N, n_blocks, 36) float64 — the 18 of scale 1 then the 18 of scale 2 for
    every block of the image cropped to whole blocks, row-major — and ``sharpness`` (N, n_blocks),
    the mean of the scale-1 sigma map over each block (NIQE's pristine selection rule)."""
    if block_size < 2 or block_size % 2:
        raise InvalidInputError(f"NIQE block size must be an even number of pixels, got {block_size}")
    check_niqe_size(grey.shape[-2], grey.shape[-1], block_size)
    if grey.device.type == "cpu" and len(grey) > 1:
        # one image at a time on the CPU: its ~2 MB working set stays in cache, which is twice as
        # fast as streaming the whole batch through memory 100 times; a GPU takes the batch at once
        parts = [_features(g.unsqueeze(0), block_size) for g in grey]
        return torch.cat([f for f, _ in parts]), torch.cat([s for _, s in parts])
    return _features(grey, block_size)


def _features(grey: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    img = grey.to(torch.float64)
    nh, nw = img.shape[-2] // block_size, img.shape[-1] // block_size
    img = img[..., :nh * block_size, :nw * block_size]
    tables = torch.from_numpy(_aggd_tables()).to(img.device)
    window = official_window()
    mscn, sigma = _mscn(img, window)
    scale1 = _scale_features(mscn, block_size, block_size, tables)
    sharpness = _blocks(sigma, block_size, block_size).mean(dim=(-2, -1))
    half = imresize(img / 255.0, scale=0.5) * 255.0
    mscn2, _ = _mscn(half, window)
    scale2 = _scale_features(mscn2, block_size // 2, block_size // 2, tables)
    return torch.cat([scale1, scale2], dim=-1), sharpness


def fit_test_mvg(features: torch.Tensor) -> MVG:
    """The test image's Gaussian as MATLAB's nanmean/nancov give it: a single complete row has a
    zero covariance (nancov normalises one observation by 1), none gives NaN."""
    fit = fit_mvg(features)
    complete = (~torch.isnan(features).any(dim=-1)).sum(dim=-1)
    single = (complete == 1).reshape(*complete.shape, 1, 1)
    return MVG(fit.mean, torch.where(single, torch.zeros_like(fit.cov), fit.cov))


def niqe_distance(pristine: MVG, test: MVG) -> torch.Tensor:
    """sqrt(d pinv((Sigma_p + Sigma_t)/2) d^T) per test Gaussian, float64 (N,); NaN where the test
    Gaussian is not finite (e.g. an image without texture: every AGGD fit failed)."""
    finite = torch.isfinite(test.mean).all(dim=-1) & torch.isfinite(test.cov).flatten(-2).all(dim=-1)
    out = torch.full(finite.shape, float("nan"), dtype=torch.float64, device=test.mean.device)
    if finite.any():
        out[finite] = mvg_distance(pristine, MVG(test.mean[finite], test.cov[finite]), pseudo_inverse=True)
    return out


# ---------------------------------------------------------------------------------------------
# pristine model files (the official .npz layout)
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def official_window() -> np.ndarray:
    """The 7x7 Gaussian (sigma 7/6) as the official release stores it (``gaussian_window`` in the
    bundled .npz); equal to ``io.patches.gaussian_window()`` up to the last bit of a few entries."""
    with resources.as_file(official_pristine_path()) as bundled, np.load(bundled, allow_pickle=False) as data:
        return np.array(data["gaussian_window"], dtype=np.float64)


def official_pristine_path() -> resources.abc.Traversable:
    return resources.files("iqa_cli") / "data" / "niqe" / "niqe_pris_params.npz"


def load_pristine_model(path: str | Path | None = None) -> tuple[MVG, int]:
    """A pristine model .npz (``mu_pris_param`` 1x36, ``cov_pris_param`` 36x36, optional
    ``block_size``) -> (MVG, block size). ``None`` loads the official model bundled with iqa."""
    if path is None:
        with resources.as_file(official_pristine_path()) as bundled:
            return load_pristine_model(bundled)
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            mean = np.asarray(data["mu_pris_param"], dtype=np.float64).reshape(-1)
            cov = np.asarray(data["cov_pris_param"], dtype=np.float64)
            block = int(data["block_size"]) if "block_size" in data.files else BLOCK_SIZE
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such NIQE pristine model file (check the path)") from None
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"{path}: not a NIQE pristine model .npz with mu_pris_param and cov_pris_param ({exc}); "
                           "write one with iqa_cli.pristine.fit_pristine_model and save_pristine_model") from None
    if mean.shape != (N_FEATURES,) or cov.shape != (N_FEATURES, N_FEATURES) or not np.isfinite(cov).all():
        raise WeightsError(f"{path}: NIQE pristine model has mean {mean.shape} and covariance {cov.shape}, expected "
                           f"{N_FEATURES} and {N_FEATURES}x{N_FEATURES} finite values")
    return MVG(torch.from_numpy(mean), torch.from_numpy(cov)), block


def save_pristine_model(model: MVG, path: str | Path, block_size: int = BLOCK_SIZE) -> Path:
    """Write ``model`` in the official .npz layout (plus ``block_size``), atomically."""
    from ..io.files import atomic_path

    path = Path(path)
    if path.suffix != ".npz":
        raise InvalidInputError(f"{path}: a NIQE pristine model is written as .npz; give a name ending in .npz")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, mu_pris_param=model.mean.detach().cpu().double().numpy().reshape(1, -1),
                     cov_pris_param=model.cov.detach().cpu().double().numpy(), gaussian_window=official_window(),
                     block_size=np.int64(block_size))
    return path


# ---------------------------------------------------------------------------------------------
# the metric
# ---------------------------------------------------------------------------------------------

class NIQE(QualityMetric):
    """No-reference NIQE: ``metric(img)``, (N, 3, H, W) floats in [0, 1] -> (N,) scores, lower = better.

    ``pristine``: None (the official model), a .npz path (official layout, e.g. from
    ``save_pristine_model``) or an MVG (``iqa_cli.pristine.fit_pristine_model``). ``grey``:
    "rgb2gray" (official) or "y" (MATLAB YCbCr's Y, as BasicSR's default). Images must be at
    least one block (96x96); all images of a batch share one size. Scores are float64; an image
    without any texture (every AGGD fit fails) scores NaN, as in MATLAB.

    """

    name = "niqe"
    lower_better = True
    kind = "nr"

    def __init__(self, pristine: PristineSource = None, grey: str = "rgb2gray", block_size: int | None = None):
        super().__init__()
        if grey not in GREY_MODES:
            raise InvalidInputError(f"grey conversion {grey!r}: expected one of {', '.join(GREY_MODES)}")
        if isinstance(pristine, MVG):
            model, file_block = pristine, BLOCK_SIZE
        else:
            model, file_block = load_pristine_model(pristine)
        mean = model.mean.detach().to("cpu", torch.float64).reshape(-1)
        cov = model.cov.detach().to("cpu", torch.float64)
        if mean.shape != (N_FEATURES,) or cov.shape != (N_FEATURES, N_FEATURES):
            raise InvalidInputError(f"NIQE pristine model has mean {tuple(mean.shape)} and covariance "
                                    f"{tuple(cov.shape)}, expected {N_FEATURES} and {N_FEATURES}x{N_FEATURES}")
        self.grey = grey
        self.block_size = int(block_size or file_block)
        self.pristine_source = ("official" if pristine is None else
                                "fitted" if isinstance(pristine, MVG) else str(pristine))
        self.register_buffer("pristine_mean", mean)
        self.register_buffer("pristine_cov", cov)

    @property
    def pristine(self) -> MVG:
        return MVG(self.pristine_mean.double(), self.pristine_cov.double())

    def features(self, img: torch.Tensor) -> torch.Tensor:
        """(N, n_blocks, 36) float64 features of a batch of RGB images in [0, 1]."""
        return niqe_features(to_grey(_check_batch(img), self.grey), self.block_size)[0]

    def check_size(self, hw: tuple[int, int], name: str = "images") -> None:
        """InvalidInputError when (H, W) images are smaller than one block."""
        check_niqe_size(int(hw[0]), int(hw[1]), self.block_size, name)

    def score(self, img: torch.Tensor) -> torch.Tensor:
        """(N,) float64 NIQE of a float (N, 3, H, W) batch in [0, 1]."""
        return niqe_distance(self.pristine, fit_test_mvg(self.features(img)))

    def meta(self) -> dict:
        return {"metric": self.name, "grey": self.grey, "block_size": self.block_size, "pristine": self.pristine_source}

    def extra_repr(self) -> str:
        return f"grey={self.grey!r}, block_size={self.block_size}, pristine={self.pristine_source!r}"


def _check_batch(img: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(img) or img.ndim != 4 or img.shape[1] != 3 or not img.is_floating_point():
        shape = tuple(img.shape) if torch.is_tensor(img) else type(img).__name__
        raise InvalidInputError(f"NIQE expects a float (N, 3, H, W) batch in [0, 1], got {shape}")
    return img


def niqe_feature_key(block_size: int = BLOCK_SIZE, grey: str = "rgb2gray") -> str:
    """Cache key of NIQE's (weight-free) feature extractor: what a pristine MVG depends on."""
    return f"{FEATURE_VERSION}:block={int(block_size)}:grey={grey}"

