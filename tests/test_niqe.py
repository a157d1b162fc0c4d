"""NIQE against BasicSR's faithful port of the official MATLAB code, on real photographs.

The oracle (tests/niqe_oracle.py) is fetched from PyPI at test time and gets its grey input from
a transcription of MATLAB's rgb2gray written here; its pristine parameters come from the same
bundled .npz. MATLAB imresize is checked against the oracle's (same algorithm) and known
properties; grey conversions against transcriptions; batching, sizes, files and errors directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

import niqe_oracle
from iqa_cli.errors import InvalidInputError, WeightsError
from iqa_cli.io.patches import gaussian_window, sigma_map, tile_sums
from iqa_cli.models.mvg import MVG
from iqa_cli.models.niqe import (NIQE, _features, _mscn, imresize, load_pristine_model, niqe_features,
                                 official_pristine_path, official_window, save_pristine_model, to_grey)

PHOTOS = ("camera", "astronaut", "chelsea", "coffee", "rocket")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def oracle():
    return niqe_oracle.load()


@pytest.fixture(scope="module")
def pristine_params():
    with np.load(str(official_pristine_path()), allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def photo(name: str) -> np.ndarray:
    """A scikit-image photograph as uint8 (H, W, 3)."""
    from skimage import data

    img = getattr(data, name)()
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def blurred(img: np.ndarray, sigma: float) -> np.ndarray:
    x = img.astype(np.float64)
    out = np.stack([gaussian_filter(x[..., c], sigma) for c in range(3)], axis=-1)
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def noisy(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, img.shape)
    return np.clip((img + noise).round(), 0, 255).astype(np.uint8)


def as_batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(torch.float32) / 255


def matlab_rgb2gray(img: np.ndarray) -> np.ndarray:
    """MATLAB rgb2gray on uint8: weights = first row of inv(NTSC YIQ matrix), rounded to uint8."""
    coef = np.linalg.inv(np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]]))[0]
    return np.round(img.astype(np.float64) @ coef)


# -- against the oracle ----------------------------------------------------------------------------

def _cases():
    cases = [(name, photo(name)) for name in PHOTOS]
    for name in ("astronaut", "coffee"):
        cases += [(f"{name}+blur2", blurred(photo(name), 2.0)), (f"{name}+noise10", noisy(photo(name), 10.0))]
    return cases


@pytest.mark.slow
def test_niqe_matches_the_basicsr_port_of_matlab(oracle, pristine_params):
    """Within 1e-3 of the port as shipped (its float32 imresize); within 1e-4 (4 significant
    digits, MATLAB's double precision) of the same port with its imresize in float64."""
    metric = NIQE()
    mu, cov, window = (pristine_params[k] for k in ("mu_pris_param", "cov_pris_param", "gaussian_window"))
    for label, img in _cases():
        ours = float(metric(as_batch(img))[0])
        grey = matlab_rgb2gray(img)
        ref64 = oracle.niqe64(grey, mu, cov, window)
        assert ours == pytest.approx(ref64, rel=1e-4), label
        if label in ("camera", "rocket"):  # the port exactly as released (flat skies: the most sensitive)
            assert ours == pytest.approx(oracle.niqe.niqe(grey, mu, cov, window), rel=1e-3), label


@pytest.mark.slow
def test_y_channel_option_matches_the_port_default(oracle, pristine_params):
    """``grey="y"`` is BasicSR's default input: the Y of MATLAB's YCbCr of a BGR image, rounded
    (its calculate_niqe steps, with the pristine parameters of the bundled .npz)."""
    img = photo("chelsea")
    port = oracle.niqe
    y = port.to_y_channel(port.reorder_image(img[..., ::-1].astype(np.float32), input_order="HWC")).squeeze().round()
    ref = port.niqe(y.astype(np.float64), *(pristine_params[k] for k in ("mu_pris_param", "cov_pris_param",
                                                                         "gaussian_window")))
    assert float(NIQE(grey="y")(as_batch(img))[0]) == pytest.approx(ref, rel=1e-3)


@pytest.mark.parametrize("shape,scale", [((96, 96), 0.5), ((97, 61), 0.5), ((50, 40), 0.25), ((64, 45), 0.3),
                                         ((40, 33), 0.75), ((17, 23), 2.0), ((20, 16), 1.7)])
def test_imresize_matches_the_oracles(oracle, shape, scale):
    x = np.random.default_rng(1).random((*shape, 2))
    ours = imresize(torch.from_numpy(x).permute(2, 0, 1), scale=scale).permute(1, 2, 0).numpy()
    ref64 = oracle.imresize64(x, scale=scale, antialiasing=True)
    np.testing.assert_allclose(ours, ref64, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours, oracle.imresize(x, scale=scale, antialiasing=True), rtol=0, atol=1e-5)


def test_imresize_properties():
    # MATLAB's size rule ceil(scale * n); a constant stays constant (normalised weights, mirrored borders)
    out = imresize(torch.full((2, 101, 67), 0.7, dtype=torch.float64), scale=0.5)
    assert out.shape == (2, 51, 34)
    assert torch.allclose(out, torch.full_like(out, 0.7), atol=1e-14)
    # a linear ramp is reproduced away from the borders: output sample k sits at input 2k - 0.5 (1-based)
    ramp = torch.arange(1, 41, dtype=torch.float64).repeat(8, 1)
    row = imresize(ramp, scale=0.5)[2]
    k = torch.arange(1, 21, dtype=torch.float64)
    assert torch.allclose(row[3:-3], (2 * k - 0.5)[3:-3], atol=1e-12)
    # linear in the input, and the same on every leading index
    a, b = torch.rand(3, 30, 30, dtype=torch.float64), torch.rand(3, 30, 30, dtype=torch.float64)
    assert torch.allclose(imresize(2 * a + b, scale=0.5), 2 * imresize(a, scale=0.5) + imresize(b, scale=0.5))
    assert torch.equal(imresize(a, scale=0.5)[1], imresize(a[1], scale=0.5))
    assert imresize(a, size=(10, 20)).shape == (3, 10, 20)
    # torch's own antialiased bicubic is another filter (why imresize exists)
    theirs = torch.nn.functional.interpolate(a[None], scale_factor=0.5, mode="bicubic", antialias=True)[0]
    assert (theirs - imresize(a, scale=0.5)).abs().max() > 1e-3


# -- parts against transcriptions ------------------------------------------------------------------

def test_grey_conversions_are_matlabs():
    img = np.random.default_rng(2).integers(0, 256, (2, 7, 9, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255
    np.testing.assert_array_equal(to_grey(x).numpy(), np.stack([matlab_rgb2gray(i) for i in img]))
    rgb = img.astype(np.float64) / 255
    y = np.round(16 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2])
    np.testing.assert_array_equal(to_grey(x, "y").numpy(), y)
    with pytest.raises(InvalidInputError, match="grey conversion"):
        to_grey(x, "lab")


def test_window_and_sigma_map():
    np.testing.assert_allclose(official_window(), gaussian_window(), rtol=0, atol=1e-16)
    grey = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (1, 40, 50)).astype(np.float64))
    _, sigma = _mscn(grey, official_window())
    np.testing.assert_allclose(sigma[0].numpy(), sigma_map(grey[0].numpy(), "replicate"), rtol=1e-9, atol=1e-9)
    # the per-block sharpness NIQE's pristine rule uses: the block mean of that sigma map
    img = grey.repeat(1, 5, 4)  # 200 x 200: 2 x 2 blocks of 96 after the crop
    _, sharp = niqe_features(img)
    expected = tile_sums(sigma_map(img[0, :192, :192].numpy(), "replicate"), 96) / 96 ** 2
    np.testing.assert_allclose(sharp[0].numpy(), expected, rtol=1e-9)


