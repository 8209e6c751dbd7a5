"""Random small Keras models and shifted input distributions for fidelity fuzzing.

``random_model(seed)`` draws a functional model from the layer set the TFLite export supports:
Conv2D (kernel 1/3/5, stride 1/2, "same"/"valid", fused ReLU/ReLU6 or none), DepthwiseConv2D
(multiplier 1/2), SeparableConv2D, BatchNormalization, standalone ReLU/ReLU6, residual Add,
channel Concatenate, Max/AveragePooling2D, ZeroPadding2D, GlobalAveragePooling2D, Flatten and
Dense. Weights are random with per-channel gains spread over two decades (so per-channel grids
differ), biases random, batch-norm statistics random.

``input_distributions(seed, shape)`` returns a calibration set and a *different* scoring set:
shifted, rescaled, partly out of the calibrated range, so that the scored inputs exercise
saturation at every requantization and values the calibration never saw.

Example:
    >>> model = random_model(7)
    >>> calibration, scoring = input_distributions(7, model.input_shape[1:])
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

__all__ = ["FuzzSpec", "random_model", "input_distributions", "describe_model"]

_L = keras.layers


@dataclasses.dataclass(frozen=True)
class FuzzSpec:
    """Bounds of the random models.

    Attributes:
        min_blocks, max_blocks: number of feature blocks before the head.
        max_channels: channel count limit of any block.
        min_size, max_size: input height/width range.
        input_channels: choices of input channel count.
    """

    min_blocks: int = 2
    max_blocks: int = 5
    max_channels: int = 12
    min_size: int = 8
    max_size: int = 16
    input_channels: tuple[int, ...] = (1, 3, 4)


def _activation(rng: np.random.Generator) -> str | None:
    return [None, "relu", "relu6"][int(rng.integers(3))]


def _conv(rng, x, name, channels):
    kernel = int(rng.choice([1, 3, 5]))
    size = min(int(x.shape[1]), int(x.shape[2]))
    stride = int(rng.choice([1, 2])) if size >= 6 else 1
    padding = "valid" if (rng.random() < 0.3 and size > kernel + 1) else "same"
    activation = _activation(rng)
    x = _L.Conv2D(channels, kernel, strides=stride, padding=padding, use_bias=bool(rng.random() < 0.8),
                  activation="relu6" if activation == "relu6" else activation, name=name)(x)
    return x


def _depthwise(rng, x, name):
    kernel = int(rng.choice([3, 5]))
    multiplier = int(rng.choice([1, 1, 2]))
    stride = int(rng.choice([1, 2])) if min(int(x.shape[1]), int(x.shape[2])) >= 6 else 1
    activation = _activation(rng)
    return _L.DepthwiseConv2D(kernel, strides=stride, padding="same", depth_multiplier=multiplier,
                              activation="relu6" if activation == "relu6" else activation,
                              name=name)(x)


def _separable(rng, x, name, channels):
    return _L.SeparableConv2D(channels, int(rng.choice([3, 5])), padding="same",
                              activation=_activation(rng), name=name)(x)


def _bn_relu(rng, x, name):
    x = _L.BatchNormalization(name=f"{name}_bn")(x)
    if rng.random() < 0.7:
        x = _L.ReLU(max_value=6.0 if rng.random() < 0.5 else None, name=f"{name}_relu")(x)
    return x


def _block(rng, x, k: int, spec: FuzzSpec):
    name = f"b{k}"
    channels = int(rng.integers(2, spec.max_channels + 1))
    kind = rng.choice(["conv", "conv_bn", "depthwise", "separable", "residual", "concat", "pool", "pad"],
                      p=[0.17, 0.15, 0.15, 0.1, 0.17, 0.1, 0.1, 0.06])
    size = min(int(x.shape[1]), int(x.shape[2]))
    if kind == "conv":
        return _conv(rng, x, name, channels)
    if kind == "conv_bn":
        y = _L.Conv2D(channels, int(rng.choice([1, 3])), padding="same", use_bias=False, name=name)(x)
        return _bn_relu(rng, y, name)
    if kind == "depthwise":
        if rng.random() < 0.4:  # a foldable BN needs the depthwise output before its activation
            y = _L.DepthwiseConv2D(3, padding="same", use_bias=False, name=name)(x)
            return _bn_relu(rng, y, name)
        return _depthwise(rng, x, name)
    if kind == "separable":
        return _separable(rng, x, name, channels)
    if kind == "residual":
        c = int(x.shape[-1])
        y = _L.Conv2D(c, int(rng.choice([1, 3])), padding="same", activation=_activation(rng),
                      name=f"{name}_a")(x)
        if rng.random() < 0.5:
            y = _L.DepthwiseConv2D(3, padding="same", name=f"{name}_dw")(y)
        y = _L.Add(name=f"{name}_add")([x, y])
        if rng.random() < 0.5:
            y = _L.ReLU(name=f"{name}_relu")(y)
        return y
    if kind == "concat":
        a = _L.Conv2D(channels, 1, activation=_activation(rng), name=f"{name}_a")(x)
        b = _L.Conv2D(int(rng.integers(2, spec.max_channels + 1)), 3, padding="same",
                      activation=_activation(rng), name=f"{name}_b")(x)
        return _L.Concatenate(name=f"{name}_cat")([a, b])
    if kind == "pool" and size >= 4:
        pool = _L.MaxPooling2D if rng.random() < 0.5 else _L.AveragePooling2D
        return pool(2, padding=str(rng.choice(["valid", "same"])), name=f"{name}_pool")(x)
    if kind == "pad":
        y = _L.ZeroPadding2D(1, name=f"{name}_pad")(x)
        return _L.Conv2D(channels, 3, padding="valid", activation=_activation(rng), name=name)(y)
    return _conv(rng, x, name, channels)


def _randomize(model: keras.Model, rng: np.random.Generator) -> None:
    for layer in model.layers:
        if isinstance(layer, _L.BatchNormalization):
            c = int(layer.gamma.shape[0])
            layer.gamma.assign(rng.uniform(0.3, 2.0, c).astype(np.float32) * rng.choice([-1, 1], c, p=[0.1, 0.9]))
            layer.beta.assign(rng.normal(0, 0.5, c).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0, 0.5, c).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, c).astype(np.float32))
            continue
        for var in layer.weights:
            value = var.numpy()
            if var.path.endswith("bias"):
                var.assign(rng.normal(0, 0.3, value.shape).astype(np.float32))
            elif value.ndim >= 2:
                gain = 10.0 ** rng.uniform(-1, 1, value.shape[-1])
                var.assign((value * gain).astype(np.float32))


def random_model(seed: int, spec: FuzzSpec = FuzzSpec()) -> keras.Model:
    """A random functional model (see the module docstring), fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(int(seed) % (2**31))
    size = int(rng.integers(spec.min_size, spec.max_size + 1))
    inp = keras.Input((size, size, int(rng.choice(spec.input_channels))), name="x")
    x = inp
    for k in range(int(rng.integers(spec.min_blocks, spec.max_blocks + 1))):
        x = _block(rng, x, k, spec)
    classes = int(rng.integers(2, 11))
    if rng.random() < 0.6:
        x = _L.GlobalAveragePooling2D(name="gap")(x)
    else:
        x = _L.Flatten(name="flat")(x)
    if rng.random() < 0.3:
        x = _L.Dense(int(rng.integers(4, 17)), activation=_activation(rng), name="fc0")(x)
    out = _L.Dense(classes, name="head")(x)
    if rng.random() < 0.3:
        out = _L.Softmax(name="softmax")(out)
    model = keras.Model(inp, out, name=f"fuzz_{seed}")
    _randomize(model, rng)
    return model


