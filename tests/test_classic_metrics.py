"""Classic full-reference metrics against independent implementations, on real photographs.

Oracles: scikit-image's SSIM (after the reference ssim.m downsampling, written here with scipy),
torchmetrics' PSNR, MS-SSIM and VIF, and direct numpy transcriptions of the reference MATLAB code
for GMSD and MS-SSIM on sizes where the libraries' downsampling differs from the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchmetrics.functional.image as tmf
from scipy import ndimage, signal
from skimage import data
from skimage.metrics import structural_similarity

from iqa_cli import InvalidInputError, create_metric
from iqa_cli.models.classic import luma

LUMA = np.array([0.299, 0.587, 0.114])


def photo(name: str, h: int | None = None, w: int | None = None, repeat: int = 1) -> torch.Tensor:
    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[:h, :w, :3].astype(np.float64) / 255.0
    if repeat > 1:  # a cheap large image (pixel blocks) for the bigger downsampling factors
        img = img.repeat(repeat, axis=0).repeat(repeat, axis=1)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


def distortions(img: torch.Tensor) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    noise = (img + 0.06 * torch.randn(img.shape, generator=g, dtype=img.dtype)).clamp(0, 1)
    blur = torch.from_numpy(ndimage.gaussian_filter(img.numpy(), sigma=(0, 0, 2, 2)))
    dark = (img * 0.7 + 0.05).clamp(0, 1)
    return [noise, blur, dark]


PHOTOS = [("astronaut", None, None, 1),  # 512x512: ssim.m downsamples by 2
          ("coffee", 389, 517, 1),  # odd sizes
          ("chelsea", 97, 131, 1),  # small: no downsampling
          ("rocket", 331, 401, 2),  # 662x802: downsampling by 3 (where piq's own pooling differs)
          ("rocket", 320, 400, 2)]  # 640x800: MATLAB's round(2.5) is 3, Python's 2


def np_luma(x: torch.Tensor) -> np.ndarray:
    return np.tensordot(LUMA, x[0].numpy(), axes=1) * 255.0


def reference_downsample(y: np.ndarray) -> np.ndarray:
    """ssim.m: imfilter(img, ones(f)/f^2, 'symmetric', 'same') then img(1:f:end, 1:f:end)."""
    f = max(1, int(np.floor(min(y.shape) / 256 + 0.5)))  # MATLAB's round: halves away from zero
    if f == 1:
        return y
    # scipy's 'reflect' repeats the edge (MATLAB 'symmetric'); the origin puts an even window at
    # [i - (f-1)//2, i + f//2], where MATLAB centres it (floor((f+1)/2), 1-based)
    filtered = ndimage.uniform_filter(y, size=f, mode="reflect", origin=-(f // 2 - (f - 1) // 2))
    return filtered[::f, ::f]


@pytest.mark.parametrize("name,h,w,repeat", PHOTOS)
def test_ssim_matches_scikit_image_on_the_reference_pipeline(name, h, w, repeat):
    metric = create_metric("ssim")
    ref = photo(name, h, w, repeat)
    for dist in distortions(ref):
        a, b = reference_downsample(np_luma(ref)), reference_downsample(np_luma(dist))
        expected = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=255.0)
        assert float(metric(ref, dist)) == pytest.approx(expected, abs=1e-4)
    assert float(metric(ref, ref)) == pytest.approx(1.0, abs=1e-6)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - size // 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    w = np.outer(g, g)
    return w / w.sum()


def valid_filter(z: np.ndarray, win: np.ndarray) -> np.ndarray:
    """filter2(win, z, 'valid'): the window inside the image only."""
    r = win.shape[0] // 2
    return ndimage.correlate(z, win, mode="constant")[r:-r, r:-r]


def msssim_transcription(a: np.ndarray, b: np.ndarray) -> float:
    """msssim.m (Wang 2003) on 0-255 luma: valid Gaussian SSIM per scale, 2x2 symmetric mean between."""
    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    win = gaussian_window()
    out = 1.0
    for level, weight in enumerate(weights):
        if level:
            a, b = (np.pad(z, ((0, 1), (0, 1)), mode="symmetric") for z in (a, b))
            a, b = (0.25 * (z[:-1:2, :-1:2] + z[1::2, :-1:2] + z[:-1:2, 1::2] + z[1::2, 1::2]) for z in (a, b))
        mu_a, mu_b = valid_filter(a, win), valid_filter(b, win)
        saa = valid_filter(a * a, win) - mu_a ** 2
        sbb = valid_filter(b * b, win) - mu_b ** 2
        sab = valid_filter(a * b, win) - mu_a * mu_b
        cs = (2 * sab + c2) / (saa + sbb + c2)
        lum = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
        out *= max(float((lum * cs).mean() if level == len(weights) - 1 else cs.mean()), 0.0) ** weight
    return out


@pytest.mark.parametrize("size", [(304, 400), (321, 409)])
def test_ms_ssim_matches_torchmetrics_and_the_reference_transcription(size):
    metric = create_metric("ms-ssim")
    ref = photo("astronaut", *size)
    for dist in distortions(ref)[:2]:
        ours = float(metric(ref, dist))
        assert ours == pytest.approx(msssim_transcription(np_luma(ref), np_luma(dist)), abs=1e-4)
        if size[0] % 16 == 0 and size[1] % 16 == 0:  # torchmetrics drops odd rows; the reference keeps them
            theirs = tmf.multiscale_structural_similarity_index_measure(luma(dist), luma(ref), data_range=1.0,
                                                                         reduction="none")
            assert ours == pytest.approx(float(theirs), abs=1e-4)


@pytest.mark.parametrize("name,h,w,repeat", PHOTOS[:3])
def test_psnr_matches_torchmetrics_on_luma_and_rgb(name, h, w, repeat):
    ref = photo(name, h, w, repeat)
    for dist in distortions(ref):
        ours = float(create_metric("psnr")(ref, dist))
        assert ours == pytest.approx(float(tmf.peak_signal_noise_ratio(luma(dist), luma(ref), data_range=1.0)),
                                     abs=1e-4)
        rgb = float(create_metric("psnr", colour="rgb")(ref, dist))
        assert rgb == pytest.approx(float(tmf.peak_signal_noise_ratio(dist, ref, data_range=1.0)), abs=1e-4)


@pytest.mark.parametrize("name,h,w,repeat", [("astronaut", 150, 171, 1), ("chelsea", 97, 131, 1)])
def test_vif_matches_torchmetrics_with_the_reference_in_its_place(name, h, w, repeat):
    ref = photo(name, h, w, repeat)
    metric = create_metric("vif")
    for dist in distortions(ref):
        # torchmetrics takes (preds=distorted, target=reference) on the 0-255 scale
        theirs = float(tmf.visual_information_fidelity(luma(dist) * 255, luma(ref) * 255))
        assert float(metric(ref, dist)) == pytest.approx(theirs, abs=1e-4)
    assert float(metric(ref, ref)) == pytest.approx(1.0, abs=1e-4)
    noise = distortions(ref)[0]
    assert float(metric(ref, noise)) != pytest.approx(float(metric(noise, ref)), abs=1e-3)  # not symmetric


def gmsd_transcription(ref: np.ndarray, dist: np.ndarray) -> float:
    """GMSD.m (Xue et al. 2014) on 0-255 luma: conv2(·, ones(2)/4, 'same') then every other pixel,
    Prewitt gradients with zero borders, T = 170, standard deviation of the GMS map."""
    ave = np.ones((2, 2)) / 4
    # MATLAB's 'same' for an even kernel keeps full-convolution rows/columns 2..N+1
    a, b = (signal.convolve2d(z, ave, mode="full")[1:, 1:][::2, ::2] for z in (ref, dist))
    dx = np.array([[1, 0, -1]] * 3) / 3.0
    grads = [np.hypot(signal.convolve2d(z, dx, mode="same"), signal.convolve2d(z, dx.T, mode="same")) for z in (a, b)]
    gms = (2 * grads[0] * grads[1] + 170) / (grads[0] ** 2 + grads[1] ** 2 + 170)
    return float(gms.std(ddof=1))


@pytest.mark.parametrize("name,h,w,repeat", PHOTOS[:3])
def test_gmsd_matches_the_reference_transcription(name, h, w, repeat):
    ref = photo(name, h, w, repeat)
    metric = create_metric("gmsd")
    for dist in distortions(ref):
        assert float(metric(ref, dist)) == pytest.approx(gmsd_transcription(np_luma(ref), np_luma(dist)), abs=1e-4)
    assert float(metric(ref, ref)) == pytest.approx(0.0, abs=1e-7)


def test_fsim_is_one_for_a_copy_and_falls_with_distortion():
    ref = photo("coffee", 96, 128)
    metric = create_metric("fsim")
    assert float(metric(ref, ref)) == pytest.approx(1.0, abs=1e-6)
    noise, blur, _ = distortions(ref)
    scores = [float(metric(ref, d)) for d in (noise, blur)]
    assert all(0 < s < 0.99 for s in scores)
    grey = create_metric("fsim", chromatic=False)
    assert float(grey(ref, noise)) != pytest.approx(scores[0], abs=1e-4)  # FSIMc adds the chromatic terms


def test_classic_metrics_are_batched_and_point_the_documented_way():
    ref = photo("astronaut", 176, 168)
    noise, blur, _ = distortions(ref)
    for name in ("psnr", "ssim", "ms-ssim", "fsim", "gmsd", "vif"):
        metric = create_metric(name)
        batch = metric(torch.cat([ref, ref]), torch.cat([noise, blur]))
        one = torch.stack([metric(ref, noise)[0], metric(ref, blur)[0]])
        torch.testing.assert_close(batch, one, rtol=1e-6, atol=1e-6)
        better, worse = float(metric(ref, ref)), float(metric(ref, noise))
        assert (better < worse) if metric.lower_better else (better > worse), name


@pytest.mark.parametrize("name,side", [("ssim", 10), ("ms-ssim", 160), ("vif", 40)])
def test_images_below_a_metric_s_smallest_size_are_one_clear_error(name, side):
    img = torch.rand(1, 3, side, side + 3)
    with pytest.raises(InvalidInputError, match=rf"{side + 3}x{side} pixels, but {name} needs"):
        create_metric(name)(img, img)
