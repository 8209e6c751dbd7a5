"""Seeded tiny models for tests and examples."""

from __future__ import annotations

import keras
import numpy as np

__all__ = ["conv_bn_relu_model", "branchy_model", "dense_model", "two_input_model", "random_images",
           "randomize_batch_norms"]


def random_images(n: int = 64, shape=(16, 16, 3), seed: int = 0) -> np.ndarray:
    """Float32 images ~ N(0, 1), seeded."""
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def randomize_batch_norms(model: keras.Model, seed: int) -> keras.Model:
    """Gives every BatchNormalization of ``model`` random gamma, beta and statistics, in place.

    Fresh BNs are identities; random statistics make folding and fusing observable. Returns the model.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.2, c).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0, 0.2, c).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype(np.float32))
    return model


def conv_bn_relu_model(input_shape=(16, 16, 3), classes: int = 4, seed: int = 0) -> keras.Model:
    """Conv+BN+ReLU6 stem, depthwise block, residual Add, global pooling, Dense head."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(max_value=6.0, name="r1")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = keras.layers.ReLU(name="r2")(y)
    z = keras.layers.Add(name="add")([x, y])
    z = keras.layers.GlobalAveragePooling2D(name="gap")(z)
    out = keras.layers.Dense(classes, name="fc")(z)
    return randomize_batch_norms(keras.Model(inp, out, name="conv_bn_relu"), seed)


def branchy_model(input_shape=(12, 12, 4), seed: int = 0) -> keras.Model:
    """Two branches (one a nested Functional model), Concatenate, pooling, Flatten, Dense."""
    keras.utils.set_random_seed(seed)
    inner_in = keras.Input((12, 12, 6), name="inner_in")
    t = keras.layers.Conv2D(6, 1, name="inner_conv")(inner_in)
    t = keras.layers.ReLU(name="inner_relu")(t)
    inner = keras.Model(inner_in, t, name="inner")
    inp = keras.Input(input_shape, name="x")
    a = keras.layers.Conv2D(6, 3, padding="same", name="a_conv")(inp)
    a = inner(a)
    b = keras.layers.SeparableConv2D(6, 3, padding="same", name="b_sep")(inp)
    b = keras.layers.LeakyReLU(negative_slope=0.1, name="b_lrelu")(b)
    m = keras.layers.Concatenate(name="cat")([a, b])
    m = keras.layers.MaxPooling2D(2, name="pool")(m)
    m = keras.layers.Flatten(name="flat")(m)
    out = keras.layers.Dense(3, activation="relu", name="head")(m)
    return keras.Model(inp, out, name="branchy")


def dense_model(features: int = 10, seed: int = 0) -> keras.Model:
    """Sequential MLP."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(16, activation="relu", name="d1"),
            keras.layers.Dense(8, name="d2"),
            keras.layers.Activation("tanh", name="t"),
            keras.layers.Dense(2, name="d3"),
        ],
        name="mlp",
    )


def two_input_model(seed: int = 0) -> keras.Model:
    """Inputs "image" (8x8x3) and "extra" (5,): conv + pooling on one, Dense on the other, Concatenate."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((8, 8, 3), name="image")
    extra = keras.Input((5,), name="extra")
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(image)
    a = keras.layers.GlobalAveragePooling2D(name="gap")(a)
    b = keras.layers.Dense(4, activation="relu", name="side")(extra)
    m = keras.layers.Concatenate(name="cat")([a, b])
    out = keras.layers.Dense(2, name="head")(m)
    return keras.Model([image, extra], out, name="two_input")
