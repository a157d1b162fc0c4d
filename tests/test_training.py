"""`iqa train`: sampler, schedule, clamp, planted-teacher learning, resume, checkpoints, errors, BAPPS.

The databases here are written straight into a PatchStore (StoreWriter): smooth random 32x32
texture patches per model, distorted by noise / blur / contrast / colour shift of random
strength, with MOS produced by a *teacher*: a known non-negative head on the same fixed
(random, see conftest) AlexNet backbone, MOS = mean over the stimulus's patches of the teacher's
distance. The teacher is scaled so its largest patch distance is 0.95 (no min(d, 1) clipping) --
its scale differs from a fresh head's, so the untrained student is clearly off.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_cli.errors import InvalidInputError, WeightsError
from iqa_cli.io.store import PatchStore, StoreWriter
from iqa_cli.training import (MOSBatches, TrainConfig, build_model, epoch_batches, learning_rate, make_split,
                              stimulus_patch_sample, train, validate_config)

KINDS = ("noise", "blur", "contrast", "colour")
LAYER_WEIGHT = (0.5, 1.0, 2.0, 1.0, 0.5)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These tensors are tiny: one intra-op thread is faster for them, and immune to the
    OpenMP spin-wait stalls (50x slowdowns) seen when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- synthetic databases -----------------------------------------------------------------------
def _textures(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    out = []
    for _ in range(n):
        side = int(rng.integers(2, 8))
        coarse = rng.uniform(0, 255, size=(side, side, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse, "RGB").resize((size, size), Image.BICUBIC), np.float64)
        out.append(np.clip(img + rng.normal(0, 6, img.shape), 0, 255))
    return np.stack(out).round().astype(np.uint8)


def _distort(rng: np.random.Generator, ref: np.ndarray, kind: str, level: float) -> np.ndarray:
    x = ref.astype(np.float64)
    if kind == "noise":
        x = x + rng.normal(0, 50 * level, x.shape)
    elif kind == "blur":
        k = 1 + 2 * int(round(3 * level))
        pad = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="edge")
        x = sum(pad[:, i:i + x.shape[1], j:j + x.shape[2]] for i in range(k) for j in range(k)) / (k * k)
    elif kind == "contrast":
        x = (x - x.mean()) * (1 - 0.8 * level) + x.mean()
    else:
        x = x + np.array([80.0, -60.0, 40.0]) * level
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


@torch.no_grad()
def make_teacher(head: str, seed: int = 7):
    """A known non-negative head of the given type on the conftest's fixed random AlexNet."""
    torch.manual_seed(seed)
    model = build_model(validate_config(TrainConfig(name="teacher", store="-", head=head, seed=seed))).eval()
    g = torch.Generator().manual_seed(seed)
    for k in range(len(model.spec.channels)):
        for conv in (m for m in getattr(model, f"lin{k}").model if isinstance(m, torch.nn.Conv2d)):
            conv.weight.copy_((0.2 + 0.8 * torch.rand(conv.weight.shape, generator=g)) ** 2 * LAYER_WEIGHT[k])
    return model


def _as_float(patches: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255


def write_store(path: Path, models, size: int, splits: dict[str, str] | None = None) -> Path:
    """models: [(name, ref (n,s,s,3), [(stimulus, dist, mos), ...]), ...]"""
    with StoreWriter(path, patch_size=size, stride=size, min_foreground=0.6, background="auto",
                     fingerprint=f"synthetic-{path.name}", source="patches") as w:
        for name, ref, stimuli in models:
            m = w.add_model(name, ref, views=[""])
            idx = np.arange(len(ref))
            for stim, dist, mos in stimuli:
                w.add_stimulus(m, stim, dist, view=idx * 0, number=idx, y=idx * 0, x=idx * 0, ref=idx, mos=mos,
                               split=(splits or {}).get(stim, ""))
        w.commit()
    return path


def make_teacher_store(path: Path, head: str = "graphics", n_models: int = 6, n_stimuli: int = 8, n_patches: int = 16,
                       size: int = 32, seed: int = 0, with_mos: bool = True, splits: dict[str, str] | None = None):
    """A store whose MOS come from a planted teacher; returns (path, teacher, MOS by stimulus)."""
    rng = np.random.default_rng(seed)
    teacher = make_teacher(head)
    raw = []
    for m in range(n_models):
        ref = _textures(rng, n_patches, size)
        stimuli = []
        for j in range(n_stimuli):
            dist = _distort(rng, ref, KINDS[j % len(KINDS)], float(rng.uniform(0.1, 1.0)))
            with torch.no_grad():
                d = teacher(_as_float(ref), _as_float(dist)).numpy().astype(np.float64)
            stimuli.append((f"m{m}_s{j}", dist, d))
        raw.append((f"m{m}", ref, stimuli))
    scale = 0.95 / max(d.max() for _, _, st in raw for _, _, d in st)
    with torch.no_grad():  # the teacher itself, scaled: exactly the head that produced the MOS
        for k in range(len(teacher.spec.channels)):
            [m for m in getattr(teacher, f"lin{k}").model if isinstance(m, torch.nn.Conv2d)][-1].weight.mul_(scale)
    models = [(name, ref, [(s, dist, float(d.mean() * scale) if with_mos else float("nan")) for s, dist, d in st])
              for name, ref, st in raw]
    write_store(path, models, size, splits)
    mos = {s: float(d.mean() * scale) for _, _, st in raw for s, _, d in st}
    return path, teacher, mos


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, torch_home) -> Path:
    """24 stimuli (4 models x 6), 8 patches of 32x32 each: for the fast mechanics tests."""
    path, _, _ = make_teacher_store(tmp_path_factory.mktemp("store") / "small.h5", head="lpips", n_models=4,
                                    n_stimuli=6, n_patches=8, seed=1)
    return path


