"""iqa's distances against the reference `lpips` package, same backbone weights in both."""

from __future__ import annotations

import lpips
import numpy as np
import pytest
import torch

from iqa_cli import create_metric
from iqa_cli.io.images import load_image

NETS = ["alex", "vgg", "squeeze"]


def reference_model(metric, net, version, spatial, lpips_heads=True):
    ref = lpips.LPIPS(net=net, version=version, spatial=spatial, lpips=lpips_heads, pretrained=lpips_heads,
                      pnet_rand=True, verbose=False)
    ref.net.load_state_dict(metric.net.state_dict())
    return ref.eval()


def images_of_odd_size(seed: int, n: int = 2, h: int = 67, w: int = 45):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g), torch.rand(n, 3, h, w, generator=g)


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("version", ["0.1", "0.0"])
@pytest.mark.parametrize("spatial", [False, True])
def test_lpips_matches_reference_on_odd_sizes(net, version, spatial):
    metric = create_metric("lpips", net=net, version=version, spatial=spatial)
    ref = reference_model(metric, net, version, spatial)
    x0, x1 = images_of_odd_size(seed=hash((net, version)) % 1000)
    with torch.no_grad():
        ours = metric(x0, x1)
        theirs = ref(x0, x1, normalize=True)
    assert ours.shape == ((2, 1, 67, 45) if spatial else (2,))
    np.testing.assert_allclose(ours.reshape(theirs.shape).numpy(), theirs.numpy(), atol=1e-5, rtol=0)
    assert float(ours.abs().max()) > 0  # a test of zeros would prove nothing


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("spatial", [False, True])
def test_baseline_matches_reference_without_heads(net, spatial):
    metric = create_metric("baseline", net=net, spatial=spatial)
    ref = reference_model(metric, net, "0.1", spatial, lpips_heads=False)
    x0, x1 = images_of_odd_size(seed=7, h=53, w=71)
    with torch.no_grad():
        np.testing.assert_allclose(metric(x0, x1).reshape(-1).numpy(),
                                   ref(x0, x1, normalize=True).reshape(-1).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("version", ["0.1", "0.0"])
def test_lpips_matches_reference_on_example_patches(net, version, examples):
    metric = create_metric("lpips", net=net, version=version)
    ref = reference_model(metric, net, version, spatial=False)
    x_ref = torch.from_numpy(load_image(examples["ex_ref"]))[None]
    for name in ("ex_p0", "ex_p1"):
        x = torch.from_numpy(load_image(examples[name]))[None]
        with torch.no_grad():
            ours, theirs = metric(x_ref, x), ref(x_ref, x, normalize=True)
        assert abs(float(ours) - float(theirs)) <= 1e-5


def test_identical_images_have_zero_distance():
    metric = create_metric("lpips", net="alex")
    x, _ = images_of_odd_size(seed=3)
    with torch.no_grad():
        assert torch.allclose(metric(x, x), torch.zeros(2), atol=1e-7)


def test_batched_equals_one_by_one():
    metric = create_metric("lpips", net="squeeze")
    x0, x1 = images_of_odd_size(seed=4, n=5)
    with torch.no_grad():
        batched = metric(x0, x1)
        single = torch.cat([metric(x0[i:i + 1], x1[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=1e-5)


def test_reused_reference_features_equal_a_full_forward():
    metric = create_metric("lpips", net="alex")
    x0, x1 = images_of_odd_size(seed=5, n=3)
    with torch.no_grad():
        full = metric(x0, x1)
        reused = metric.distance_from_features(metric.features(x0), metric.features(x1))
    torch.testing.assert_close(full, reused, atol=1e-6, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_equals_cuda():
    x0, x1 = images_of_odd_size(seed=6, n=4)
    cpu = create_metric("lpips", net="alex", device="cpu")
    gpu = create_metric("lpips", net="alex", device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(cpu(x0, x1), gpu(x0.cuda(), x1.cuda()).cpu(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("net", NETS)
def test_minimum_input_size_is_exact(net):
    from iqa_cli import InvalidInputError

    metric = create_metric("baseline", net=net)
    s = metric.spec.min_size
    with torch.no_grad():
        assert metric(torch.rand(1, 3, s, s), torch.rand(1, 3, s, s)).shape == (1,)
        with pytest.raises(InvalidInputError, match="needs at least"):
            metric(torch.rand(1, 3, s - 1, s + 5), torch.rand(1, 3, s - 1, s + 5))


@pytest.mark.parametrize("version", ["0.1", "0.0"])
def test_uint8_batches_go_straight_into_the_backbone(version):
    """The engine hands uint8 patches to features(): the /255 is folded into the input scaling."""
    metric = create_metric("lpips", net="alex", version=version)
    ref = reference_model(metric, "alex", version, spatial=False)
    g = torch.Generator().manual_seed(3)
    u0, u1 = (torch.randint(0, 256, (3, 3, 64, 64), generator=g, dtype=torch.uint8) for _ in range(2))
    with torch.no_grad():
        from_uint8 = metric.distance_from_features(metric.features(u0), metric.features(u1))
        theirs = ref(u0.float() / 255, u1.float() / 255, normalize=True).flatten()
    np.testing.assert_allclose(from_uint8.numpy(), theirs.numpy(), atol=1e-5, rtol=0)
    assert float(from_uint8.min()) > 0


@pytest.mark.parametrize("head_type", ["lpips", "graphics", "none"])
@pytest.mark.parametrize("spatial", [False, True])
def test_reusing_the_second_features_gives_the_same_distances(head_type, spatial):
    from iqa_cli.models.backbones import BACKBONES
    from iqa_cli.models.lpips import PerceptualDistance

    metric = PerceptualDistance(BACKBONES["alex"], head_type=head_type, spatial=spatial).eval()
    x0, x1 = images_of_odd_size(seed=11, n=3, h=64, w=64)
    with torch.no_grad():
        f0, f1 = metric.features(x0), metric.features(x1)
        scratch = [f.clone() for f in f1]
        fresh = metric.distance_from_features(f0, f1, out_hw=(64, 64))
        reused = metric.distance_from_features(f0, scratch, out_hw=(64, 64), reuse_feats1=True)
    torch.testing.assert_close(reused, fresh, rtol=0, atol=1e-7)
    assert not torch.equal(scratch[0], f1[0])  # the scratch really was written into
