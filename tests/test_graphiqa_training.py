"""GraphIQA training (`iqa train --method graphiqa-pretrain | graphiqa`): pretraining on the output of
`iqa distort`, resume, fine-tuning from the pretrained checkpoint on a KADID-layout database with a
planted MOS, the split and the best-epoch rule, the small-image rule, one-line errors, and 1 vs 2
processes under torchrun.

ResNet-50 is heavy on the shared CPU: random "ImageNet" weights are written once into the private
TORCH_HOME (test_graphiqa's generator, same seed, so the file is the same whichever module writes
it), K is 8, crops are 32x32, graphs have 3-4 nodes and runs take a few steps. One pretraining and
one fine-tuning run (module fixtures, through the CLI) serve most tests.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from db_fixtures import make_clive, make_kadid, make_kadis, photo, save
from test_graphiqa import random_resnet50_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
K = 8
COMMON = ["--crop-size", "32", "--seed", "0", "--device", "cpu", "--workers", "0"]
PRETRAIN = ["--method", "graphiqa-pretrain", "--embed-size", str(K), "--batch-size", "4", "--steps", "3", "--nepoch",
            "2", "--eval-triplets", "2", "--split", "0.75", *COMMON]
FINETUNE = ["--method", "graphiqa", "--crops", "3", "--batch-size", "8", "--nepoch", "2", "--eval-batch-size", "4",
            *COMMON]


def invoke(*args) -> tuple[int, str, str]:
    from iqa_cli.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def one_line_error(result: tuple[int, str, str], *fragments: str, exit_code: int = 1) -> str:
    """Exit ``exit_code`` (1: an IQAError, 2: a usage error), one 'error: ' line holding every fragment."""
    code, _, stderr = result
    assert code == exit_code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def no_run_folder(checkpoints_dir: Path) -> bool:
    """Nothing was written but the run-folder lock's parent: the error came before the run started."""
    return not checkpoints_dir.exists() or not any(p.is_dir() for p in checkpoints_dir.iterdir())