def _cfg(store: Path, tmp_path: Path, **kw) -> TrainConfig:
    base = dict(name="run", store=str(store), checkpoints_dir=str(tmp_path / "ck"), npatches=6, n_input_img=4,
                nepoch=1, nepoch_decay=1, lr=1e-3, testset_freq=1, seed=0, device="cpu", eval_batch_size=64)
    base.update(kw)
    return TrainConfig(**base)


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# -- schedule ------------------------------------------------------------------------------------
def test_learning_rate_schedule_is_flat_then_linear_to_zero():
    lrs = [learning_rate(e, 1e-4, 5, 5) for e in range(1, 11)]
    assert lrs[:5] == [1e-4] * 5
    assert lrs[5:] == pytest.approx([1e-4 * k / 6 for k in (5, 4, 3, 2, 1)])
    steps = np.diff([1e-4] + lrs[4:] + [0.0])
    assert np.allclose(steps[1:], steps[1])  # equal steps down to 0 right after the last epoch
    assert all(lr > 0 for lr in lrs)
    assert learning_rate(11, 1e-4, 5, 5) == 0.0
    assert [learning_rate(e, 1.0, 0, 3) for e in (1, 2, 3)] == pytest.approx([0.75, 0.5, 0.25])
    assert [learning_rate(e, 1.0, 2, 0) for e in (1, 2)] == [1.0, 1.0]
    with pytest.raises(ValueError):
        learning_rate(0, 1.0, 1, 1)


def test_training_applies_the_schedule_per_epoch(small_store, tmp_path):
    result = train(_cfg(small_store, tmp_path, nepoch=1, nepoch_decay=2, testset_freq=5))
    assert [r["lr"] for r in result.history[1:]] == pytest.approx([1e-3, 1e-3 * 2 / 3, 1e-3 / 3])
    state = _state(result.checkpoint)["training"]
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 / 3)
    assert state["optimizer"]["param_groups"][0]["betas"] == (0.5, 0.999)


# -- sampler -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,npatches", [(7, 150), (150, 150), (200, 150), (1, 5), (40, 3)])
def test_each_stimulus_contributes_npatches_patches(n, npatches):
    local = stimulus_patch_sample(n, npatches, np.random.default_rng(0))
    assert len(local) == npatches
    counts = np.bincount(local, minlength=n)
    full, extra = divmod(npatches, n)
    assert set(np.unique(counts)) <= {full, full + 1}
    assert int((counts == full + 1).sum()) == extra  # the remainder: distinct patches, no replacement
    assert local.min() >= 0 and local.max() < n


def test_epoch_batches_hold_whole_stimuli_and_reshuffle_each_epoch():
    counts = [5, 9, 12, 3, 7, 20, 1, 8, 4, 6]
    epochs = [epoch_batches(counts, 10, 4, np.random.default_rng([0, e])) for e in range(3)]
    for batches in epochs:
        assert [len(b) for b in batches] == [4, 4, 2]
        seen = [s for b in batches for s, _ in b]
        assert sorted(seen) == list(range(len(counts)))  # every stimulus once: never split across batches
        for b in batches:
            for s, local in b:
                assert len(local) == 10 and local.max() < counts[s]
    orders = [tuple(s for b in batches for s, _ in b) for batches in epochs]
    assert len(set(orders)) == 3


def test_loader_batches_pair_each_patch_with_its_reference(small_store):
    store = PatchStore.open(small_store)
    st = store.stimuli
    first, counts, mos = st["first"].to_numpy(), st["count"].to_numpy(), st["mos"].to_numpy()
    refs = store.patch_refs(0, store.n_patches)
    rows = [0, 1, 7, 13, 20]
    batches = epoch_batches(counts[rows], 11, 2, np.random.default_rng(3))
    batches = [[(rows[i], local) for i, local in b] for b in batches]
    data = MOSBatches(store, batches, first, mos, refs)
    for k, batch in enumerate(batches):
        item = data[k]
        assert item["mos"].tolist() == pytest.approx([mos[s] for s, _ in batch])
        expected_rows = np.concatenate([first[s] + local for s, local in batch])
        assert np.array_equal(item["dist"].numpy(), store.read_distorted_rows(expected_rows))
        assert np.array_equal(item["ref"].numpy()[item["ref_index"].numpy()],
                              store.read_reference_rows(refs[expected_rows]))
        assert np.array_equal(item["slot"].numpy(), np.repeat(np.arange(len(batch)), 11))
        assert len(item["ref"]) == len(np.unique(refs[expected_rows]))  # shared reference patches read once


