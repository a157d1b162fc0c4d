"""ASNA without TensorFlow: Keras-semantics layers, the scorer's crop/order/size/TTA rules, checkpoints, errors.

Parity with real Keras models is in test_keras_import.py.
"""

from __future__ import annotations

import h5py
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from iqa_cli.augment import tta_augmentations
from iqa_cli.errors import InvalidInputError, WeightsError
from iqa_cli.models.asna import (PRESETS, STANDARDISATION, AsnaConfig, AsnaMetric, AsnaNet, asna_config, crop_origins,
                                 tile_origins)
from iqa_cli.models.keras_layers import ConvLSTM2d, SameConv2d, hard_sigmoid, same_padding
from iqa_cli.weights import load_asna, load_sorter, read_checkpoint, save_family_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _tiny(variant: str = "simple", **overrides) -> AsnaConfig:
    sizes = dict(filters=(2, 2, 3, 3, 3, 3, 2, 2, 2, 3), input_size=32, dense=4, lstm_filters=2, tiles=2,
                 attention_widths=(3, 3), gate_widths=(2, 2), residual_channels=2, residual_blocks=1)
    return asna_config(variant, **{**sizes, **overrides})


# -- Keras semantics ----------------------------------------------------------------------------
@pytest.mark.parametrize("size, kernel, stride, expected", [(72, 3, 2, (0, 1)), (288, 3, 4, (0, 0)),
                                                            (288, 5, 1, (2, 2)), (16, 2, 1, (0, 1)),
                                                            (16, 10, 1, (4, 5)), (9, 3, 2, (1, 1))])
def test_same_padding_puts_the_odd_pixel_bottom_right(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


def test_strided_same_conv_pads_bottom_right_only():
    conv = SameConv2d(2, 3, 3, stride=2)
    x = torch.randn(1, 2, 72, 72)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    assert conv(x).shape == (1, 3, 36, 36)
    assert torch.allclose(conv(x), expected)


def test_hard_sigmoid_is_keras_piecewise_linear():
    x = torch.tensor([-3.0, -2.5, -1.0, 0.0, 1.0, 2.5, 3.0])
    assert torch.allclose(hard_sigmoid(x), torch.tensor([0.0, 0.0, 0.3, 0.5, 0.7, 1.0, 1.0]))


def test_conv_lstm_follows_the_gate_equations():
    torch.manual_seed(0)
    lstm = ConvLSTM2d(2, 3, 3)
    x = torch.randn(2, 4, 2, 5, 5)
    h = torch.zeros(2, 3, 5, 5)
    c = torch.zeros_like(h)
    wx, b, wh = lstm.input_conv.weight, lstm.input_conv.bias, lstm.recurrent_conv.weight
    for t in range(4):
        z = F.conv2d(x[:, t], wx, b, padding=1) + F.conv2d(h, wh, padding=1)
        i, f, g, o = (z[:, k * 3:(k + 1) * 3] for k in range(4))
        sig = lambda v: torch.clamp(0.2 * v + 0.5, 0, 1)  # noqa: E731
        c = sig(f) * c + sig(i) * torch.tanh(g)
        h = sig(o) * torch.tanh(c)
    assert torch.allclose(lstm(x), h, atol=1e-6)


# -- network ------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(PRESETS))
def test_every_variant_scores_a_batch_as_one_by_one(variant):
    torch.manual_seed(1)
    net = AsnaNet(_tiny(variant)).eval()
    a, b = _images(3, 32, 32, 1) * 255, _images(3, 32, 32, 2) * 255
    with torch.no_grad():
        batch = net(a, b)
        single = torch.cat([net(a[i:i + 1], b[i:i + 1]) for i in range(3)])
    assert batch.shape == (3,) and torch.isfinite(batch).all()
    assert torch.allclose(batch, single, atol=1e-5)


def test_presets_have_the_published_sizes():
    for name, config in PRESETS.items():
        assert config.filters[:8] == (8, 16, 32, 64, 64, 64, 32, 16)
        assert config.encoder_kernels == (5, 5, 3, 3) and config.dense == 32 and config.alpha in (0.5, 0.7)
        assert config.variant == name
    assert PRESETS["simple"].final_size == 36 and PRESETS["tiled"].final_size == 9
    assert AsnaConfig.from_dict(PRESETS["attention"].to_dict()) == PRESETS["attention"]


def test_network_refuses_other_sizes_in_one_line():
    net = AsnaNet(_tiny())
    with pytest.raises(InvalidInputError, match=r"expected \(N, 3, 32, 32\)") as err:
        net(torch.zeros(1, 3, 40, 40), torch.zeros(1, 3, 40, 40))
    assert "\n" not in str(err.value)


# -- the scorer's rules -------------------------------------------------------------------------
class RecordingNet(nn.Module):
    """Stands in for AsnaNet: score = mean(input 1) - 2 mean(input 2), per image; records its inputs."""

    def __init__(self, size: int = 32):
        super().__init__()
        self.config = AsnaConfig(input_size=size)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, first, second):
        self.calls.append((first, second))
        return first.mean(dim=(1, 2, 3)) - 2 * second.mean(dim=(1, 2, 3))


