"""The 25 KADID-10k distortions on real photographs: determinism under a seed, strength ordering,
range handling (the mapmm choice), and the MATLAB conventions against independent implementations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from iqa_cli import distortions as D
from iqa_cli.distortions import DISTORTION_TYPES, distort
from iqa_cli.errors import InvalidInputError

skimage = pytest.importorskip("skimage")
from skimage import color as skcolor  # noqa: E402
from skimage import data as skdata  # noqa: E402
from skimage import filters as skfilters  # noqa: E402
from skimage import transform as sktransform  # noqa: E402

ORDERED = [t.id for t in DISTORTION_TYPES if t.ordered]
RANDOM = [t.id for t in DISTORTION_TYPES if t.random]


def photo(name: str, size=(96, 128)) -> np.ndarray:
    rgb = getattr(skdata, name)()[..., :3] / 255.0
    return np.clip(sktransform.resize(rgb, size, anti_aliasing=True), 0.0, 1.0)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: photo(name) for name in ("astronaut", "coffee")}


@pytest.fixture(scope="module")
def kadid_sized() -> dict[str, np.ndarray]:
    """KADID-10k's 512x384, for the types whose footprint is a fixed number of pixels (patches, blocks):
    on a thumbnail their later levels cover the image over and over."""
    return {name: photo(name, (384, 512)) for name in ("astronaut", "coffee")}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


# -- the table ----------------------------------------------------------------------------------------

def test_table_lists_the_25_types_with_their_levels():
    assert [t.id for t in DISTORTION_TYPES] == list(range(1, 26))
    assert all(len(t.values) == 5 and t.values == D.LEVEL_VALUES[t.id] for t in DISTORTION_TYPES)
    assert D.APPROXIMATE_TYPES == (6, 15, 22)
    assert [t.id for t in DISTORTION_TYPES if not t.ordered] == [18, 25]
    assert RANDOM == [3, 5, 11, 12, 13, 14, 15, 19, 20, 23]
    assert {t.fidelity for t in DISTORTION_TYPES} == {"exact", "approximate"}
    assert all(t.note for t in DISTORTION_TYPES if t.fidelity == "approximate")
    doc = json.loads(json.dumps([t.to_dict() for t in DISTORTION_TYPES]))
    assert doc[8]["name"] == "JPEG2000" and doc[8]["values"] == [16, 32, 45, 120, 400] and "function" not in doc[8]
    assert D.distortion_type("jpeg").id == 10 and D.distortion_type("Gaussian-Blur").id == 1
    assert D.distortion_type(" 7 ").id == 7


# -- determinism, shape, range -------------------------------------------------------------------------

@pytest.mark.parametrize("type_id", range(1, 26))
def test_each_level_is_deterministic_under_the_seed(type_id):
    img = photo("astronaut", (48, 64))
    digest = D.image_digest(img)
    for level in (5, 1, 3, 2, 4):  # any order
        out = distort(img, type_id, level, 7)
        assert out.shape == img.shape and out.dtype == np.float64
        assert out.min() >= 0.0 and out.max() <= 1.0
        np.testing.assert_array_equal(out, distort(img, type_id, level, 7))
        # the explicit generator the CLI builds gives the same image
        np.testing.assert_array_equal(out, distort(img, type_id, level, D.distortion_rng(7, digest, type_id)))
    other_seed = distort(img, type_id, 3, 8)
    if type_id in RANDOM:
        assert not np.array_equal(distort(img, type_id, 3, 7), other_seed)
    else:
        np.testing.assert_array_equal(distort(img, type_id, 3, 7), other_seed)


def test_digest_ignores_float_width():
    """An 8-bit picture hashes the same whether it arrives as float32 (io.images) or float64."""
    img = D.to_uint8(photo("chelsea", (24, 32))) / 255.0
    assert D.image_digest(img) == D.image_digest(img.astype(np.float32))
    assert D.image_digest(img) != D.image_digest(img[::-1])


def test_levels_share_their_random_draws(photos):
    """Common random numbers: level 4's white noise is level 3's, scaled (where neither clipped)."""
    img = photos["coffee"]
    n3 = distort(img, 11, 3, 5) - img
    n4 = distort(img, 11, 4, 5) - img
    free = (np.abs(n3) > 0) & (img + n4 > 0) & (img + n4 < 1) & (img + n3 > 0) & (img + n3 < 1)
    assert free.mean() > 0.5
    ratio = math.sqrt(D.level_value(11, 4) / D.level_value(11, 3))
    np.testing.assert_allclose(n4[free], n3[free] * ratio, atol=1e-12)
    # impulse noise: the samples hit at level 3 are hit at level 4 too
    hit3 = distort(img, 13, 3, 5) != img
    hit4 = distort(img, 13, 4, 5) != img
    assert hit3.sum() > 0 and not (hit3 & ~hit4).any()


# -- strength ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_id", [t for t in ORDERED if t != 21])
def test_psnr_falls_as_the_level_rises(photos, kadid_sized, type_id):
    for name, img in (kadid_sized if D.distortion_type(type_id).min_size > 1 else photos).items():
        values = [psnr(img, distort(img, type_id, level, 0)) for level in range(1, 6)]
        assert all(a > b for a, b in zip(values, values[1:])), (name, values)


def test_pixelate_resolution_falls_with_the_level(photos):
    """Pixelate's strength is the size of its blocks: nearest-neighbour resampling moves about half
    the rows and columns by one pixel at every level from 1 to 4, so its PSNR is nearly flat there and
    not a measure of strength; the number of distinct rows and columns is."""
    img = photos["astronaut"]
    outs = [distort(img, 21, level, 0) for level in range(1, 6)]
    rows = [len(np.unique(o.reshape(o.shape[0], -1), axis=0)) for o in outs]
    cols = [len(np.unique(o.transpose(1, 0, 2).reshape(o.shape[1], -1), axis=0)) for o in outs]
    assert all(a > b for a, b in zip(rows, rows[1:])) and all(a > b for a, b in zip(cols, cols[1:])), (rows, cols)
    z = [0.95 - s ** 0.6 for s in D.LEVEL_VALUES[21]]
    for count, zi in zip(rows, z):  # the downscaled height (its last row may repeat: the index is clamped)
        assert math.ceil(zi * img.shape[0]) - 1 <= count <= math.ceil(zi * img.shape[0])
    values = [psnr(img, o) for o in outs]
    assert values[4] < min(values[:4])


@pytest.mark.parametrize("type_id", [18, 25])
def test_mean_shift_and_contrast_change_pass_through_no_change(photos, type_id):
    for img in photos.values():
        np.testing.assert_allclose(distort(img, type_id, 3, 0), img, atol=1e-12)
        values = [psnr(img, distort(img, type_id, level, 0)) for level in range(1, 6)]
        assert values[0] < values[1] < values[2] and values[4] < values[3] < values[2], values


# -- the mapmm decision ------------------------------------------------------------------------------

def test_default_clips_and_keeps_a_mean_shift_a_shift(photos):
    img = photos["coffee"]
    np.testing.assert_array_equal(distort(img, 18, 1, 0), np.clip(img + 0.15, 0, 1))
    np.testing.assert_array_equal(distort(img, 18, 5, 0), np.clip(img - 0.15, 0, 1))


def test_stretch_reproduces_the_original_min_max_stretches(photos):
    img = photos["coffee"] * 0.6 + 0.2  # a low-contrast input, so the input stretch shows
    lo, hi = img.min(), img.max()
    stretched = (img - lo) / (hi - lo)
    np.testing.assert_allclose(distort(img, 18, 3, 0, stretch=True), stretched, atol=1e-12)
    shifted = np.clip(stretched + 0.15, 0, 1)  # mean shift, then the final stretch turns it into a gain
    np.testing.assert_allclose(distort(img, 18, 1, 0, stretch=True),
                               (shifted - shifted.min()) / (shifted.max() - shifted.min()), atol=1e-12)
    for type_id in (1, 11, 16, 24):
        out = distort(img, type_id, 3, 0, stretch=True)
        assert out.min() == pytest.approx(0.0, abs=1e-12) and out.max() == pytest.approx(1.0, abs=1e-12)


# -- MATLAB conventions against independent implementations -------------------------------------------

def test_colour_conversions_match_scikit_image(photos):
    for img in photos.values():
        # MATLAB's D65 white (0.9504, 1, 1.0888) and 4-digit sRGB matrix vs scikit-image's 6-digit ones
        np.testing.assert_allclose(D.rgb2lab(img), skcolor.rgb2lab(img), atol=0.05)
        lab = skcolor.rgb2lab(img)
        np.testing.assert_allclose(D.lab2rgb(lab), skcolor.lab2rgb(lab), atol=1e-3)
        np.testing.assert_allclose(D.lab2rgb(D.rgb2lab(img)), img, atol=1e-12)
        np.testing.assert_allclose(D.rgb2hsv(img), skcolor.rgb2hsv(img), atol=1e-12)
        hsv = skcolor.rgb2hsv(img)
        np.testing.assert_allclose(D.hsv2rgb(hsv), skcolor.hsv2rgb(hsv), atol=1e-12)
        np.testing.assert_allclose(D.rgb2ycbcr(img), skcolor.rgb2ycbcr(img) / 255.0, atol=1e-12)
        ycc = skcolor.rgb2ycbcr(img)
        np.testing.assert_allclose(D.ycbcr2rgb(ycc / 255.0), skcolor.ycbcr2rgb(ycc), atol=1e-12)
        # rgb2gray's rounded BT.601 weights = the luma of rgb2ycbcr, rescaled from studio range
        luma = (D.rgb2ycbcr(img)[..., 0] - 16 / 255) * 255 / 219
        np.testing.assert_allclose(D.rgb2gray(img), luma, atol=2e-4)


def test_gaussian_blur_is_imgaussfilt():
    rng = np.random.default_rng(1)
    img = rng.random((40, 50, 3))
    for sigma in (0.1, 0.5, 2.0, 5.0):
        assert len(D.gaussian_kernel1d(sigma)) == 2 * math.ceil(2 * sigma) + 1
        radius = math.ceil(2 * sigma)
        expected = ndimage.gaussian_filter(img, sigma, truncate=radius / sigma, mode="nearest", axes=(0, 1))
        np.testing.assert_allclose(D.gaussian_blur(img, sigma), expected, atol=1e-12)


def test_disk_kernel_is_the_pixel_disk_overlap():
    for radius in (1, 2.5, 4):
        kernel = D.disk_kernel(radius)
        n = kernel.shape[0] // 2
        sub = 300  # supersampled coverage of each pixel square
        offsets = (np.arange(sub) + 0.5) / sub - 0.5
        coverage = np.zeros_like(kernel)
        for i in range(2 * n + 1):
            for j in range(2 * n + 1):
                ys, xs = np.meshgrid(i - n + offsets, j - n + offsets, indexing="ij")
                coverage[i, j] = np.mean(xs ** 2 + ys ** 2 <= radius ** 2)
        np.testing.assert_allclose(kernel, coverage / coverage.sum(), atol=5e-4)


def test_correlate_replicate_fft_path_equals_direct():
    rng = np.random.default_rng(2)
    img = rng.random((30, 41, 3))
    kernel = rng.random((9, 11))
    direct = np.stack([ndimage.correlate(img[..., c], kernel, mode="nearest") for c in range(3)], -1)
    np.testing.assert_allclose(D.correlate_replicate(img, kernel), direct, atol=1e-12)


def test_motion_kernel():
    identity = D.motion_kernel(1, 37.0)
    assert identity[identity.shape[0] // 2, identity.shape[1] // 2] == 1.0 and np.count_nonzero(identity) == 1
    horizontal = D.motion_kernel(5, 0.0)
    centre = horizontal.shape[0] // 2
    np.testing.assert_allclose(horizontal[centre], [0, 0.2, 0.2, 0.2, 0.2, 0.2, 0])
    assert np.count_nonzero(np.delete(horizontal, centre, axis=0)) == 0
    np.testing.assert_allclose(D.motion_kernel(5, 90.0), horizontal.T, atol=1e-12)
    k = D.motion_kernel(7, 30.0)
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-12)  # centred: correlation = convolution
    assert k.sum() == pytest.approx(1.0)


def test_cubic_sampling_reproduces_quadratics():
    """Keys' a = -0.5 cubic convolution is exact on polynomials up to degree 2."""
    r, c = np.mgrid[0:20, 0:20].astype(float)
    img = np.stack([0.3 * r ** 2 - 0.2 * r * c + c + 1, r + 2 * c, 0.01 * c ** 2], -1)
    rng = np.random.default_rng(3)
    rows, cols = rng.uniform(3, 15, (6, 7)), rng.uniform(3, 15, (6, 7))
    expected = np.stack([0.3 * rows ** 2 - 0.2 * rows * cols + cols + 1, rows + 2 * cols, 0.01 * cols ** 2], -1)
    np.testing.assert_allclose(D.cubic_sample(img, rows, cols), expected, atol=1e-9)
    np.testing.assert_array_equal(D.cubic_sample(img, r, c), img)


