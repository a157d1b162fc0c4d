"""--precision: how far fp16/bf16 move every metric's scores from fp32, on the CPU here and on CUDA
where there is one; CPU == CUDA in fp32; and the commands' option.

The tolerances below are the ones the documentation states (docs/gpu.md): on real photographs with a
blur and a noise distortion, |score(p) - score(fp32)| <= rel * |score(fp32)| + abs. Metrics without
``half_precision`` run in fp32 whatever is asked, so their scores must be equal bit for bit. The
learned models carry random weights here (tests/metric_fixtures.py), which are no gentler on 16-bit
arithmetic than trained ones.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data

from conftest import save_png
from iqa_cli import list_metrics
from iqa_cli.engine import autocast
from metric_fixtures import build

HALF_TOLERANCE = {  # metric: {precision: (rel, abs)}
    "lpips": {"fp16": (1e-3, 1e-5), "bf16": (5e-3, 1e-4)},
    "graphics-lpips": {"fp16": (1e-3, 1e-5), "bf16": (5e-3, 1e-4)},
    "baseline": {"fp16": (1e-3, 1e-5), "bf16": (5e-3, 1e-4)},
    "asna": {"fp16": (3e-3, 1e-4), "bf16": (1.5e-2, 1e-3)},
    "grepq": {"fp16": (1e-4, 1e-6), "bf16": (1e-3, 1e-5)},
    "grepq-ridge": {"fp16": (2e-3, 1e-4), "bf16": (1e-2, 1e-3)},
    "graphiqa": {"fp16": (1e-2, 1e-3), "bf16": (3e-2, 1e-2)},
}
# fp32 on CUDA (TF32 off, see engine.autocast) against the CPU
CUDA_FP32_TOLERANCE = (1e-4, 1e-5)
SPECS = list_metrics()
HAS_CUDA = torch.cuda.is_available()


def test_the_table_names_exactly_the_metrics_that_run_in_half_precision(tmp_path):
    half = {spec.name for spec in SPECS if build(spec, tmp_path / spec.name).half_precision}
    assert half == set(HALF_TOLERANCE)


@pytest.fixture(scope="module")
def images():
    """Two photographs, each blurred and noised: refs and dists, (4, 3, 232, 240) in [0, 1]."""
    photos = [data.astronaut()[:232, :240], data.coffee()[:232, :240]]
    rng = np.random.default_rng(0)
    dists = [ndimage.gaussian_filter(p.astype(float), (1.5, 1.5, 0)) for p in photos]
    dists += [p + rng.normal(0, 12, p.shape) for p in photos]
    as_tensor = lambda arrays: torch.from_numpy(np.stack(arrays).clip(0, 255) / 255).permute(0, 3, 1, 2).float()
    return as_tensor(photos + photos), as_tensor(dists)


def scores(metric, images, device, precision) -> np.ndarray:
    ref, dist = (x.to(device) for x in images)
    metric = metric.to(device).eval()
    with torch.inference_mode(), autocast(torch.device(device), precision, metric):
        out = metric.score(ref, dist) if metric.kind == "fr" else metric.score(dist)
    return out.double().cpu().numpy()


def assert_within(got, expected, tolerance, what):
    rel, abs_ = tolerance
    excess = np.abs(got - expected) - (rel * np.abs(expected) + abs_)
    assert (excess <= 0).all(), f"{what}: {got} vs {expected} (worst excess {excess.max():.3g})"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_half_precisions_on_the_cpu_stay_within_the_stated_tolerance(spec, images, tmp_path):
    metric = build(spec, tmp_path)
    fp32 = scores(metric, images, "cpu", "fp32")
    for precision in ("fp16", "bf16"):
        got = scores(metric, images, "cpu", precision)
        if spec.name not in HALF_TOLERANCE:
            np.testing.assert_array_equal(got, fp32, err_msg=f"{spec.name} must ignore --precision {precision}")
            continue
        assert_within(got, fp32, HALF_TOLERANCE[spec.name][precision], f"{spec.name} {precision}")
        assert not np.array_equal(got, fp32), f"{spec.name} {precision}: autocast did not run"
    np.testing.assert_array_equal(scores(metric, images, "cpu", "tf32"), fp32)  # no TF32 on a CPU


def test_a_direct_call_is_full_fp32_even_inside_a_callers_autocast(images):
    from iqa_cli import create_metric

    ref, dist = images
    for metric in (create_metric("lpips"), create_metric("ssim")):
        expected = metric(ref, dist)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = metric(ref, dist)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["ieee", "tf32"])
def test_cuda_fp32_settings_are_set_for_the_block_and_restored(mode):
    """The switches are plain process settings, so this runs without a GPU too."""
    from iqa_cli.engine import _cuda_fp32_mode

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, matmul.fp32_precision)
    with _cuda_fp32_mode(mode):
        assert (conv.fp32_precision, matmul.fp32_precision) == (mode, mode)
    assert (conv.fp32_precision, matmul.fp32_precision) == before


def test_a_classic_metric_on_cuda_runs_in_full_fp32_whatever_is_asked():
    from iqa_cli import create_metric

    ssim, conv = create_metric("ssim"), torch.backends.cudnn.conv
    with autocast(torch.device("cuda"), "tf32", ssim):
        assert conv.fp32_precision == "ieee" and not torch.is_autocast_enabled("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_cuda_equals_cpu_in_fp32_and_half_precisions_stay_within_tolerance(spec, images, tmp_path):
    metric = build(spec, tmp_path)
    cpu = scores(metric, images, "cpu", "fp32")
    cuda = scores(metric, images, "cuda", "fp32")
    assert_within(cuda, cpu, CUDA_FP32_TOLERANCE, f"{spec.name} cuda fp32")
    for precision in ("tf32", "fp16", "bf16"):
        got = scores(metric, images, "cuda", precision)
        if spec.name not in HALF_TOLERANCE:
            np.testing.assert_array_equal(got, cuda, err_msg=f"{spec.name} must ignore --precision {precision}")
        else:  # TF32 keeps 10 mantissa bits, as fp16 does
            tolerance = HALF_TOLERANCE[spec.name]["fp16" if precision == "tf32" else precision]
            assert_within(got, cuda, tolerance, f"{spec.name} cuda {precision}")


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("precision")
    ref, dist = ((x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8) for x in images)
    for k in range(len(ref)):
        save_png(root / "ref" / f"{k}.png", ref[k])
        save_png(root / "dist" / f"{k}.png", dist[k])
    return root


@pytest.mark.parametrize("command", ["score-pair", "score-image", "eval-db", "score-mesh-db"])
def test_an_unknown_precision_is_one_line_before_any_work(cli, photo_folders, command):
    r = cli(command, photo_folders / "ref", *(["--out", photo_folders / "o.csv"]), "--precision", "fp8")
    assert r.exit_code == 1, r.output
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "--precision fp8" in r.stderr
    assert "fp32, tf32, fp16, bf16" in r.stderr and not (photo_folders / "o.csv").exists()


def test_score_pair_and_score_image_take_precision(cli, photo_folders):
    def column(command, *args):
        r = cli(command, *args, "--json", "--device", "cpu")
        assert r.exit_code == 0, r.output
        rows = json.loads(r.stdout)["pairs" if command == "score-pair" else "images"]
        return np.array([row["score"] for row in rows])

    folders = (photo_folders / "ref", photo_folders / "dist")
    fp32 = column("score-pair", *folders, "-m", "lpips")
    bf16 = column("score-pair", *folders, "-m", "lpips", "--precision", "bf16")
    assert_within(bf16, fp32, HALF_TOLERANCE["lpips"]["bf16"], "score-pair lpips bf16")
    assert not np.array_equal(bf16, fp32)
    niqe = column("score-image", photo_folders / "dist")
    np.testing.assert_array_equal(column("score-image", photo_folders / "dist", "--precision", "fp16"), niqe)
