"""Pair augmentations: Lab conversion against scikit-image, clipped brightness, geometry against numpy, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import color

from iqa_cli.augment import (BRIGHTNESS_RANGE, IDENTITY, PairAugmentation, augment_pair, draw_augmentation, lab_to_rgb,
                             rgb_to_lab, scale_lightness, tta_augmentations)


@pytest.fixture
def images(rng) -> torch.Tensor:
    return torch.from_numpy(rng.uniform(0, 1, (2, 3, 12, 12))).float()


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).double().numpy()


def test_lab_round_trip_matches_scikit_image(images):
    lab = rgb_to_lab(images.double())
    for k in range(images.shape[0]):
        expected = color.rgb2lab(_hwc(images[k]))
        np.testing.assert_allclose(_hwc(lab[k]), expected, atol=1e-6)
        np.testing.assert_allclose(_hwc(lab_to_rgb(lab[k])), color.lab2rgb(expected), atol=1e-6)


@pytest.mark.filterwarnings("ignore:Conversion from CIE-LAB")
@pytest.mark.parametrize("factor", [0.3, 0.8, 1.5])
def test_lightness_scaling_matches_scaling_l_in_scikit_image_with_clipping(images, factor):
    lab = color.rgb2lab(_hwc(images[0]))
    lab[..., 0] = np.clip(lab[..., 0] * factor, 0, 100)
    expected = color.lab2rgb(lab)
    np.testing.assert_allclose(_hwc(scale_lightness(images[0].double(), factor)), expected, atol=1e-6)


def test_brightening_clips_instead_of_wrapping_around():
    """The original scaled uint8 L by 1.5 and wrapped past 255: near-white turned dark. Clipped, it stays white."""
    bright = torch.full((1, 3, 4, 4), 0.97)
    out = scale_lightness(bright, 1.5)
    assert float(out.min()) >= 0.97 and float(out.max()) <= 1.0
    assert float(rgb_to_lab(out)[:, 0].min()) == pytest.approx(100.0, abs=1e-3)


def test_geometry_matches_numpy(images):
    aug = PairAugmentation(rotation=3, flip_lr=True, flip_ud=False)
    expected = np.flip(np.rot90(images.numpy(), 3, axes=(-2, -1)), axis=-1)
    np.testing.assert_array_equal(aug.apply(images).numpy(), expected)
    assert torch.equal(IDENTITY.apply(images), images)


def test_pairs_get_the_same_augmentation(images):
    aug = PairAugmentation(rotation=1, flip_ud=True, brightness=0.6)
    ref, dist = augment_pair(images, images.flip(0), aug)
    assert torch.equal(ref.flip(0), dist)


def test_drawing_is_seeded_and_within_the_original_ranges():
    first = [draw_augmentation(np.random.default_rng(7)) for _ in range(2)]
    assert first[0] == first[1]
    many = [draw_augmentation(np.random.default_rng(s)) for s in range(200)]
    assert {a.rotation for a in many} == {0, 1, 2, 3}
    assert all(BRIGHTNESS_RANGE[0] <= a.brightness <= BRIGHTNESS_RANGE[1] for a in many)
    assert {a.flip_lr for a in many} == {True, False}


def test_tta_has_the_originals_22_views():
    views = tta_augmentations()
    assert len(views) == 22 and len(set(views)) == 22
    assert sum(v.brightness != 1.0 for v in views) == 15 and views[0] == IDENTITY
