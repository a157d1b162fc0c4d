"""`iqa distort` end to end: the KADID-10k layout and listing, seeds across workers, bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import save_png
from iqa_cli.distortions import distort, to_uint8

skdata = pytest.importorskip("skimage.data")


def thumbnail(name: str, size=(48, 64)) -> np.ndarray:
    """A real photograph, downscaled (Pillow's box filter) to uint8 (H, W, 3)."""
    img = Image.fromarray(getattr(skdata, name)()[..., :3])
    return np.asarray(img.resize((size[1], size[0]), Image.BOX))


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def listing(out: Path) -> list[dict]:
    with open(out / "listing.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def one_line_error(result, *needles: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def inputs(tmp_path) -> Path:
    root = tmp_path / "in"
    save_png(root / "astronaut.png", thumbnail("astronaut"))
    save_png(root / "sub" / "my coffee_1.png", thumbnail("coffee"))
    return root


def test_layout_listing_and_pixels(cli, inputs, tmp_path):
    out = tmp_path / "out"
    result = cli("distort", inputs, "--out", out, "--types", "1,20-21", "--levels", "2,5", "--seed", "3", "--json",
                 "--workers", "1")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["n_references"] == 2 and doc["n_distorted"] == 12 and doc["types"] == [1, 20, 21]
    assert doc["levels"] == [2, 5] and doc["seed"] == 3 and doc["stretch"] is False
    assert doc["approximate_types"] == []
    refs = {"astronaut.png": inputs / "astronaut.png", "my-coffee-1.png": inputs / "sub" / "my coffee_1.png"}
    expected = set(refs) | {f"{Path(r).stem}_{t:02d}_{lv:02d}.png" for r in refs for t in (1, 20, 21) for lv in (2, 5)}
    assert {p.name for p in (out / "images").iterdir()} == expected  # no temporary or lock files left
    assert {p.name for p in out.iterdir()} == {"images", "listing.csv"}
    rows = listing(out)
    assert list(rows[0]) == ["dist_img", "ref_img", "type", "level"]
    assert len(rows) == 12 and {r["ref_img"] for r in rows} == set(refs)
    for ref_name, source in refs.items():
        reference = read_png(out / "images" / ref_name)
        np.testing.assert_array_equal(reference, read_png(source))  # the reference, re-encoded
        for row in (r for r in rows if r["ref_img"] == ref_name):
            expected_pixels = to_uint8(distort(reference / 255.0, int(row["type"]), int(row["level"]), 3))
            np.testing.assert_array_equal(read_png(out / "images" / row["dist_img"]), expected_pixels)


@pytest.mark.slow
def test_workers_and_order_do_not_change_the_images(cli, inputs, tmp_path):
    save_png(inputs / "chelsea.png", thumbnail("chelsea"))
    one = tmp_path / "one"
    two = tmp_path / "two"
    args = ("--types", "3,11,23", "--levels", "1,4", "--seed", "9")
    assert cli("distort", inputs, "--out", one, "--workers", "1", *args).exit_code == 0
    reordered = [inputs / "chelsea.png", inputs / "sub" / "my coffee_1.png", inputs / "astronaut.png"]
    result = cli("distort", *reordered, "--out", two, "--workers", "2", *args, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["workers"] == 2
    names = sorted(p.name for p in (one / "images").iterdir())
    assert names == sorted(p.name for p in (two / "images").iterdir()) and len(names) == 3 * 7
    for name in names:
        np.testing.assert_array_equal(read_png(one / "images" / name), read_png(two / "images" / name), err_msg=name)
    assert {tuple(r.values()) for r in listing(one)} == {tuple(r.values()) for r in listing(two)}


def test_names_are_sanitised_and_unique(cli, tmp_path):
    img = thumbnail("astronaut", (32, 32))
    a = save_png(tmp_path / "a" / "x_y.png", img)
    b = save_png(tmp_path / "b" / "X_Y.png", img[::-1])
    c = save_png(tmp_path / "b" / "x y.png", img[:, ::-1])
    result = cli("distort", a, b, c, "--out", tmp_path / "out", "--types", "18", "--levels", "3", "--json")
    assert result.exit_code == 0, result.output
    assert [r["ref_img"] for r in json.loads(result.stdout)["references"]] == ["x-y.png", "X-Y-2.png", "x-y-3.png"]
    assert [r["dist_img"] for r in listing(tmp_path / "out")] == ["x-y_18_03.png", "X-Y-2_18_03.png",
                                                                  "x-y-3_18_03.png"]
    # mean shift level 3 is no change: the distorted file equals its reference
    np.testing.assert_array_equal(read_png(tmp_path / "out" / "images" / "X-Y-2_18_03.png"), img[::-1])


def test_plain_output_names_the_approximations(cli, inputs, tmp_path):
    result = cli("distort", inputs / "astronaut.png", "--out", tmp_path / "o", "--types", "22", "--levels", "5")
    assert result.exit_code == 0, result.output
    assert "wrote 1 distorted images of 1 reference(s)" in result.stdout
    assert "approximate" in result.stderr and "22" in result.stderr


def test_a_failed_run_leaves_no_listing(cli, inputs, tmp_path):
    out = tmp_path / "out"
    (out).mkdir()
    (out / "listing.csv").write_text("dist_img,ref_img,type,level\nold.png,old_ref.png,1,1\n")
    good = save_png(tmp_path / "a.png", thumbnail("astronaut"))
    data = (inputs / "astronaut.png").read_bytes()
    broken = tmp_path / "b.png"
    broken.write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not
    result = cli("distort", good, broken, "--out", out, "--types", "1", "--levels", "1", "--workers", "1")
    one_line_error(result, "b.png", "damaged or truncated")
    assert not (out / "listing.csv").exists()  # the stale listing went first: the folder reads as unfinished
    assert (out / "images" / "a_01_01.png").exists()
    assert not [p for p in (out / "images").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("option, value, needle", [
    ("--types", "26", "type '26' is not a number 1..25"),
    ("--types", "blurry", "unknown distortion type 'blurry'"),
    ("--types", "3-1", "type range '3-1' is not within 1-25"),
    ("--levels", "0-3", "level range '0-3' is not within 1-5"),
    ("--levels", "6", "level '6' is not a number 1..5"),
])
def test_bad_types_and_levels_are_usage_errors(cli, inputs, tmp_path, option, value, needle):
    result = cli("distort", inputs, "--out", tmp_path / "out", option, value)
    one_line_error(result, needle, code=2)
    assert not (tmp_path / "out").exists()


def test_bad_inputs(cli, inputs, tmp_path):
    out = tmp_path / "out"
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    one_line_error(cli("distort", not_image, "--out", out), "notes.png", "not an image PIL can read")
    one_line_error(cli("distort", tmp_path / "missing.png", "--out", out), "missing.png", "no such file")
    (tmp_path / "empty").mkdir()
    one_line_error(cli("distort", tmp_path / "empty", "--out", out), "empty", "holds no images")
    one_line_error(cli("distort", inputs, "--out", inputs / "dist"), "lies inside the input folder")
    one_line_error(cli("distort", inputs, "--out", out, "--format", "jpg"), "--format 'jpg'", "lossless")
    small = save_png(tmp_path / "small.png", thumbnail("astronaut", (24, 40)))
    one_line_error(cli("distort", small, "--out", out), "small.png is 40x24", "type 20", "needs at least 32x32")
    assert cli("distort", small, "--out", out, "--types", "1-19,21,22,24,25", "--levels", "1").exit_code == 0
    # feeding a finished database back in, into the same folder, would overwrite its references
    one_line_error(cli("distort", out / "images" / "small.png", "--out", out, "--types", "1"),
                   "would write over this input image")