# -- split ---------------------------------------------------------------------------------------
def test_split_is_by_stimulus_seeded_and_uses_the_store_column_when_complete(tmp_path, torch_home):
    names = [f"m{m}_s{j}" for m in range(2) for j in range(5)]
    labelled = {n: ("test" if j in (0, 3) else "train") for n in names for j in [int(n[-1])]}
    path, _, _ = make_teacher_store(tmp_path / "lab.h5", head="lpips", n_models=2, n_stimuli=5, n_patches=2,
                                    splits=labelled)
    st = PatchStore.open(path).stimuli
    cfg = validate_config(TrainConfig(name="x", store=str(path), seed=3))
    split = make_split(st, cfg, 3)
    assert split.source == "store"
    assert sorted(st["stimulus"][list(split.test)]) == sorted(n for n, v in labelled.items() if v == "test")
    explicit = make_split(st, validate_config(replace_cfg(cfg, split=0.7)), 3)
    assert explicit.source == "random" and (len(explicit.train), len(explicit.test)) == (7, 3)
    assert make_split(st, cfg, 3) == split
    assert make_split(st, replace_cfg(cfg, split=0.7), 4) != explicit  # the seed decides
    assert not set(explicit.train) & set(explicit.test)


def replace_cfg(cfg, **kw):
    from dataclasses import replace

    return replace(cfg, **kw)


def test_split_csvs_one_alone_means_the_rest(small_store, tmp_path):
    st = PatchStore.open(small_store).stimuli
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("model,stimulus\nm0,m0_s0\nm1,m1_s1\nm2,m2_s2\nm3,m3_s3\n")
    cfg = validate_config(TrainConfig(name="x", store=str(small_store), test_csv=str(test_csv), seed=0))
    split = make_split(st, cfg, 0)
    assert split.source == "csv"
    assert sorted(st["stimulus"][list(split.test)]) == ["m0_s0", "m1_s1", "m2_s2", "m3_s3"]
    assert len(split.train) == len(st) - 4


# -- clamp ---------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")  # constant MOS: correlation undefined
def test_heads_stay_non_negative_under_a_loss_pushing_them_down(tmp_path, torch_home):
    # every MOS is 0: plain gradient steps would drive weights negative; the clamp stops them at 0
    path, _, _ = make_teacher_store(tmp_path / "zero.h5", head="lpips", n_models=2, n_stimuli=4, n_patches=4)
    with StoreWriter(tmp_path / "zero_mos.h5", patch_size=32, stride=32, min_foreground=0.6, background="auto",
                     fingerprint="z", source="patches") as w:
        src = PatchStore.open(path)
        for m, row in src.models.iterrows():
            mi = w.add_model(row["name"], src.read_reference(row["ref_first"], row["ref_first"] + row["ref_count"]))
            for _, s in src.stimuli[src.stimuli["model_index"] == m].iterrows():
                idx = np.arange(s["count"])
                w.add_stimulus(mi, s["stimulus"], src.read_distorted(s["first"], s["first"] + s["count"]),
                               view=idx * 0, number=idx, y=idx * 0, x=idx * 0, ref=idx, mos=0.0)
        w.commit()
    result = train(_cfg(tmp_path / "zero_mos.h5", tmp_path, head="graphics", lr=0.05, split=0.6, testset_freq=9))
    weights = [p.detach() for p in result.model.heads_module().parameters()]
    assert all(float(w.min()) >= 0.0 for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) > 0  # the clamp did bite
    saved = _state(result.checkpoint)["state_dict"]
    assert all(float(v.min()) >= 0 for k, v in saved.items() if k.startswith("lin"))


def test_fresh_heads_are_small_positive_uniform(torch_home):
    torch.manual_seed(0)
    model = build_model(validate_config(TrainConfig(name="x", store="-", head="graphics", seed=0)))
    for k, channels in enumerate(model.spec.channels):
        for conv in (m for m in getattr(model, f"lin{k}").model if isinstance(m, torch.nn.Conv2d)):
            w = conv.weight.detach()
            bound = 1 / math.sqrt(conv.in_channels)  # PyTorch's default fan-in bound, folded onto >= 0
            assert float(w.min()) >= 0 and float(w.max()) <= bound
            if w.numel() >= 1000:
                assert float(w.mean()) == pytest.approx(0.5 * bound, rel=0.05)
    assert not any(p.requires_grad for p in model.net.parameters())  # frozen backbone by default