def _expected(ref: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """RecordingNet's score for crops given as RGB [0, 1], reference on input 1."""
    return RecordingNet()(ref.flip(1) * 255, dist.flip(1) * 255)


@pytest.mark.parametrize("length, expected", [(288, [0]), (500, [0, 212]), (576, [0, 288]), (600, [0, 156, 312])])
def test_tile_origins_cover_the_image_with_the_fewest_crops(length, expected):
    assert tile_origins(length, 288) == expected
    covered = set()
    for start in expected:
        covered |= set(range(start, start + 288))
    assert covered == set(range(length))


def test_grid_rule_averages_the_crops_and_center_takes_one():
    ref, dist = _images(2, 32, 80, 1), _images(2, 32, 80, 2)
    crops = [(0, 0), (0, 24), (0, 48)]
    assert crop_origins(32, 80, 32) == crops
    expected = torch.stack([_expected(ref[..., x:x + 32], dist[..., x:x + 32]) for _, x in crops]).mean(0)
    assert torch.allclose(AsnaMetric(RecordingNet())(ref, dist), expected, atol=1e-5)
    centre = AsnaMetric(RecordingNet(), crop="center")(ref, dist)
    assert torch.allclose(centre, _expected(ref[..., 24:56], dist[..., 24:56]), atol=1e-5)


def test_input_order_option_and_bgr_255_conversion():
    ref, dist = _images(2, 32, 32, 3), _images(2, 32, 32, 4)
    net = RecordingNet()
    AsnaMetric(net)(ref, dist)
    first, second = net.calls[-1]
    assert torch.allclose(first, ref.flip(1) * 255) and torch.allclose(second, dist.flip(1) * 255)
    AsnaMetric(net, order="dist-ref")(ref, dist)
    first, second = net.calls[-1]
    assert torch.allclose(first, dist.flip(1) * 255) and torch.allclose(second, ref.flip(1) * 255)
    assert first[:, 0].mean() == pytest.approx(float(dist[:, 2].mean() * 255), rel=1e-5)  # channel 0 is blue


def test_small_input_without_a_rule_is_one_line():
    with pytest.raises(InvalidInputError, match="small='pad'") as err:
        AsnaMetric(RecordingNet())(_images(1, 24, 40), _images(1, 24, 40))
    assert "\n" not in str(err.value) and "40x24" in str(err.value)


def test_pad_rule_centres_the_image_on_black():
    net = RecordingNet()
    AsnaMetric(net, small="pad")(torch.ones(1, 3, 24, 40), torch.ones(1, 3, 24, 40))
    first, _ = net.calls[0]
    assert first.shape[-2:] == (32, 32) and len(net.calls) == 2  # 24 -> 32 tall, 40 wide: two crops
    assert float(first[0, :, :4].abs().sum()) == 0 and float(first[0, :, -4:].abs().sum()) == 0
    assert torch.all(first[0, :, 4:28] == 255)


def test_resize_rule_scales_the_short_side_to_the_crop():
    net = RecordingNet()
    AsnaMetric(net, small="resize")(_images(1, 16, 40), _images(1, 16, 40))
    assert len(net.calls) == 3  # 16x40 -> 32x80: three crops


def test_tta_averages_the_22_views():
    ref, dist = _images(1, 32, 32, 5), _images(1, 32, 32, 6)
    expected = torch.stack([_expected(v.apply(ref), v.apply(dist)) for v in tta_augmentations()]).mean(0)
    assert torch.allclose(AsnaMetric(RecordingNet(), tta=True)(ref, dist), expected, atol=1e-4)


def test_destandardise_uses_the_training_sets_constants():
    ref, dist = _images(2, 32, 32, 7), _images(2, 32, 32, 8)
    z = AsnaMetric(RecordingNet())(ref, dist)
    elo = AsnaMetric(RecordingNet(), destandardise="pipal")(ref, dist)
    assert torch.allclose(elo, z * 121.35 + 1449.05)
    assert STANDARDISATION["tid"].destandardise(0.0) == 4.47


def test_metric_follows_the_calling_convention():
    metric = AsnaMetric(AsnaNet(_tiny()).eval())
    assert metric.kind == "fr" and metric.lower_better is False
    with torch.no_grad():
        scores = metric(_images(2, 40, 36, 1), _images(2, 40, 36, 2))
    assert scores.shape == (2,) and torch.isfinite(scores).all()


@pytest.mark.parametrize("option", [{"order": "ref,dist"}, {"crop": "tiles"}, {"small": "crop"},
                                    {"destandardise": "live"}])
def test_unknown_options_are_one_line_errors(option):
    with pytest.raises(InvalidInputError, match="is not one of"):
        AsnaMetric(RecordingNet(), **option)


def test_pairs_of_different_shapes_are_refused():
    with pytest.raises(InvalidInputError, match="same size"):
        AsnaMetric(RecordingNet())(_images(1, 32, 32), _images(1, 32, 40))


# -- checkpoints and file errors ----------------------------------------------------------------
def test_checkpoint_round_trip_is_strict_and_exact(tmp_path):
    torch.manual_seed(2)
    net = AsnaNet(_tiny("bn")).eval()
    path = save_family_checkpoint(tmp_path / "asna.pth", "asna", net, net.config.to_dict())
    loaded = load_asna(path)
    a, b = _images(1, 32, 32, 1) * 255, _images(1, 32, 32, 2) * 255
    with torch.no_grad():
        assert torch.equal(net(a, b), loaded(a, b))
    assert loaded.config == net.config


def test_checkpoint_of_another_family_or_size_is_one_line(tmp_path):
    net = AsnaNet(_tiny())
    asna = save_family_checkpoint(tmp_path / "asna.pth", "asna", net, net.config.to_dict())
    with pytest.raises(WeightsError, match="asna checkpoint"):
        load_sorter(asna)
    with pytest.raises(WeightsError, match="not an LPIPS"):
        read_checkpoint(asna)
    wrong = save_family_checkpoint(tmp_path / "wrong.pth", "asna", net, _tiny(dense=5).to_dict())
    with pytest.raises(WeightsError, match="wrong shapes: decoder.hidden") as err:
        load_asna(wrong)
    assert "\n" not in str(err.value)


def test_non_keras_files_are_one_line(tmp_path):
    from iqa_cli.io.keras import import_asna

    text = tmp_path / "model.hdf5"
    text.write_text("not hdf5")
    with pytest.raises(WeightsError, match="not an HDF5 file"):
        import_asna(text)
    weights_only = tmp_path / "weights.h5"
    with h5py.File(weights_only, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
    with pytest.raises(WeightsError, match="weights-only") as err:
        import_asna(weights_only)
    assert "\n" not in str(err.value)


def test_size_check_before_decoding_and_meta():
    metric = AsnaMetric(RecordingNet(), order="dist-ref", tta=True)
    with pytest.raises(InvalidInputError, match="small='pad'"):
        metric.check_size((24, 40))
    metric.check_size((32, 33))
    AsnaMetric(RecordingNet(), small="pad").check_size((24, 40))
    assert metric.meta()["order"] == "dist-ref" and metric.meta()["tta"] is True
    assert not metric.train().training  # a scorer stays in eval mode
