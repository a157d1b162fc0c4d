"""GRepQ's low-level encoder, patches, pristine hand-off and Q_L against transcriptions of grepq.md.

All weights are random (generated here); checkpoints go through the real loading path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from scipy import ndimage
from torch import nn

from iqa_cli.errors import InvalidInputError, WeightsError
from iqa_cli.models.grepq import (
    GRepQZeroShot,
    LowLevelEncoder,
    load_low_level_encoder,
    patch_features,
    pristine_mvg,
)


def photo(name: str, scale: float) -> np.ndarray:
    """A real photograph from scikit-image, float64 (H, W, 3) in [0, 1], downscaled."""
    from skimage import data, transform

    image = getattr(data, name)()[..., :3] / 255.0
    return transform.rescale(image, scale, channel_axis=2, anti_aliasing=True)


def to_batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([im.transpose(2, 0, 1) for im in images])).float()


@pytest.fixture(scope="module")
def encoder() -> LowLevelEncoder:
    torch.manual_seed(7)
    enc = LowLevelEncoder()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is really exercised
        for m in enc.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return enc.eval()


# -- transcriptions of grepq.md ----------------------------------------------------------------
def transcribed_llm(encoder: LowLevelEncoder, x: torch.Tensor) -> torch.Tensor:
    """ResNet-18 without fc -> 512-d GAP -> Linear(512,512) -> ReLU -> Linear(512,128), from the parts."""
    b = encoder.backbone
    with torch.no_grad():
        y = b.maxpool(torch.relu(b.bn1(b.conv1(x))))
        y = b.layer4(b.layer3(b.layer2(b.layer1(y))))
        pooled = y.mean(dim=(2, 3))
        lin1, lin2 = encoder.head[0], encoder.head[2]
        hidden = torch.clamp(pooled @ lin1.weight.T + lin1.bias, min=0)
        return hidden @ lin2.weight.T + lin2.bias


def transcribed_patches(image: np.ndarray, size: int = 96, stride: int = 48) -> np.ndarray:
    """Every size x size patch at stride, remainder dropped, row-major: (n, 3, size, size)."""
    h, w = image.shape[:2]
    out = [image[y:y + size, x:x + size].transpose(2, 0, 1)
           for y in range(0, h - size + 1, stride) for x in range(0, w - size + 1, stride)]
    return np.stack(out)


def transcribed_pristine_selection(image: np.ndarray, size: int = 96, sharpness: float = 0.75,
                                   colourfulness: float = 0.80) -> np.ndarray:
    """grepq.md's pristine patch rule: non-overlapping patches, NIQE sharpness then colourfulness."""
    grey = 0.2989 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]
    ax = np.arange(7) - 3
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * (7 / 6) ** 2))
    g /= g.sum()
    mu = ndimage.correlate(grey, g, mode="constant")
    sigma = np.sqrt(np.abs(ndimage.correlate(grey * grey, g, mode="constant") - mu * mu))
    h, w = grey.shape
    corners = [(y, x) for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]
    delta = np.array([sigma[y:y + size, x:x + size].sum() for y, x in corners])
    sharp = [c for c, d in zip(corners, delta) if d > sharpness * delta.max()]
    colour = []
    for y, x in sharp:
        p = image[y:y + size, x:x + size]
        rg = np.abs(p[..., 0] - p[..., 1])
        yb = np.abs((p[..., 0] + p[..., 1]) / 2 - p[..., 2])
        colour.append(np.sqrt(rg.std(ddof=1) ** 2 + yb.std(ddof=1) ** 2) + np.sqrt(rg.mean() ** 2 + yb.mean() ** 2))
    colour = np.array(colour)
    kept = [c for c, v in zip(sharp, colour) if v > colourfulness * colour.max()]
    return np.stack([image[y:y + size, x:x + size].transpose(2, 0, 1) for y, x in kept])


def transcribed_q_low(f_pristine: np.ndarray, f_test: np.ndarray) -> tuple[float, float]:
    mu_p, mu_t = f_pristine.mean(axis=0), f_test.mean(axis=0)
    cov_p, cov_t = np.cov(f_pristine, rowvar=False), np.cov(f_test, rowvar=False)
    d = mu_p - mu_t
    dist = math.sqrt(d @ np.linalg.inv((cov_p + cov_t) / 2 + 0.001 * np.eye(len(d))) @ d)
    return 1 - 1 / (1 + math.exp(-dist / 100)), dist


# -- tests -------------------------------------------------------------------------------------
def test_low_level_features_equal_the_transcription(encoder):
    x = to_batch(photo("astronaut", 0.25), photo("coffee", 0.32)[:128, :128])
    np.testing.assert_allclose(encoder(x).detach().numpy(), transcribed_llm(encoder, x).numpy(), rtol=1e-5, atol=1e-5)
    assert encoder(x).shape == (2, 128)
    # uint8 input is the same image scaled by 1/255
    u8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(encoder(u8), encoder(u8.float() / 255))


def _authors_layout(seed: int) -> nn.Module:
    """The authors' low-level network layout: resnet18 kept whole and again as a Sequential of its
    children but the classifier, plus an MLP head (state-dict names only matter here)."""
    torch.manual_seed(seed)
    extractor = nn.Module()
    extractor.base_model = torchvision.models.resnet18(weights=None)
    extractor.resnet18 = nn.Sequential(*list(extractor.base_model.children())[:-1])
    net = nn.Module()
    net.encoder = extractor
    net.head = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
    return net.eval()


