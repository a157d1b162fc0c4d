"""Checkpoints saved exactly as the original code saves them load, and score as the original networks do.

The original networks (the `lpips` package, and Graphics-LPIPS built on it) keep each head both as
``lin{k}`` and in a ModuleList ``lins``, so ``torch.save(net.state_dict())`` -- what their trainers
write as ``latest_net_.pth`` -- names every head twice, next to the scaling layer's constants and
the backbone. The oracle is the reference `lpips` package itself, run on the same images.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch
from torch import nn

from bapps_fixtures import make_bapps_tree
from iqa_cli import WeightsError, create_metric
from iqa_cli.io.images import load_image
from iqa_cli.io.store import PatchStore
from mesh_fixtures import make_render_db


def original_network(head: str = "graphics", seed: int = 0) -> lpips.LPIPS:
    """The original network with a random AlexNet; 'graphics': its lin layers' models replaced by the
    Graphics-LPIPS MLP head (Dropout, 1x1 C->C, LeakyReLU(0.2), Dropout, 1x1 C->1), as that code does;
    'lpips': the released linear heads. Head weights random and non-negative, as training leaves them."""
    torch.manual_seed(seed)
    net = lpips.LPIPS(net="alex", version="0.1", pretrained=head == "lpips", pnet_rand=True, verbose=False)
    for k, channels in enumerate(net.chns):
        layer = getattr(net, f"lin{k}")
        if head == "graphics":
            layer.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, channels, 1, bias=False), nn.LeakyReLU(0.2),
                                        nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))
        with torch.no_grad():
            for conv in layer.model:
                if isinstance(conv, nn.Conv2d):
                    conv.weight.uniform_(0.0, 0.05 if head == "graphics" else 1.0)
    return net.eval()


def original_distance(net: lpips.LPIPS, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The original network's distance of float (N, 3, H, W) images in [0, 1]."""
    with torch.no_grad():
        return net(torch.as_tensor(a), torch.as_tensor(b), normalize=True).reshape(-1).double().numpy()


@pytest.fixture(scope="module")
def graphics_checkpoint(tmp_path_factory) -> tuple[lpips.LPIPS, Path]:
    net = original_network("graphics")
    path = tmp_path_factory.mktemp("orig") / "latest_net_.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_the_saved_file_holds_every_head_twice(graphics_checkpoint):
    _, path = graphics_checkpoint
    keys = set(torch.load(path, weights_only=True))
    assert {"lin0.model.1.weight", "lins.0.model.1.weight", "lin4.model.4.weight", "lins.4.model.4.weight",
            "scaling_layer.shift", "scaling_layer.scale", "net.slice1.0.weight"} <= keys