def graph_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def work(tmp_path_factory, torch_home, one_torch_thread):
    """The fake ImageNet ResNet-50, a private image-cache folder, and two databases: ``pre`` made by
    `iqa distort` from 4 photographs (3 types x 3 levels, 40x48 pixels, no scores) and ``ft`` in
    KADID-10k's layout with a MOS falling with the level (5 contents, 24x32 pixels: smaller than a
    crop, so the short-side rule resizes them to 32)."""
    from iqa_cli.distort_db import distort_images
    from iqa_cli.models.graphiqa import RESNET50
    from iqa_cli.weights import torchvision_cache_file

    target = torchvision_cache_file(RESNET50)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_resnet50_state(11), target)
    root = tmp_path_factory.mktemp("graphiqa_train")
    old = os.environ.get("IQA_CACHE_DIR")
    os.environ["IQA_CACHE_DIR"] = str(root / "cache")  # never ~/.cache
    photos = [save(root / "photos" / f"p{i}.png", photo(i, (40, 48))) for i in range(4)]
    distort_images(photos, root / "pre", types=[1, 10, 11], levels=[1, 3, 5], seed=0, workers=1)
    make_kadid(root / "ft", refs=("I01", "I02", "I03", "I04", "I05"))
    yield {"root": root, "pre": root / "pre", "ft": root / "ft", "ck": root / "ck"}
    if old is None:
        os.environ.pop("IQA_CACHE_DIR", None)
    else:
        os.environ["IQA_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def pretrained(work) -> dict:
    code, out, err = invoke("train", work["pre"], "--name", "pre", "--checkpoints-dir", work["ck"], *PRETRAIN, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def finetuned(work, pretrained) -> dict:
    code, out, err = invoke("train", work["ft"], "--name", "ft", "--checkpoints-dir", work["ck"], *FINETUNE, "--init",
                            pretrained["checkpoint"], "--json")
    assert code == 0, err
    return json.loads(out)


# -- pretraining ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_pretraining_on_distort_output_lowers_the_held_out_loss(work, pretrained):
    history = pretrained["history"]
    assert [r["epoch"] for r in history] == [0, 1, 2] and pretrained["mode"] == "graphiqa-pretrain"
    # the held-out triplets are fixed, so their loss (with μ) compares across epochs
    assert history[-1]["test_loss"] < 0.5 * history[0]["test_loss"]
    assert all(0 <= r["test_triplet_acc"] <= 1 and math.isfinite(r["test_level_srocc"]) for r in history)
    assert all(math.isfinite(r["train_triplet"]) and r["train_level_mse"] > 0 for r in history[1:])
    assert history[1]["units_per_s"] > 0 and pretrained["final"] == history[-1]
    run = Path(pretrained["run_dir"])
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "latest.pth", "metrics.csv", "split.json"]
    raw = torch.load(run / "latest.pth", map_location="cpu", weights_only=True)
    # K and the mean-edge summary recorded; the ImageNet backbone left out; the run's options kept for resume
    assert raw["config"] == {"embed_size": K, "summary": "mean", "crop_size": 32}
    assert raw["family"] == "graphiqa" and raw["backbone"] == "imagenet" and raw["method"] == "graphiqa-pretrain"
    assert raw["run_config"]["steps"] == 3 and raw["short_side"] == 0
    split = json.loads((run / "split.json").read_text())
    contents = {part: {Path(n).name.split("_")[0] for n in split[part]} for part in ("train", "test")}
    assert len(contents["train"]) == 3 and len(contents["test"]) == 1 and not contents["train"] & contents["test"]
    assert split["val"] == [] and split["counts"] == {"train": 27, "val": 0, "test": 9}


@pytest.mark.slow
def test_pretraining_resume_gives_the_uninterrupted_weights(work, pretrained):
    from iqa_cli.training import GraphIQATrainConfig, train

    options = dict(method="graphiqa-pretrain", database=str(work["pre"]), checkpoints_dir=str(work["ck"]),
                   embed_size=K, crop_size=32, batch_size=4, steps=3, nepoch=2, eval_triplets=2, split=0.75, seed=0,
                   device="cpu", num_workers=0)
    part = train(GraphIQATrainConfig(name="pre_part", stop_after_epoch=1, **options))
    assert part.stopped_early and part.epochs_completed == 1
    resumed = train(GraphIQATrainConfig(name="pre_part", resume=True, **options))
    assert resumed.resumed_from == 1 and resumed.epochs_completed == 2
    full, again = graph_state(Path(pretrained["checkpoint"])), graph_state(resumed.checkpoint)
    assert full.keys() == again.keys() and all(torch.equal(full[k], again[k]) for k in full)
    assert resumed.history[-1]["test_loss"] == pretrained["history"][-1]["test_loss"]


# -- fine-tuning ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_finetuning_from_the_pretrained_checkpoint_fits_the_planted_mos(work, pretrained, finetuned):
    history = finetuned["history"]
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert history[2]["train_loss"] < history[1]["train_loss"]  # MSE on the raw MOS scale falls
    assert history[2]["val_rmse"] < history[0]["val_rmse"] and history[2]["test_rmse"] < history[0]["test_rmse"]
    run = Path(finetuned["run_dir"])
    raw = torch.load(run / "best.pth", map_location="cpu", weights_only=True)
    assert raw["config"] == {"embed_size": K, "summary": "self", "crop_size": 32}  # K from --init
    assert raw["short_side"] == 32  # 24x32 images: every shorter side resized to the crop size
    # the pretrained graph layers were the starting point (the trained ones moved away from them)
    start = graph_state(Path(pretrained["checkpoint"]))
    assert torch.equal(raw["state_dict"]["type_gcn.0.weight"], start["type_gcn.0.weight"])  # not trained here
    assert not torch.equal(raw["state_dict"]["edge_gcn.0.weight"], start["edge_gcn.0.weight"]) or raw["epoch"] == 0


@pytest.mark.slow
def test_split_is_by_content_seeded_saved_and_validation_comes_from_training(work, finetuned):
    from iqa_cli.datasets.formats import read_database
    from iqa_cli.training.graphiqa import labelled_rows, make_graphiqa_split

    split = json.loads((Path(finetuned["run_dir"]) / "split.json").read_text())
    assert split["protocol"] == "content" and split["seed"] == 0 and split["short_side"] == 32
    contents = {part: {Path(n).name.split("_")[0] for n in split[part]} for part in ("train", "val", "test")}
    assert [len(contents[p]) for p in ("train", "val", "test")] == [3, 1, 1]
    assert not (contents["train"] & contents["val"] or contents["train"] & contents["test"]
                or contents["val"] & contents["test"])
    table = read_database(work["ft"])
    rows = labelled_rows(table, "graphiqa")
    again = make_graphiqa_split(table, rows, 0, 0.8, 0.1)
    assert again.names(table) == {p: split[p] for p in ("train", "val", "test")}  # seeded: the same split again
    other = make_graphiqa_split(table, rows, 1, 0.8, 0.1).names(table)
    assert other != again.names(table)
    # the test part does not depend on how much validation is carved out of the training part
    assert make_graphiqa_split(table, rows, 0, 0.8, 0.3).names(table)["test"] == split["test"]


@pytest.mark.slow
def test_best_checkpoint_is_the_best_validation_epoch_and_scores_like_eval_db(work, finetuned):
    history = finetuned["history"]
    val = [r["val_srocc"] if r["val_srocc"] is not None else -math.inf for r in history]
    best_epoch = history[int(np.argmax(val))]["epoch"]  # the earliest on ties
    assert finetuned["best"]["epoch"] == best_epoch and finetuned["best"] == history[best_epoch]
    best = Path(finetuned["best_checkpoint"])
    assert torch.load(best, map_location="cpu", weights_only=True)["epoch"] == best_epoch
    # eval-db with the checkpoint scores the test images exactly as the run's evaluation did
    code, out, err = invoke("eval-db", work["ft"], "--metric", "graphiqa", "--checkpoint", best, "--crops", "3",
                            "--short-side", "32", "--bootstrap", "0", "--device", "cpu", "--json")
    assert code == 0, err
    doc = json.loads(out)
    split = json.loads((Path(finetuned["run_dir"]) / "split.json").read_text())
    scores = {row["dist"]: row["graphiqa"] for row in doc["images"]}
    mos = {row["dist"]: row["mos"] for row in doc["images"]}
    from iqa_cli.stats.correlation import srocc

    test = split["test"]
    assert srocc([scores[n] for n in test], [mos[n] for n in test]) == pytest.approx(finetuned["best"]["test_srocc"],
                                                                                    abs=1e-12)


def test_best_epoch_is_chosen_on_validation_never_on_test(tmp_path):
    """The loop keeps the epoch with the best select_key (validation) as best.pth, whatever the test
    metric says; GraphIQA fine-tuning selects on validation SROCC."""
    from torch import nn

    from iqa_cli.training.graphiqa import GraphIQAFinetuneRecipe
    from iqa_cli.training.loop import LoopSettings, Recipe, run

    assert GraphIQAFinetuneRecipe.select_key == "val_srocc"
    val = [0.1, 0.6, 0.4, 0.6, float("nan")]
    test = [0.9, 0.2, 0.95, 0.1, 0.99]

    class Scripted(Recipe):
        columns, eval_key, select_key = ("val_srocc", "test_srocc"), "test_srocc", "val_srocc"

        def build(self):
            return {"model": nn.Linear(1, 1)}

        def optimizer(self, modules):
            return torch.optim.SGD(modules["model"].parameters(), lr=0.1)

        def learning_rate(self, epoch, step, steps):
            return 0.1

        def batches(self, epoch):
            return [[0, 1]]

        def load(self, shard):
            return torch.ones(len(shard.items), 1)

        def forward(self, modules, data, shard):
            return {"y": modules["model"](data).squeeze(1)}

        def loss(self, modules, outputs):
            return outputs["y"].pow(2).mean()

        def evaluate(self, modules):
            epoch = self.evaluations = getattr(self, "evaluations", -1) + 1
            return {"val_srocc": val[epoch], "test_srocc": test[epoch]}

        def checkpoint(self, modules):
            return {"w": modules["model"].weight.detach().clone()}

        def restore(self, modules, checkpoint):
            modules["model"].weight.data.copy_(checkpoint["w"])

        def files(self):
            return {"note.txt": "hello\n"}

    result = run(Scripted(), LoopSettings(run_dir=tmp_path / "run", total_epochs=4, config={"seed": 0},
                                          device="cpu", num_workers=0, epoch_files=False))
    assert result.best["epoch"] == 1 and result.best["test_srocc"] == 0.2  # not epoch 2 (best test), not 3 (a tie)
    saved = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert saved["epoch"] == 1 and saved["selected_by"] == {"val_srocc": 0.6}
    assert not torch.equal(saved["w"], torch.load(tmp_path / "run" / "latest.pth", weights_only=True)["w"])
    assert result.best_checkpoint == tmp_path / "run" / "best.pth"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pth", "curves.png", "latest.pth",
                                                                     "metrics.csv", "note.txt"]


