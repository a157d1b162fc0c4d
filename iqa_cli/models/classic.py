"""The classic full-reference metrics every IQA paper reports, on the registry's calling convention.

The arithmetic comes from piq (Apache-2.0, batched torch); this module decides what each metric is
computed on, so the colour handling is stated once and matches the reference definitions:

  psnr     luma (0.299 R + 0.587 G + 0.114 B, the weights of MATLAB's rgb2gray), or all RGB
           channels with ``colour="rgb"``. Identical images give 80 dB, not infinity: piq floors
           the MSE at 1e-8 (on the [0, 1] scale), which keeps means and JSON finite.
  ssim     Wang et al.'s reference (ssim.m): luma, 11x11 Gaussian window (sigma 1.5), K1 0.01,
           K2 0.03, L 255 (the same on the [0, 1] scale), 'valid' filtering, after the reference's
           downsampling by f = max(1, round(min(H, W) / 256)): an f x f mean filter with symmetric
           borders (MATLAB imfilter 'symmetric', kernel centre floor((f + 1) / 2)), then every f-th
           pixel. piq's own downsampling is a plain average pool, which differs for odd f.
  ms-ssim  luma, five scales with the reference msssim.m's weights and its 2x2 symmetric-border
           downsampling between scales (piq's SSIM at each scale); needs 161x161.
  fsim     FSIMc on RGB (Zhang et al. 2011: phase congruency and gradient on Y, chromatic I/Q
           terms); ``chromatic=False`` gives grey FSIM (on the Y of YIQ, i.e. the same luma).
  gmsd     luma; the reference's 2x2 mean and subsampling, Prewitt gradients, deviation of GMS.
  vif      VIF in the pixel domain (VIF-p, Sheikh and Bovik 2006) on luma, sigma_n^2 = 2. Not symmetric:
           the information the distorted image keeps about the reference, 1 for a copy.

Every metric takes float (N, 3, H, W) in [0, 1] and returns (N,) scores; images below a metric's
smallest size are one clear error (piq would fail an assert).
"""

from __future__ import annotations

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


def reference_downsample(x: torch.Tensor) -> torch.Tensor:
    """ssim.m's automatic downsampling: f x f mean (symmetric borders), every f-th pixel."""
    f = max(1, round(min(x.shape[-2:]) / 256))
    if f == 1:
        return x
    # imfilter centres an f-tap kernel at floor((f + 1) / 2) (1-based): (f - 1) // 2 before, f // 2 after;
    # pooling with stride f over the padded image reads exactly the windows of pixels 1, 1 + f, ...
    return F.avg_pool2d(_pad_symmetric(x, (f - 1) // 2, f // 2), kernel_size=f, stride=f)


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
        f = max(1, round(min(hw) / 256))
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


class FSIM(_ClassicMetric):
    name = "fsim"
    lower_better = False
    min_size = 16

    def __init__(self, chromatic: bool = True):
        super().__init__()
        self.chromatic = bool(chromatic)

    def compute(self, ref, dist):
        import piq

        if not self.chromatic:
            ref, dist = luma(ref), luma(dist)
        return piq.fsim(ref, dist, data_range=1.0, reduction="none", chromatic=self.chromatic)

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
