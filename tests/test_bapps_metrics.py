"""BAPPS protocol scores and the classic baselines against independent computations.

JND AP: hand-computed cases and a plain-Python VOC AP written differently from the library's.
Baselines: scikit-image (rgb2lab, structural_similarity with the old defaults) and a naive
window-by-window SSIM.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from iqa_cli.errors import InvalidInputError
from iqa_cli.models.bapps_baselines import dssim_distance, l2_distance, srgb_to_lab, ssim
from iqa_cli.stats.bapps import jnd_average_precision, two_afc_agreement, two_afc_score, voc_ap


# -- 2AFC ------------------------------------------------------------------------------------------
def test_two_afc_hand_cases():
    # p0 closer (d0<d1) while 20% preferred p1 -> 0.8; p1 closer -> 0.2; tie -> 0.5
    assert two_afc_agreement([0.1, 0.3, 0.2], [0.2, 0.1, 0.2], [0.2, 0.2, 0.2]).tolist() == pytest.approx([0.8, 0.2, 0.5])
    assert two_afc_score([0.1, 0.3, 0.2], [0.2, 0.1, 0.2], [0.2, 0.2, 0.2]) == pytest.approx(0.5)
    assert two_afc_score([0.0], [1.0], [0.0]) == 1.0  # everyone agrees with the metric
    assert two_afc_score([0.0], [1.0], [1.0]) == 0.0  # everyone disagrees
    assert two_afc_score([0.4, 0.4], [0.4, 0.4], [0.0, 1.0]) == 0.5  # all ties


def test_two_afc_matches_loop_and_flattens(rng):
    d0 = rng.uniform(size=200).round(2)  # rounding makes ties
    d1 = rng.uniform(size=200).round(2)
    h = rng.integers(0, 6, size=200) / 5
    expected = []
    for a, b, j in zip(d0, d1, h):
        expected.append(1 - j if a < b else (j if b < a else 0.5))
    assert two_afc_score(d0.reshape(-1, 1, 1, 1), d1, h.reshape(-1, 1)) == pytest.approx(sum(expected) / 200, abs=1e-12)


def test_two_afc_length_mismatch():
    with pytest.raises(InvalidInputError, match="one value per item"):
        two_afc_score([0.1, 0.2], [0.1], [0.5, 0.5])


# -- JND -------------------------------------------------------------------------------------------
def ap_by_hand(d, same):
    """VOC 'all points' AP, loop form: sum of recall steps x best precision at or after the step."""
    d = [float(x) for x in np.ravel(d)]
    same = [float(x) for x in np.ravel(same)]
    order = sorted(range(len(d)), key=lambda i: d[i])  # Python's sort is stable, like the library's
    total = sum(same)
    tp = fp = 0.0
    precisions, recalls = [], []
    for i in order:
        tp += same[i]
        fp += 1 - same[i]
        precisions.append(tp / (tp + fp))
        recalls.append(tp / total)
    ap, previous = 0.0, 0.0
    for k, r in enumerate(recalls):
        if r != previous:
            ap += (r - previous) * max(precisions[k:])
            previous = r
    return ap


@pytest.mark.parametrize("d, same, expected", [
    ([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0], 0.5 * 1 + 0.5 * 2 / 3),
    ([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1], 0.5 * 0.5 + 0.5 * 0.5),  # worst order: precision 1/3 then 1/2
    ([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0], 1.0),  # perfect order
    ([0.4, 0.3, 0.2, 0.1], [1, 1, 1, 1], 1.0),  # all same
    ([0.2, 0.2, 0.1], [0, 1, 1], 0.5 * 1 + 0.5 * 2 / 3),  # tie at 0.2 keeps dataset order: 0 then 1
    ([0.2, 0.1], [0.5, 1.0], 2 / 3 * 1 + 1 / 3 * 0.75),  # fractional "same" counts fractionally
    ([0.1, 0.2], [0.5, 1.0], 1 / 3 * 0.75 + 2 / 3 * 0.75),
])
def test_jnd_ap_hand_cases(d, same, expected):
    assert jnd_average_precision(d, same) == pytest.approx(expected, abs=1e-12)
    assert ap_by_hand(d, same) == pytest.approx(expected, abs=1e-12)


def test_jnd_ap_all_different_is_undefined():
    assert math.isnan(jnd_average_precision([0.1, 0.2, 0.3], [0, 0, 0]))


@pytest.mark.parametrize("seed", range(5))
def test_jnd_ap_matches_independent_loop(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    d = rng.uniform(size=n).round(int(rng.integers(1, 4)))  # coarse rounding -> many ties
    same = rng.integers(0, 4, size=n) / 3
    same[0] = 1.0  # at least one positive
    assert jnd_average_precision(d, same) == pytest.approx(ap_by_hand(d, same), abs=1e-12)


def test_jnd_ap_flattens_before_sorting(rng):
    """The original code sorted an (N,1,1,1) array, i.e. nothing; flattening first fixes that."""
    d = rng.uniform(size=50)
    same = (rng.uniform(size=50) > 0.5).astype(float)
    same[0] = 1
    flat = jnd_average_precision(d, same)
    assert jnd_average_precision(d.reshape(-1, 1, 1, 1), same.reshape(-1, 1)) == flat
    # what the bug computed: argsort along the last (size-1) axis gives index 0 everywhere, so the
    # "sorted" same values are the first pair's, repeated, and the AP is just same[0]
    buggy = np.argsort(d.reshape(-1, 1, 1, 1))
    assert (buggy == 0).all()
    s = same[buggy].ravel()
    tp, fp = np.cumsum(s), np.cumsum(1 - s)
    assert voc_ap(tp / s.sum(), tp / (tp + fp)) == pytest.approx(same[0])
    assert flat != pytest.approx(same[0])


def test_voc_ap_sentinels():
    # recall never reaches 1: the last step to the sentinel contributes precision 0
    assert voc_ap([0.5], [1.0]) == pytest.approx(0.5)
    assert voc_ap([0.5, 1.0], [0.2, 0.9]) == pytest.approx(0.5 * 0.9 + 0.5 * 0.9)  # envelope lifts the first


# -- colour and baselines --------------------------------------------------------------------------
def _images(rng, n=3, size=16):
    a = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, size=a.shape), 0, 255).astype(np.uint8)
    return a, b


def test_srgb_to_lab_matches_skimage(rng):
    from skimage.color import rgb2lab

    every = np.stack(np.meshgrid(np.arange(256), np.arange(0, 256, 15), np.arange(0, 256, 15)), -1)
    every = every.reshape(-1, 1, 3).astype(np.uint8)
    np.testing.assert_allclose(srgb_to_lab(every), rgb2lab(every), atol=1e-10, rtol=0)
    img = rng.integers(0, 256, size=(2, 9, 7, 3), dtype=np.uint8)
    np.testing.assert_allclose(srgb_to_lab(img), np.stack([rgb2lab(i) for i in img]), atol=1e-10, rtol=0)
    np.testing.assert_allclose(srgb_to_lab(img / 255.0), srgb_to_lab(img), atol=1e-12)


def test_l2_rgb_definition(rng):
    a, b = _images(rng)
    x0, x1 = a / 127.5 - 1, b / 127.5 - 1  # [-1, 1]
    expected = [np.mean((x0[i] - x1[i]) ** 2) for i in range(len(a))]
    np.testing.assert_allclose(l2_distance(a, b, "RGB"), expected, rtol=1e-12)


def test_l2_lab_matches_skimage(rng):
    from skimage.color import rgb2lab

    a, b = _images(rng)
    expected = [0.5 * np.mean((rgb2lab(a[i]) / 100 - rgb2lab(b[i]) / 100) ** 2) for i in range(len(a))]
    np.testing.assert_allclose(l2_distance(a, b, "Lab"), expected, rtol=1e-10)
    assert l2_distance(a, a, "lab").tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("colorspace", ["RGB", "Lab"])
def test_dssim_matches_skimage(rng, colorspace):
    from skimage.color import rgb2lab
    from skimage.metrics import structural_similarity

    a, b = _images(rng, size=24)
    expected = []
    for x, y in zip(a, b):
        if colorspace == "Lab":
            x, y, data_range = rgb2lab(x), rgb2lab(y), 100
        else:
            data_range = 255
        s = structural_similarity(x, y, win_size=7, use_sample_covariance=True, gaussian_weights=False,
                                  K1=0.01, K2=0.03, data_range=data_range, channel_axis=-1)
        expected.append((1 - s) / 2)
    np.testing.assert_allclose(dssim_distance(a, b, colorspace), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dssim_distance(a, a, colorspace), 0.0, atol=1e-12)


def test_ssim_naive_windows(rng):
    """SSIM from its definition, one 7x7 window at a time (sample statistics), averaged."""
    x = rng.uniform(0, 255, size=(1, 11, 10, 2))
    y = np.clip(x + rng.normal(0, 30, size=x.shape), 0, 255)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for c in range(2):
        for i in range(11 - 6):
            for j in range(10 - 6):
                wx, wy = x[0, i:i + 7, j:j + 7, c].ravel(), y[0, i:i + 7, j:j + 7, c].ravel()
                mx, my = wx.mean(), wy.mean()
                vx, vy = wx.var(ddof=1), wy.var(ddof=1)
                cov = np.sum((wx - mx) * (wy - my)) / (wx.size - 1)
                values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    assert ssim(x, y, data_range=255)[0] == pytest.approx(np.mean(values), rel=1e-9)


def test_baseline_input_checks(rng):
    a, _ = _images(rng)
    with pytest.raises(InvalidInputError, match="uint8"):
        l2_distance(a.astype(float), a)
    with pytest.raises(InvalidInputError, match="colorspace"):
        dssim_distance(a, a, "XYZ")
    with pytest.raises(InvalidInputError, match="at least 7x7"):
        dssim_distance(a[:, :5, :5], a[:, :5, :5])
    single = l2_distance(a[0], a[0])  # one (H, W, 3) pair
    assert single.shape == (1,)