# -- data rules ----------------------------------------------------------------------------------
def test_small_images_are_resized_to_the_crop_size_and_the_cache_view_selects_rows(tmp_path):
    from iqa_cli.datasets.formats import read_database
    from iqa_cli.errors import InvalidInputError
    from iqa_cli.training.graphiqa import GraphIQATrainConfig, open_training_cache

    make_kadid(tmp_path / "db", refs=("I01", "I02"), types=(1,), levels=(1, 5))  # 24x32 pixels
    table = read_database(tmp_path / "db")

    def cache(**kw):
        cfg = GraphIQATrainConfig(name="x", method="graphiqa", database=str(tmp_path / "db"), crop_size=32,
                                  cache=str(tmp_path / "cache.h5"), **kw)
        return open_training_cache(cfg, table)

    with pytest.raises(InvalidInputError, match=r"I01_01_01.png: 32x24 pixels, smaller than the 32x32 .*drop it"):
        cache(short_side=0)
    with pytest.raises(InvalidInputError, match=r"--short-side 20 is smaller than the 32x32 GraphIQA crops"):
        cache(short_side=20)
    store, side = cache()
    assert side == 32 and store.short_side == 32
    assert min(store.height.min(), store.width.min()) == 32 and store.width.max() == 43  # aspect kept
    store, side = cache(short_side=40)
    assert side == 40 and store.height.min() == 40
    view = store.select([3, 1])
    assert view.n_rows == 2 and np.array_equal(view.read_row(0), store.read_row(3))
    assert np.array_equal(view.read_row(1, "ref"), store.read_row(1, "ref"))
    with pytest.raises(IndexError):
        store.select([4])


