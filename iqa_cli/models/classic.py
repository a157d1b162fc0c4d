"""The classic full-reference metrics every IQA paper reports, on the registry's calling convention.

The arithmetic comes from piq (Apache-2.0, batched torch); this module decides what each metric is
computed on, so the colour handling is stated once and matches the reference definitions:

  psnr     luma (0.299 R + 0.587 G + 0.114 B, the weights of MATLAB's rgb2gray), or all RGB
           channels with ``colour="rgb"``. Identical images give 80 dB, not infinity: piq floors
           the MSE at 1e-8 (on the [0, 1] scale), which keeps means and JSON finite.
  ssim     Wang et al.'s reference (ssim.m): luma, 11x11 Gaussian window (sigma 1.5), K1 0.01,
           K2 0.03, L 255 (the same on the [0, 1] scale), 'valid' filtering, after the reference's
           downsampling by f = max(1, round(min(H, W) / 256)) (MATLAB's round: 2.5 -> 3, where
           Python's gives 2): an f x f mean filter with symmetric borders (MATLAB imfilter
           'symmetric', kernel centre floor((f + 1) / 2)), then every f-th pixel. piq's own
           downsampling is a plain average pool, which differs for odd f.
  ms-ssim  luma, five scales with the reference msssim.m's weights and its 2x2 symmetric-border
           downsampling between scales (piq's SSIM at each scale); needs 161x161.
  fsim     FSIMc on RGB (Zhang et al. 2011: phase congruency and gradient on Y, chromatic I/Q
           terms); ``chromatic=False`` gives grey FSIM (on the Y of YIQ, i.e. the same luma).
           piq's phase congruency, assembled here as the reference FeatureSIM.m does, because
           piq.fsim departs from it in three places: it average-pools (FeatureSIM.m filters with
           conv2 'same', zero borders, and keeps every f-th pixel from the first: for odd f and for
           odd sizes the windows differ, up to 3e-3 in the score); it takes |S_I S_Q|^0.03 where the
           reference takes real((S_I S_Q)^0.03), which is cos(0.03 pi) |S_I S_Q|^0.03 where the
           product is negative (opposite hues: up to 4e-4 on KADID's colour distortions); and its
           YIQ rows are rounded differently (0.5959 / 0.2115 ... for 0.596 / 0.211 ..., ~2e-5).
           What is left of piq's own (private _construct_filters / _phase_congruency, piq 0.8): the
           local energy's epsilon is machine epsilon, not phasecong2's 1e-4, and the noise median is
           the lower middle value: up to 7e-5 from a transcription of FeatureSIM.m over the 25 KADID
           types (tests/test_classic_fsim.py holds it to 1e-4).
  gmsd     luma; the reference's 2x2 mean and subsampling, Prewitt gradients, deviation of GMS.
  vif      VIF in the pixel domain (VIF-p, Sheikh and Bovik 2006) on luma, sigma_n^2 = 2. Not symmetric:
           the information the distorted image keeps about the reference, 1 for a copy.

Every metric takes float (N, 3, H, W) in [0, 1] and returns (N,) scores; images below a metric's
smallest size are one clear error (piq would fail an assert).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from .base import QualityMetric

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
COLOURS = ("luma", "rgb")


def luma(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) luma 0.299 R + 0.587 G + 0.114 B (no rounding)."""
    w = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * w).sum(dim=1, keepdim=True)