def test_authors_checkpoint_loads_strictly_and_gives_their_features(tmp_path):
    net = _authors_layout(3)
    state = {"module." + k: v for k, v in net.state_dict().items()}
    path = tmp_path / "low_level_model_weights.tar"
    torch.save({"model": {"state_dict": state}, "epoch": 15}, path)
    enc = load_low_level_encoder(path)
    x = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        theirs = net.head(net.encoder.resnet18(x).flatten(1))
    torch.testing.assert_close(enc(x), theirs, rtol=1e-5, atol=1e-5)
    # the Sequential copy alone (without the whole resnet18) is the same network
    sequential_only = tmp_path / "sequential_only.tar"
    torch.save({k: v for k, v in net.state_dict().items() if "base_model" not in k}, sequential_only)
    torch.testing.assert_close(load_low_level_encoder(sequential_only)(x), theirs, rtol=1e-5, atol=1e-5)
    # this project's own layout round-trips too
    own = tmp_path / "own.pth"
    torch.save(enc.state_dict(), own)
    torch.testing.assert_close(load_low_level_encoder(own)(x), theirs, rtol=1e-5, atol=1e-5)


def test_wrong_architecture_is_one_line(tmp_path):
    net = _authors_layout(4)
    net.head = nn.Linear(512, 128)  # the authors' 'linear' head variant
    path = tmp_path / "linear_head.tar"
    torch.save({"model": {"state_dict": net.state_dict()}}, path)
    with pytest.raises(WeightsError) as err:
        load_low_level_encoder(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "missing keys: head.0.bias" in message and "unexpected keys: head.bias" in message
    net.head = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 256))  # 256-d features
    wide = tmp_path / "wide.tar"
    torch.save({"model": {"state_dict": net.state_dict()}}, wide)
    with pytest.raises(WeightsError, match=r"wrong shapes: head.2.bias \(256,\) != \(128,\)") as err:
        load_low_level_encoder(wide)
    assert "\n" not in str(err.value)
    junk = tmp_path / "junk.pth"
    torch.save({"model": {"weights": [1, 2]}}, junk)
    with pytest.raises(WeightsError, match="not a GRepQ low-level checkpoint"):
        load_low_level_encoder(junk)


def test_patch_features_equal_sliced_patches(encoder):
    image = photo("chelsea", 0.5)  # 150 x 226: 2 x 3 patches, remainder dropped
    feats = patch_features(encoder, to_batch(image), batch=4)
    patches = torch.from_numpy(transcribed_patches(image)).float()
    assert feats.shape == (1, 6, 128) and len(patches) == 6
    torch.testing.assert_close(feats[0], transcribed_llm(encoder, patches), rtol=1e-5, atol=1e-5)


def test_pristine_hand_off_and_q_low_equal_the_transcription(encoder):
    pristine_images = [photo("astronaut", 1.0), photo("chelsea", 1.0)]
    pristine = np.concatenate([transcribed_pristine_selection(im) for im in pristine_images])
    assert 4 <= len(pristine) < sum(len(transcribed_patches(im, stride=96)) for im in pristine_images)
    test_images = [photo("chelsea", 0.5)[:144, :192], photo("rocket", 0.4)[:144, :192]]

    # the patch store's layout (uint8, channels last) and the authors' (float, channels first) agree
    store_layout = (pristine.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
    metric = GRepQZeroShot(encoder, store_layout, patch_batch=5)
    assert metric.kind == "nr" and metric.lower_better is False and metric.mode.startswith("low-level only")
    assert metric.meta() == {"metric": "grepq", "mode": "low-level only (no CLIP weights)"}
    fitted = pristine_mvg(encoder, torch.from_numpy(store_layout.transpose(0, 3, 1, 2) / 255.0))
    torch.testing.assert_close(metric.pristine_mean, fitted.mean)

    f_pristine = transcribed_llm(encoder, torch.from_numpy(store_layout.transpose(0, 3, 1, 2) / 255.0).float())
    parts = metric.components(to_batch(*test_images))
    assert parts.q_high is None and parts.q_low.dtype == torch.float64
    for i, image in enumerate(test_images):
        f_test = transcribed_llm(encoder, torch.from_numpy(transcribed_patches(image)).float())
        expected, distance = transcribed_q_low(f_pristine.double().numpy(), f_test.double().numpy())
        assert float(parts.distance[i]) == pytest.approx(distance, rel=1e-5)
        assert float(parts.q_low[i]) == pytest.approx(expected, rel=1e-7)
        assert 0 < expected <= 0.5
    # batched == one by one; forward is the same score as float32; a metric stays in eval mode
    metric.train()
    assert not metric.training and not metric.low_level.backbone.bn1.training
    single = metric(to_batch(test_images[1]))
    torch.testing.assert_close(metric(to_batch(*test_images))[1:], single)
    assert single.dtype == torch.float32


def test_image_smaller_than_two_patches_is_one_line(encoder):
    metric = GRepQZeroShot(encoder, torch.rand(6, 3, 96, 96))
    for h, w in ((80, 200), (96, 96), (120, 140)):
        with pytest.raises(InvalidInputError, match=f"image is {h}x{w}: .*at least 96x144") as err:
            metric(torch.rand(1, 3, h, w))
        assert "\n" not in str(err.value)
    with pytest.raises(InvalidInputError, match="image is 90x300"):
        metric.check_size((90, 300))
    grey = torch.rand(2, 1, 96, 144)
    torch.testing.assert_close(metric(grey), metric(grey.repeat(1, 3, 1, 1)))  # grey is repeated to 3 channels
    with pytest.raises(InvalidInputError, match="expected pristine patches"):
        GRepQZeroShot(encoder, torch.rand(6, 3, 64, 64))
    with pytest.raises(InvalidInputError, match="at least two patches"):
        GRepQZeroShot(encoder, torch.rand(1, 3, 96, 96))
