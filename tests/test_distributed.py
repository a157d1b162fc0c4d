"""Under torchrun (2 CPU processes, Gloo) results do not depend on the number of processes.

One launch of tests/ddp_driver.py runs several commands in the same two processes (a launch costs
~10-30 s of start-up on this machine); each test then compares one of them with the same work done
here in one process: scores exactly, weights within 1e-5 (fp32, gradients summed in another
order). A second launch, of the real ``torchrun -m iqa_cli`` entry point, checks that a failure on
one process ends the run with one error line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import save_png
from ddp_driver import run_toy
from db_fixtures import make_tid
from mesh_fixtures import make_render_db
from test_training import make_teacher_store

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
LAUNCH_TIMEOUT_S = 540  # generous: the machine is shared; a hang would otherwise block the suite forever
TRAIN = ["--device", "cpu", "--seed", "0", "--npatches", "6", "--nInputImg", "5", "--split", "0.667",
         "--testset_freq", "1", "--nepoch", "1", "--nepoch_decay", "0", "--workers", "0"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """torchrun gives each process one intra-op thread; CPU kernels may round differently with
    another thread count, so the one-process runs here use one thread too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(TESTS), env.get("PYTHONPATH", "")) if p)
    env["IQA_DIST_TIMEOUT"] = "300"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _pairs(root: Path, n: int = 5) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for i in range(n):
        ref = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
        noise = rng.normal(0, 8 * (i + 1), ref.shape)
        save_png(root / "ref" / f"p{i}.png", ref)
        save_png(root / "dist" / f"p{i}.png", np.clip(ref + noise, 0, 255).astype(np.uint8))
    return root / "ref", root / "dist"


def _photos(root: Path, n: int = 5) -> Path:
    """Crops of a real photograph, two sizes, large enough for NIQE's 96x96 blocks."""
    from skimage import data

    image = data.astronaut()
    for i in range(n):
        h, w = (100, 120) if i % 2 else (110, 100)
        save_png(root / f"c{i}.png", image[40 * i:40 * i + h, 30 * i:30 * i + w])
    return root


@pytest.fixture(scope="module")
def launched(tmp_path_factory, torch_home):
    """Inputs, and the outputs of one 2-process launch over them."""
    root = tmp_path_factory.mktemp("ddp")
    store, _, _ = make_teacher_store(root / "store.h5", head="lpips", n_models=4, n_stimuli=6, n_patches=8, seed=1)
    nomos, _, _ = make_teacher_store(root / "nomos.h5", head="lpips", n_models=1, n_stimuli=4, n_patches=2,
                                     with_mos=False)
    refs, dists = _pairs(root / "pairs")
    renders, db = make_render_db(root / "renders_db", n_models=2, n_stimuli_per_model=2, size=(96, 96))
    tid = make_tid(root / "tid", n_refs=3, types=(1, 8), levels=(1, 2, 5)).root
    photos = _photos(root / "photos")
    out = root / "out"
    out.mkdir()
    ck = root / "ck2"
    jobs = [
        {"name": "mesh", "cli": ["score-mesh-db", store, "--device", "cpu", "--batch-size", "40", "--out",
                                 out / "mesh.csv", "--json"]},
        {"name": "pairs", "cli": ["score-pair", refs, dists, "--device", "cpu", "--batch-size", "2", "--out",
                                  out / "pairs.csv", "--json"]},
        {"name": "train_mse", "cli": ["train", store, "--name", "mse", "--checkpoints-dir", ck, *TRAIN, "--json"]},
        {"name": "train_rank", "cli": ["train", store, "--name", "rank", "--checkpoints-dir", ck, *TRAIN,
                                       "--loss", "mse+rank"]},
        {"name": "toy", "toy": {"run_dir": str(root / "toy2")}},
        {"name": "evaldb", "cli": ["eval-db", tid, "-m", "ssim,lpips", "--net", "squeeze", "--device", "cpu",
                                   "--batch-size", "2", "--bootstrap", "50", "--cache", out / "tid.h5", "--json"]},
        {"name": "images", "cli": ["score-image", photos, "-m", "niqe", "--device", "cpu", "--batch-size", "2",
                                   "--json"]},
        {"name": "patchify", "cli": ["patchify", renders, "--db", db, "--out", out / "patchified.h5"]},
        # last: after a failure the run's failure counter is taken, later errors would stay silent
        {"name": "nomos", "cli": ["train", nomos, "--name", "nomos", "--checkpoints-dir", ck, *TRAIN]},
    ]
    (root / "jobs.json").write_text(json.dumps(jobs, default=str))
    done = subprocess.run([*TORCHRUN, str(TESTS / "ddp_driver.py"), str(out), str(root / "jobs.json")],
                          env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "out": out, "store": store, "refs": refs, "dists": dists, "ck": ck, "renders": renders,
            "db": db, "tid": tid, "photos": photos}


