"""GRepQ's data-efficient mode: the protocol on planted features, the end-to-end command on a tiny
database (low-level features, random encoder), the saved model as a metric, the array cache, and
bad input as one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import save_png
from db_fixtures import plant_kadid_mos
from iqa_cli.datasets.table import QualityTable, make_rows
from iqa_cli.errors import StoreError, WeightsError
from iqa_cli.grepq_ridge import evaluate_ridge, fit_final_model
from iqa_cli.io.store import ArrayCache
from iqa_cli.models.grepq import LowLevelEncoder
from iqa_cli.stats import ridge as ridge_module
from test_grepq_train import one_line, photo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("IQA_CACHE_DIR", str(tmp_path / "iqa-cache"))  # never ~/.cache


def planted(n_contents: int = 20, per_content: int = 6, dim: int = 40, noise: float = 0.1, seed: int = 0,
            protocol: str = "content"):
    """A table of n_contents x per_content rows whose scores are a planted linear function of the
    features (+ noise). No files: the protocol needs only the rows."""
    rng = np.random.default_rng(seed)
    n = n_contents * per_content
    content = [f"c{i // per_content:02d}" for i in range(n)]
    features = rng.normal(size=(n, dim))
    w = rng.normal(size=dim)
    y = features @ w + 3.0 + noise * rng.normal(size=n)
    root = Path("/synthetic")
    rows = make_rows(root, [root / f"{c}_{i}.png" for i, c in enumerate(content)], [root / f"{c}.png" for c in content],
                     score=y, content=content)
    table = QualityTable("synthetic", root, "synthetic" if protocol == "content" else "authentic", "MOS", True, None,
                         protocol, rows)
    return table, features, w


def test_planted_relation_is_recovered():
    table, features, w = planted()
    splits = evaluate_ridge(features, table, seed=0, repeats=5)
    assert len(splits) == 5
    for s in splits:
        assert s.n_train == 96 and s.n_test == 24  # 16 / 4 contents of 6 images
        assert s.srocc > 0.97 and s.plcc > 0.97 and s.alpha in (0.1, 1.0, 10.0, 100.0)
    model = fit_final_model(features, table)
    assert np.corrcoef(model.coef, w)[0, 1] > 0.99 and abs(model.intercept - 3.0) < 0.1


def test_alpha_is_chosen_on_the_training_part_only(monkeypatch):
    table, features, _ = planted(noise=2.0, seed=1)
    split = table.splits(seed=0, repeats=1)[0]
    calls = []
    real = ridge_module.fit_ridge_cv

    def spy(x, y, alphas, folds, groups, seed):
        calls.append((x.copy(), y.copy(), None if groups is None else groups.copy()))
        return real(x, y, alphas, folds, groups, seed)

    monkeypatch.setattr("iqa_cli.grepq_ridge.fit_ridge_cv", spy)
    first = evaluate_ridge(features, table, seed=0, repeats=1)[0]
    x, y, groups = calls[0]
    np.testing.assert_array_equal(x, features[split.train])  # exactly the training rows, nothing else
    np.testing.assert_array_equal(groups, table.rows["content"].to_numpy()[split.train])  # folds by content
    assert not set(groups) & set(table.rows["content"].to_numpy()[split.test])

    # the test part's scores cannot move the choice: wreck them, alpha and the CV errors stay
    wrecked = table.rows.copy()
    wrecked.loc[split.test, "score"] = np.random.default_rng(5).normal(size=len(split.test)) * 100
    other = QualityTable(table.database, table.root, table.kind, table.score_name, True, None, table.protocol, wrecked)
    second = evaluate_ridge(features, other, seed=0, repeats=1)[0]
    assert second.alpha == first.alpha and second.cv_mse == first.cv_mse
    assert first.alpha == 10.0 and abs(second.srocc - first.srocc) > 0.1  # a real choice; the test numbers moved
    # ...while the training part's scores do
    moved = table.rows.copy()
    moved.loc[split.train[:10], "score"] += 50.0
    third = evaluate_ridge(features, QualityTable(table.database, table.root, table.kind, table.score_name, True,
                                                  None, table.protocol, moved), seed=0, repeats=1)[0]
    assert third.cv_mse != first.cv_mse


def test_image_protocol_folds_are_not_grouped(monkeypatch):
    table, features, _ = planted(protocol="image")
    seen = []
    real = ridge_module.fit_ridge_cv
    monkeypatch.setattr("iqa_cli.grepq_ridge.fit_ridge_cv",
                        lambda x, y, a, f, groups, s: seen.append(groups) or real(x, y, a, f, groups, s))
    evaluate_ridge(features, table, repeats=2)
    assert seen == [None, None]


def test_array_cache(tmp_path):
    path = tmp_path / "c.h5"
    cache = ArrayCache(path, "grepq-fsim", "--fsim-cache")
    assert cache.read(["a"]) == {}
    assert cache.write({"a": np.eye(3), "b": np.arange(4.0)})
    assert cache.write({"b": np.ones(2)})  # replaced in place
    got = cache.read(["a", "b", "c"])
    assert set(got) == {"a", "b"} and np.array_equal(got["a"], np.eye(3)) and np.array_equal(got["b"], np.ones(2))
    with pytest.raises(StoreError, match="holds grepq-fsim, not grepq-features.*--feature-cache"):
        ArrayCache(path, "grepq-features", "--feature-cache").read(["a"])
    foreign = tmp_path / "notes.h5"
    foreign.write_text("not hdf5")
    with pytest.raises(StoreError, match="not an HDF5 file.*--fsim-cache"):
        ArrayCache(foreign, "grepq-fsim", "--fsim-cache").check()
    assert foreign.read_text() == "not hdf5"


# ---------------------------------------------------------------------------------------------
# end to end on a tiny database
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scored_db(tmp_path_factory):
    """A KADID-layout database from iqa distort (blur and noise, 3 levels) with a dmos.csv whose
    MOS falls with the level."""
    from iqa_cli.distort_db import distort_images

    root = tmp_path_factory.mktemp("ridge")
    src = root / "photos"
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "immunohistochemistry", "coins"):
        save_png(src / f"{name}.png", photo(name, (48, 64)))
    db = root / "db"
    distort_images([src], db, types=[1, 11], levels=[1, 3, 5], seed=0, workers=1)
    rng = np.random.default_rng(0)
    plant_kadid_mos(db, lambda row: 5 - 0.8 * int(row["level"]) + rng.normal(0, .2))
    torch.manual_seed(3)
    low = root / "low.pth"
    torch.save({"state_dict": LowLevelEncoder().state_dict()}, low)
    return db, low, root


def _ridge_args(db, low, ck, name, *extra):
    return ["train", db, "--method", "grepq-ridge", "--name", name, "--checkpoints-dir", ck, "--low-level-weights",
            low, "--repeats", "3", "--device", "cpu", "--workers", "0", *extra]


def test_ridge_command_caches_features_and_saves_a_scoring_model(cli, scored_db, tmp_path):
    from iqa_cli.io.images import load_image
    from iqa_cli.models.grepq_ridge import load_grepq_ridge

    db, low, _ = scored_db
    ck, features = tmp_path / "ck", tmp_path / "features.h5"
    first = cli(*_ridge_args(db, low, ck, "r1", "--feature-cache", features, "--cache", tmp_path / "img.h5", "--json"))
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert doc["method"] == "grepq-ridge" and doc["protocol"] == "content" and doc["dim"] == 128
    assert doc["n_scored"] == 48 and len(doc["splits"]) == 3 and not doc["features_cached"]
    assert all(s["n_train"] + s["n_test"] == 48 and s["alpha"] in (0.1, 1, 10, 100) for s in doc["splits"])
    assert doc["median_srocc"] == pytest.approx(float(np.median([s["srocc"] for s in doc["splits"]])))
    with open(ck / "r1" / "splits.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["repeat"]) for r in rows] == [0, 1, 2]
    assert float(rows[1]["srocc"]) == pytest.approx(doc["splits"][1]["srocc"], abs=1e-5)

    second = cli(*_ridge_args(db, low, ck, "r2", "--feature-cache", features, "--no-cache", "--json"))
    assert second.exit_code == 0, second.output
    again = json.loads(second.stdout)
    assert again["features_cached"] and again["splits"] == doc["splits"]

    metric = load_grepq_ridge(ck / "r1" / "ridge.pth")
    assert metric.kind == "nr" and metric.lower_better is False and metric.meta()["fitted_on"] == "kadid10k"
    image = torch.from_numpy(load_image(db / "images" / "astronaut_11_05.png"))[None]
    saved = torch.load(ck / "r1" / "ridge.pth", weights_only=True)
    with torch.no_grad():
        encoder = LowLevelEncoder()
        encoder.load_state_dict(torch.load(low, weights_only=True)["state_dict"])
        expected = encoder.eval()(image).double() @ saved["coef"] + saved["intercept"]
    torch.testing.assert_close(metric(image).double(), expected, rtol=1e-5, atol=1e-5)
    scored = cli("score-image", db / "images" / "astronaut_11_05.png", "--checkpoint", ck / "r1" / "ridge.pth", "--json")
    assert scored.exit_code == 0, scored.output  # the checkpoint alone selects the registered grepq-ridge metric
    doc = json.loads(scored.stdout)
    assert doc["metric"] == "grepq-ridge" and doc["score"] == pytest.approx(float(expected), rel=1e-5, abs=1e-5)

    with pytest.raises(WeightsError, match="not a GRepQ ridge model"):
        load_grepq_ridge(low)
    torch.manual_seed(4)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": LowLevelEncoder().state_dict()}, other)
    with pytest.raises(WeightsError, match="weights differ from the ones the model was fitted with"):
        load_grepq_ridge(ck / "r1" / "ridge.pth", low_level_weights=other)


def test_ridge_bad_input_is_one_line(cli, scored_db, tmp_path):
    db, low, root = scored_db
    ck = tmp_path / "ck"
    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": torch.nn.Linear(3, 2).state_dict()}, wrong)  # another architecture
    one_line(cli(*_ridge_args(db, wrong, ck, "w")), "wrong.pth does not fit this model", "missing keys")
    one_line(cli("train", db, "--method", "grepq-ridge", "--name", "n", "--checkpoints-dir", ck),
              "needs the low-level encoder", "--low-level-weights")
    one_line(cli(*_ridge_args(db, low, ck, "v", "--versions", "3")),
             "--versions does not apply to --method grepq-ridge", code=2)

    listing_only = tmp_path / "unscored"
    (listing_only / "images").mkdir(parents=True)
    for f in (db / "images").iterdir():
        (listing_only / "images" / f.name).write_bytes(f.read_bytes())
    (listing_only / "listing.csv").write_bytes((db / "listing.csv").read_bytes())
    one_line(cli(*_ridge_args(listing_only, low, ck, "u", "--format", "kadid10k")), "no human scores")

    tiny = tmp_path / "tiny"
    with open(db / "dmos.csv", newline="") as fh:
        scored = list(csv.DictReader(fh))
    (tiny / "images").mkdir(parents=True)
    for row in scored:
        for name in (row["dist_img"], row["ref_img"]):
            save_png(tiny / "images" / name, np.full((24, 30, 3), 90 + len(name), np.uint8))
    (tiny / "dmos.csv").write_bytes((db / "dmos.csv").read_bytes())
    one_line(cli(*_ridge_args(tiny, low, ck, "t", "--no-cache")), "is 30x24", "at least 32x32")
    assert not (ck / "t" / "ridge.pth").exists()
