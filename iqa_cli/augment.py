"""Pair augmentations for full-reference training and test-time ensembles (ASNA's, made pure).

An augmentation is a frozen value (:class:`PairAugmentation`: quarter turns, flips, a lightness
factor) drawn from a seeded generator and applied identically to the reference and the distorted
image, so the pair stays aligned and its quality difference stays the pair's. Applying one is a
pure function of the images and the value, so training runs replay exactly from their seed and a
test-time ensemble is just a fixed tuple of values.

Brightness is a scaling of CIE Lab lightness L (D65, the sRGB formulas of scikit-image and
OpenCV). The original scaled OpenCV's uint8 L channel in place, so factors above 1 wrapped around
past 255 (a bright sky turned black); here L is clipped to [0, 100] and the RGB result to [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

BRIGHTNESS_RANGE = (0.3, 1.5)  # the original's U(0.3, 1.5)
# The released inference scripts average 22 views: 4 rotations, 3 flips and 15 brightness factors.
# The reference does not list the factors; these span the training range evenly (our choice).
TTA_BRIGHTNESS = tuple(round(float(f), 4) for f in np.linspace(BRIGHTNESS_RANGE[0], BRIGHTNESS_RANGE[1], 15))

_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)


def _mix(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 colour matrix along dim -3 of (..., 3, H, W)."""
    return torch.einsum("ij,...jhw->...ihw", matrix.to(x), x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (..., 3, H, W) -> CIE Lab (L in [0, 100]), D65, as skimage.color.rgb2lab."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = _mix(_RGB_TO_XYZ, linear) / _WHITE_D65.to(rgb).view(3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(0.008856) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(-3)
    return torch.stack((116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)), dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab (..., 3, H, W) -> sRGB clipped to [0, 1], as skimage.color.lab2rgb."""
    lightness, a, b = lab.unbind(-3)
    fy = (lightness + 16) / 116
    f = torch.stack((a / 500 + fy, fy, (fy - b / 200).clamp_min(0)), dim=-3)
    xyz = torch.where(f > 0.2068966, f ** 3, (f - 16 / 116) / 7.787) * _WHITE_D65.to(lab).view(3, 1, 1)
    linear = _mix(torch.linalg.inv(_RGB_TO_XYZ), xyz)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(0.0031308) ** (1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0.0, 1.0)


def scale_lightness(rgb: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiply Lab lightness by ``factor``, clipping L to [0, 100] (the original wrapped around in uint8)."""
    if factor == 1.0:
        return rgb
    lab = rgb_to_lab(rgb if rgb.dtype == torch.float64 else rgb.float())
    lightness = (lab[..., :1, :, :] * factor).clamp(0.0, 100.0)
    return lab_to_rgb(torch.cat((lightness, lab[..., 1:, :, :]), dim=-3)).to(rgb.dtype)


@dataclass(frozen=True)
class PairAugmentation:
    """One augmentation: ``rotation`` quarter turns counter-clockwise (np.rot90's direction), then
    left-right / up-down flips, then Lab lightness times ``brightness``."""

    rotation: int = 0
    flip_lr: bool = False
    flip_ud: bool = False
    brightness: float = 1.0

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] images (..., 3, H, W) -> augmented images (a new tensor, same shape for squares)."""
        out = torch.rot90(images, self.rotation % 4, dims=(-2, -1)) if self.rotation % 4 else images
        if self.flip_lr:
            out = out.flip(-1)
        if self.flip_ud:
            out = out.flip(-2)
        return scale_lightness(out, self.brightness)

    def to_dict(self) -> dict:
        return asdict(self)


IDENTITY = PairAugmentation()


def augment_pair(ref: torch.Tensor, dist: torch.Tensor, augmentation: PairAugmentation
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same augmentation on both images of a pair."""
    return augmentation.apply(ref), augmentation.apply(dist)


def draw_augmentation(rng: np.random.Generator, brightness_range: tuple[float, float] = BRIGHTNESS_RANGE,
                      brightness_probability: float = 1.0) -> PairAugmentation:
    """A random augmentation from a seeded generator: a uniform quarter turn, each flip with
    probability 1/2, and (with ``brightness_probability``) a lightness factor U(brightness_range)."""
    rotation = int(rng.integers(4))
    flip_lr, flip_ud = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    brightness = float(rng.uniform(*brightness_range)) if rng.random() < brightness_probability else 1.0
    return PairAugmentation(rotation, flip_lr, flip_ud, brightness)


def tta_augmentations(brightness: tuple[float, ...] = TTA_BRIGHTNESS) -> tuple[PairAugmentation, ...]:
    """The original's 22 test-time views: 4 rotations (0 included), 3 flips (left-right,
    up-down, both) and one view per brightness factor."""
    rotations = tuple(PairAugmentation(rotation=k) for k in range(4))
    flips = (PairAugmentation(flip_lr=True), PairAugmentation(flip_ud=True),
             PairAugmentation(flip_lr=True, flip_ud=True))
    return rotations + flips + tuple(PairAugmentation(brightness=float(f)) for f in brightness)
