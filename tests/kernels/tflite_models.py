"""Tiny seeded int8 / int4 TFLite models for the kernel tests, made with TF's own converter.

Int8 models: Keras models converted by post-training full-integer quantization with a seeded
representative dataset (TFLite's converter picks every scale, as it would for a user). The int4
model: a `tf.function` whose weights pass through 4-bit fake-quant ops, converted with
`_experimental_low_bit_qat` so the weights are stored as packed INT4 tensors.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from aimet_tf.export.baselines import tflite_ptq_int8


def _conv_pool() -> keras.Model:
    inp = keras.Input((15, 13, 3), batch_size=1)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu6")(inp)
    x = keras.layers.Conv2D(5, (2, 3), padding="valid", activation="relu")(x)
    x = keras.layers.ZeroPadding2D(((1, 2), (0, 1)))(x)
    x = keras.layers.Conv2D(4, 1)(x)
    x = keras.layers.AveragePooling2D(3, strides=2, padding="same")(x)
    x = keras.layers.MaxPooling2D(2, strides=1, padding="valid")(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(4)(x)
    return keras.Model(inp, out, name="conv_pool")


def _depthwise_add() -> keras.Model:
    inp = keras.Input((12, 12, 4), batch_size=1)
    a = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu")(inp)
    a = keras.layers.Conv2D(8, 1)(a)
    b = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.ReLU()(keras.layers.Add()([a, b]))
    x = keras.layers.DepthwiseConv2D((3, 2), strides=2, padding="valid")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5)(x)
    out = keras.layers.Softmax()(x)
    return keras.Model(inp, out, name="depthwise_add")


def _dense() -> keras.Model:
    inp = keras.Input((6, 5), batch_size=1)
    x = keras.layers.Dense(8, activation="relu")(inp)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(7, activation="relu6")(x)
    out = keras.layers.Dense(3)(x)
    return keras.Model(inp, out, name="dense")


def _concat() -> keras.Model:
    inp = keras.Input((10, 10, 3), batch_size=1)
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    b = keras.layers.Conv2D(5, 1)(inp)
    x = keras.layers.Concatenate()([a, b])
    x = keras.layers.Conv2D(6, 3, strides=2)(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(4)(x)
    return keras.Model(inp, out, name="concat")


BUILDERS = {"conv_pool": _conv_pool, "depthwise_add": _depthwise_add, "dense": _dense, "concat": _concat}


def ptq_int8(name: str, int8_io: bool = False, seed: int = 0) -> tuple[bytes, tuple[int, ...]]:
    """Converts a seeded tiny Keras model with TFLite's full-integer PTQ; returns (bytes, input shape)."""
    keras.utils.set_random_seed(seed)
    model = BUILDERS[name]()
    shape = tuple(model.input_shape[1:])
    rng = np.random.default_rng(seed)
    calibration = rng.normal(0.0, 1.0, (32, *shape)).astype(np.float32)
    return tflite_ptq_int8(model, calibration, int8_io=int8_io), shape


def qat_int4(seed: int = 0) -> tuple[bytes, tuple[int, ...]]:
    """Conv (per-channel int4) -> depthwise (per-channel int4) -> FC (int4) with 8-bit activations."""
    rng = np.random.default_rng(seed)
    w1 = tf.constant(rng.normal(0, 0.3, (3, 3, 3, 8)).astype(np.float32))
    b1 = tf.constant(rng.normal(0, 0.1, 8).astype(np.float32))
    wd = tf.constant(rng.normal(0, 0.3, (3, 3, 8, 1)).astype(np.float32))
    w2 = tf.constant(rng.normal(0, 0.3, (128, 6)).astype(np.float32))

    def fq(x, lo, hi):
        return tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8)

    def fq4(w, absmax):
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(w, -absmax, absmax, num_bits=4, narrow_range=True)

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
    def forward(x):
        x = fq(x, -2.0, 2.0)
        y = tf.nn.conv2d(x, fq4(w1, tf.reduce_max(tf.abs(w1), axis=[0, 1, 2])), 1, "SAME") + b1
        y = fq(tf.nn.relu(y), 0.0, 4.0)
        wq = tf.reshape(fq4(tf.reshape(wd, [3, 3, 1, 8]), tf.reduce_max(tf.abs(wd), axis=[0, 1, 3])), [3, 3, 8, 1])
        y = fq(tf.nn.depthwise_conv2d(y, wq, [1, 2, 2, 1], "SAME"), -3.0, 3.0)
        y = tf.reshape(y, [1, -1])
        absmax = tf.reduce_max(tf.abs(w2))
        y = tf.matmul(y, tf.quantization.fake_quant_with_min_max_vars(w2, -absmax, absmax, num_bits=4, narrow_range=True))
        return fq(y, -5.0, 5.0)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter._experimental_low_bit_qat = True
    return converter.convert(), (8, 8, 3)