# -- planted teacher -----------------------------------------------------------------------------
@pytest.mark.parametrize("head,lr", [("graphics", 1e-2), ("lpips", 3e-2)])
def test_training_recovers_a_planted_teacher(head, lr, tmp_path, torch_home):
    path, teacher, mos = make_teacher_store(tmp_path / f"{head}.h5", head=head)
    cfg = _cfg(path, tmp_path, head=head, lr=lr, npatches=16, n_input_img=4, nepoch=5, nepoch_decay=5,
               testset_freq=5, split=0.8, seed=0)
    result = train(cfg)
    untrained, final = result.history[0], result.final
    assert final["epoch"] == 10
    assert untrained["test_rmse"] > 0.1  # the fresh head is clearly off ...
    assert final["test_rmse"] < 0.2 * untrained["test_rmse"]  # ... training brings it close to the teacher
    assert final["test_srocc"] >= 0.95
    assert final["test_plcc"] >= 0.95
    # the teacher itself reproduces its MOS through the same scoring (sanity of the fixture)
    from iqa_cli.score_db import stimulus_scores

    store = PatchStore.open(path)
    teacher_scores = stimulus_scores(store, teacher, device="cpu")
    assert np.allclose(teacher_scores, [mos[s] for s in store.stimuli["stimulus"]], atol=1e-5)


def test_rank_loss_training_runs_and_improves_ranking_agreement(small_store, tmp_path):
    result = train(_cfg(small_store, tmp_path, loss="mse+rank", rank_weight=0.5, nepoch=2, nepoch_decay=1,
                        testset_freq=3, split=0.7))
    assert all(math.isfinite(r["train_loss"]) for r in result.history[1:])
    assert result.final["test_srocc"] >= result.history[0]["test_srocc"] - 0.05
    only_rank = train(_cfg(small_store, tmp_path, name="rank", loss="rank", split=0.7))
    assert 0 <= only_rank.history[-1]["train_loss"] <= 2


# -- files, checkpoints, resume ------------------------------------------------------------------
def test_run_folder_files(small_store, tmp_path):
    result = train(_cfg(small_store, tmp_path, nepoch=2, nepoch_decay=1, testset_freq=2))
    run = tmp_path / "ck" / "run"
    assert result.run_dir == run and result.checkpoint == run / "latest.pth"
    assert {p.name for p in run.iterdir()} == {"latest.pth", "epoch_1.pth", "epoch_2.pth", "epoch_3.pth",
                                              "metrics.csv", "curves.png"}
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert [bool(r["test_srocc"]) for r in rows] == [True, False, True, True]  # before, every 2nd, and the last
    assert all(r["train_loss"] for r in rows[1:])
    assert Image.open(run / "curves.png").format == "PNG"
    payload = _state(run / "epoch_2.pth")
    assert payload["format"] == "iqa-checkpoint" and payload["epoch"] == 2 and "training" not in payload
    assert payload["config"]["npatches"] == 6 and payload["config"]["seed"] == 0
    assert not any(k.startswith("net.") for k in payload["state_dict"])  # frozen ImageNet backbone: not stored
    d = result.to_dict()
    json.dumps(d)
    assert d["epochs_completed"] == 3 and d["n_train"] + d["n_test"] == 24 and "model" not in d


