"""FSIM / FSIMc against a numpy transcription of the published algorithm, on real photographs.

The oracle below is written from Zhang, Zhang, Mou and Zhang, "FSIM: A Feature Similarity Index for
Image Quality Assessment" (IEEE TIP 2011) and the authors' reference MATLAB code (FeatureSIM.m with
Kovesi's phase congruency, phasecong2), step by step and in float64:

  colour      Y = 0.299 R + 0.587 G + 0.114 B, I = 0.596 R - 0.274 G - 0.322 B,
              Q = 0.211 R - 0.523 G + 0.312 B, on the 0-255 scale
  downsample  F = max(1, round(min(H, W) / 256)) with MATLAB's round (halves away from zero);
              conv2(., ones(F) / F^2, 'same') (zero borders) then every F-th pixel from the first
  PC          log-Gabor filters, 4 scales x 4 orientations, minWaveLength 6, mult 2,
              sigmaOnf 0.55, dThetaOnSigma 1.2, k 2, epsilon 1e-4, Butterworth low-pass
              (cutoff 0.45, order 15), noise threshold from the median of the smallest scale's
              squared amplitude (Rayleigh model, divided by 1.7), PC = sum(energy) / sum(amplitude)
  gradient    Scharr dx = [3 0 -3; 10 0 -10; 3 0 -3] / 16 and its transpose, conv2 'same'
  pooling     S_PC (T1 0.85) * S_G (T2 160) [* real((S_I S_Q)^0.03), T3 = T4 = 200] weighted by
              PC_m = max(PC1, PC2)

piq.fsim itself misses this oracle by up to 3e-3 (its average pooling, on odd sizes and for f = 3)
and 4e-4 (|S_I S_Q|^0.03 for the real part, where hues flip); iqa's FSIM assembles piq's phase
congruency the reference's way (models/classic.py), and these tests hold it to 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal

from iqa_cli import create_metric

from test_classic_metrics import distortions, photo

N_SCALES, N_ORIENT = 4, 4
MIN_WAVELENGTH, MULT, SIGMA_ON_F, D_THETA_ON_SIGMA, K_NOISE, EPSILON = 6, 2, 0.55, 1.2, 2.0, 1e-4


def matlab_round(v: float) -> int:
    return int(np.floor(v + 0.5))


def centred_range(n: int) -> np.ndarray:
    """phasecong2's normalised frequency coordinates (+/- 0.5) for odd and even lengths."""
    if n % 2:
        return np.arange(-(n - 1) / 2, (n - 1) / 2 + 1) / (n - 1)
    return np.arange(-n / 2, n / 2) / n


def phase_congruency(im: np.ndarray) -> np.ndarray:
    rows, cols = im.shape
    spectrum = np.fft.fft2(im)
    x, y = np.meshgrid(centred_range(cols), centred_range(rows))  # x along columns, y along rows
    radius = np.sqrt(x ** 2 + y ** 2)
    lowpass = np.fft.ifftshift(1.0 / (1.0 + (radius / 0.45) ** 30))
    theta = np.fft.ifftshift(np.arctan2(-y, x))
    radius = np.fft.ifftshift(radius)
    radius[0, 0] = 1.0
    log_gabor = []
    for s in range(N_SCALES):
        fo = 1.0 / (MIN_WAVELENGTH * MULT ** s)
        g = np.exp(-np.log(radius / fo) ** 2 / (2 * np.log(SIGMA_ON_F) ** 2)) * lowpass
        g[0, 0] = 0.0
        log_gabor.append(g)
    theta_sigma = np.pi / N_ORIENT / D_THETA_ON_SIGMA
    energy_all = np.zeros_like(im)
    amplitude_all = np.zeros_like(im)
    for o in range(N_ORIENT):
        angle = o * np.pi / N_ORIENT
        ds = np.sin(theta) * np.cos(angle) - np.cos(theta) * np.sin(angle)
        dc = np.cos(theta) * np.cos(angle) + np.sin(theta) * np.sin(angle)
        spread = np.exp(-np.arctan2(ds, dc) ** 2 / (2 * theta_sigma ** 2))
        filters = [lg * spread for lg in log_gabor]
        responses = [np.fft.ifft2(spectrum * f) for f in filters]
        sum_e = sum(r.real for r in responses)
        sum_o = sum(r.imag for r in responses)
        amplitude_all += sum(np.abs(r) for r in responses)
        x_energy = np.sqrt(sum_e ** 2 + sum_o ** 2) + EPSILON
        mean_e, mean_o = sum_e / x_energy, sum_o / x_energy
        energy = sum(r.real * mean_e + r.imag * mean_o - np.abs(r.real * mean_o - r.imag * mean_e)
                     for r in responses)
        # noise: the smallest scale's squared amplitude is chi-squared with 2 degrees of freedom
        noise_power = (-np.median(np.abs(responses[0]) ** 2) / np.log(0.5)) / np.sum(filters[0] ** 2)
        spatial = [np.real(np.fft.ifft2(f)) * np.sqrt(rows * cols) for f in filters]
        sum_an2 = sum(np.sum(h ** 2) for h in spatial)
        sum_ai_aj = sum(np.sum(spatial[i] * spatial[j]) for i in range(N_SCALES) for j in range(i + 1, N_SCALES))
        tau = np.sqrt((2 * noise_power * sum_an2 + 4 * noise_power * sum_ai_aj) / 2)
        threshold = (tau * np.sqrt(np.pi / 2) + K_NOISE * np.sqrt((2 - np.pi / 2) * tau ** 2)) / 1.7
        energy_all += np.maximum(energy - threshold, 0.0)
    return energy_all / amplitude_all


