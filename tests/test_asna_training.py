"""`iqa train --method asna` and `--method sorter` (training/asna.py, training/sorter.py).

Tiny networks (16x16 crops) on a tiny TID2013 of 5 references: the split never puts a content on
two sides, pairs are cropped and augmented alike, a few steps lower the loss, a run resumes where
an uninterrupted one ends, BatchNorm really trains, checkpoints score in score-pair/eval-db, the
learned sorter trains and plugs into --ranker sorter, and bad input is one line. The 2-process runs
are in test_asna_training_ddp.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from db_fixtures import make_generic, make_kadid, make_pieapp, make_pipal, make_tid

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(size=16, batch_size=4, device="cpu", num_workers=0, seed=0, val_fraction=0.2)


@pytest.fixture(scope="module")
def tid(tmp_path_factory):
    return make_tid(tmp_path_factory.mktemp("asna_tid") / "tid", n_refs=5, types=(1, 8), levels=(1, 2, 5)).root


def _config(tid, tmp_path, name="run", **options):
    from iqa_cli.training.asna import AsnaTrainConfig

    values = {**TINY, **options}
    return AsnaTrainConfig(name=name, database=str(tid), cache=str(tmp_path / "cache.h5"),
                           checkpoints_dir=str(tmp_path / "ck"), **values)


def _contents(table, rows) -> set[str]:
    return set(table.rows["content"].iloc[rows].tolist())


# -- split, targets, pairs (no training) ------------------------------------------------------------
@pytest.mark.parametrize("builder", [make_tid, make_kadid, make_pipal, make_pieapp])
def test_the_split_has_no_content_on_two_sides(tmp_path, builder):
    """By reference content, seeded: train, validation and test share no content and cover every
    scored row. PieAPP's per-image scores are all 'test': they are split by content too."""
    from iqa_cli.datasets.formats import read_database
    from iqa_cli.training.asna import training_split

    kwargs = {"n_refs": 6} if builder is make_tid else {"refs": tuple(f"I{i:02d}" for i in range(1, 6))} \
        if builder is make_kadid else {"refs": ("A0001", "A0002", "A0003", "A0004")} if builder is make_pipal \
        else {"refs": (1, 2, 3, 4, 5)}
    table = read_database(builder(tmp_path / "db", **kwargs).root)
    split = training_split(table, seed=3, train_fraction=0.8, val_fraction=0.25)
    parts = [_contents(table, getattr(split, p)) for p in ("train", "val", "test")]
    assert all(parts), parts
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    rows = np.concatenate([split.train, split.val, split.test])
    assert sorted(rows.tolist()) == list(range(len(table)))
    assert split.protocol == "content"
    again = training_split(table, seed=3, train_fraction=0.8, val_fraction=0.25)
    assert np.array_equal(again.train, split.train) and np.array_equal(again.val, split.val)


def test_the_split_is_seeded(tid):
    from iqa_cli.datasets.formats import read_database
    from iqa_cli.training.asna import training_split

    table = read_database(tid)
    tests = {tuple(sorted(_contents(table, training_split(table, seed, 0.6, 0.0).test))) for seed in range(8)}
    assert len(tests) > 1  # another seed, another test part


def test_targets_are_standardised_by_the_originals_constants_or_the_training_part(tmp_path, tid):
    from iqa_cli.datasets.formats import read_database
    from iqa_cli.training.asna import training_split, training_standardisation

    table = read_database(tid)
    split = training_split(table, 0, 0.8, 0.2)
    tid_z = training_standardisation(table, split.train)
    assert (tid_z.mean, tid_z.std) == (4.47, 1.30)  # the original's TID constants
    pieapp = read_database(make_pieapp(tmp_path / "pieapp", refs=(1, 2, 3)).root)
    rows = np.arange(len(pieapp))
    z = training_standardisation(pieapp, rows)  # "auto": the training part's own, sign flipped
    errors = pieapp.scores
    assert z.mean == pytest.approx(errors.mean()) and z.std == pytest.approx(-errors.std())
    standardised = z.standardise(errors)
    assert standardised.mean() == pytest.approx(0, abs=1e-9) and standardised.std() == pytest.approx(1)
    assert np.corrcoef(standardised, errors)[0, 1] == pytest.approx(-1)  # higher z = lower error = better