def test_score_pair_scores_as_the_original_network(cli, graphics_checkpoint, examples):
    net, path = graphics_checkpoint
    result = cli("score-pair", examples["ex_ref"], examples["ex_p0"], "--checkpoint", path, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    want = original_distance(net, load_image(examples["ex_ref"])[None], load_image(examples["ex_p0"])[None])[0]
    assert doc["metric"] == "graphics-lpips" and want > 0
    assert doc["score"] == pytest.approx(want, abs=1e-5)


def test_score_mesh_db_scores_as_the_original_network(cli, graphics_checkpoint, tmp_path):
    net, path = graphics_checkpoint
    renders, db = make_render_db(tmp_path, n_models=2, n_stimuli_per_model=2, size=(96, 128))
    store = tmp_path / "store.h5"
    assert cli("patchify", renders, "--db", db, "--out", store).exit_code == 0
    result = cli("score-mesh-db", store, "--checkpoint", path, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["stimuli"]
    with PatchStore.open(store) as s:  # the patches themselves, scored by the original network one stimulus at a time
        for row, stim in zip(rows, s.stimuli.itertuples()):
            dist = s.read_distorted(stim.first, stim.first + stim.count).astype(np.float32) / 255
            ref = s.read_reference_rows(s.patch_refs(stim.first, stim.first + stim.count)).astype(np.float32) / 255
            d = original_distance(net, ref.transpose(0, 3, 1, 2), dist.transpose(0, 3, 1, 2))
            assert row["stimulus"] == stim.stimulus and stim.count > 0
            assert row["score"] == pytest.approx(float(np.minimum(d, 1.0).mean()), abs=1e-5)


def test_eval_bapps_scores_as_the_original_network(cli, graphics_checkpoint, tmp_path):
    net, path = graphics_checkpoint
    root = make_bapps_tree(tmp_path / "dataset", {"2afc": ["val/cnn"]}, n=4)
    items = tmp_path / "items.csv"
    result = cli("eval-bapps", "2afc", root, "--checkpoint", path, "--out", items, "--json")
    assert result.exit_code == 0, result.output
    folder = root / "2afc" / "val" / "cnn"
    rows = list(csv.DictReader(open(items, newline="")))
    assert len(rows) == 4
    agreement = []
    for row in rows:
        ref, p0, p1 = (load_image(folder / sub / f"{row['name']}.png")[None] for sub in ("ref", "p0", "p1"))
        d0, d1 = original_distance(net, ref, p0)[0], original_distance(net, ref, p1)[0]
        assert float(row["d0"]) == pytest.approx(d0, abs=1e-5) and float(row["d1"]) == pytest.approx(d1, abs=1e-5)
        h = float(np.load(folder / "judge" / f"{row['name']}.npy").reshape(-1)[0])
        agreement.append((d0 < d1) * (1 - h) + (d1 < d0) * h + 0.5 * (d0 == d1))
    assert json.loads(result.stdout)["mean"] == pytest.approx(np.mean(agreement), abs=1e-9)


def test_lpips_trainer_checkpoint_with_dataparallel_prefix(cli, tmp_path, examples):
    """The lpips package's own trainer wraps the network in DataParallel on GPUs: 'module.' prefixes."""
    net = original_network("lpips", seed=3)
    path = tmp_path / "latest_net_.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    result = cli("score-pair", examples["ex_ref"], examples["ex_p1"], "--checkpoint", path, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    want = original_distance(net, load_image(examples["ex_ref"])[None], load_image(examples["ex_p1"])[None])[0]
    assert doc["metric"] == "lpips" and doc["score"] == pytest.approx(want, abs=1e-5)


def test_a_head_only_under_lins_loads_too(tmp_path):
    net = original_network("lpips", seed=4)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("lin") or k.startswith("lins.")}
    path = tmp_path / "lins_only.pth"
    torch.save(state, path)
    metric = create_metric("lpips", checkpoint=path)
    torch.testing.assert_close(metric.lin3.model[1].weight, net.lin3.model[1].weight)


def test_twins_that_differ_are_an_error_naming_both_keys(tmp_path):
    state = original_network("graphics").state_dict()
    state["lins.2.model.4.weight"] = state["lins.2.model.4.weight"] + 0.01
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        create_metric("graphics-lpips", checkpoint=path)
    message = str(err.value)
    assert "lins.2.model.4.weight" in message and "lin2.model.4.weight" in message and "edited.pth" in message


@pytest.mark.parametrize("extra", ["lins.5.model.1.weight", "linear.weight", "rank.net.0.weight"])
def test_other_unknown_keys_are_still_refused(tmp_path, extra):
    state = original_network("graphics").state_dict()
    state[extra] = torch.zeros(1, 64, 1, 1)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        create_metric("graphics-lpips", checkpoint=path)
    assert extra.replace("lins.5", "lin5") in str(err.value)


def test_scaling_layer_values_must_be_lpips_constants(tmp_path):
    state = original_network("graphics").state_dict()
    state["scaling_layer.scale"] = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    path = tmp_path / "rescaled.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        create_metric("graphics-lpips", checkpoint=path)
    assert "scaling_layer.scale" in str(err.value) and "0.458" in str(err.value)