def _pad_symmetric(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """MATLAB's 'symmetric' padding (the edge pixel repeated, then mirrored) on H and W."""
    if before == 0 and after == 0:
        return x
    for dim in (2, 3):
        parts = []
        if before:
            parts.append(x.narrow(dim, 0, before).flip(dim))
        parts.append(x)
        if after:
            parts.append(x.narrow(dim, x.shape[dim] - after, after).flip(dim))
        x = torch.cat(parts, dim=dim)
    return x


def downsampling_factor(hw: tuple[int, int]) -> int:
    """ssim.m's and FeatureSIM.m's f = max(1, round(min(H, W) / 256)) with MATLAB's round, which takes
    halves away from zero (a 640-pixel side gives 3; Python's round would give 2)."""
    return max(1, math.floor(min(hw) / 256 + 0.5))


def reference_downsample(x: torch.Tensor, borders: str = "symmetric") -> torch.Tensor:
    """The reference codes' automatic downsampling: f x f mean, then every f-th pixel from the first.
    ``borders="symmetric"`` is ssim.m's imfilter(..., 'symmetric'); ``"zero"`` is FeatureSIM.m's
    conv2(..., 'same'). Both keep ceil(side / f) pixels."""
    f = downsampling_factor(tuple(x.shape[-2:]))
    if f == 1:
        return x
    # both centre an f-tap kernel at floor((f + 1) / 2) (1-based): (f - 1) // 2 before, f // 2 after;
    # pooling with stride f over the padded image reads exactly the windows of pixels 1, 1 + f, ...
    before, after = (f - 1) // 2, f // 2
    padded = _pad_symmetric(x, before, after) if borders == "symmetric" else F.pad(x, (before, after, before, after))
    return F.avg_pool2d(padded, kernel_size=f, stride=f)


class _ClassicMetric(QualityMetric):
    kind = "fr"
    min_size = 1

    def check_size(self, hw: tuple[int, int], name: str = "images") -> None:
        if min(hw) < self.min_size:
            raise InvalidInputError(f"{name}: {hw[1]}x{hw[0]} pixels, but {self.name} needs at least "
                                    f"{self.min_size}x{self.min_size} (use larger images)")

    def score(self, ref: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        self.check_size(tuple(ref.shape[-2:]))
        if ref.shape[0] == 0:
            return ref.new_zeros(0)
        try:
            return self.compute(ref, dist).reshape(-1)
        except AssertionError as exc:  # piq validates with asserts; never let one reach a user
            raise InvalidInputError(f"{self.name}: {exc}") from None

    def compute(self, ref: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PSNR(_ClassicMetric):
    name = "psnr"
    lower_better = False

    def __init__(self, colour: str = "luma"):
        super().__init__()
        if colour not in COLOURS:
            raise InvalidInputError(f"psnr colour {colour!r}: choose luma or rgb")
        self.colour = colour

    def compute(self, ref, dist):
        import piq

        if self.colour == "luma":
            ref, dist = luma(ref), luma(dist)
        return piq.psnr(ref, dist, data_range=1.0, reduction="none")

    def meta(self):
        return {"metric": self.name, "colour": self.colour}


class SSIM(_ClassicMetric):
    name = "ssim"
    lower_better = False
    min_size = 11

    def check_size(self, hw, name="images"):
        f = downsampling_factor(hw)
        if min(-(-hw[0] // f), -(-hw[1] // f)) < 11:  # the reference's downsampling keeps ceil(side / f)
            raise InvalidInputError(f"{name}: {hw[1]}x{hw[0]} pixels, but ssim needs at least 11x11 after its "
                                    f"downsampling (use larger images)")

    def compute(self, ref, dist):
        import piq

        a, b = reference_downsample(luma(ref)), reference_downsample(luma(dist))
        return piq.ssim(a, b, kernel_size=11, kernel_sigma=1.5, data_range=1.0, reduction="none", downsample=False,
                        k1=0.01, k2=0.03)


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def halve(x: torch.Tensor) -> torch.Tensor:
    """msssim.m's step between scales: 2x2 mean with symmetric borders, every other pixel (odd sizes
    keep their last row/column, averaged with itself; piq pads odd sizes on the other side)."""
    return F.avg_pool2d(_pad_symmetric(x, 0, 1), kernel_size=2, stride=2)


class MSSSIM(_ClassicMetric):
    name = "ms-ssim"
    lower_better = False
    min_size = 161  # (11 - 1) * 2**4 + 1: the window must fit the coarsest of five scales

    def compute(self, ref, dist):
        import piq

        x, y = luma(ref), luma(dist)
        total = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        for level, weight in enumerate(MS_SSIM_WEIGHTS):
            if level:
                x, y = halve(x), halve(y)
            ssim_value, cs = piq.ssim(x, y, kernel_size=11, kernel_sigma=1.5, data_range=1.0, reduction="none",
                                      full=True, downsample=False, k1=0.01, k2=0.03)
            # contrast-structure at the finer scales, full SSIM at the coarsest (Wang, Simoncelli, Bovik 2003);
            # a negative term would make the fractional power undefined: it counts as 0, as piq does
            term = ssim_value if level == len(MS_SSIM_WEIGHTS) - 1 else cs
            total = total * torch.relu(term) ** weight
        return total


# FeatureSIM.m's YIQ rows (piq's rgb2yiq rounds them differently) and constants
FSIM_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
FSIM_T1, FSIM_T2, FSIM_T3, FSIM_T4, FSIM_LAMBDA = 0.85, 160.0, 200.0, 200.0, 0.03


def _similarity(a: torch.Tensor, b: torch.Tensor, constant: float) -> torch.Tensor:
    return (2 * a * b + constant) / (a * a + b * b + constant)


class FSIM(_ClassicMetric):
    name = "fsim"
    lower_better = False
    min_size = 16

    def __init__(self, chromatic: bool = True):
        super().__init__()
        self.chromatic = bool(chromatic)

    def compute(self, ref, dist):
        from piq.fsim import _construct_filters, _phase_congruency  # piq 0.8; see the module docstring
        from piq.functional import gradient_map, scharr_filter

        weights = torch.tensor(FSIM_YIQ, dtype=ref.dtype, device=ref.device) * 255.0  # the constants are for 0-255
        if not self.chromatic:
            weights = weights[:1]
        x, y = (reference_downsample(torch.einsum("kc,nchw->nkhw", weights, img), borders="zero")
                for img in (ref, dist))
        # phasecong2's settings in FeatureSIM.m (piq's defaults, spelled out)
        filters = _construct_filters(x[:, :1], scales=4, orientations=4, min_length=6, mult=2, sigma_f=0.55,
                                     delta_theta=1.2)
        pc_x, pc_y = (_phase_congruency(img[:, :1], filters=filters, scales=4, orientations=4, k=2.0)
                      for img in (x, y))
        scharr = scharr_filter(device=x.device, dtype=x.dtype)
        kernels = torch.stack([scharr, scharr.transpose(-1, -2)])
        grad_x, grad_y = gradient_map(x[:, :1], kernels), gradient_map(y[:, :1], kernels)
        pc_max = torch.maximum(pc_x, pc_y)
        score = _similarity(pc_x, pc_y, FSIM_T1) * _similarity(grad_x, grad_y, FSIM_T2) * pc_max
        if self.chromatic:
            chroma = _similarity(x[:, 1:2], y[:, 1:2], FSIM_T3) * _similarity(x[:, 2:3], y[:, 2:3], FSIM_T4)
            # MATLAB's (negative) .^ 0.03 is complex and the reference keeps its real part
            sign = torch.where(chroma < 0, torch.full_like(chroma, math.cos(math.pi * FSIM_LAMBDA)),
                               torch.ones_like(chroma))
            score = score * sign * chroma.abs() ** FSIM_LAMBDA
        return score.sum(dim=(1, 2, 3)) / pc_max.sum(dim=(1, 2, 3))

    def meta(self):
        return {"metric": self.name, "chromatic": self.chromatic}


class GMSD(_ClassicMetric):
    name = "gmsd"
    lower_better = True
    min_size = 8

    def compute(self, ref, dist):
        import piq

        return piq.gmsd(luma(ref), luma(dist), data_range=1.0, reduction="none")


class VIF(_ClassicMetric):
    name = "vif"
    lower_better = False
    min_size = 41  # four scales of Gaussian windows (17, 9, 5, 3) with 2x subsampling between them

    def compute(self, ref, dist):
        import piq

        # piq's order is (distorted, reference): its gain g = sigma_xy / sigma_y^2 is over the reference's variance
        return piq.vif_p(luma(dist), luma(ref), sigma_n_sq=2.0, data_range=1.0, reduction="none")
