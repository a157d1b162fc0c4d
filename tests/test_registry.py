"""The metric registry, the calling convention every metric follows, and `iqa list-metrics`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_png
from iqa_cli import IQAError, InvalidInputError, UnknownMetricError, create_metric, list_metrics
from iqa_cli.registry import get_spec
from metric_fixtures import build, graphics_checkpoint


def test_list_metrics_json_lists_every_metric_with_kind_and_direction(cli):
    result = cli("list-metrics", "--json")
    assert result.exit_code == 0, result.output
    listed = {m["name"]: m for m in json.loads(result.stdout)["metrics"]}
    assert set(listed) == {spec.name for spec in list_metrics()}
    assert {"lpips", "ssim", "psnr", "ms-ssim", "fsim", "gmsd", "vif"} <= set(listed)
    for spec in list_metrics():
        entry = listed[spec.name]
        assert entry["kind"] == spec.kind in ("fr", "nr")
        assert entry["lower_better"] is spec.lower_better
        assert isinstance(entry["weights"], list) and entry["description"]
    assert listed["lpips"]["weights"][0]["status"] == "bundled"
    assert listed["psnr"]["weights"] == []
    # the test suite's fake ImageNet cache holds the alex backbone file under its official name
    alex = [w for w in listed["lpips"]["weights"] if w["what"] == "ImageNet alex backbone"][0]
    assert alex == {"what": "ImageNet alex backbone", "status": "cached", "file": "alexnet-owt-7be5be79.pth"}


def test_list_metrics_reports_missing_weights_and_filters_by_kind(cli, empty_torch_home):
    doc = json.loads(cli("list-metrics", "--json", "--kind", "fr").stdout)
    lpips = [m for m in doc["metrics"] if m["name"] == "lpips"][0]
    assert {w["status"] for w in lpips["weights"] if "backbone" in w["what"]} == {"missing"}
    assert all(m["kind"] == "fr" for m in doc["metrics"])
    table = cli("list-metrics")
    assert table.exit_code == 0 and "ssim" in table.stdout and "missing" in table.stdout
    bad = cli("list-metrics", "--kind", "xx")
    assert bad.exit_code == 1 and "--kind xx" in bad.stderr


@pytest.mark.parametrize("spec", list_metrics(), ids=lambda s: s.name)
def test_every_listed_metric_builds_and_scores(spec, tmp_path):
    metric = build(spec, tmp_path)
    assert metric.kind == spec.kind and metric.lower_better is spec.lower_better
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 232, 240, generator=g)
    other = (img + 0.1 * torch.rand(img.shape, generator=g)).clamp(0, 1)
    scores = metric(img, other) if spec.kind == "fr" else metric(img)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    lo, hi = spec.score_range
    assert (scores >= lo - 1e-6).all() and (scores <= hi + 1e-6).all()
    if spec.kind == "fr":
        same = metric(img, img)
        assert ((same <= scores) if spec.lower_better else (same >= scores)).all(), spec.name


def test_names_are_case_insensitive_with_aliases_and_unknowns_are_one_line():
    assert get_spec("SSIM").name == "ssim" and get_spec("MS_SSIM").name == "ms-ssim" and get_spec("VIFp").name == "vif"
    with pytest.raises(UnknownMetricError, match="unknown metric 'nope'.*list-metrics"):
        create_metric("nope")
    with pytest.raises(InvalidInputError, match="metric ssim does not take net"):
        create_metric("ssim", net="alex")
    assert create_metric("psnr", net=None).name == "psnr"  # None options are ignored


def test_checkpoint_alone_selects_the_metric_it_holds(tmp_path):
    """README: create_metric(checkpoint=...) on a Graphics-LPIPS file builds graphics-lpips, as the CLI does."""
    metric = create_metric(checkpoint=graphics_checkpoint(tmp_path))
    assert metric.name == "graphics-lpips"
    assert create_metric().name == "lpips"


# -- inputs ---------------------------------------------------------------------------------------

def test_0_255_floats_are_refused_with_the_fix_and_accepted_when_declared():
    metric = create_metric("psnr")
    img = torch.rand(1, 3, 32, 32) * 255
    with pytest.raises(InvalidInputError, match=r"values run from .* to .*takes images in \[0, 1\].*0-255"):
        metric(img, img)
    wide = create_metric("psnr", input_range="[0,255]")
    np.testing.assert_allclose(wide(img, img * 0.9).numpy(), metric(img / 255, img * 0.9 / 255).numpy(), rtol=1e-6)
    signed = create_metric("ssim", input_range="[-1, 1]")
    x = torch.rand(1, 3, 40, 40)
    y = (x * 0.8).clamp(0, 1)
    np.testing.assert_allclose(signed(x * 2 - 1, y * 2 - 1).numpy(), create_metric("ssim")(x, y).numpy(), rtol=1e-6)
    with pytest.raises(InvalidInputError, match=r"\[-1,1\]"):
        create_metric("ssim")(x * 2 - 1, y)
    with pytest.raises(InvalidInputError, match="input_range"):
        create_metric("ssim", input_range="0..7")


def test_paths_pil_images_numpy_and_uint8_give_the_tensor_result(tmp_path, rng):
    a = rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    pa, pb = save_png(tmp_path / "a.png", a), save_png(tmp_path / "b.png", b)
    metric = create_metric("lpips")
    ta = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255
    tb = torch.from_numpy(b).permute(2, 0, 1)[None].float() / 255
    expected = metric(ta, tb)
    for x, y in ((pa, pb), (str(pa), str(pb)), (Image.open(pa), Image.open(pb)), (a, b),
                 (a.astype(np.float32) / 255, b.astype(np.float32) / 255),
                 (torch.from_numpy(a).permute(2, 0, 1), torch.from_numpy(b).permute(2, 0, 1)),
                 ([pa, pa], [pb, pb])):
        got = metric(x, y)
        np.testing.assert_allclose(got.numpy(), expected.expand(got.shape[0]).numpy(), atol=1e-6)
    grey = metric(a.mean(axis=2).astype(np.uint8), b.mean(axis=2).astype(np.uint8))
    assert grey.shape == (1,)


@pytest.mark.parametrize("bad", [42, "missing.png", {"img": 1}, np.zeros((4, 4, 7)), torch.zeros(2, 5, 8, 8)])
def test_a_non_image_argument_is_an_iqa_error(bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    img = torch.rand(1, 3, 32, 32)
    with pytest.raises(IQAError):
        create_metric("ssim")(bad, img)


def test_calling_convention_errors_are_one_line():
    ssim = create_metric("ssim")
    with pytest.raises(InvalidInputError, match=r"call it as metric\(ref, dist\)"):
        ssim(torch.rand(1, 3, 32, 32))
    with pytest.raises(InvalidInputError, match="same size"):
        ssim(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 40))


# -- gradients ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lpips", "ssim"])
def test_no_autograd_graph_by_default_and_gradients_when_asked(name):
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    y = torch.rand(1, 3, 64, 64)
    metric = create_metric(name)
    assert not metric(x, y).requires_grad  # scoring never builds a graph
    with metric.gradients():
        score = metric(x, y)
    assert score.requires_grad
    score.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not metric(x, y).requires_grad  # the block ends, so does autograd
    as_loss = create_metric(name, as_loss=True)
    assert as_loss(x, y).requires_grad
    assert not any(p.requires_grad for p in as_loss.parameters())  # only the inputs get gradients