# -- one-line errors -----------------------------------------------------------------------------
def test_pretraining_needs_types_and_levels(tmp_path, work):
    make_clive(tmp_path / "clive")  # authentic: scores, no distortion types
    make_kadis(tmp_path / "kadis")  # pristine list: a type per image, no level
    ck = tmp_path / "ck"
    one_line_error(invoke("train", tmp_path / "clive", "--name", "a", "--checkpoints-dir", ck, *PRETRAIN),
                   "clive has no distortion types or levels", "iqa distort")
    one_line_error(invoke("train", tmp_path / "kadis", "--name", "b", "--checkpoints-dir", ck, *PRETRAIN),
                   "kadis700k has no distortion levels")
    assert no_run_folder(ck)


def test_finetuning_needs_scores(work, tmp_path):
    ck = tmp_path / "ck"
    one_line_error(invoke("train", work["pre"], "--name", "c", "--checkpoints-dir", ck, *FINETUNE),
                   "kadid10k has no human scores here", "--method graphiqa-pretrain")
    assert no_run_folder(ck)


@pytest.mark.slow
def test_init_with_another_k_names_both_sizes(work, pretrained, tmp_path):
    ck = tmp_path / "ck"
    line = one_line_error(invoke("train", work["ft"], "--name", "d", "--checkpoints-dir", ck, *FINETUNE, "--init",
                                  pretrained["checkpoint"], "--embed-size", "16"), "K=8", "K=16")
    assert "--embed-size 8" in line and no_run_folder(ck)