def _timed_rows(result, n_input_img: int) -> list[dict]:
    """metrics.csv's rows; checks each trained epoch's timing columns against its step and item counts."""
    with open(result.metrics_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["seconds"] == rows[0]["steps_per_s"] == ""  # epoch 0 only evaluates
    steps = math.ceil(result.n_train / n_input_img)
    for row in rows[1:]:
        seconds, steps_per_s = float(row["seconds"]), float(row["steps_per_s"])
        assert seconds > 0 and steps_per_s > 0
        assert steps_per_s * seconds == pytest.approx(steps, rel=1e-4)  # optimiser steps, not items
        assert float(row["units_per_s"]) * seconds == pytest.approx(result.n_train, rel=1e-4)
    return rows


def test_metrics_csv_times_steps_and_items_per_second_and_no_gpu_memory_on_the_cpu(small_store, tmp_path):
    result = train(_cfg(small_store, tmp_path, n_input_img=5, nepoch=2, nepoch_decay=0, testset_freq=5))
    rows = _timed_rows(result, 5)
    assert len(rows) == 3 and "steps_per_s" in rows[0] and "cuda_peak_mib" not in rows[0]
    assert all("cuda_peak_mib" not in r for r in result.history)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_csv_has_the_peak_gpu_memory_of_each_epoch_on_cuda(small_store, tmp_path):
    result = train(_cfg(small_store, tmp_path, n_input_img=5, nepoch=2, nepoch_decay=0, testset_freq=5,
                        device="cuda"))
    rows = _timed_rows(result, 5)
    assert rows[0]["cuda_peak_mib"] == ""
    assert all(float(r["cuda_peak_mib"]) > 0 for r in rows[1:])


def test_checkpoint_round_trip_into_score_mesh_db(small_store, tmp_path, cli):
    from iqa_cli.stats.correlation import correlation_report
    from iqa_cli.registry import create_metric
    from iqa_cli.score_db import stimulus_scores

    result = train(_cfg(small_store, tmp_path, head="graphics", nepoch=1, nepoch_decay=1, split=0.75))
    store = PatchStore.open(small_store)
    in_memory = stimulus_scores(store, result.model, device="cpu")
    loaded = create_metric("graphics-lpips", checkpoint=result.checkpoint, device="cpu")
    from_file = stimulus_scores(store, loaded, device="cpu")
    assert np.array_equal(in_memory, from_file)
    # the logged test SROCC/PLCC are what score-mesh-db's statistics give on the test stimuli
    split = _state(result.checkpoint)["training"]["split"]
    names = list(store.stimuli["stimulus"])
    test_rows = [names.index(n) for n in split["test"]]
    report = correlation_report(from_file[test_rows], store.stimuli["mos"].to_numpy()[test_rows], fit="glm")
    assert result.final["test_srocc"] == pytest.approx(report.srocc)
    assert result.final["test_plcc"] == pytest.approx(report.plcc)
    # and through the CLI
    out = cli("score-mesh-db", small_store, "--checkpoint", result.checkpoint, "--device", "cpu", "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert [s["score"] for s in doc["stimuli"]] == pytest.approx(list(in_memory), abs=1e-12)


def test_trained_or_scratch_backbone_travels_in_the_checkpoint(small_store, tmp_path):
    from iqa_cli.registry import create_metric
    from iqa_cli.score_db import stimulus_scores

    result = train(_cfg(small_store, tmp_path, head="lpips", from_scratch=True, train_trunk=True, nepoch=1,
                        nepoch_decay=0, split=0.75))
    payload = _state(result.checkpoint)
    assert any(k.startswith("net.") for k in payload["state_dict"])
    loaded = create_metric("lpips", checkpoint=result.checkpoint, device="cpu")
    store = PatchStore.open(small_store)
    assert np.array_equal(stimulus_scores(store, result.model, device="cpu"), stimulus_scores(store, loaded,
                                                                                              device="cpu"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    payload = _state(path)
    state = dict(payload["state_dict"])
    opt = payload["training"]["optimizer"]["state"]
    for k, v in opt.items():
        for name, t in v.items():
            if torch.is_tensor(t):
                state[f"opt.{k}.{name}"] = t
    return state


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _comparable(history) -> list[dict]:
    timing = ("seconds", "units_per_s", "steps_per_s", "cuda_peak_mib")
    return [{k: v for k, v in r.items() if k not in timing} for r in history]


def test_resume_after_stop_gives_the_uninterrupted_weights(small_store, tmp_path):
    kw = dict(head="graphics", nepoch=2, nepoch_decay=1, testset_freq=2, split=0.75)
    full = train(_cfg(small_store, tmp_path, name="full", **kw))
    part = train(_cfg(small_store, tmp_path, name="part", stop_after_epoch=1, **kw))
    assert part.stopped_early and part.epochs_completed == 1
    resumed = train(_cfg(small_store, tmp_path, name="part", resume=True, **kw))
    assert resumed.resumed_from == 1 and resumed.epochs_completed == 3 and not resumed.stopped_early
    _assert_same(_weights(full.checkpoint), _weights(resumed.checkpoint))
    assert _comparable(full.history) == _comparable(resumed.history)


def test_ctrl_c_keeps_the_last_epoch_and_resume_matches(small_store, tmp_path):
    kw = dict(head="graphics", nepoch=1, nepoch_decay=2, testset_freq=1, split=0.75, seed=5)
    full = train(_cfg(small_store, tmp_path, name="full", **kw))
    steps = []

    def interrupt(event):
        if event.kind == "step":
            steps.append(event.epoch)
            if event.epoch == 2 and steps.count(2) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(small_store, tmp_path, name="cut", **kw), progress=interrupt)
    latest = tmp_path / "ck" / "cut" / "latest.pth"
    assert _state(latest)["training"]["epoch"] == 1
    assert not list(latest.parent.glob("*.tmp"))
    # resuming without repeating the seed takes it from the checkpoint
    kw.pop("seed")
    resumed = train(_cfg(small_store, tmp_path, name="cut", resume=True, seed=None, **kw))
    _assert_same(_weights(full.checkpoint), _weights(resumed.checkpoint))


def test_resume_errors(small_store, tmp_path):
    train(_cfg(small_store, tmp_path, head="graphics", nepoch=1, nepoch_decay=0, split=0.75))
    with pytest.raises(InvalidInputError, match="already holds a run"):
        train(_cfg(small_store, tmp_path, head="graphics", nepoch=1, nepoch_decay=0, split=0.75))
    with pytest.raises(WeightsError, match="incompatible run: head='graphics'"):
        train(_cfg(small_store, tmp_path, head="lpips", nepoch=1, nepoch_decay=0, split=0.75, resume=True))
    with pytest.raises(InvalidInputError, match="no checkpoint to resume"):
        train(_cfg(small_store, tmp_path, name="other", resume=True))
    # a finished run asked to go on for more epochs continues the schedule
    more = train(_cfg(small_store, tmp_path, head="graphics", nepoch=2, nepoch_decay=0, split=0.75, resume=True))
    assert more.resumed_from == 1 and more.epochs_completed == 2


# -- CLI -----------------------------------------------------------------------------------------
def _one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _train_args(store, tmp_path, *extra):
    return ["train", str(store), "--name", "cli", "--checkpoints-dir", str(tmp_path / "ck"), "--device", "cpu",
            "--npatches", "4", "--nepoch", "1", "--nepoch_decay", "0", "--seed", "0", *extra]


def test_cli_trains_and_prints_json(small_store, tmp_path, cli):
    result = cli(*_train_args(small_store, tmp_path, "--nInputImg", "3", "--testset_freq", "1", "--json"))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["epochs_completed"] == 1 and doc["config"]["n_input_img"] == 3
    assert doc["final"]["test_srocc"] is not None and Path(doc["checkpoint"]).is_file()
    assert "epoch 1/1" in result.stderr  # one log line per epoch on stderr


def test_cli_kebab_case_spellings(small_store, tmp_path, cli):
    result = cli("train", small_store, "--name", "kebab", "--checkpoints-dir", tmp_path / "ck", "--device", "cpu",
                 "--n-input-img", "5", "--npatches", "3", "--nepoch", "0", "--nepoch-decay", "1",
                 "--testset-freq", "3", "--seed", "1", "--head", "lpips", "--loss", "mse+rank", "--json")
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.stdout)["config"]
    assert (cfg["n_input_img"], cfg["nepoch_decay"], cfg["testset_freq"], cfg["head"]) == (5, 1, 3, "lpips")


def test_cli_store_without_mos(tmp_path, cli, torch_home):
    path, _, _ = make_teacher_store(tmp_path / "nomos.h5", head="lpips", n_models=1, n_stimuli=4, n_patches=2,
                                    with_mos=False)
    _one_line_error(cli(*_train_args(path, tmp_path)), "has no MOS")
    assert not (tmp_path / "ck" / "cli").exists()


def test_cli_too_few_stimuli_for_the_split(tmp_path, cli, torch_home):
    path, _, _ = make_teacher_store(tmp_path / "tiny.h5", head="lpips", n_models=1, n_stimuli=5, n_patches=2)
    _one_line_error(cli(*_train_args(path, tmp_path, "--split", "0.8")), "too few stimuli for the split",
                    "4 training and 1 test")
    assert not (tmp_path / "ck" / "cli").exists()


@pytest.mark.parametrize("option,value,message", [
    ("--loss", "l1", "--loss l1: choose one of mse, rank, mse+rank"),
    ("--head", "mlp", "--head mlp: choose one of"),
])
def test_cli_bad_options(small_store, tmp_path, cli, option, value, message):
    _one_line_error(cli(*_train_args(small_store, tmp_path, option, value)), message)


@pytest.mark.parametrize("option,value,message", [
    ("--npatches", "0", "greater than or equal to 1"),
    ("--nInputImg", "0", "greater than or equal to 1"),
    ("--n-input-img", "-2", "greater than or equal to 1"),
    ("--nepoch", "-1", "greater than or equal to 0"),
    ("--testset_freq", "0", "greater than or equal to 1"),
    ("--seed", "-3", "greater than or equal to 0"),
    ("--split", "1.5", "1.5 is not a number > 0 and < 1"),
    ("--split", "nan", "nan is not a number > 0 and < 1"),
    ("--lr", "0", "0 is not a number > 0"),
    ("--rank-temperature", "-0.1", "-0.1 is not a number > 0"),
    ("--rank-weight", "-1", "-1 is not a number >= 0"),
])
def test_cli_out_of_range_numbers_are_usage_errors(small_store, tmp_path, cli, option, value, message):
    """Bad numbers are usage errors (exit 2), as in every other command."""
    result = cli(*_train_args(small_store, tmp_path, option, value))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and option.split("=")[0] in lines[0], result.stderr
    assert message in lines[0], lines[0]
    assert not (tmp_path / "ck" / "cli").exists()


def test_cli_test_csv_naming_unknown_stimuli(small_store, tmp_path, cli):
    bad = tmp_path / "test.csv"
    bad.write_text("stimulus\nm0_s0\nnot_a_stimulus\nm1_s1\nalso_missing\n")
    _one_line_error(cli(*_train_args(small_store, tmp_path, "--test-csv", bad)),
                    "2 stimuli are not in the store: not_a_stimulus, also_missing")
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("name\nm0_s0\n")
    _one_line_error(cli(*_train_args(small_store, tmp_path, "--train-csv", nocol)), "expected a 'stimulus' column")
    _one_line_error(cli(*_train_args(small_store, tmp_path, "--test-csv", bad, "--split", "0.5")),
                    "exclude each other")


def test_cli_incompatible_resume(small_store, tmp_path, cli):
    assert cli(*_train_args(small_store, tmp_path, "--head", "graphics")).exit_code == 0
    _one_line_error(cli(*_train_args(small_store, tmp_path, "--head", "lpips", "--resume")),
                    "--resume", "incompatible run", "head='graphics' (now 'lpips')")
    _one_line_error(cli(*_train_args(small_store, tmp_path, "--npatches", "5", "--resume")), "npatches=4 (now 5)")
    _one_line_error(cli(*_train_args(small_store, tmp_path)), "already holds a run", "--resume")
    junk = tmp_path / "ck" / "junk" / "latest.pth"
    junk.parent.mkdir(parents=True)
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, junk)
    result = cli("train", small_store, "--name", "junk", "--checkpoints-dir", tmp_path / "ck", "--resume")
    _one_line_error(result, "not a training checkpoint")


def test_cli_nothing_to_train_on(cli, tmp_path):
    _one_line_error(cli("train", "--name", "x", "--checkpoints-dir", tmp_path), "nothing to train on")


# -- BAPPS -----------------------------------------------------------------------------------------
def test_bapps_training_on_a_tiny_tree(tmp_path, cli):
    from bapps_fixtures import make_bapps_tree

    from iqa_cli.bapps_eval import eval_bapps

    root = make_bapps_tree(tmp_path / "dataset", {"2afc": ["train/traditional", "train/cnn", "val/traditional"]},
                           n=10)
    result = cli("train", "--bapps", root, "--datasets", "train/traditional", "train/cnn", "--net", "alex",
                 "--head", "lpips", "--name", "lp", "--checkpoints-dir", tmp_path / "ck", "--nepoch", "1",
                 "--nepoch_decay", "1", "--batch-size", "8", "--lr", "1e-3", "--seed", "0", "--device", "cpu",
                 "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["mode"] == "bapps" and doc["n_train"] == 20 and doc["epochs_completed"] == 2
    assert doc["config"]["datasets"] == ["train/traditional", "train/cnn"]
    assert 0 <= doc["final"]["val_2afc"] <= 1 and doc["final"]["val_traditional"] == doc["final"]["val_2afc"]
    payload = _state(Path(doc["checkpoint"]))
    ranker = payload["training"]["extra_modules"]["ranker"]
    assert ranker["net.model.0.weight"].shape == (32, 5, 1, 1)
    assert all(float(v.min()) >= 0 for k, v in payload["state_dict"].items() if k.startswith("lin"))
    # the checkpoint loads in eval-bapps and reproduces the logged validation score
    report = eval_bapps(root, mode="2afc", subsets=["val/traditional"], checkpoint=doc["checkpoint"], device="cpu")
    assert report.mean == pytest.approx(doc["final"]["val_2afc"])
    rows = list(csv.DictReader(open(Path(doc["run_dir"]) / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and rows[1]["train_2afc"]


def test_bapps_unknown_subset_is_a_clear_error(tmp_path, cli):
    from bapps_fixtures import make_bapps_tree

    root = make_bapps_tree(tmp_path / "dataset", {"2afc": ["train/traditional"]}, n=2)
    _one_line_error(cli("train", "--bapps", root, "--datasets", "train/mix", "--name", "x", "--checkpoints-dir",
                        tmp_path / "ck"), "no subset 'train/mix'")


# -- robustness (issue 9): full disk, two runs of one name, damaged resume state, empty store -----------
def test_disk_full_while_saving_is_one_line_and_leaves_no_temporary_file(small_store, tmp_path, cli, monkeypatch):
    import errno

    calls = []
    real_write = Path.write_bytes

    def full_disk_on_the_second_checkpoint(self, data):
        calls.append(self.name)
        if len(calls) == 3:  # latest.pth (epoch 0), epoch_1.pth, then latest.pth (epoch 1)
            real_write(self, bytes(data)[:1000])  # what a full disk lets through before it fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk_on_the_second_checkpoint)
    result = cli(*_train_args(small_store, tmp_path))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()  # epoch 0's log line, then the error
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.stderr
    assert "ck/cli/latest.pth: no space left on device" in lines[-1] and ".tmp" not in lines[-1]
    run = tmp_path / "ck" / "cli"
    assert not [p.name for p in run.iterdir() if "tmp" in p.name]
    assert _state(run / "latest.pth")["training"]["epoch"] == 0  # the last complete save is intact


def _user_namespaces_work() -> bool:
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _user_namespaces_work(), reason="needs unshare -rm (unprivileged user namespaces) to mount "
                    "a tiny tmpfs; test_disk_full_while_saving_... covers the same path by injection")
def test_disk_full_on_a_real_tiny_filesystem(small_store, tmp_path):
    """A 3 MB tmpfs: epoch 0's files fit, epoch 1's latest.pth (with the Adam state) does not."""
    import subprocess
    import sys

    ck = tmp_path / "ck"
    ck.mkdir()
    repo = Path(__file__).resolve().parents[1]
    script = (f"mount -t tmpfs -o size=3m tmpfs {ck} && "
              f"{sys.executable} -m iqa_cli train {small_store} --name run --checkpoints-dir {ck} --device cpu "
              f"--npatches 4 --nepoch 1 --nepoch_decay 0 --seed 0 --split 0.75 --head graphics; echo rc=$?; "
              f"ls -a {ck}/run; {sys.executable} -c \"import torch; print('epoch', torch.load('{ck}/run/latest.pth', "
              f"weights_only=True)['training']['epoch'])\"")
    env = {**__import__("os").environ, "PYTHONPATH": str(repo)}
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=600)
    errors = [line for line in done.stderr.splitlines() if not line.startswith("epoch ")]  # then the log lines
    assert len(errors) == 1 and errors[0].startswith("error: "), done.stderr
    assert "run/latest.pth: no space left on device" in errors[0] and ".tmp" not in errors[0]
    assert "rc=1" in done.stdout
    listing = done.stdout.split("rc=1", 1)[1].split()
    assert not [name for name in listing if "tmp" in name], listing
    assert "epoch 0" in done.stdout  # latest.pth still holds the last complete epoch


def test_a_second_run_of_the_same_name_is_refused_while_the_first_writes(small_store, tmp_path, cli):
    from iqa_cli.io.files import OutputLock

    other = OutputLock(tmp_path / "ck" / "cli", "iqa train")  # another `iqa train --name cli` holding the folder
    other.acquire()
    try:
        _one_line_error(cli(*_train_args(small_store, tmp_path)), "another iqa train is writing it right now")
        assert not (tmp_path / "ck" / "cli").exists()
    finally:
        other.release()
    # and a run holds the lock while it trains
    seen = []

    def try_to_take_it(event):
        if event.kind == "step" and not seen:
            probe = OutputLock(tmp_path / "ck" / "run", "iqa train")
            with pytest.raises(InvalidInputError, match="another iqa train is writing it"):
                probe.acquire()
            seen.append(True)

    train(_cfg(small_store, tmp_path, nepoch=1, nepoch_decay=0, testset_freq=5), progress=try_to_take_it)
    assert seen and not (tmp_path / "ck" / "run.lock").exists()  # released at the end


@pytest.mark.parametrize("damage", ["no_rng", "rng_not_a_dict", "no_optimizer", "epoch_text"])
def test_resume_from_a_damaged_training_state_is_one_line(small_store, tmp_path, cli, damage):
    assert cli(*_train_args(small_store, tmp_path)).exit_code == 0
    latest = tmp_path / "ck" / "cli" / "latest.pth"
    payload = _state(latest)
    training = payload["training"]
    if damage == "no_rng":
        del training["rng"]
    elif damage == "rng_not_a_dict":
        training["rng"] = [1, 2]
    elif damage == "no_optimizer":
        del training["optimizer"]
    else:
        training["epoch"] = "1"
    torch.save(payload, latest)
    key = {"no_rng": "'rng' is missing", "rng_not_a_dict": "'rng' is a list", "no_optimizer": "'optimizer' is missing",
           "epoch_text": "'epoch' is a str"}[damage]
    _one_line_error(cli(*_train_args(small_store, tmp_path, "--resume")), "--resume", "latest.pth", key)


def test_an_empty_store_is_refused(tmp_path, cli, torch_home):
    with StoreWriter(tmp_path / "empty.h5", patch_size=32, stride=32, min_foreground=0.6, background="auto",
                     fingerprint="empty", source="patches") as w:
        m = w.add_model("m0", np.zeros((0, 32, 32, 3), np.uint8), views=[""])
        none = np.arange(0)
        for j in range(4):
            w.add_stimulus(m, f"s{j}", np.zeros((0, 32, 32, 3), np.uint8), view=none, number=none, y=none, x=none,
                           ref=none, mos=0.5)
        w.commit()
    _one_line_error(cli(*_train_args(tmp_path / "empty.h5", tmp_path)), "empty.h5", "holds no patches")
    assert not (tmp_path / "ck" / "cli").exists()


def test_method_option(small_store, tmp_path, cli):
    result = cli(*_train_args(small_store, tmp_path, "--method", "mos", "--json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["method"] == "mos"
    _one_line_error(cli(*_train_args(small_store, tmp_path, "--method", "bapps")), "--method bapps", "--bapps ROOT")
    _one_line_error(cli(*_train_args(small_store, tmp_path, "--method", "grepq")), "--method grepq: choose one of")