def logistic_model() -> bytes:
    """An int8 model with a LOGISTIC op, which the executor does not support."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,), batch_size=1)
    out = keras.layers.Activation("sigmoid")(keras.layers.Dense(3)(inp))
    model = keras.Model(inp, out)

    def representative():
        for _ in range(8):
            yield [np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def single_op_model(op: str, inputs: list[tuple[tuple[int, ...], float, int]], output: tuple[tuple[int, ...], float, int],
                    options=None, options_type: str | None = None) -> bytes:
    """Writes a one-operator int8 model with the flatbuffer object API of ai-edge-litert.

    Args:
        op: builtin operator name, e.g. "QUANTIZE" or "ADD".
        inputs: (shape, scale, zero point) of each int8 input (all graph inputs).
        output: (shape, scale, zero point) of the int8 output.
        options: the operator's options object (e.g. `AddOptionsT()`), if any.
        options_type: its `BuiltinOptions` member name, e.g. "AddOptions".
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    def tensor(shape, scale, zero_point, name):
        t = schema.TensorT()
        t.shape, t.type, t.buffer, t.name = list(shape), schema.TensorType.INT8, 0, name
        q = schema.QuantizationParametersT()
        q.scale, q.zeroPoint = [float(scale)], [int(zero_point)]
        t.quantization = q
        return t

    model = schema.ModelT()
    model.version = 3
    code = schema.OperatorCodeT()
    code.builtinCode = getattr(schema.BuiltinOperator, op)
    code.deprecatedBuiltinCode = min(code.builtinCode, 127)
    code.version = 2
    model.operatorCodes = [code]
    model.buffers = [schema.BufferT()]
    graph = schema.SubGraphT()
    graph.tensors = [tensor(*spec, f"in{i}") for i, spec in enumerate(inputs)] + [tensor(*output, "out")]
    graph.inputs = list(range(len(inputs)))
    graph.outputs = [len(inputs)]
    operator = schema.OperatorT()
    operator.opcodeIndex, operator.inputs, operator.outputs = 0, list(range(len(inputs))), [len(inputs)]
    if options is not None:
        operator.builtinOptionsType = getattr(schema.BuiltinOptions, options_type)
        operator.builtinOptions = options
    graph.operators = [operator]
    model.subgraphs = [graph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


from aimet_tf.kernels.tflite_model import op_model  # noqa: E402,F401  (one-op models for the tests)


def tiny_transformer(param_bw: int = 8, seed: int = 0, tokens: int = 6, width: int = 8) -> tuple[bytes, tuple[int, ...]]:
    """A random-weight one-block transformer exported through aimet_tf's own flow.

    ClassToken -> LayerNormalization -> MultiHeadAttention (2 heads) -> residual Add ->
    LayerNormalization -> Dense(gelu) -> Dense -> residual Add -> the class token (Cropping1D,
    Flatten) -> Dense, as the bundled ViT is built, then
    prepare_model_for_tflite -> QuantizationSimModel (TFLite preset, per-tensor Gemm weights) ->
    compute_encodings on seeded data -> export_tflite. Returns (model bytes, input shape).
    """
    import copy
    import json
    import os
    import tempfile

    from aimet_tf.export import TFLITE_CONFIG, export_tflite, prepare_model_for_tflite
    from aimet_tf.quantization import QuantizationSimModel

    from aimet_tf.layers import ClassToken

    keras.utils.set_random_seed(seed)
    inp = keras.Input((tokens, width))
    t = ClassToken()(inp)
    h = keras.layers.LayerNormalization(epsilon=1e-6)(t)
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=width // 2)(h, h)
    x = keras.layers.Add()([t, h])
    h = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    h = keras.layers.Dense(2 * width, activation="gelu")(h)
    h = keras.layers.Dense(width)(h)
    x = keras.layers.Add()([x, h])
    x = keras.layers.Flatten()(keras.layers.Cropping1D(cropping=(0, tokens))(x))
    out = keras.layers.Dense(3)(x)
    model = prepare_model_for_tflite(keras.Model(inp, out, name="tiny_transformer"))
    with open(TFLITE_CONFIG) as f:
        config = json.load(f)
    config = copy.deepcopy(config)
    config["op_type"]["Gemm"] = {"per_channel_quantization": "False"}
    sim = QuantizationSimModel(model, quant_scheme="tf_enhanced", default_param_bw=param_bw, default_output_bw=8,
                               config_file=config)
    calibration = np.random.default_rng(seed).normal(0.0, 1.0, (32, tokens, width)).astype(np.float32)
    sim.compute_encodings(calibration, batch_size=8)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_tflite(sim, os.path.join(tmp, "tiny_transformer.tflite"))
        with open(path, "rb") as f:
            return f.read(), (tokens, width)