def test_multi_otsu_matches_scikit_image(photos):
    samples = photos["coffee"].ravel()
    width = (samples.max() - samples.min()) / 256
    for n in (1, 2, 3):
        ours = D.multi_otsu_thresholds(samples, n)
        theirs = skfilters.threshold_multiotsu(samples, classes=n + 1, nbins=256)  # exhaustive search
        np.testing.assert_allclose(ours - width / 2, theirs, atol=1e-12)  # bin edge vs bin centre


def test_quantizers_use_at_most_their_levels(photos):
    img = photos["astronaut"]
    for level in (1, 5):
        q = distort(img, 22, level, 0)
        thresholds = D.multi_otsu_thresholds(img.ravel(), int(D.level_value(22, level)))
        assert set(np.unique(q)) <= set(thresholds)
        colours = np.unique(D.to_uint8(distort(img, 6, level, 0)).reshape(-1, 3), axis=0)
        assert len(colours) <= D.level_value(6, level)


def test_compression_levels_go_through_the_codecs(photos):
    img = photos["coffee"]
    from PIL import features

    assert features.check("jpg_2000")
    j2k = [distort(img, 9, level, 0) for level in (1, 5)]
    assert psnr(img, j2k[0]) > 25 > psnr(img, j2k[1])
    assert not np.array_equal(distort(img, 10, 1, 0), img)


