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

__all__ = ["FuzzSpec", "random_model", "packed_random_models", "input_distributions", "describe_model"]

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


def _random_graph(seed: int, spec: FuzzSpec, prefix: str = "") -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Input and output tensors of one random model; its layers' weights already randomized."""
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(int(seed) % (2**31))
    size = int(rng.integers(spec.min_size, spec.max_size + 1))
    inp = keras.Input((size, size, int(rng.choice(spec.input_channels))), name=f"{prefix}x")
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
    sub = keras.Model(inp, out)
    for layer in sub.layers:
        if prefix and not layer.name.startswith(prefix):
            layer.name = f"{prefix}{layer.name}"
    _randomize(sub, rng)
    return inp, out


def random_model(seed: int, spec: FuzzSpec = FuzzSpec()) -> keras.Model:
    """A random functional model (see the module docstring), fully determined by ``seed``."""
    inp, out = _random_graph(seed, spec)
    return keras.Model(inp, out, name=f"fuzz_{seed}")


def packed_random_models(seeds, spec: FuzzSpec = FuzzSpec()) -> keras.Model:
    """The models ``random_model(seed)`` for several seeds side by side in one functional model:
    input k and output k belong to seeds[k], layer names are prefixed "m<seed>_", and no layer or
    tensor is shared between them (so one conversion serves many independent models)."""
    inputs, outputs = [], []
    for seed in seeds:
        inp, out = _random_graph(int(seed), spec, prefix=f"m{int(seed)}_")
        inputs.append(inp)
        outputs.append(out)
    return keras.Model(inputs, outputs, name="fuzz_pack")


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


@dataclasses.dataclass(frozen=True)
class FidelityFailure:
    """One random model whose simulation and .tflite file disagree on some output element.

    Attributes:
        seed: the model's seed (``random_model(seed)`` rebuilds it).
        param_bw: weight bitwidth of the simulation.
        kernels: the LiteRT kernel path compared.
        max_steps: largest |tflite - sim| in output steps.
        differing: fraction of output elements not identical.
        first_tensor: the first tensor (in execution order) that differs, where the resolver keeps
            intermediate tensors ("reference", "builtin"); "" otherwise.
        summary: ``describe_model`` of the model.
    """

    seed: int
    param_bw: int
    kernels: str
    max_steps: float
    differing: float
    first_tensor: str
    summary: str

    def __str__(self) -> str:
        return (f"seed {self.seed}, W{self.param_bw}, {self.kernels} kernels: {100 * self.differing:.3f}% of outputs "
                f"differ, up to {self.max_steps:.0f} steps; first differing tensor: {self.first_tensor or 'n/a'}\n"
                f"{self.summary}")


def _litert_outputs(path: str, inputs: dict[str, np.ndarray], kernels: str, keep: bool = False):
    """Runs the file's signature; returns the interpreter and the dequantized outputs in order."""
    from aimet_tf.kernels.litert import interpreter as litert_interpreter

    interpreter = litert_interpreter(path, kernels, preserve=keep)
    runner = interpreter.get_signature_runner()
    raw = runner(**inputs)
    details = runner.get_output_details()
    order = sorted(raw, key=lambda k: int(k.rsplit("_", 1)[-1]))
    outputs = []
    for key in order:
        scale, zero_point = details[key]["quantization"]
        outputs.append(((raw[key].astype(np.float64) - zero_point) * scale, float(scale)))
    return interpreter, outputs


def _first_differing_tensor(interpreter, sim, inputs: list[np.ndarray], prefix: str) -> str:
    """Name of the first int8 tensor of the layers named ``prefix``* whose dequantized value
    differs from the sim's layer output."""
    wrappers = {w.name: w for w in sim.wrappers() if w.name.startswith(prefix)}
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():
        for index in op["outputs"]:
            detail = details[index]
            layer = detail["name"].split("/")[0]
            scale, zero_point = detail["quantization"]
            if layer not in wrappers or not scale or op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
                continue
            try:
                value = interpreter.get_tensor(index).astype(np.float64)
            except ValueError:
                continue
            probe = keras.Model(sim.model.inputs, wrappers[layer].output)
            expected = np.asarray(probe.predict(inputs, verbose=0), np.float64)
            if expected.shape != value.shape:
                continue
            if np.any(np.abs((value - zero_point) * scale - expected) >= 0.5 * scale):
                return f"{layer} ({op['op_name']})"
    return ""


