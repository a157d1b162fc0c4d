"""BAPPS datasets, eval_bapps and the eval-bapps / eval-jnd commands, on small generated trees."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bapps_fixtures import make_bapps_tree
from iqa_cli.bapps_eval import eval_bapps
from iqa_cli.datasets.bapps import JNDDataset, TwoAFCDataset, count_items, list_subsets
from iqa_cli.errors import InvalidInputError
from iqa_cli.models.bapps_baselines import l2_distance
from iqa_cli.stats.bapps import jnd_average_precision, two_afc_score


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """val/traditional (5 triplets), val/cnn (4), train/mix (3); JND val/traditional (5), val/cnn (4)."""
    root = tmp_path_factory.mktemp("bapps") / "dataset"
    return make_bapps_tree(root, {"2afc": ["val/traditional", "val/cnn", "train/mix"],
                                  "jnd": ["val/traditional", "val/cnn"]},
                           n={"2afc/val/traditional": 5, "2afc/val/cnn": 4, "2afc/train/mix": 3,
                              "jnd/val/traditional": 5, "jnd/val/cnn": 4}, seed=1)


@pytest.fixture
def own_tree(tmp_path) -> Path:
    """A tree a test may damage."""
    return make_bapps_tree(tmp_path / "dataset", {"2afc": ["val/traditional", "val/cnn"], "jnd": ["val/cnn"]},
                           n=3, seed=2)


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


# -- datasets ----------------------------------------------------------------------------------------
def test_list_subsets_and_defaults(tree):
    assert list_subsets(tree, "2afc") == ["train/mix", "val/traditional", "val/cnn"]
    assert list_subsets(tree, "jnd") == ["val/traditional", "val/cnn"]
    assert count_items(tree, "2afc") == {"val/traditional": 5, "val/cnn": 4}  # default: the val subsets
    assert count_items(tree, "2afc", ["cnn", "train/mix"], limit=3) == {"val/cnn": 3, "train/mix": 3}


def test_two_afc_dataset_items(tree):
    ds = TwoAFCDataset(tree, "val/cnn")
    assert len(ds) == 4 and ds.names == ("000000", "000001", "000002", "000003")
    item = ds[2]
    assert set(item) == {"ref", "p0", "p1", "judge", "index"}
    for key in ("ref", "p0", "p1"):
        assert item[key].dtype == torch.uint8 and item[key].shape == (3, 64, 64)
        expected = _png(tree / "2afc/val/cnn" / key / "000002.png")
        assert np.array_equal(item[key].permute(1, 2, 0).numpy(), expected)
    judge = float(np.load(tree / "2afc/val/cnn/judge/000002.npy")[0])
    assert item["judge"].dtype == torch.float32 and float(item["judge"]) == pytest.approx(judge)
    assert ds.judges[2] == judge and int(item["index"]) == 2
    assert len(TwoAFCDataset(tree, "train/mix", limit=2)) == 2  # any split works (training reuses it)


def test_jnd_dataset_and_resize(tmp_path):
    from PIL import Image

    root = make_bapps_tree(tmp_path / "d", {"jnd": ["val/cnn"]}, n=2, size=80)
    ds = JNDDataset(root, "val/cnn")
    item = ds[1]
    assert set(item) == {"p0", "p1", "same", "index"} and item["p0"].shape == (3, 64, 64)
    raw = Image.open(root / "jnd/val/cnn/p1/000001.png").convert("RGB")
    expected = np.asarray(raw.resize((64, 64), Image.BILINEAR))  # the protocol's Resize(64): bilinear
    assert np.array_equal(item["p1"].permute(1, 2, 0).numpy(), expected)
    assert ds.sames.shape == (2,)


# -- eval_bapps ----------------------------------------------------------------------------------------
def test_eval_l2_matches_direct_computation(tree):
    report = eval_bapps(tree, "2afc", model="l2", colorspace="RGB", batch_size=2)
    assert report.mode == "2afc" and list(report.scores) == ["val/traditional", "val/cnn"]
    assert report.n == {"val/traditional": 5, "val/cnn": 4}
    for subset in ("val/traditional", "val/cnn"):
        folder = tree / "2afc" / subset
        names = sorted(p.stem for p in (folder / "ref").glob("*.png"))
        img = {k: np.stack([_png(folder / k / f"{s}.png") for s in names]) for k in ("ref", "p0", "p1")}
        judge = np.array([np.load(folder / "judge" / f"{s}.npy")[0] for s in names])
        d0, d1 = l2_distance(img["ref"], img["p0"], "RGB"), l2_distance(img["ref"], img["p1"], "RGB")
        assert report.scores[subset] == pytest.approx(two_afc_score(d0, d1, judge), abs=1e-12)
        rows = [r for r in report.rows() if r["subset"] == subset]
        np.testing.assert_allclose([r["d0"] for r in rows], d0, rtol=1e-12)
    assert report.mean == pytest.approx(np.mean(list(report.scores.values())))
    doc = report.to_dict()
    assert {"mode", "scores", "mean", "n", "model", "items"} <= set(doc) and len(doc["items"]) == 9
    assert set(doc["items"][0]) == {"subset", "name", "d0", "d1", "judge", "agreement"}


def test_eval_jnd_ssim_matches_direct_computation(tree):
    from iqa_cli.models.bapps_baselines import dssim_distance

    report = eval_bapps(tree, "jnd", subsets=["val/traditional"], model="ssim", colorspace="Lab")
    folder = tree / "jnd/val/traditional"
    names = sorted(p.stem for p in (folder / "p0").glob("*.png"))
    p0 = np.stack([_png(folder / "p0" / f"{s}.png") for s in names])
    p1 = np.stack([_png(folder / "p1" / f"{s}.png") for s in names])
    same = np.array([np.load(folder / "same" / f"{s}.npy")[0] for s in names])
    d = dssim_distance(p0, p1, "Lab")
    assert report.scores["val/traditional"] == pytest.approx(jnd_average_precision(d, same), abs=1e-12)
    assert set(next(report.rows())) == {"subset", "name", "d", "same"}


def _reference_lpips(metric, lpips_heads=True):
    import lpips

    ref = lpips.LPIPS(net=metric.spec.name, version=metric.version, lpips=lpips_heads, pretrained=True,
                      pnet_rand=True, verbose=False)
    ref.net.load_state_dict(metric.net.state_dict())
    if lpips_heads:  # the same released head files; loading them makes the comparison explicit
        for k in range(len(metric.spec.channels)):
            getattr(ref, f"lin{k}").load_state_dict(getattr(metric, f"lin{k}").state_dict())
    return ref.eval()


@pytest.fixture(scope="module")
def alex():
    """(our LPIPS alex v0.1, the reference package's LPIPS with the same weights)."""
    from iqa_cli.registry import create_metric

    metric = create_metric("lpips", net="alex", version="0.1", device="cpu")
    return metric, _reference_lpips(metric)


def _stacked(ds, keys):
    return {k: torch.stack([ds[i][k] for i in range(len(ds))]).float() / 255 for k in keys}


def test_lpips_parity_with_reference_package(tree, alex):
    metric, ref = alex
    report = eval_bapps(tree, "2afc", subsets=["val/traditional"], model="lpips", net="alex", device="cpu",
                        batch_size=3)  # builds its own metric from the same (generated) weights
    assert report.model == "lpips alex v0.1"
    batch = _stacked(TwoAFCDataset(tree, "val/traditional"), ("ref", "p0", "p1"))
    with torch.no_grad():
        d0 = ref(batch["ref"], batch["p0"], normalize=True).flatten().numpy()
        d1 = ref(batch["ref"], batch["p1"], normalize=True).flatten().numpy()
    rows = list(report.rows())
    np.testing.assert_allclose([r["d0"] for r in rows], d0, atol=1e-5, rtol=0)
    np.testing.assert_allclose([r["d1"] for r in rows], d1, atol=1e-5, rtol=0)


def test_baseline_parity_with_reference_package(tree):
    from iqa_cli.registry import create_metric

    metric = create_metric("baseline", net="alex", device="cpu")
    ref = _reference_lpips(metric, lpips_heads=False)
    report = eval_bapps(tree, "2afc", subsets=["val/cnn"], metric=metric)
    assert report.model == "baseline alex"
    batch = _stacked(TwoAFCDataset(tree, "val/cnn"), ("ref", "p0", "p1"))
    with torch.no_grad():
        d1 = ref(batch["ref"], batch["p1"], normalize=True).flatten().numpy()
    np.testing.assert_allclose([r["d1"] for r in report.rows()], d1, atol=1e-5, rtol=0)


def test_jnd_parity_and_prebuilt_metric_in_training_mode(tree, alex):
    metric, ref = alex
    metric.train()  # as a training loop would hand it over: dropout must be off while scoring
    seen = []
    try:
        report = eval_bapps(tree, "jnd", metric=metric, batch_size=2, advance=seen.append)
        assert metric.training  # the caller's mode is restored
    finally:
        metric.eval()
    assert sum(seen) == 9 and report.model == "lpips alex v0.1"
    ds = JNDDataset(tree, "val/cnn")
    batch = _stacked(ds, ("p0", "p1"))
    with torch.no_grad():
        d = ref(batch["p0"], batch["p1"], normalize=True).flatten().numpy()
    got = [r["d"] for r in report.rows() if r["subset"] == "val/cnn"]
    np.testing.assert_allclose(got, d, atol=1e-5, rtol=0)
    assert report.scores["val/cnn"] == pytest.approx(jnd_average_precision(got, ds.sames))


def test_batched_equals_one_by_one(tree, alex):
    a = eval_bapps(tree, "2afc", subsets=["val/cnn"], metric=alex[0], batch_size=1)
    b = eval_bapps(tree, "2afc", subsets=["val/cnn"], metric=alex[0], batch_size=50)
    np.testing.assert_allclose([r["d1"] for r in a.rows()], [r["d1"] for r in b.rows()], rtol=1e-5, atol=1e-7)


def test_library_argument_checks(tree):
    with pytest.raises(InvalidInputError, match="classic baseline"):
        eval_bapps(tree, model="l2", net="vgg")
    with pytest.raises(InvalidInputError, match="--model"):
        eval_bapps(tree, model="psnr")
    with pytest.raises(InvalidInputError, match="Lab or RGB"):
        eval_bapps(tree, model="l2", colorspace="XYZ")
    with pytest.raises(InvalidInputError, match="protocol"):
        eval_bapps(tree, mode="3afc")


# -- CLI ---------------------------------------------------------------------------------------------
def test_cli_table(cli, tree):
    result = cli("eval-bapps", "2afc", tree, "--model", "l2")
    assert result.exit_code == 0, result.output
    assert "val/traditional" in result.stdout and "val/cnn" in result.stdout and "mean" in result.stdout
    assert "train/mix" not in result.stdout


def test_cli_json_out_and_multi_value_datasets(cli, tree, tmp_path):
    out = tmp_path / "items.csv"
    result = cli("eval-bapps", "2afc", "--datasets", "val/cnn", "train/mix", tree, "--model", "ssim",
                 "--colorspace", "RGB", "--limit", "2", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"mode", "scores", "mean", "n"}
    assert doc["mode"] == "2afc" and doc["n"] == {"val/cnn": 2, "train/mix": 2}
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["subset"] for r in rows] == ["val/cnn", "val/cnn", "train/mix", "train/mix"]
    assert set(rows[0]) == {"subset", "name", "d0", "d1", "judge", "agreement"}
    means = {s: np.mean([float(r["agreement"]) for r in rows if r["subset"] == s]) for s in doc["n"]}
    assert doc["scores"] == pytest.approx(means)
    # the same subsets given repeated, or comma-separated
    for args in (["--datasets", "val/cnn", "--datasets", "train/mix"], ["--datasets", "val/cnn,train/mix"]):
        again = cli("eval-bapps", "2afc", tree, *args, "--model", "ssim", "--colorspace", "RGB", "--limit", "2",
                    "--json")
        assert json.loads(again.stdout) == doc


