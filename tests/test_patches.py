"""Patch grid and foreground selection (iqa_cli.io.patches): exact tile sets on known masks."""

from __future__ import annotations

import numpy as np
import pytest

from iqa_cli.errors import InvalidInputError
from iqa_cli.io.patches import (PatchSpec, border_colour, cut_patches, foreground_fractions, foreground_mask,
                                grid_positions, parse_background, select_tiles)
from mesh_fixtures import object_mask, render


def test_grid_positions_row_major_and_only_full_tiles():
    pos = grid_positions(130, 200, 64, 64)
    assert pos.tolist() == [[0, 0], [0, 64], [0, 128], [64, 0], [64, 64], [64, 128]]
    pos = grid_positions(96, 96, 64, 32)
    assert pos.tolist() == [[0, 0], [0, 32], [32, 0], [32, 32]]
    assert grid_positions(63, 500, 64, 64).shape == (0, 2)


def _block_image(h=192, w=256, colour=(200, 30, 40), bg=(255, 255, 255)):
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bg
    return img, np.array(colour, np.uint8)


def test_select_tiles_exact_set_flat_background():
    img, c = _block_image()
    img[0:64, 64:128] = c  # tile (0, 64): 100 % object
    img[64:64 + 39, 128:192] = c  # tile (64, 128): 39 rows = 60.9 % -> kept
    img[128:128 + 38, 0:64] = c  # tile (128, 0): 38 rows = 59.4 % -> dropped
    img[128:192, 192:224] = c  # tile (128, 192): 50 % -> dropped
    mask = foreground_mask(img)
    tiles = select_tiles(mask, 64, 64, 0.6)
    assert tiles.tolist() == [[0, 64], [64, 128]]
    # threshold is inclusive: exactly 50 % passes min_foreground=0.5
    assert select_tiles(mask, 64, 64, 0.5).tolist() == [[0, 64], [64, 128], [128, 0], [128, 192]]


def test_select_tiles_exact_set_alpha():
    rgba = np.zeros((128, 192, 4), np.uint8)
    rgba[..., :3] = 255  # colour is irrelevant with an alpha mask
    rgba[0:64, 0:64, 3] = 255
    rgba[64:128, 128:192, 3] = 128  # alpha exactly 0.5 -> foreground
    rgba[64:128, 64:128, 3] = 127  # just below -> background
    mask = foreground_mask(rgba)
    assert mask.sum() == 2 * 64 * 64
    assert select_tiles(mask, 64, 64, 0.6).tolist() == [[0, 0], [64, 128]]


def test_opaque_alpha_falls_back_to_background_colour():
    img, c = _block_image(128, 128)
    img[0:64, 0:64] = c
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    mask = foreground_mask(rgba)
    assert mask[0:64, 0:64].all() and mask.sum() == 64 * 64


def test_background_auto_explicit_and_tolerance():
    img, c = _block_image(64, 64, bg=(10, 20, 30))
    img[10:20, 10:20] = c
    img[30, 30] = (18, 20, 30)  # within tolerance 8
    img[31, 31] = (19, 20, 30)  # just outside
    assert border_colour(img) == (10, 20, 30)
    mask = foreground_mask(img)
    assert mask[10:20, 10:20].all() and not mask[30, 30] and mask[31, 31]
    assert mask.sum() == 101
    # explicit background: white means every pixel of this dark image is foreground
    assert foreground_mask(img, background=(255, 255, 255)).all()
    assert foreground_mask(img, background="10,20,30", tolerance=0).sum() == 102


def test_border_colour_is_most_common_on_border():
    img = np.zeros((20, 30, 3), np.uint8)
    img[:] = (0, 0, 255)
    img[0, :] = (9, 9, 9)  # one border row of another colour: still a minority of the border
    img[5:15, 5:25] = (255, 0, 0)  # interior does not count
    assert border_colour(img) == (0, 0, 255)


def test_fractions_match_brute_force(rng):
    mask = rng.random((100, 130)) < 0.5
    pos = grid_positions(100, 130, 16, 12)
    got = foreground_fractions(mask, pos, 16)
    want = [mask[y:y + 16, x:x + 16].mean() for y, x in pos]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("alpha", [True, False])
def test_render_tiles_match_known_object_mask(alpha):
    size = (192, 256)
    known = object_mask(size, 3)
    img = render(size, 3, alpha=alpha)
    want = [[y, x] for y, x in grid_positions(*size, 64, 64) if known[y:y + 64, x:x + 64].mean() >= 0.6]
    assert len(want) >= 2
    assert select_tiles(foreground_mask(img), 64, 64, 0.6).tolist() == want


def test_cut_patches_copies_rgb_at_positions(rng):
    img = rng.integers(0, 256, (100, 120, 4), dtype=np.uint8)
    pos = np.array([[0, 0], [36, 56], [10, 3]])
    out = cut_patches(img, pos, 64)
    assert out.shape == (3, 64, 64, 3) and out.dtype == np.uint8
    for k, (y, x) in enumerate(pos):
        assert np.array_equal(out[k], img[y:y + 64, x:x + 64, :3])
    assert cut_patches(img, np.zeros((0, 2), int), 64).shape == (0, 64, 64, 3)
    with pytest.raises(InvalidInputError, match="does not fit"):
        cut_patches(img, np.array([[40, 0]]), 64)


def test_patch_spec_and_background_validation():
    assert PatchSpec().background == "auto"
    assert PatchSpec(background="1, 2,3").background == (1, 2, 3)
    assert PatchSpec(background=(1, 2, 3)).background_text == "1,2,3"
    assert parse_background("AUTO") == "auto"
    for bad in ("white", "1,2", "1,2,300", "-1,0,0"):
        with pytest.raises(InvalidInputError, match="R,G,B"):
            parse_background(bad)
    with pytest.raises(InvalidInputError, match="min-foreground"):
        PatchSpec(min_foreground=1.5)
    with pytest.raises(InvalidInputError, match="patch size"):
        PatchSpec(size=0)