def test_a_pair_is_cropped_and_augmented_alike_from_its_seed():
    from iqa_cli.augment import augment_pair, draw_augmentation
    from iqa_cli.training.asna import training_pair

    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)
    dist = rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)
    a = training_pair(ref, dist, 16, "pad", "random", True, np.random.default_rng(7))
    b = training_pair(ref, dist, 16, "pad", "random", True, np.random.default_rng(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # the same draws by hand: crop origin, then the augmentation
    draws = np.random.default_rng(7)
    y, x = int(draws.integers(20 - 16 + 1)), int(draws.integers(26 - 16 + 1))
    aug = draw_augmentation(draws)
    as_float = [torch.from_numpy(im).permute(2, 0, 1).float()[None] / 255 for im in (ref, dist)]
    want = augment_pair(*(im[..., y:y + 16, x:x + 16] for im in as_float), aug)
    for got, expected in zip(a, want):
        assert torch.allclose(got, expected[0], atol=1e-6)


def test_a_small_pair_is_zero_padded_and_the_center_crop_is_centred():
    from iqa_cli.training.asna import training_pair

    small = np.full((12, 10, 3), 200, np.uint8)
    ref, dist = training_pair(small, small, 16, "pad", "center", False, np.random.default_rng(0))
    assert ref.shape == (3, 16, 16)
    assert float(ref[:, :2].abs().max()) == 0.0 and float(ref[:, :, :3].abs().max()) == 0.0  # black borders
    assert torch.allclose(ref[:, 2:14, 3:13], torch.full((3, 12, 10), 200 / 255))
    big = np.arange(20 * 20 * 3, dtype=np.uint8).reshape(20, 20, 3)
    ref, _ = training_pair(big, big, 16, "pad", "center", False, np.random.default_rng(0))
    assert torch.equal(ref, torch.from_numpy(big[2:18, 2:18]).permute(2, 0, 1).float() / 255)


# -- training ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tid, tmp_path_factory):
    """A bn network trained for 6 epochs at a high learning rate, without augmentation."""
    from iqa_cli.training.asna import train_asna

    root = tmp_path_factory.mktemp("asna_trained")
    cfg = _config(tid, root, "bn", variant="bn", epochs=6, lr=1e-2, mse_weight=1.0, rank_weight=0.0,
                  standardise="train", train_crop="center", augment=False)
    return train_asna(cfg)


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(trained):
    losses = [r["train_loss"] for r in trained.run.history if r.get("train_loss") is not None]
    assert len(losses) == 6
    assert losses[-1] < 0.85 * losses[0], losses
    assert trained.run.n_train == 18 and trained.n_val == 6 and trained.run.n_test == 6


@pytest.mark.slow
def test_batchnorm_really_trains_in_the_bn_variant(trained):
    from iqa_cli.models.asna import AsnaConfig, AsnaNet

    state = torch.load(trained.run.checkpoint, weights_only=True)["state_dict"]
    fresh = AsnaNet(AsnaConfig.from_dict(torch.load(trained.run.checkpoint, weights_only=True)["model_config"]))
    norms = [k for k in state if ".norm." in k]
    assert norms, "the bn variant has BatchNorm layers"
    steps = 6 * (18 // 4)
    for key in norms:
        if key.endswith("num_batches_tracked"):  # the encoder runs twice a step: reference, distorted
            assert int(state[key]) == (2 * steps if key.startswith("encoder") else steps), key
        else:
            assert not torch.equal(state[key], fresh.state_dict()[key]), key  # weights, bias, running stats moved


@pytest.mark.slow
def test_the_best_checkpoint_scores_in_score_pair_and_the_split_file(trained, tid, cli):
    from iqa_cli.registry import create_metric

    run = trained.run
    best = torch.load(trained.best_checkpoint, weights_only=True)
    assert best["selected"]["epoch"] == trained.best_epoch and best["selected"]["key"] == "val_srocc"
    vals = [r["val_srocc"] for r in run.history if r["epoch"] >= 1]
    assert trained.best["val_srocc"] == max(vals, key=lambda v: -math.inf if v != v else v)
    epoch_file = torch.load(run.run_dir / f"epoch_{trained.best_epoch}.pth", weights_only=True)
    assert all(torch.equal(best["state_dict"][k], v) for k, v in epoch_file["state_dict"].items())
    split = json.loads(trained.split_file.read_text())
    assert split["protocol"] == "content" and split["train"]["n"] == 18
    assert not set(split["train"]["contents"]) & set(split["test"]["contents"])
    # the checkpoint is an asna metric; its score of a pair is the trained network's
    ref, dist = tid / "reference_images" / "I01.BMP", tid / "distorted_images" / "i01_08_5.bmp"
    done = cli("score-pair", ref, dist, "--checkpoint", trained.best_checkpoint, "--small", "pad", "--device", "cpu",
               "--json")
    assert done.exit_code == 0, done.stderr
    scored = json.loads(done.stdout)
    assert scored["metric"] == "asna" and scored["variant"] == "bn"
    from iqa_cli.io.images import load_image

    metric = create_metric("asna", checkpoint=trained.best_checkpoint, small="pad")
    want = float(metric(torch.from_numpy(load_image(ref))[None], torch.from_numpy(load_image(dist))[None])[0])
    assert scored["score"] == pytest.approx(want, abs=1e-6)
    assert trained.model is not None


@pytest.mark.slow
def test_an_interrupted_run_resumes_where_an_uninterrupted_one_ends(tid, tmp_path):
    from iqa_cli.training.asna import train_asna

    whole = train_asna(_config(tid, tmp_path, "whole", epochs=2))
    train_asna(_config(tid, tmp_path, "parts", epochs=2, stop_after_epoch=1))
    resumed = train_asna(_config(tid, tmp_path, "parts", epochs=2, resume=True, seed=None))
    assert resumed.run.resumed_from == 1 and resumed.run.epochs_completed == 2
    a = torch.load(whole.run.checkpoint, weights_only=True)["state_dict"]
    b = torch.load(resumed.run.checkpoint, weights_only=True)["state_dict"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6, rtol=0), key
    assert resumed.best_epoch == whole.best_epoch
    assert resumed.best["test_srocc"] == pytest.approx(whole.best["test_srocc"], abs=1e-6, nan_ok=True)


# -- the learned sorter ----------------------------------------------------------------------------
@pytest.mark.slow
def test_the_sorter_trains_reports_its_quality_and_serves_as_the_ranker(tid, tmp_path, cli):
    from iqa_cli.models.sorter import sorter_quality
    from iqa_cli.weights import load_sorter

    done = cli("train", "--method", "sorter", "--name", "s", "--checkpoints-dir", tmp_path / "ck", "--preset", "small",
               "--vectors", "768", "--batch-size", "256", "--nepoch", "2", "--seed", "0", "--device", "cpu",
               "--workers", "0", "--json")
    assert done.exit_code == 0, done.stderr
    doc = json.loads(done.stdout)
    first, last = doc["history"][0], doc["history"][-1]
    assert last["rank_error"] < first["rank_error"]  # it learns to rank
    assert 0 <= last["spearman_gap"] <= last["spearman_gap_max"]
    sorter = load_sorter(doc["checkpoint"])
    quality = sorter_quality(sorter, n_vectors=10_000, n_pairs=10_000)  # the recipe's own check, again
    assert quality.mean_abs_rank_error == pytest.approx(last["rank_error"], rel=1e-5)
    done = cli("train", "--method", "asna", tid, "--name", "a", "--checkpoints-dir", tmp_path / "ck", "--cache",
               tmp_path / "c.h5", "--size", "16", "--nepoch", "1", "--ranker", "sorter", "--sorter", doc["checkpoint"],
               "--target-ranks", "sorter", "--val-fraction", "0.2", "--seed", "0", "--device", "cpu", "--workers", "0",
               "--json")
    assert done.exit_code == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["config"]["ranker"] == "sorter" and run["config"]["target_ranks"] == "ranker"
    assert run["history"][1]["train_rank"] is not None and run["config"]["batch_size"] == 16


@pytest.mark.slow
def test_without_json_sorter_and_asna_print_their_summaries(tid, tmp_path, cli):
    done = cli("train", "--method", "sorter", "--name", "s", "--checkpoints-dir", tmp_path / "ck", "--preset", "small",
               "--vectors", "256", "--batch-size", "128", "--nepoch", "1", "--seed", "0", "--device", "cpu",
               "--workers", "0")
    assert done.exit_code == 0, done.stderr
    assert "sorter, small preset" in done.stdout and "Spearman gap, mean / max" in done.stdout
    assert "rank error" in done.stderr and "--ranker sorter --sorter" in done.stderr
    done = cli("train", "--method", "asna", tid, "--name", "a", "--checkpoints-dir", tmp_path / "ck", "--cache",
               tmp_path / "c.h5", "--size", "16", "--nepoch", "1", "--val-fraction", "0.2", "--seed", "0", "--device",
               "cpu", "--workers", "0")
    assert done.exit_code == 0, done.stderr
    assert "pairs train / val / test" in done.stdout and "test SROCC at the best epoch" in done.stdout
    assert "epoch 1/1" in done.stderr and "eval-db DB --metric asna --checkpoint" in done.stderr


# -- bad input -----------------------------------------------------------------------------------------
def _one_line_error(done, *words):
    assert done.exit_code == 1, (done.exit_code, done.stdout, done.stderr)
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_a_database_without_references_is_one_line(tmp_path, cli):
    root = make_generic(tmp_path / "nr", with_refs=False).root
    done = cli("train", "--method", "asna", root, "--name", "x", "--checkpoints-dir", tmp_path / "ck", "--no-cache")
    _one_line_error(done, "no reference images", "full-reference")
    assert not (tmp_path / "ck" / "x").exists()  # no run folder


def test_a_database_without_scores_is_one_line(tmp_path, cli):
    root = make_kadid(tmp_path / "listing", listing=True).root  # what iqa distort writes
    done = cli("train", "--method", "asna", root, "--name", "x", "--checkpoints-dir", tmp_path / "ck", "--no-cache")
    _one_line_error(done, "no human scores")
    assert not (tmp_path / "ck" / "x").exists()  # no run folder


def test_the_sorter_ranker_needs_batches_of_16(tid, tmp_path, cli):
    done = cli("train", "--method", "asna", tid, "--name", "x", "--checkpoints-dir", tmp_path / "ck", "--ranker",
               "sorter", "--batch-size", "8", "--no-cache")
    _one_line_error(done, "exactly 16", "--batch-size is 8")


def test_options_of_another_method_are_usage_errors(tid, tmp_path, cli):
    done = cli("train", "--method", "asna", tid, "--name", "x", "--checkpoints-dir", tmp_path / "ck", "--npatches", "3")
    assert done.exit_code == 2 and "--npatches does not apply to --method asna (it is for --method mos | bapps)" in done.stderr
    done = cli("train", "--method", "sorter", tid, "--name", "x", "--checkpoints-dir", tmp_path / "ck")
    _one_line_error(done, "random vectors")
    done = cli("train", "--name", "x", "--checkpoints-dir", tmp_path / "ck", "--variant", "bn", tmp_path / "s.h5")
    assert done.exit_code == 2 and "--variant" in done.stderr


def test_a_saturated_head_still_gives_finite_gradients():
    """Constant predictions (a saturated sigmoid) must not turn the gradients NaN: the Pearson term's
    root is clamped, and a term of weight 0 stays off the graph (0 x inf is NaN)."""
    from iqa_cli.losses.asna import AsnaLoss

    target = torch.linspace(-1.0, 1.0, 16)
    for m, s in ((1.0, 0.0), (0.1, 0.1), (0.5, 0.0)):
        pred = torch.full((16,), 0.5, requires_grad=True)  # its mean is exact: deviations are 0
        AsnaLoss(m, s)(pred, target).backward()
        assert torch.isfinite(pred.grad).all(), (m, s)
    pred = torch.full((16,), 0.5, requires_grad=True)  # its mean is exact: deviations are 0
    AsnaLoss(1.0, 0.0)(pred, target).backward()  # MSE alone: exactly the MSE's gradient
    assert torch.allclose(pred.grad, 2 * (pred.detach() - target) / 16)