def test_cli_out_creates_missing_folders_like_the_other_commands(cli, tree, tmp_path):
    out = tmp_path / "results" / "2afc" / "items.csv"
    result = cli("eval-bapps", "2afc", tree, "--model", "l2", "--datasets", "val/cnn", "--out", out)
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        assert {row["subset"] for row in csv.DictReader(fh)} == {"val/cnn"}
    folder = cli("eval-bapps", "2afc", tree, "--model", "l2", "--out", tmp_path / "results")
    assert folder.exit_code == 1 and "is a folder, expected a file path to write for --out" in folder.stderr


def test_cli_eval_jnd_shortcut(cli, tree):
    a = cli("eval-jnd", tree, "--model", "l2", "--json")
    b = cli("eval-bapps", "jnd", tree, "--model", "l2", "--datasets", "val/traditional", "val/cnn", "--json")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert json.loads(a.stdout) == json.loads(b.stdout)
    assert json.loads(a.stdout)["mode"] == "jnd"


# -- bad input: exit 1, one line on stderr, no traceback, no --out file ------------------------------
def _remove(path: Path) -> None:
    path.unlink()


def _rename(path: Path) -> None:
    path.rename(path.with_name("000099" + path.suffix))


def _judge(path: Path) -> None:
    np.save(path, np.array([1.5]))


