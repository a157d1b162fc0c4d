"""Where weights come from: torchvision cache, local files, bundled heads, checkpoints."""

from __future__ import annotations

import pytest
import torch

from iqa_cli import WeightsError, create_metric
from iqa_cli.models.backbones import BACKBONES, torchvision_features
from iqa_cli.weights import read_checkpoint, save_checkpoint, torchvision_cache_file


def layer(metric, n: int, i: int):
    """Module i of torchvision's `features`, inside tap slice n (children keep their original index names)."""
    return getattr(metric.net, f"slice{n}")._modules[str(i)]


def test_backbone_comes_from_the_torchvision_cache(torch_home):
    metric = create_metric("lpips", net="alex")
    cached = torch.load(torchvision_cache_file(BACKBONES["alex"]), weights_only=True)
    assert str(torchvision_cache_file(BACKBONES["alex"])).startswith(str(torch_home))
    torch.testing.assert_close(layer(metric, 1, 0).weight, cached["features.0.weight"])
    torch.testing.assert_close(layer(metric, 5, 10).bias, cached["features.10.bias"])


def test_offline_without_cached_weights_names_file_and_folder(empty_torch_home):
    with pytest.raises(WeightsError) as err:
        create_metric("lpips", net="alex")
    message = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in message
    assert str(empty_torch_home / "hub" / "checkpoints") in message
    assert "--backbone-weights" in message


def test_backbone_weights_from_a_local_file(tmp_path, empty_torch_home):
    torch.manual_seed(9)
    features = torchvision_features(BACKBONES["squeeze"])
    path = tmp_path / "squeeze.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    metric = create_metric("lpips", net="squeeze", backbone_weights=path)
    torch.testing.assert_close(layer(metric, 7, 12).expand1x1.weight, features[12].expand1x1.weight)


def test_bundled_heads_are_the_released_ones():
    import lpips

    ref = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    metric = create_metric("lpips", net="vgg", version="0.1")
    for k in range(5):
        torch.testing.assert_close(getattr(metric, f"lin{k}").model[1].weight, getattr(ref, f"lin{k}").model[1].weight)


def original_graphics_lpips_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict laid out like the released Graphics-LPIPS checkpoint (LPIPS module with MLP heads)."""
    g = torch.Generator().manual_seed(seed)
    features = torchvision_features(BACKBONES["alex"])
    state = {}
    for n, (start, stop) in enumerate(BACKBONES["alex"].slices, start=1):
        for i in range(start, stop):
            for name, value in features[i].state_dict().items():
                state[f"net.slice{n}.{i}.{name}"] = torch.rand(value.shape, generator=g) - 0.5
    for k, c in enumerate(BACKBONES["alex"].channels):
        state[f"lin{k}.model.1.weight"] = torch.rand(c, c, 1, 1, generator=g)
        state[f"lin{k}.model.4.weight"] = torch.rand(1, c, 1, 1, generator=g)
    state["scaling_layer.shift"] = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    state["scaling_layer.scale"] = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
    return state


def test_original_graphics_lpips_checkpoint_loads_with_its_own_backbone(tmp_path, empty_torch_home):
    state = original_graphics_lpips_state()
    path = tmp_path / "graphics_lpips.pth"
    torch.save(state, path)
    ckpt = read_checkpoint(path)
    assert (ckpt.kind, ckpt.head_type, ckpt.net) == ("graphics-lpips", "graphics", "alex")
    # No cached ImageNet weights are needed: the checkpoint carries the backbone.
    metric = create_metric("graphics-lpips", checkpoint=path)
    torch.testing.assert_close(layer(metric, 2, 3).weight, state["net.slice2.3.weight"])
    torch.testing.assert_close(metric.lin3.model[4].weight, state["lin3.model.4.weight"])
    x0, x1 = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        d = metric(x0, x1)
        # independent computation of the MLP-head distance from the same weights
        feats = [metric.features(x0), metric.features(x1)]
        manual = 0
        for k in range(5):
            diff = (feats[0][k] - feats[1][k]) ** 2
            h = torch.nn.functional.conv2d(diff, state[f"lin{k}.model.1.weight"])
            h = torch.nn.functional.leaky_relu(h, 0.2)
            manual = manual + torch.nn.functional.conv2d(h, state[f"lin{k}.model.4.weight"]).mean(dim=(2, 3))
    torch.testing.assert_close(d, manual.flatten(), atol=1e-5, rtol=1e-5)


def test_checkpoint_for_another_net_lists_the_mismatch(tmp_path):
    path = tmp_path / "alex_heads.pth"
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(BACKBONES["alex"].channels)},
               path)
    with pytest.raises(WeightsError) as err:
        create_metric("lpips", net="vgg", checkpoint=path)
    assert "wrong shapes" in str(err.value) and "lin1.model.1.weight" in str(err.value)


def test_lpips_head_file_sets_the_net(tmp_path):
    path = tmp_path / "squeeze_heads.pth"
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in
                enumerate(BACKBONES["squeeze"].channels)}, path)
    assert create_metric("lpips", checkpoint=path).spec.name == "squeeze"


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint"):
        create_metric("lpips", checkpoint=path)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"lin0.model.1.weight": torch.zeros(1), "payload": print}, path)
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint"):
        create_metric("lpips", checkpoint=path)


def test_own_checkpoint_round_trip(tmp_path):
    metric = create_metric("lpips", net="alex", version="0.0")
    with torch.no_grad():
        metric.lin2.model[1].weight.mul_(3)
    path = save_checkpoint(tmp_path / "run" / "latest.pth", metric, net="alex", version="0.0", head_type="lpips",
                           config={"lr": 1e-4})
    ckpt = read_checkpoint(path)
    assert (ckpt.kind, ckpt.net, ckpt.version, ckpt.config["lr"]) == ("iqa", "alex", "0.0", 1e-4)
    loaded = create_metric("lpips", checkpoint=path)
    assert loaded.version == "0.0"
    torch.testing.assert_close(loaded.lin2.model[1].weight, metric.lin2.model[1].weight)


def test_download_attempt_never_writes_to_stdout(cli, examples, empty_torch_home, monkeypatch):
    """torch.hub prints 'Downloading: ...' on stdout; a --json run must still print only JSON (here: nothing)."""
    import sys
    import urllib.error

    import iqa_cli.weights as weights

    class ChattyOfflineWeights:
        url = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"

        def get_state_dict(self, **kwargs):
            sys.stdout.write(f'Downloading: "{self.url}" to somewhere\n')
            raise urllib.error.URLError("Name or service not known")

    monkeypatch.delenv("IQA_OFFLINE")
    monkeypatch.setattr(weights, "torchvision_weights_enum", lambda spec: ChattyOfflineWeights())
    result = cli("score-pair", examples["ex_ref"], examples["ex_p0"], "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the download failed" in lines[0] and "alexnet-owt-7be5be79.pth" in lines[0]
