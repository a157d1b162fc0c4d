"""`iqa score-image`: no-reference scores of files and folders, equal to the metric's own."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data

from conftest import save_png
from iqa_cli import create_metric
from iqa_cli.io.images import load_image


@pytest.fixture
def photos(tmp_path):
    """Two sizes, one of them blurred at two strengths, in a folder with a subfolder."""
    root = tmp_path / "photos"
    base = data.coffee()[:160, :200]
    save_png(root / "coffee.png", base)
    for k, sigma in enumerate((1.0, 3.0)):
        save_png(root / "blur" / f"coffee_{k}.png",
                 ndimage.gaussian_filter(base.astype(float), (sigma, sigma, 0)).clip(0, 255).astype(np.uint8))
    save_png(root / "astronaut.png", data.astronaut()[:192, :128])
    return root


def niqe_of(path) -> float:
    return float(create_metric("niqe")(torch.from_numpy(load_image(path))[None]))


def test_one_file_plain_and_json(cli, photos):
    path = photos / "coffee.png"
    r = cli("score-image", path)
    assert r.exit_code == 0, r.output
    assert float(r.stdout) == pytest.approx(niqe_of(path), abs=1e-6)
    doc = json.loads(cli("score-image", path, "--json").stdout)
    assert (doc["image"], doc["metric"]) == (str(path), "niqe")
    assert doc["score"] == pytest.approx(niqe_of(path), rel=1e-9)


def test_folder_json_csv_and_batching_by_size(cli, photos, tmp_path):
    out = tmp_path / "scores.csv"
    r = cli("score-image", photos, "--json", "--out", out, "--batch-size", "2")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["metric"] == "niqe" and doc["n"] == 4
    by_name = {row["image"]: row["score"] for row in doc["images"]}
    assert sorted(by_name) == sorted(str(p) for p in photos.rglob("*.png"))
    for image, score in by_name.items():
        assert score == pytest.approx(niqe_of(image), rel=1e-9)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows] == [row["image"] for row in doc["images"]]


def test_several_metrics_one_pass(cli, photos, tmp_path):
    r = cli("score-image", photos / "coffee.png", photos / "astronaut.png", "-m", "niqe", "--json")
    doc = json.loads(r.stdout)
    assert [row["image"] for row in doc["images"]] == [str(photos / "coffee.png"), str(photos / "astronaut.png")]
    assert "score" in doc["images"][0]


def test_bad_input_is_one_line(cli, photos, tmp_path):
    def one_line(r, *needles):
        assert r.exit_code == 1, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        for n in needles:
            assert n in lines[0], lines[0]

    one_line(cli("score-image", tmp_path / "nope.png"), "nope.png", "no such file")
    one_line(cli("score-image", photos, "-m", "ssim"), "ssim is a full-reference metric", "no-reference")
    small = save_png(tmp_path / "small" / "tiny.png", data.coffee()[:80, :90])
    one_line(cli("score-image", small), "tiny.png", "90x80", "niqe needs")
    (tmp_path / "text.png").write_text("not an image")
    one_line(cli("score-image", tmp_path / "text.png"), "text.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line(cli("score-image", empty), "holds no images")
    one_line(cli("score-image", photos, "--out", photos / "coffee.png"), "--out", "input")
    one_line(cli("score-image", photos, "-m", "grepq"), "--low-level-weights")