def _read(launch, name: str, rank: int, stream: str) -> str:
    return (launch["out"] / f"{name}.rank{rank}.{stream}").read_text()


def _one_voice(launch, name: str) -> str:
    """Both processes exited 0; only the main one printed. Returns its stdout."""
    for rank in (0, 1):
        assert _read(launch, name, rank, "exit") == "0", _read(launch, name, rank, "stderr")
    assert _read(launch, name, 1, "stdout") == "" and _read(launch, name, 1, "stderr") == ""
    return _read(launch, name, 0, "stdout")


def test_sharded_score_mesh_db_equals_one_process(launched, cli, tmp_path):
    doc = json.loads(_one_voice(launched, "mesh"))
    single = cli("score-mesh-db", launched["store"], "--device", "cpu", "--batch-size", "40", "--out",
                 tmp_path / "mesh.csv", "--json")
    assert single.exit_code == 0, single.output
    expected = json.loads(single.stdout)
    assert doc["stimuli"] == expected["stimuli"]  # same rows, same order, exactly the same scores
    assert (doc["srocc"], doc["plcc"]) == (expected["srocc"], expected["plcc"])
    assert (launched["out"] / "mesh.csv").read_bytes() == (tmp_path / "mesh.csv").read_bytes()


def test_sharded_score_pair_folders_equal_one_process(launched, cli, tmp_path):
    doc = json.loads(_one_voice(launched, "pairs"))
    single = cli("score-pair", launched["refs"], launched["dists"], "--device", "cpu", "--batch-size", "2", "--out",
                 tmp_path / "pairs.csv", "--json")
    assert single.exit_code == 0, single.output
    assert doc["pairs"] == json.loads(single.stdout)["pairs"] and len(doc["pairs"]) == 5
    assert (launched["out"] / "pairs.csv").read_bytes() == (tmp_path / "pairs.csv").read_bytes()


def test_sharded_eval_db_equals_one_process(launched, cli, tmp_path):
    doc = json.loads(_one_voice(launched, "evaldb"))
    single = cli("eval-db", launched["tid"], "-m", "ssim,lpips", "--net", "squeeze", "--device", "cpu",
                 "--batch-size", "2", "--bootstrap", "50", "--cache", tmp_path / "tid.h5", "--json")
    assert single.exit_code == 0, single.output
    expected = json.loads(single.stdout)
    assert doc["images"] == expected["images"] and len(doc["images"]) == 18
    assert doc["metrics"] == expected["metrics"] and doc["comparisons"] == expected["comparisons"]


def test_sharded_score_image_equals_one_process(launched, cli):
    doc = json.loads(_one_voice(launched, "images"))
    single = cli("score-image", launched["photos"], "-m", "niqe", "--device", "cpu", "--batch-size", "2", "--json")
    assert doc["images"] == json.loads(single.stdout)["images"] and len(doc["images"]) == 5


def _train_cfg(store: Path, ck: Path, name: str, **kw):
    from iqa_cli.training import TrainConfig

    base = dict(name=name, store=str(store), checkpoints_dir=str(ck), device="cpu", seed=0, npatches=6, n_input_img=5,
                split=0.667, testset_freq=1, nepoch=2, nepoch_decay=0, num_workers=0)
    return TrainConfig(**{**base, **kw})


