"""Keras import parity: ASNA variants and the learned sorter, built in tf-keras from the reference
architecture with random weights, saved as .hdf5, imported by iqa, same numbers within 1e-4.

TensorFlow is imported once, by the module fixture; the module is skipped only when tf-keras (a
test extra) is not installed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from iqa_cli.errors import WeightsError
from iqa_cli.io.keras import convert_keras, import_asna, import_sorter
from iqa_cli.models.asna import AsnaMetric
from iqa_cli.weights import load_asna, load_sorter

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file"),
              pytest.mark.skipif(importlib.util.find_spec("tf_keras") is None,
                                 reason="tf-keras (test extra) not installed")]

TOLERANCE = 1e-4
# variant, builder options (the ways a released file may be laid out), batch size
CASES = {
    "simple": ("simple", {}, 2),
    "bn": ("bn", {"nested_encoder": True, "skip_first": True}, 2),
    "attention": ("attention", {"pixel_gate_first": True, "dense_gates": True, "alpha": 0.5}, 2),
    "tiled": ("tiled", {"lstm_filters": 4}, 1),
}


@dataclass
class KerasCase:
    path: Path
    inputs: tuple[np.ndarray, np.ndarray]  # BGR 0..255, NHWC
    scores: np.ndarray
    hidden: np.ndarray  # output of the Dense(ReLU) layer
    swapped: np.ndarray | None = None  # scores with the inputs swapped


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory) -> dict:
    from keras_asna import build_asna, build_sorter, keras_modules, randomise

    tf, keras = keras_modules()
    folder = tmp_path_factory.mktemp("keras")
    rng = np.random.default_rng(0)
    out: dict = {}
    for name, (variant, options, batch) in CASES.items():
        ref = rng.uniform(0, 255, (batch, 288, 288, 3)).astype(np.float32)
        noise = np.array([10.0, 80.0])[:batch, None, None, None]  # a mild and a strong distortion
        dist = np.clip(ref + noise * rng.normal(0, 1, ref.shape), 0, 255).astype(np.float32)
        model = build_asna(keras, tf, variant, **options)
        randomise(model, seed=len(out))
        model.save(folder / f"{name}.hdf5")
        both = keras.Model(model.inputs, [model.output, model.get_layer("hidden").output])
        scores, hidden = (t.numpy() for t in both([ref, dist], training=False))
        out[name] = KerasCase(folder / f"{name}.hdf5", (ref, dist), scores[:, 0], hidden,
                              model([dist, ref], training=False).numpy()[:, 0] if name == "simple" else None)
    sorter = build_sorter(keras)
    randomise(sorter, seed=11)
    sorter.save(folder / "sorter.hdf5")
    vectors = np.concatenate([rng.normal(0, 2, (3, 16)), rng.uniform(-10, 10, (3, 16))]).astype(np.float32)
    out["sorter"] = (folder / "sorter.hdf5", vectors, sorter(vectors, training=False).numpy())
    # another architecture: a two-input CNN with ASNA's input layout but nothing else of it
    L = keras.layers
    a, b = keras.Input((288, 288, 3)), keras.Input((288, 288, 3))
    x = L.Conv2D(4, 3, padding="same", name="colour_or_not")(L.Concatenate()([a, b]))
    x = L.LeakyReLU(0.7)(x)
    foreign = keras.Model([a, b], L.Dense(1)(L.GlobalAveragePooling2D()(x)))
    foreign.save(folder / "foreign.hdf5")
    out["foreign"] = folder / "foreign.hdf5"
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_imported_variant_gives_the_keras_scores(keras_files, name):
    case: KerasCase = keras_files[name]
    net = import_asna(case.path)
    assert net.config.variant == CASES[name][0]
    hidden = {}
    net.decoder.hidden.register_forward_hook(lambda module, args, output: hidden.update(out=torch.relu(output)))
    with torch.no_grad():
        scores = net(*(_nchw(x) for x in case.inputs)).numpy()
    np.testing.assert_allclose(scores, case.scores, atol=TOLERANCE, rtol=0)
    scale = max(1.0, float(np.abs(case.hidden).max()))
    np.testing.assert_allclose(hidden["out"].numpy(), case.hidden, atol=TOLERANCE * scale, rtol=0)
    # the features compared are alive and differ between the mild and the strong distortion
    assert float(np.abs(case.hidden).max()) > 0.05
    if len(case.hidden) > 1:
        assert float(np.abs(case.hidden[0] - case.hidden[1]).max()) > 100 * TOLERANCE * scale


def test_sizes_and_alpha_come_from_the_file(keras_files):
    attention = import_asna(keras_files["attention"].path).config
    assert attention.alpha == 0.5 and attention.gate_widths == (2, 3) and attention.residual_blocks == 3
    assert attention.head_activation == "tanh" and attention.filters == (4, 4, 8, 8, 8, 8, 8, 4, 4, 8)
    tiled = import_asna(keras_files["tiled"].path).config
    assert (tiled.tiles, tiled.lstm_filters, tiled.lstm_kernel, tiled.final_size) == (4, 4, 5, 9)


def test_metric_on_rgb_unit_images_matches_keras_on_bgr_255_in_both_orders(keras_files):
    case: KerasCase = keras_files["simple"]
    ref, dist = (_nchw(x).flip(1) / 255.0 for x in case.inputs)  # what a user passes: RGB in [0, 1]
    net = import_asna(case.path)
    with torch.no_grad():
        default = AsnaMetric(net)(ref, dist).numpy()
        swapped = AsnaMetric(net, order="dist-ref")(ref, dist).numpy()
    np.testing.assert_allclose(default, case.scores, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(swapped, case.swapped, atol=TOLERANCE, rtol=0)
    assert np.abs(case.scores - case.swapped).max() > 10 * TOLERANCE  # the order matters


def test_converted_checkpoint_and_direct_hdf5_load_give_the_same_scores(keras_files, tmp_path):
    case: KerasCase = keras_files["bn"]
    conversion = convert_keras(case.path, tmp_path / "bn.pth")
    assert conversion.family == "asna" and conversion.config["variant"] == "bn"
    inputs = tuple(_nchw(x) for x in case.inputs)
    with torch.no_grad():
        from_checkpoint = load_asna(tmp_path / "bn.pth")(*inputs).numpy()
        from_hdf5 = load_asna(case.path)(*inputs).numpy()
    np.testing.assert_allclose(from_checkpoint, case.scores, atol=TOLERANCE, rtol=0)
    assert np.array_equal(from_checkpoint, from_hdf5)


def test_imported_sorter_gives_the_keras_ranks(keras_files, tmp_path):
    path, vectors, expected = keras_files["sorter"]
    sorter = import_sorter(path)
    assert sorter.config.kernels == (2, 3, 5, 7, 10, 7, 7) and not sorter.config.shared_alpha
    with torch.no_grad():
        np.testing.assert_allclose(sorter(torch.from_numpy(vectors)).numpy(), expected, atol=TOLERANCE, rtol=0)
        convert_keras(path, tmp_path / "sorter.pth")
        np.testing.assert_allclose(load_sorter(tmp_path / "sorter.pth")(torch.from_numpy(vectors)).numpy(), expected,
                                   atol=TOLERANCE, rtol=0)


def test_another_architecture_is_one_line_naming_the_layer(keras_files):
    with pytest.raises(WeightsError) as err:
        import_asna(keras_files["foreign"])
    message = str(err.value)
    assert "\n" not in message and "'colour_or_not' (Conv2D)" in message and "not an attention ASNA model" in message


def test_a_sorter_is_not_an_asna_model_and_back(keras_files):
    with pytest.raises(WeightsError, match="holds a learned sorter"):
        import_asna(keras_files["sorter"][0])
    with pytest.raises(WeightsError, match="not a learned sorter"):
        import_sorter(keras_files["simple"].path)