def downsample(z: np.ndarray, f: int) -> np.ndarray:
    """conv2(z, ones(f)/f^2, 'same') then z(1:f:end, 1:f:end): zero borders, the window of output i
    spans i - (f-1)//2 .. i + f//2 (conv2 'same' keeps full-convolution entries from floor(f/2) on)."""
    if f == 1:
        return z
    full = signal.convolve2d(z, np.ones((f, f)) / f ** 2, mode="full")
    same = full[f // 2:f // 2 + z.shape[0], f // 2:f // 2 + z.shape[1]]
    return same[::f, ::f]


def fsim_reference(ref: torch.Tensor, dist: torch.Tensor) -> tuple[float, float]:
    """(FSIM, FSIMc) of two (1, 3, H, W) tensors in [0, 1], as FeatureSIM.m computes them."""
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    a, b = (np.tensordot(yiq, t[0].double().numpy() * 255.0, axes=1) for t in (ref, dist))
    f = max(1, matlab_round(min(a.shape[1:]) / 256))
    (y1, i1, q1), (y2, i2, q2) = ([downsample(c, f) for c in img] for img in (a, b))
    pc1, pc2 = phase_congruency(y1), phase_congruency(y2)
    dx = np.array([[3, 0, -3], [10, 0, -10], [3, 0, -3]]) / 16
    g1, g2 = (np.hypot(signal.convolve2d(y, dx, mode="same"), signal.convolve2d(y, dx.T, mode="same"))
              for y in (y1, y2))
    s_pc = (2 * pc1 * pc2 + 0.85) / (pc1 ** 2 + pc2 ** 2 + 0.85)
    s_g = (2 * g1 * g2 + 160) / (g1 ** 2 + g2 ** 2 + 160)
    pc_m = np.maximum(pc1, pc2)
    s_i = (2 * i1 * i2 + 200) / (i1 ** 2 + i2 ** 2 + 200)
    s_q = (2 * q1 * q2 + 200) / (q1 ** 2 + q2 ** 2 + 200)
    # MATLAB's .^ of a negative base is complex; the reference keeps its real part
    chroma = np.real(np.power((s_i * s_q).astype(complex), 0.03))
    fsim = float(np.sum(s_g * s_pc * pc_m) / np.sum(pc_m))
    fsimc = float(np.sum(s_g * s_pc * chroma * pc_m) / np.sum(pc_m))
    return fsim, fsimc


def channel_swap(img: torch.Tensor) -> torch.Tensor:
    """BGR for RGB: hues flip, so S_I S_Q < 0 over much of the image (the reference's real part counts)."""
    return img[:, [2, 1, 0]]


FSIM_PHOTOS = [("chelsea", 97, 131, 1, 3),  # odd sizes, no downsampling: noise, blur, darkening
               ("coffee", 389, 517, 1, 1),  # F = 2 on odd sizes: the reference keeps the last, zero-padded row
               ("rocket", 320, 400, 2, 1)]  # 640x800: MATLAB's round(2.5) = 3 (Python's gives 2)


@pytest.mark.parametrize("name,h,w,repeat,n_distortions", FSIM_PHOTOS)
def test_fsim_and_fsimc_match_the_reference_transcription(name, h, w, repeat, n_distortions):
    ref = photo(name, h, w, repeat)
    grey, colour = create_metric("fsim", chromatic=False), create_metric("fsim")
    for dist in distortions(ref)[:n_distortions] + [channel_swap(ref)]:
        expected_grey, expected_colour = fsim_reference(ref, dist)
        # in float32, as the CLI computes (float64 moves the differences by about 1e-6)
        ref32, dist32 = ref.float(), dist.float()
        assert float(grey(ref32, dist32)) == pytest.approx(expected_grey, abs=1e-4)
        assert float(colour(ref32, dist32)) == pytest.approx(expected_colour, abs=1e-4)
    assert float(colour(ref, ref)) == pytest.approx(1.0, abs=1e-6)
