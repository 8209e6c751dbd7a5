"""Bilinear resizing: the simulation reproduces LiteRT's int8 RESIZE_BILINEAR on every kernel path."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aimet_tf.export import KERNELS, prepare_sim_for_tflite
from aimet_tf.kernels.litert import interpreter as litert_interpreter
from aimet_tf.kernels.tflite_model import read_tflite
from aimet_tf.quantization.resize_bilinear import (
    BilinearResizeRequantizer,
    bilinear_resize_flags,
    resize_bilinear_levels,
)

L = keras.layers


def _resize_file(in_size, out_size, channels, half_pixel_centers, align_corners):
    """A .tflite file holding one int8 RESIZE_BILINEAR with int8 input and output."""
    h, w = in_size

    @tf.function(input_signature=[tf.TensorSpec([1, h, w, channels], tf.float32)])
    def resize(x):
        return tf.compat.v1.image.resize_bilinear(
            x, out_size, align_corners=align_corners, half_pixel_centers=half_pixel_centers)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([resize.get_concrete_function()], resize)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    converter.representative_dataset = lambda: (
        [rng.uniform(-1, 1, (1, h, w, channels)).astype(np.float32)] for _ in range(4))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def _run_levels(content, raw, kernels):
    interpreter = litert_interpreter(content, kernels)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(raw.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, raw.astype(np.int8))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).astype(np.int64)


@pytest.mark.parametrize("in_size, out_size, flags", [
    ((2, 2), (4, 4), (True, False)),
    ((2, 2), (3, 3), (True, False)),
    ((5, 3), (11, 13), (True, False)),
    ((8, 8), (5, 7), (True, False)),
    ((8, 8), (3, 3), (False, True)),
    ((3, 5), (17, 6), (False, False)),
])
def test_levels_match_litert_on_every_kernel_path(in_size, out_size, flags):
    content = _resize_file(in_size, out_size, 3, *flags)
    (op,) = read_tflite(content).operators
    assert (op.options.halfPixelCenters, op.options.alignCorners) == flags
    raw = np.random.default_rng(1).integers(-128, 128, (4, *in_size, 3))
    raw[0, 0, 0] = -128
    raw[0, -1, -1] = 127
    by_arithmetic = {
        name: resize_bilinear_levels(tf.constant(raw, tf.float32), out_size, name, *flags).numpy().astype(np.int64)
        for name in ("xnnpack", "tflite")
    }
    for kernels in KERNELS:
        expected = by_arithmetic["xnnpack" if kernels == "default" else "tflite"]
        np.testing.assert_array_equal(_run_levels(content, raw, kernels), expected, err_msg=kernels)
    assert not np.array_equal(by_arithmetic["xnnpack"], by_arithmetic["tflite"])


def test_keras_layers_are_half_pixel_bilinear_resizes():
    assert bilinear_resize_flags(L.Resizing(4, 4)) == (True, False)
    assert bilinear_resize_flags(L.UpSampling2D(2, interpolation="bilinear")) == (True, False)
    assert bilinear_resize_flags(L.Resizing(4, 4, interpolation="nearest")) is None
    assert bilinear_resize_flags(L.Resizing(4, 4, antialias=True)) is None
    assert bilinear_resize_flags(L.UpSampling2D(2)) is None


def _after_conv(resize, shape=(8, 8, 3), activation=None):
    keras.utils.set_random_seed(3)
    inp = keras.Input(shape)
    x = L.Conv2D(4, 3, padding="same", activation=activation, name="conv")(inp)
    return keras.Model(inp, resize(x))


@pytest.mark.parametrize("name, resize, shape", [
    ("up", lambda x: L.Resizing(12, 12, name="resize")(x), (8, 8, 3)),
    ("down_odd", lambda x: L.Resizing(5, 7, name="resize")(x), (8, 8, 3)),
    ("up_odd", lambda x: L.Resizing(11, 13, name="resize")(x), (5, 3, 3)),
    ("upsampling", lambda x: L.UpSampling2D(2, interpolation="bilinear", name="resize")(x), (8, 8, 3)),
    ("upsampling_3x2", lambda x: L.UpSampling2D((3, 2), interpolation="bilinear", name="resize")(x), (5, 7, 3)),
])
def test_exported_bilinear_resize_is_identical_on_every_kernel_path(export_model, name, resize, shape):
    exported = export_model(_after_conv(resize, shape), f"{name}.tflite", samples=64, seed=4)
    graph = read_tflite(exported.path)
    (op,) = [op for op in graph.operators if op.name == "RESIZE_BILINEAR"]
    source, target = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    # The sim's output grid is the input's, as the converter wants it: no QUANTIZE in between.
    assert source.per_tensor() == target.per_tensor()
    assert exported.op_names().count("QUANTIZE") == 1  # the model input's
    reports = exported.verify(kernels="all")
    for kernels in KERNELS:
        assert reports[kernels].exact_fraction == 1.0, (kernels, reports[kernels].summary())


def test_fused_relu_producer_and_the_prepared_sim(export_model):
    exported = export_model(_after_conv(lambda x: L.Resizing(6, 10, name="resize")(x), activation="relu"),
                            "relu.tflite", samples=32, seed=5)
    wrapper = next(w for w in exported.sim.wrappers() if w.name == "resize")
    assert isinstance(wrapper.requantizer, BilinearResizeRequantizer)
    report = prepare_sim_for_tflite(exported.sim, "reference")
    assert "resize" in report.requantizers and wrapper.requantizer.arithmetic == "tflite"
    report = prepare_sim_for_tflite(exported.sim, "default")
    assert wrapper.requantizer.arithmetic == "xnnpack"
    assert any("resize/output:0" in group for group in report.tied)
    for kernels in KERNELS:
        assert exported.verify(kernels=kernels).exact_fraction == 1.0, kernels
    # The unlinked requantizer (a reloaded model) computes the same from its snapshot.
    clone = BilinearResizeRequantizer.from_config(wrapper.requantizer.get_config())
    clone.build()
    clone.grid_minimum.assign(wrapper.requantizer.grid_minimum)
    clone.grid_scale.assign(wrapper.requantizer.grid_scale)
    conv = next(w for w in exported.sim.wrappers() if w.name == "conv")
    x = keras.Model(exported.sim.model.inputs[0], conv.output)(exported.data[:4])
    y = wrapper.layer(x)
    np.testing.assert_array_equal(clone(y, operands=[x]), wrapper.requantizer(y, operands=[x]))
