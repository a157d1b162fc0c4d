"""`iqa eval-db` and the library behind it: scores equal the metrics' own, statistics equal scipy's."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import save_png
from db_fixtures import make_kadid, make_koniq, make_live, make_tid
from iqa_cli import create_metric
from iqa_cli.datasets.formats import read_database
from iqa_cli.eval_db import eval_db, score_table
from iqa_cli.io.images import load_image


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQA_CACHE_DIR", str(tmp_path / "cache"))


def direct_scores(table, metric) -> np.ndarray:
    """The metric called on each row's files, one pair at a time."""
    out = []
    for dist, ref in zip(table.rows["dist"], table.rows["ref"]):
        d = torch.from_numpy(load_image(dist))[None]
        out.append(float(metric(torch.from_numpy(load_image(ref))[None], d) if metric.kind == "fr" else metric(d)))
    return np.array(out)


def test_scores_equal_each_metric_on_the_same_files_cached_or_not(tmp_path):
    fx = make_tid(tmp_path / "tid", n_refs=3, types=(1, 8), levels=(1, 2, 5))
    table = read_database(fx.root)
    metrics = [create_metric("ssim"), create_metric("lpips", net="squeeze"), create_metric("psnr")]
    from iqa_cli.datasets.cache import ensure_image_cache

    store, _ = ensure_image_cache(table, tmp_path / "c.h5")
    cached = score_table(table, metrics, store=store, batch_size=4)
    files = score_table(table, metrics, store=None, batch_size=7)  # other batching, straight from the files
    for m in metrics:
        expected = direct_scores(table, m)
        np.testing.assert_allclose(cached[m.name], expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(cached[m.name], files[m.name])  # same pixels, same arithmetic
        assert np.isfinite(expected).all() and np.ptp(expected) > 0


def test_correlations_equal_scipy_on_the_aligned_scores(tmp_path):
    fx = make_kadid(tmp_path / "kadid", refs=("I01", "I02", "I03"), types=(1, 10), levels=(1, 3, 5))
    table = read_database(fx.root)
    result = eval_db(table, [create_metric("psnr"), create_metric("gmsd")], bootstrap=200, seed=3)
    mos = table.scores
    for name, sign in (("psnr", 1.0), ("gmsd", -1.0)):  # gmsd is lower-is-better: flipped against a MOS
        m = result.report.metrics[name]
        assert m.sign == sign
        aligned = sign * result.scores[name]
        assert m.point["srocc"] == pytest.approx(stats.spearmanr(aligned, mos)[0], abs=1e-12)
        assert m.point["krocc"] == pytest.approx(stats.kendalltau(aligned, mos)[0], abs=1e-12)
        lo, hi = m.ci["srocc"]
        assert lo <= m.point["srocc"] <= hi
        assert set(m.per_type) == {"01", "10"}
    assert result.report.resampling == "content"  # KADID is synthetic: whole references are resampled
    [comparison] = result.report.comparisons
    assert (comparison.a, comparison.b) == ("psnr", "gmsd") and 0 < comparison.p_value <= 1


def test_dmos_databases_flip_the_other_way(tmp_path):
    fx = make_live(tmp_path / "live")
    table = read_database(fx.root)
    assert not table.higher_better  # LIVE's DMOS: lower is better
    result = eval_db(table, [create_metric("psnr")], bootstrap=0)
    m = result.report.metrics["psnr"]
    assert m.sign == -1.0  # higher-is-better PSNR against lower-is-better DMOS
    assert m.point["srocc"] == pytest.approx(stats.spearmanr(-result.scores["psnr"], table.scores)[0])


def test_cli_json_document_csv_and_plot(cli, tmp_path):
    fx = make_tid(tmp_path / "tid", n_refs=3, types=(1, 8), levels=(1, 2, 5))
    out, plot = tmp_path / "o" / "scores.csv", tmp_path / "o" / "fit.png"
    r = cli("eval-db", fx.root, "-m", "ssim,psnr", "--bootstrap", "100", "--json", "--out", out, "--plot", plot)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["format"] == "tid2013" and doc["n"] == 18
    for name in ("ssim", "psnr"):
        entry = doc["metrics"][name]
        assert {"n", "srocc", "srocc_ci", "krocc", "plcc", "rmse", "per_type"} <= set(entry)
        assert entry["srocc_ci"][0] <= entry["srocc"] <= entry["srocc_ci"][1]
    assert [(c["a"], c["b"]) for c in doc["comparisons"]] == [("ssim", "psnr")]
    assert len(doc["images"]) == 18 and {"dist", "ref", "mos", "ssim", "psnr"} <= set(doc["images"][0])
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 18 and float(rows[0]["ssim"]) == pytest.approx(doc["images"][0]["ssim"], rel=1e-6)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["cache"]["built"] is True
    again = json.loads(cli("eval-db", fx.root, "-m", "ssim", "--bootstrap", "0", "--json").stdout)
    assert again["cache"]["built"] is False  # the second run reads the cache it left
    assert [i["ssim"] for i in again["images"]] == [i["ssim"] for i in doc["images"]]
    table = cli("eval-db", fx.root, "-m", "ssim", "--bootstrap", "50")
    assert table.exit_code == 0 and "SROCC" in table.stdout and "per distortion type" in table.stdout


def test_no_reference_metric_scores_the_distorted_images(tmp_path):
    """A no-reference metric on a full-reference database, and on an authentic one."""
    root = tmp_path / "db"
    from skimage import data
    from scipy import ndimage

    rows = []
    base = data.astronaut()[:200, :200]
    save_png(root / "ref.png", base)
    for k, sigma in enumerate((0.5, 1.0, 2.0, 3.0, 4.0, 6.0)):
        blurred = ndimage.gaussian_filter(base.astype(float), (sigma, sigma, 0)).clip(0, 255).astype(np.uint8)
        save_png(root / f"d{k}.png", blurred)
        rows.append((f"d{k}.png", "ref.png", 5 - k * 0.7))
    with open(root / "scores.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("dist", "ref", "score"), *rows])
    table = read_database(root, "csv")
    niqe = create_metric("niqe")
    result = eval_db(table, [niqe, create_metric("ssim")], bootstrap=0)
    np.testing.assert_allclose(result.scores["niqe"], direct_scores(table, niqe), rtol=1e-6)
    assert result.report.metrics["niqe"].sign == -1.0 and result.report.metrics["niqe"].point["srocc"] > 0.8


def test_bad_input_one_line_each(cli, tmp_path):
    def one_line(r, *needles):
        assert r.exit_code == 1, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        for n in needles:
            assert n in lines[0], lines[0]

    koniq = make_koniq(tmp_path / "koniq")
    one_line(cli("eval-db", koniq.root, "-m", "ssim"), "no reference images", "full-reference")
    one_line(cli("eval-db", tmp_path / "koniq", "--format", "tid2099", "-m", "ssim"), "unknown database format")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line(cli("eval-db", empty, "-m", "ssim"), str(empty))
    fx = make_tid(tmp_path / "tid", n_refs=2, types=(1,), levels=(1, 2, 3))
    one_line(cli("eval-db", fx.root, "-m", "ssim", "--out", fx.root / "mos_with_names.txt"), "input")
    one_line(cli("eval-db", fx.root, "-m", "ssim", "--no-cache", "--cache", tmp_path / "c.h5"), "--no-cache")
    one_line(cli("eval-db", fx.root, "-m", "nope"), "unknown metric 'nope'")
    (fx.root / "distorted_images" / "i01_01_2.bmp").unlink()
    one_line(cli("eval-db", fx.root, "-m", "ssim"), "i01_01_2.bmp")
    assert not any((tmp_path / "cache").glob("*.h5")) if (tmp_path / "cache").exists() else True