def _with_ties(score: np.ndarray, quantizer, count: int) -> np.ndarray:
    """``score`` plus ``count`` samples on half steps of ``quantizer``'s grid (rounding ties)."""
    encoding = quantizer.get_encoding()
    scale = float(np.asarray(encoding.scale).reshape(-1)[0])
    rng = np.random.default_rng(count)
    k = rng.integers(-140, 140, size=(count, *score.shape[1:]))
    ties = ((k + 0.5) * scale + float(np.asarray(encoding.min).reshape(-1)[0])).astype(np.float32)
    return np.concatenate([score, ties])


def check_fidelity(seeds, param_bw: int, kernels=("default", "reference"), spec: FuzzSpec = FuzzSpec(),
                   tie_samples: int = 16, locate: bool = True) -> list[FidelityFailure]:
    """Exports the random models of ``seeds`` (packed side by side in one .tflite file) and
    compares every output element of the simulation with LiteRT's, for each kernel path.

    Each model is calibrated on its calibration set (``input_distributions``) with the "tf"
    scheme and the "tflite" config, and scored on its differently distributed scoring set plus
    ``tie_samples`` inputs on half steps of its input grid (where QUANTIZE kernels round ties
    their own way). The sim is prepared for each kernel path in turn
    (``prepare_sim_for_tflite(sim, kernels)``); the file is the same. ``locate`` looks for the
    first differing tensor of a failing model (slow: one probe per tensor).

    Returns:
        The failures (empty when every output element of every model is identical).
    """
    import os
    import tempfile

    from aimet_tf.export import export_tflite, model_input_quantizers, prepare_model_for_tflite, prepare_sim_for_tflite
    from aimet_tf.quantization import QuantizationSimModel

    seeds = [int(s) for s in seeds]
    model = prepare_model_for_tflite(packed_random_models(seeds, spec))
    pairs = [input_distributions(seed, model.inputs[k].shape[1:]) for k, seed in enumerate(seeds)]
    sim = QuantizationSimModel(model, quant_scheme="tf", default_param_bw=param_bw, config_file="tflite")
    # One eager call each: a packed model traces slowly, and every batch is used once.
    sim.compute_encodings(lambda m, _: m([c for c, _ in pairs], training=False), None)
    names = [t.name.split(":")[0] for t in sim.model.inputs]
    failures = []
    with tempfile.TemporaryDirectory(prefix="aimet_tf_fuzz_") as folder:
        path = export_tflite(sim, os.path.join(folder, "pack.tflite"), output_type="int8")
        input_quantizers = model_input_quantizers(sim)
        inputs = [_with_ties(score, input_quantizers[k][0], tie_samples) for k, (_, score) in enumerate(pairs)]
        for name in kernels:
            prepare_sim_for_tflite(sim, name)
            expected = sim.model(inputs, training=False)
            expected = [np.asarray(e) for e in (expected if isinstance(expected, (list, tuple)) else [expected])]
            interpreter, actual = _litert_outputs(path, dict(zip(names, inputs)), name, keep=name != "default")
            for k, seed in enumerate(seeds):
                value, step = actual[k]
                apart = np.abs(value - np.asarray(expected[k], np.float64)) / step
                if apart.max() >= 0.5:
                    first = _first_differing_tensor(interpreter, sim, inputs, f"m{seed}_") if locate and name != "default" else ""
                    failures.append(FidelityFailure(seed, param_bw, name, float(apart.max()),
                                                    float(np.mean(apart >= 0.5)), first,
                                                    describe_model(random_model(seed, spec))))
    return failures