def _empty(root: Path) -> None:
    shutil.rmtree(root / "2afc/val/cnn")
    for sub in ("ref", "p0", "p1", "judge"):
        (root / "2afc/val/cnn" / sub).mkdir(parents=True)


BAD_INPUTS = {
    "no-2afc": (lambda r: shutil.rmtree(r / "2afc"), ["2afc"], "no 2afc/ folder"),
    "no-jnd": (lambda r: shutil.rmtree(r / "jnd"), ["jnd"], "no jnd/ folder"),
    "missing-root": (lambda r: shutil.rmtree(r), ["2afc"], "no such folder"),
    "unknown-subset": (lambda r: None, ["2afc", "--datasets", "val/deblur"],
                       "no subset 'val/deblur'; available: val/traditional, val/cnn"),
    "count-mismatch": (lambda r: _remove(r / "2afc/val/cnn/p1/000001.png"), ["2afc"],
                       "ref/ has 3 files but p1/ has 2 (000001 is in ref/ but not p1/)"),
    "name-mismatch": (lambda r: _rename(r / "2afc/val/cnn/judge/000002.npy"), ["2afc"],
                      "names in ref/ and judge/ do not line up (000002 is in ref/ but not judge/)"),
    "missing-folder": (lambda r: shutil.rmtree(r / "jnd/val/cnn/same"), ["jnd"], "missing same/"),
    "judge-range": (lambda r: _judge(r / "2afc/val/cnn/judge/000001.npy"), ["2afc"], "judge value 1.5 is outside [0, 1]"),
    "same-range": (lambda r: np.save(r / "jnd/val/cnn/same/000000.npy", np.array([-0.5])), ["jnd"],
                   "same value -0.5 is outside [0, 1]"),
    "empty-subset": (_empty, ["2afc"], "empty subset"),
    "non-image": (lambda r: (r / "2afc/val/traditional/p0/notes.txt").write_text("hi"), ["2afc"],
                  "notes.txt: not an image"),
    "damaged-png": (lambda r: (r / "2afc/val/cnn/p0/000002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage"), ["2afc"],
                    "000002.png"),
    "bad-npy": (lambda r: (r / "2afc/val/cnn/judge/000000.npy").write_bytes(b"nope"), ["2afc"],
                "not a readable .npy file"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_cli_bad_input(cli, own_tree, tmp_path, case):
    damage, args, message = BAD_INPUTS[case]
    damage(own_tree)
    out = tmp_path / "items.csv"
    result = cli("eval-bapps", args[0], own_tree, *args[1:], "--model", "l2", "--out", out)
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.output + result.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_cli_root_hints(cli, tree):
    inside = cli("eval-bapps", "2afc", tree / "2afc")
    assert inside.exit_code == 1 and f"pass the folder above it ({tree})" in inside.stderr
    above = cli("eval-bapps", "2afc", tree.parent)
    assert above.exit_code == 1 and f"did you mean {tree}?" in above.stderr
    flags = cli("eval-bapps", "2afc", tree, "--model", "l2", "--checkpoint", "x.pth")
    assert flags.exit_code == 1 and "drop --checkpoint" in flags.stderr


def test_damaged_image_in_loader_worker_is_one_line(own_tree):
    """On CUDA the loader reads in worker processes; their re-raised error keeps its one-line message."""
    (own_tree / "2afc/val/cnn/p0/000002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InvalidInputError) as info:
        eval_bapps(own_tree, subsets=["val/cnn"], model="l2", num_workers=1, batch_size=1)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(own_tree / "2afc/val/cnn/p0/000002.png"))