# -- bad inputs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (dict(type=26, level=1), "unknown distortion type '26'"),
    (dict(type="blurry", level=1), "unknown distortion type 'blurry'"),
    (dict(type=1, level=0), "level must be an integer 1..5"),
    (dict(type=1, level=6), "level must be an integer 1..5"),
    (dict(type=1, level=2.0), "level must be an integer 1..5"),
    (dict(type=1, level=1, seed_or_rng=-1), "seed must be a non-negative integer"),
])
def test_bad_type_level_or_seed(args, needle):
    with pytest.raises(InvalidInputError, match=needle.replace(".", r"\.").replace("'", "'")):
        distort(np.zeros((40, 40, 3)), **args)


def test_bad_images():
    with pytest.raises(InvalidInputError, match="shape"):
        distort(np.zeros((40, 40)), 1, 1, 0)
    with pytest.raises(InvalidInputError, match="divide 8-bit images by 255"):
        distort(np.zeros((40, 40, 3), np.uint8), 1, 1, 0)
    with pytest.raises(InvalidInputError, match="outside"):
        distort(np.full((40, 40, 3), 1.5), 1, 1, 0)
    for type_id in (20, 23):
        with pytest.raises(InvalidInputError, match=rf"is 40x31 but .* \(type {type_id}\) needs at least 32x32"):
            distort(np.zeros((31, 40, 3)), type_id, 1, 0)
    assert distort(np.zeros((32, 32, 3)), 23, 5, 0).shape == (32, 32, 3)


@pytest.mark.parametrize("text, expected", [("1,3,10-12", [1, 3, 10, 11, 12]), ("5-5, 2", [2, 5]),
                                            ("jpeg,1", [1, 10])])
def test_parse_selection(text, expected):
    assert D.parse_selection(text, "type", 25, names=True) == expected


@pytest.mark.parametrize("text", ["0-3", "4-2", "6", "a", "", "1,,2"])
def test_parse_selection_refuses(text):
    with pytest.raises(InvalidInputError, match="level"):
        D.parse_selection(text, "level", 5)
