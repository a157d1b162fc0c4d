"""Keras models of ASNA and its learned sorter, built from the architecture in reference/macs.md.

These are the oracles of the import parity tests: written with tf-keras layer by layer from the
reference's description (not from iqa's code), given random weights, saved with ``model.save`` as
.hdf5 and compared with what iqa imports. The ways a released file may legitimately differ are
options: a nested encoder model, skip connections concatenated before the upsampled path, the
attention gates concatenated pixel-first, gates written as Dense layers.
"""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def keras_modules():
    """(tf, keras), with TensorFlow on one thread (tests share a small machine)."""
    import tensorflow as tf
    import tf_keras as keras

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised by an earlier module
        pass
    return tf, keras


def build_asna(keras, tf, variant: str, filters=(4, 4, 8, 8, 8, 8, 8, 4, 4, 8), kernels=(5, 5, 3, 3), alpha=0.7,
               dense=8, size=288, tiles=4, lstm_filters=6, attention=(8, 8), gates=(2, 3), residual=(8, 3),
               nested_encoder=False, skip_first=False, pixel_gate_first=False, dense_gates=False, head="sigmoid"):
    L = keras.layers
    bn = variant in ("bn", "attention")
    tiled = variant == "tiled"
    if variant == "attention":
        head = "tanh"

    # -- the shared Siamese encoder: one set of layers, called on both inputs
    scale = L.Rescaling(1 / 127.5, offset=-1.0)  # (x - 127.5) / 127.5
    lstm = L.ConvLSTM2D(lstm_filters, 5, padding="same") if tiled else None
    colour = L.Conv2D(3, 1, padding="same")
    convs = [L.Conv2D(f, k, padding="same") for f, k in zip(filters[:4], kernels)]
    norms = [L.BatchNormalization() for _ in range(4)] if bn else None

    def encode(x):
        x = scale(x)
        if tiled:
            side = size // tiles
            x = L.Reshape((tiles, side, tiles, side, 3))(x)
            x = L.Permute((1, 3, 2, 4, 5))(x)  # tiles in row-major order
            x = L.Reshape((tiles * tiles, side, side, 3))(x)
            x = lstm(x)
        x = colour(x)
        features = []
        for level in range(4):
            if level:
                x = L.MaxPooling2D()(x)
            x = L.LeakyReLU(alpha)(convs[level](x))
            if bn:
                x = norms[level](x)
            features.append(x)
        return features

    first, second = keras.Input((size, size, 3)), keras.Input((size, size, 3))
    if nested_encoder:
        image = keras.Input((size, size, 3))
        encoder = keras.Model(image, encode(image), name="encoder")
        f1, f2 = encoder(first), encoder(second)
    else:
        f1, f2 = encode(first), encode(second)

    def block(x, width, kernel=3, strides=1):
        x = L.LeakyReLU(alpha)(L.Conv2D(width, kernel, strides=strides, padding="same")(x))
        return L.BatchNormalization()(x) if bn else x

    def absdiff(a, b):
        return tf.math.abs(L.Subtract()([a, b]))

    def join(up, skip):
        return L.Concatenate()([skip, up] if skip_first else [up, skip])

    # -- the Siamese-difference decoder, from input 2's deepest features
    x = block(L.MaxPooling2D(padding="same" if tiled else "valid")(f2[3]), filters[4])
    for j, level in enumerate((3, 2, 1)):
        up = L.UpSampling2D()(x)
        if tiled and level == 3:  # 9 -> 5 -> 10: crop back to the skip's 9
            up = L.Cropping2D(((0, 1), (0, 1)))(up)
        x = block(join(up, absdiff(f1[level], f2[level])), filters[5 + j])
    x = join(L.UpSampling2D()(x), absdiff(f1[0], f2[0]))
    x = block(x, filters[8], strides=4)
    x = block(x, filters[9], strides=2)
    if variant == "attention":
        a = L.Conv2D(attention[0], 3, padding="same", activation="relu")(x)
        a = L.BatchNormalization()(a)
        x3 = L.Conv2D(attention[1], 3, padding="same")(a)
        g = L.GlobalAveragePooling2D()(x3)
        if dense_gates:
            g = L.Dense(gates[0], activation="relu")(g)
            g = L.Reshape((1, 1, attention[1]))(L.Dense(attention[1], activation="sigmoid")(g))
        else:
            g = L.Reshape((1, 1, attention[1]))(g)
            g = L.Conv2D(attention[1], 1, activation="sigmoid")(L.Conv2D(gates[0], 1, activation="relu")(g))
        channel = L.Multiply()([x3, g])
        p = L.Conv2D(attention[1], 1, activation="sigmoid")(L.Conv2D(gates[1], 1, activation="relu")(x3))
        pixel = L.Multiply()([x3, p])
        x = L.Conv2D(residual[0], 1)(L.Concatenate()([x, pixel, channel] if pixel_gate_first else [x, channel, pixel]))
        for _ in range(residual[1]):
            y = L.Conv2D(residual[0], 3, padding="same", activation="relu")(x)
            x = L.Add()([x, L.Conv2D(residual[0], 3, padding="same")(y)])
    x = L.Flatten()(x)
    x = L.Dense(dense, activation="relu", name="hidden")(x)
    x = L.Dropout(0.5)(x)
    x = L.Dense(1, activation=head)(x)
    return keras.Model([first, second], L.Dense(1)(x))


def build_sorter(keras, channels=(4, 4, 8, 8, 8, 8, 8), kernels=(2, 3, 5, 7, 10, 7, 7),
                 batch_norm=(False, True, True, True, False, True, True), length=16):
    """The learned sorter as a Sequential model (Conv1D [+BN] + PReLU per layer, Flatten, Dense)."""
    L = keras.layers
    layers = [keras.Input((length,)), L.Reshape((length, 1))]
    for c, k, bn in zip(channels, kernels, batch_norm):
        layers.append(L.Conv1D(c, k, padding="same"))
        if bn:
            layers.append(L.BatchNormalization())
        layers.append(L.PReLU())
    layers += [L.Flatten(), L.Dense(length)]
    return keras.Sequential(layers)


def randomise(model, seed: int) -> None:
    """Random weights everywhere, BatchNorm statistics included, scaled to keep activations alive."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:  # a nested model
            randomise(layer, seed + 1)
            continue
        values = []
        for weight in layer.weights:
            name = weight.name.split("/")[-1].split(":")[0]
            shape = tuple(weight.shape)
            if name in ("kernel", "recurrent_kernel"):
                fan_in = int(np.prod(shape[:-1]))
                values.append(rng.uniform(-1, 1, shape) * np.sqrt(3.0 / fan_in) * 1.2)
            elif name == "moving_variance":
                values.append(rng.uniform(0.5, 1.5, shape))
            elif name == "gamma":
                values.append(rng.uniform(0.7, 1.3, shape))
            elif name == "alpha":
                values.append(rng.uniform(0.0, 0.5, shape))
            else:  # bias, beta, moving_mean
                values.append(rng.normal(0, 0.1, shape))
        if values:
            layer.set_weights([v.astype(np.float32) for v in values])