def test_single_block_image_uses_a_zero_test_covariance(pristine_params):
    """MATLAB's nancov normalises one observation by 1: the covariance of a 1-block image is 0."""
    img = photo("chelsea")[:150, :130]
    metric = NIQE()
    features = metric.features(as_batch(img))[0, 0].numpy()
    d = pristine_params["mu_pris_param"][0] - features
    expected = np.sqrt(d @ np.linalg.pinv(pristine_params["cov_pris_param"] / 2) @ d)
    assert float(metric(as_batch(img))[0]) == pytest.approx(expected, rel=1e-10)


# -- behaviour -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_niqe_rises_with_blur_and_noise():
    metric = NIQE()
    for name in ("astronaut", "chelsea"):
        img = photo(name)
        blur = metric(as_batch(img, *(blurred(img, s) for s in (1.0, 2.0, 4.0))))
        noise = metric(as_batch(img, *(noisy(img, s) for s in (10.0, 25.0, 50.0))))
        assert torch.all(blur.diff() > 0), (name, blur)
        assert torch.all(noise.diff() > 0), (name, noise)


def test_batched_equals_one_by_one():
    img = photo("astronaut")
    crops = [img[:200, :300], img[100:300, 150:450], noisy(img[300:500, 200:500], 8.0)]
    metric = NIQE()
    batched = metric(as_batch(*crops))
    single = torch.cat([metric(as_batch(c)) for c in crops])
    assert batched.shape == (3,) and batched.dtype == torch.float64
    assert torch.allclose(batched, single, rtol=1e-12, atol=0)
    # the CPU goes image by image (cache); the batched tensor path (what a GPU runs) gives the same
    grey = to_grey(as_batch(*crops))
    together, sharp = _features(grey, 96)
    apart = [_features(g[None], 96) for g in grey]
    assert torch.allclose(together, torch.cat([f for f, _ in apart]), rtol=1e-12, atol=1e-12, equal_nan=True)
    assert torch.allclose(sharp, torch.cat([s for _, s in apart]), rtol=1e-12)
    assert metric.lower_better is True and metric.kind == "nr"


