"""`iqa score-pair` end to end: outputs, formats, and every documented bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_png
from iqa_cli import create_metric
from iqa_cli.io.images import load_image


def one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def direct_distance(a, b, **kw) -> float:
    metric = create_metric("lpips", **kw)
    with torch.no_grad():
        return float(metric(torch.from_numpy(load_image(a))[None], torch.from_numpy(load_image(b))[None]))


def test_two_files_json(cli, examples):
    result = cli("score-pair", examples["ex_ref"], examples["ex_p0"], "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"ref", "dist", "score", "metric", "net", "version"} <= set(doc)
    assert (doc["metric"], doc["net"], doc["version"]) == ("lpips", "alex", "0.1")
    assert doc["score"] == pytest.approx(direct_distance(examples["ex_ref"], examples["ex_p0"], net="alex"), abs=1e-6)


def test_two_files_plain_prints_the_score(cli, examples):
    result = cli("score-pair", examples["ex_ref"], examples["ex_p1"], "--net", "squeeze", "--version", "0.0")
    assert result.exit_code == 0, result.output
    expected = direct_distance(examples["ex_ref"], examples["ex_p1"], net="squeeze", version="0.0")
    assert float(result.stdout.strip()) == pytest.approx(expected, abs=1e-6)


def test_spatial_map_png_has_the_image_size_plus_a_colour_bar(cli, tmp_path, rng):
    a = save_png(tmp_path / "a.png", rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    b = save_png(tmp_path / "b.png", rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    assert cli("score-pair", a, b, "--spatial-map", tmp_path / "heat.png").exit_code == 0
    assert cli("score-pair", a, b, "--spatial-map", tmp_path / "bare.png", "--no-colorbar").exit_code == 0
    with Image.open(tmp_path / "heat.png") as heat, Image.open(tmp_path / "bare.png") as bare:
        assert bare.size == (53, 37) and bare.mode == "RGB"
        assert np.asarray(bare).std() > 0
        assert heat.size[1] == 37 and heat.size[0] > 53  # the bar is a strip on the right
        np.testing.assert_array_equal(np.asarray(heat)[:, :53], np.asarray(bare))


def test_spatial_map_format_follows_the_file_name(cli, tmp_path, rng):
    a = save_png(tmp_path / "a.png", rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    b = save_png(tmp_path / "b.png", rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    for name, fmt in (("heat.jpg", "JPEG"), ("heat.TIF", "TIFF")):
        assert cli("score-pair", a, b, "--spatial-map", tmp_path / name).exit_code == 0
        with Image.open(tmp_path / name) as heat:
            assert heat.format == fmt and heat.size == (53, 37)
    for name in ("heat.txt", "heat"):
        one_line_error(cli("score-pair", a, b, "--spatial-map", tmp_path / name), name,
                       "give a file name ending in .png")
        assert not (tmp_path / name).exists()


def make_folders(root, rng, names=("x.png", "sub/y.png", "z.png"), size=(32, 40)):
    for name in names:
        img = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        save_png(root / "ref" / name, img)
        noisy = np.clip(img.astype(int) + rng.integers(-40, 40, img.shape), 0, 255).astype(np.uint8)
        save_png(root / "dist" / name, noisy)
    return root / "ref", root / "dist"


def test_folders_matched_by_relative_path(cli, tmp_path, rng):
    ref, dist = make_folders(tmp_path, rng)
    out = tmp_path / "scores.csv"
    result = cli("score-pair", ref, dist, "--json", "--out", out, "--batch-size", "2")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [p["ref"].split("ref/")[1] for p in doc["pairs"]] == ["sub/y.png", "x.png", "z.png"]
    for p in doc["pairs"]:
        assert p["score"] == pytest.approx(direct_distance(p["ref"], p["dist"], net="alex"), abs=1e-5)
    assert doc["mean"] == pytest.approx(np.mean([p["score"] for p in doc["pairs"]]))
    assert out.read_text().splitlines()[0] == "ref,dist,score" and len(out.read_text().splitlines()) == 4


def test_all_pairs_scores_every_pair(cli, tmp_path, rng):
    for i in range(4):
        save_png(tmp_path / "f" / f"{i}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    result = cli("score-pair", tmp_path / "f", "--all-pairs", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["pairs"]) == 6


def test_image_modes_load_as_rgb_in_unit_range(tmp_path, rng):
    grey = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(grey).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(np.dstack([grey] * 3 + [np.full_like(grey, 128)])).save(tmp_path / "rgba.png")
    Image.fromarray((grey.astype(np.uint16) * 257)).save(tmp_path / "grey16.png")
    Image.fromarray(np.dstack([grey] * 3)).save(tmp_path / "rgb.bmp")
    Image.fromarray(np.dstack([grey] * 3)).save(tmp_path / "rgb.jpg", quality=100)
    expected = grey / 255.0
    for name in ("grey.png", "palette.png", "rgba.png", "grey16.png", "rgb.bmp"):
        arr = load_image(tmp_path / name)
        assert arr.shape == (3, 20, 30) and arr.dtype == np.float32, name
        np.testing.assert_allclose(arr[1], expected, atol=1 / 255, err_msg=name)
    assert np.abs(load_image(tmp_path / "rgb.jpg")[0] - expected).mean() < 0.02


def test_resize_allows_different_sizes(cli, tmp_path, rng):
    a = save_png(tmp_path / "a.png", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    b = save_png(tmp_path / "b.png", rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    one_line_error(cli("score-pair", a, b), "a.png is 40x40", "b.png is 50x30", "--resize")
    assert cli("score-pair", a, b, "--resize").exit_code == 0


# -- bad input -------------------------------------------------------------------------------
def test_missing_file(cli, examples, tmp_path):
    one_line_error(cli("score-pair", examples["ex_ref"], tmp_path / "nope.png"), "nope.png", "no such file")


def test_non_image(cli, examples, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    one_line_error(cli("score-pair", examples["ex_ref"], bad, "--out", tmp_path / "o.csv"), "notes.png")
    assert not (tmp_path / "o.csv").exists()


def test_truncated_png(cli, examples, tmp_path):
    data = examples["ex_p0"].read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    one_line_error(cli("score-pair", examples["ex_ref"], cut, "--out", tmp_path / "o.csv",
                       "--spatial-map", tmp_path / "h.png"), "cut.png", "truncated")
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "h.png").exists()


def test_empty_folder(cli, tmp_path, rng):
    ref, _ = make_folders(tmp_path, rng)
    (tmp_path / "empty").mkdir()
    one_line_error(cli("score-pair", ref, tmp_path / "empty"), "empty", "no images")


def test_unmatched_folder_entries_are_reported(cli, tmp_path, rng):
    ref, dist = make_folders(tmp_path, rng)
    (dist / "z.png").rename(dist / "w.png")
    one_line_error(cli("score-pair", ref, dist, "--out", tmp_path / "o.csv"), "only in", "z.png", "w.png",
                   "--skip-unmatched")
    assert not (tmp_path / "o.csv").exists()
    result = cli("score-pair", ref, dist, "--skip-unmatched", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert len(doc["pairs"]) == 2 and doc["unmatched"] == {"ref": ["z.png"], "dist": ["w.png"]}


def test_unknown_net(cli, examples):
    one_line_error(cli("score-pair", examples["ex_ref"], examples["ex_p0"], "--net", "resnet"), "resnet", "alex")


def test_checkpoint_for_another_net(cli, examples, tmp_path):
    ckpt = tmp_path / "alex.pth"
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 192, 384, 256, 256))},
               ckpt)
    one_line_error(cli("score-pair", examples["ex_ref"], examples["ex_p0"], "--net", "vgg", "--checkpoint", ckpt),
                   "alex.pth", "wrong shapes")


def test_file_that_is_not_a_checkpoint(cli, examples):
    one_line_error(cli("score-pair", examples["ex_ref"], examples["ex_p0"], "--checkpoint", examples["ex_p1"]),
                   "ex_p1.png", "not a PyTorch checkpoint")


def test_offline_without_backbone_weights(cli, examples, empty_torch_home, tmp_path):
    one_line_error(cli("score-pair", examples["ex_ref"], examples["ex_p0"], "--out", tmp_path / "o.csv"),
                   "alexnet-owt-7be5be79.pth", "hub/checkpoints", "--backbone-weights")
    assert not (tmp_path / "o.csv").exists()


def test_graphics_lpips_needs_a_checkpoint(cli, examples):
    one_line_error(cli("score-pair", examples["ex_ref"], examples["ex_p0"], "--metric", "graphics-lpips"),
                   "--checkpoint")


HEAVY_MODULES = ("torch", "torchvision", "numpy", "pandas", "scipy", "h5py", "matplotlib", "PIL", "piq",
                 "open_clip", "tensorflow")


@pytest.mark.parametrize("argv", [["--help"], ["score-pair", "--help"], ["list-metrics", "--help"]])
def test_help_imports_no_heavy_library(argv):
    """`iqa --help` stays well under a second because it imports none of the numeric stack (what
    makes a command slow to start: torch alone takes seconds). Counting imports, unlike timing a
    run, does not depend on how busy the machine is."""
    code = ("import sys\nfrom iqa_cli.cli.app import main\nsys.argv = ['iqa', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    assert "Usage" in out.stdout
    assert out.stderr.strip().splitlines()[-1] == "[]"


def test_public_api_names_resolve():
    import iqa_cli

    for name in iqa_cli.__all__:
        assert getattr(iqa_cli, name) is not None, name


def test_spatial_dir_writes_one_heat_map_per_pair(cli, tmp_path, rng):
    ref, dist = make_folders(tmp_path, rng)
    out = tmp_path / "maps"
    result = cli("score-pair", ref, dist, "--spatial-dir", out, "--no-colorbar")
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["sub/y.png", "x.png", "z.png"]
    with Image.open(out / "sub" / "y.png") as heat:
        assert heat.size == (40, 32)
    one_line_error(cli("score-pair", ref / "x.png", dist / "x.png", "--spatial-dir", out), "--spatial-map")
    one_line_error(cli("score-pair", ref, dist, "--spatial-map", tmp_path / "h.png"), "--spatial-dir")