def _heads(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_close(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=atol, rtol=0), (key, (a[key] - b[key]).abs().max())


@pytest.mark.parametrize("loss", ["mse", "mse+rank"])
def test_two_process_training_matches_one_process_and_resumes_in_one(launched, tmp_path, loss):
    """16 training stimuli in steps of 5: the last step holds one stimulus, so one process's shard is
    empty. The 2-process run stops after epoch 1; one process continues it to epoch 2."""
    from iqa_cli.training import train

    name = "mse" if loss == "mse" else "rank"
    doc = json.loads(_one_voice(launched, "train_mse")) if loss == "mse" else None
    ran2 = launched["ck"] / name
    one = train(_train_cfg(launched["store"], tmp_path / "ck1", name, loss=loss))
    assert one.n_train == 16
    assert one.final["test_srocc"] is not None
    _assert_close(_heads(ran2 / "latest.pth"), _heads(one.run_dir / "epoch_1.pth"))
    history2 = torch.load(ran2 / "latest.pth", weights_only=True)["training"]["history"]
    for row2, row1 in zip(history2, one.history[:2]):  # sharded test-set scoring, same metrics
        for key in ("train_loss", "test_loss", "test_srocc", "test_plcc"):
            assert row2.get(key) == pytest.approx(row1.get(key), abs=1e-5), key
    if doc is not None:
        assert doc["epochs_completed"] == 1 and doc["n_train"] == 16
    # the 2-process checkpoint, resumed in one process, ends where the one-process run does
    shutil.copytree(ran2, tmp_path / "ck_resume" / name)
    resumed = train(_train_cfg(launched["store"], tmp_path / "ck_resume", name, loss=loss, resume=True, seed=None))
    assert resumed.resumed_from == 1 and resumed.epochs_completed == 2
    _assert_close(_heads(resumed.checkpoint), _heads(one.checkpoint))


def test_batchnorm_dropout_and_a_loss_only_module_under_two_processes(launched, tmp_path):
    """The toy recipe: synchronised BatchNorm, keyed dropout, a trained module used in the loss only,
    a soft-rank loss over uneven shards, a cosine schedule stepped per iteration."""
    run_toy(tmp_path / "toy1")
    two = torch.load(launched["root"] / "toy2" / "latest.pth", weights_only=True)
    one = torch.load(tmp_path / "toy1" / "latest.pth", weights_only=True)
    for part in ("net", "calib"):
        _assert_close(two[part], one[part])
    assert int(two["net"]["1.num_batches_tracked"]) == 6  # 3 steps x 2 epochs, counted once
    assert two["training"]["processes"] == 2 and one["training"]["processes"] == 1


def test_a_command_that_does_not_shard_runs_once_in_the_main_process(launched, cli, tmp_path):
    from iqa_cli.io.store import PatchStore

    _one_voice(launched, "patchify")
    assert cli("patchify", launched["renders"], "--db", launched["db"], "--out", tmp_path / "one.h5").exit_code == 0
    two, one = PatchStore.open(launched["out"] / "patchified.h5"), PatchStore.open(tmp_path / "one.h5")
    assert two.n_patches == one.n_patches > 0
    assert np.array_equal(two.read_distorted(0, two.n_patches), one.read_distorted(0, one.n_patches))


def test_an_error_on_every_process_is_reported_once(launched):
    for rank in (0, 1):
        assert _read(launched, "nomos", rank, "exit") == "1"
    lines = [line for rank in (0, 1) for line in _read(launched, "nomos", rank, "stderr").splitlines()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "has no MOS" in lines[0], lines
    assert not (launched["ck"] / "nomos").exists()


def test_a_failure_on_one_process_stops_the_run_with_one_line(tmp_path, torch_home):
    """The last pair's distorted image is truncated: only the second process reads it."""
    refs, dists = _pairs(tmp_path / "pairs", n=4)
    bad = dists / "p3.png"
    bad.write_bytes(bad.read_bytes()[:200])
    done = subprocess.run([*TORCHRUN, "-m", "iqa_cli", "score-pair", str(refs), str(dists), "--device", "cpu",
                           "--batch-size", "1", "--out", str(tmp_path / "scores.csv")],
                          env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and "p3.png" in ours[0] and "truncated" in ours[0], done.stderr[-3000:]
    assert "iqa_cli/" not in done.stderr  # no traceback through iqa (torchrun adds its own failure summary)
    assert not (tmp_path / "scores.csv").exists()