def test_flat_image_is_nan():
    """No texture: every AGGD fit fails, as in MATLAB (NaN), and the batch's other scores stand."""
    flat = np.full((192, 192, 3), 128, np.uint8)
    scores = NIQE()(as_batch(flat, photo("coffee")[:192, :192]))
    assert torch.isnan(scores[0]) and torch.isfinite(scores[1])


@pytest.mark.cuda
def test_cuda_equals_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = as_batch(photo("coffee")[:288, :384], noisy(photo("coffee")[:288, :384], 10.0))
    cpu = NIQE()(x)
    gpu = NIQE().cuda()(x.cuda()).cpu()
    assert torch.allclose(cpu, gpu, rtol=1e-6)


# -- pristine model files and errors ---------------------------------------------------------------

def test_pristine_model_files(tmp_path, pristine_params):
    official, block = load_pristine_model()
    assert block == 96
    np.testing.assert_array_equal(official.mean.numpy(), pristine_params["mu_pris_param"][0])
    model = MVG(official.mean + 0.1, official.cov * 1.5)
    path = save_pristine_model(model, tmp_path / "mine.npz")
    with np.load(path, allow_pickle=False) as d:
        assert d["mu_pris_param"].shape == (1, 36) and d["cov_pris_param"].shape == (36, 36)
    img = as_batch(photo("chelsea")[:200, :300])
    assert torch.equal(NIQE(pristine=path)(img), NIQE(pristine=model)(img))
    assert not torch.equal(NIQE(pristine=path)(img), NIQE()(img))
    np.savez(tmp_path / "bad.npz", mu_pris_param=np.zeros((1, 10)), cov_pris_param=np.eye(10))
    with pytest.raises(WeightsError, match="bad.npz"):
        NIQE(pristine=tmp_path / "bad.npz")
    with pytest.raises(WeightsError, match="no such NIQE pristine model"):
        NIQE(pristine=tmp_path / "missing.npz")


def test_bad_input_is_one_line_error():
    metric = NIQE()
    with pytest.raises(InvalidInputError, match=r"images: 200x80 pixels, but niqe needs at least 96x96"):
        metric(torch.rand(1, 3, 80, 200))
    with pytest.raises(InvalidInputError, match=r"^small.png: 95x300 pixels, but niqe needs at least 96x96"):
        metric.check_size((300, 95), name="small.png")
    metric.check_size((96, 96))
    assert metric(torch.rand(3, 100, 100)).shape == (1,)  # one channels-first image is a batch of one
    with pytest.raises(InvalidInputError, match=r"\(N, 3, H, W\)"):
        metric(torch.rand(2, 5, 100, 100))