def input_distributions(seed: int, shape, calibration: int = 32, scoring: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A calibration set and a differently distributed scoring set for one input ``shape``.

    Calibration: N(0, 1). Scoring, in four equal parts: N(0.5, 1.5^2) (shifted and wider),
    U(-4, 4) (beyond the calibrated range on both sides), N(0, 1) on a 1/8 lattice (exact values
    like a resized 8-bit image, which hit rounding ties), and 3x the calibration samples
    (scaled: saturates every requantization).
    """
    rng = np.random.default_rng(seed + 1_000_003)
    shape = tuple(int(d) for d in shape)
    cal = rng.normal(size=(calibration, *shape))
    part = max(1, scoring // 4)
    score = np.concatenate([
        rng.normal(0.5, 1.5, size=(part, *shape)),
        rng.uniform(-4, 4, size=(part, *shape)),
        np.round(rng.normal(size=(part, *shape)) * 8) / 8,
        3.0 * cal[: min(part, calibration)],
    ])
    return cal.astype(np.float32), score.astype(np.float32)


def describe_model(model: keras.Model) -> str:
    """One line per layer: name, class, output shape, and the settings that matter to kernels."""
    lines = []
    for layer in model.layers:
        config = layer.get_config()
        keys = ("kernel_size", "strides", "padding", "depth_multiplier", "activation", "pool_size",
                "max_value", "use_bias")
        details = ", ".join(f"{k}={config[k]}" for k in keys if k in config)
        lines.append(f"{layer.name}: {type(layer).__name__} {tuple(layer.output.shape)} {details}")
    return "\n".join(lines)