@pytest.mark.slow
def test_without_json_each_stage_prints_its_summary(work, pretrained, tmp_path):
    ck = tmp_path / "ck"
    code, out, err = invoke("train", work["pre"], "--name", "p", "--checkpoints-dir", ck, *PRETRAIN[:-6],
                            "--nepoch", "1", "--eval-triplets", "1", *COMMON)
    assert code == 0, err
    assert "graphiqa-pretrain, K=8" in out and "held-out triplet accuracy" in out and "1/1" in out
    assert "epoch 1/1" in err and "triplet acc" in err  # the epoch line on stderr
    code, out, err = invoke("train", work["ft"], "--name", "f", "--checkpoints-dir", ck, *FINETUNE[:4], "--nepoch",
                            "1", *COMMON, "--init", pretrained["checkpoint"])
    assert code == 0, err
    assert "images train / val / test" in out and "best checkpoint" in out and "val SROCC at the best epoch" in out
    assert "val SROCC" in err


def test_option_mistakes_are_one_line(work, tmp_path):
    ck = tmp_path / "ck"
    one_line_error(invoke("train", work["pre"], "--name", "e", "--checkpoints-dir", ck, *PRETRAIN, "--init",
                          tmp_path / "x.pth"), "--init does not apply to --method graphiqa-pretrain",
                   "it is for --method graphiqa)", exit_code=2)
    one_line_error(invoke("train", "--name", "f", "--checkpoints-dir", ck, "--method", "graphiqa"),
                   "--method graphiqa trains on a database folder")
    one_line_error(invoke("train", work["pre"], "--name", "g", "--checkpoints-dir", ck, "--embed-size", "8"),
                   "--embed-size does not apply to --method mos (it is for --method graphiqa-pretrain | graphiqa)",
                   exit_code=2)
    one_line_error(invoke("train", work["pre"], "--name", "h", "--checkpoints-dir", ck, "--method", "graphiqa-x"),
                   "--method graphiqa-x: choose one of mos, bapps, graphiqa-pretrain, graphiqa, grepq-low")
    assert no_run_folder(ck)


# -- processes -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_give_the_one_process_weights(work, pretrained, finetuned, tmp_path):
    """Pretraining forms each step's graphs over the crops of both processes (gathered features):
    the weights match one process within 1e-5 (here they came out bit-identical). Fine-tuning runs
    each image's graph where it lies and sums the gradient in another order; Adam turns the few
    gradients that are zero up to rounding into full-size steps of either sign, so a handful of
    weights (measured: <= 9 of 4 million per tensor) may differ by up to a few learning rates: all
    but 1 in 100,000 weights must match within 1e-6."""
    ck = tmp_path / "ck2"
    jobs = [{"name": "pre", "cli": ["train", work["pre"], "--name", "pre", "--checkpoints-dir", ck, *PRETRAIN]},
            {"name": "ft", "cli": ["train", work["ft"], "--name", "ft", "--checkpoints-dir", ck, *FINETUNE, "--init",
                                   pretrained["checkpoint"]]}]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs, default=str))
    env = dict(os.environ, OMP_NUM_THREADS="1", IQA_DIST_TIMEOUT="300",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")) if p))
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(TESTS / "ddp_driver.py"), str(out), str(tmp_path / "jobs.json")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("pre", "ft"):
        for rank in (0, 1):
            assert (out / f"{name}.rank{rank}.exit").read_text() == "0", (out / f"{name}.rank{rank}.stderr").read_text()
    single, double = graph_state(Path(pretrained["checkpoint"])), graph_state(ck / "pre" / "latest.pth")
    assert single.keys() == double.keys()
    for key in single:
        torch.testing.assert_close(double[key], single[key], rtol=0, atol=1e-5, msg=f"pretraining: {key}")
    single, double = graph_state(Path(finetuned["checkpoint"])), graph_state(ck / "ft" / "latest.pth")
    assert single.keys() == double.keys()
    apart = sum(int(((double[k] - single[k]).abs() > 1e-6).sum()) for k in single)
    assert apart <= 1e-5 * sum(v.numel() for v in single.values()), apart
    split_one = json.loads((Path(finetuned["run_dir"]) / "split.json").read_text())
    assert json.loads((ck / "ft" / "split.json").read_text()) == split_one
