"""The integer executor is bit-exact with LiteRT's reference kernels on every layer kind and real models."""

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema

from aimet_tf.kernels import (
    ComparisonReport,
    IntegerExecutor,
    UnsupportedOperatorError,
    read_tflite,
    reference,
    widen_int4_weights,
)
from tests.kernels import tflite_models


def _inputs(executor: IntegerExecutor, n: int, seed: int, spread: float = 1.5):
    """Seeded inputs in the model's input dtype (int8 models get quantized floats)."""
    t = executor.input_tensors[0]
    x = np.random.default_rng(seed).normal(0.0, spread, (n, *t.shape[1:])).astype(np.float32)
    if t.type_name == "INT8":
        scale, zero_point = t.per_tensor()
        return reference.quantize(x, scale=scale, zero_point=zero_point)
    return x


@pytest.fixture(scope="module")
def converted():
    """Each tiny model converted once, with float and with int8 model I/O."""
    return {(name, io): tflite_models.ptq_int8(name, int8_io=io)[0]
            for name in tflite_models.BUILDERS for io in (False, True)}


def _assert_bit_exact(report: ComparisonReport) -> None:
    assert report.bit_exact, report.to_text()
    assert report.output_bytes > 0 and report.output_bytes_differing == 0


LAYER_KINDS = {
    "CONV_2D": "conv_pool",
    "PAD": "conv_pool",
    "AVERAGE_POOL_2D": "conv_pool",
    "MAX_POOL_2D": "conv_pool",
    "DEPTHWISE_CONV_2D": "depthwise_add",
    "ADD": "depthwise_add",
    "MEAN": "depthwise_add",
    "SOFTMAX": "depthwise_add",
    "FULLY_CONNECTED": "dense",
    "RESHAPE": "dense",
    "CONCATENATION": "concat",
    "QUANTIZE": "concat",
    "DEQUANTIZE": "concat",
}


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("int8_io", [False, True])
@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
def test_every_layer_kind_is_bit_exact_with_builtin_ref(converted, kind, int8_io, backend):
    name = LAYER_KINDS[kind]
    if kind in ("QUANTIZE", "DEQUANTIZE") and int8_io:
        name, int8_io = name, False  # int8 I/O models have no float boundary ops
    executor = IntegerExecutor(converted[(name, int8_io)], backend=backend)
    report = executor.compare_with_litert(_inputs(executor, 48 if backend == "cpp" else 6, seed=7))
    layers = [layer for layer in report.layers if layer.op_name == kind]
    assert layers, f"{kind} missing from {name}: {executor.graph.op_counts()}"
    assert all(layer.differing == 0 and layer.elements > 0 for layer in layers), report.to_text()
    _assert_bit_exact(report)


@pytest.mark.parametrize("ratio", [0.3, 1.0, 3.7])
def test_requantize_op_is_bit_exact(ratio):
    model = tflite_models.single_op_model("QUANTIZE", [((1, 4, 5, 3), 0.037, 5)], ((1, 4, 5, 3), 0.037 / ratio, -9))
    executor = IntegerExecutor(model)
    x = np.random.default_rng(1).integers(-128, 128, (64, 4, 5, 3)).astype(np.int8)
    _assert_bit_exact(executor.compare_with_litert(x))


@pytest.mark.parametrize("fused", [0, 1, 3])
@pytest.mark.parametrize("shapes", [((1, 4, 5, 3), (1, 1, 5, 1)), ((1, 4, 5, 3), (1, 4, 5, 3))])
def test_add_with_broadcasting_and_fused_activation_is_bit_exact(shapes, fused):
    options = schema.AddOptionsT()
    options.fusedActivationFunction = fused
    model = tflite_models.single_op_model("ADD", [(shapes[0], 0.037, 5), (shapes[1], 0.09, -3)],
                                          ((1, 4, 5, 3), 0.05, -20), options, "AddOptions")
    executor = IntegerExecutor(model)
    rng = np.random.default_rng(fused)
    x1 = rng.integers(-128, 128, shapes[0]).astype(np.int8)
    x2 = rng.integers(-128, 128, shapes[1]).astype(np.int8)
    _assert_bit_exact(executor.compare_with_litert(x1, x2))


@pytest.fixture(scope="module")
def int4_model():
    return tflite_models.qat_int4()[0]


def test_int4_model_stores_packed_int4_weights(int4_model):
    graph = read_tflite(int4_model)
    int4 = [t for t in graph.tensors if t.type_name == "INT4"]
    assert len(int4) == 3
    for t in int4:
        assert t.data.size == (int(np.prod(t.shape)) + 1) // 2  # two weights per byte


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_int4_model_is_bit_exact(int4_model, backend):
    executor = IntegerExecutor(int4_model, backend=backend)
    report = executor.compare_with_litert(_inputs(executor, 32, seed=3))
    # ai-edge-litert 2.3's BUILTIN_REF lacks int4 DEPTHWISE_CONV_2D: LiteRT runs the same values as int8.
    assert "widened" in report.litert
    _assert_bit_exact(report)


def test_int4_conv_and_fully_connected_match_litert_natively(int4_model):
    """Without the depthwise layer LiteRT's reference kernels run the packed int4 weights themselves."""
    graph = read_tflite(int4_model)
    conv = next(op for op in graph.operators if op.name == "CONV_2D")
    executor = IntegerExecutor(int4_model)
    x = _inputs(executor, 16, seed=4)
    ours = executor.run_with_intermediates(x)
    from aimet_tf.kernels import run_litert

    with pytest.raises(UnsupportedOperatorError, match="DEPTHWISE_CONV_2D"):
        run_litert(int4_model, [x], [conv.outputs[0]])
    theirs = run_litert(widen_int4_weights(int4_model), [x], [conv.outputs[0]])
    np.testing.assert_array_equal(ours[conv.outputs[0]], theirs[conv.outputs[0]])


def test_widened_model_has_the_same_values_as_int8(int4_model):
    packed = read_tflite(int4_model)
    widened = read_tflite(widen_int4_weights(int4_model))
    for a, b in zip(packed.tensors, widened.tensors):
        if a.type_name == "INT4":
            assert b.type_name == "INT8"
            np.testing.assert_array_equal(reference.unpack_int4(a.data, a.shape), b.data)
            np.testing.assert_array_equal(a.scale, b.scale)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet8", "ds_cnn", "vww_mobilenetv1", "mobilenetv2_kws"])
def test_mltk_models_are_bit_exact_on_their_real_inputs(name):
    from aimet_tf.testing.mltk_models import load_mltk_model
    from aimet_tf.testing.real_inputs import real_inputs

    executor = IntegerExecutor(load_mltk_model(name).tflite_bytes)
    x = real_inputs(name)
    t = executor.input_tensors[0]
    if t.type_name == "INT8":
        scale, zero_point = t.per_tensor()
        x = reference.quantize(x, scale=scale, zero_point=zero_point)
    report = executor.compare_with_litert(x.astype(t.dtype))
    assert report.samples == len(x) >= 100
    _assert_bit_exact(report)


@pytest.mark.slow
def test_bundled_fashion_mnist_model_is_bit_exact():
    from aimet_tf import datasets

    model = datasets.load_bundled_model()
    calibration, _ = datasets.load_fashion_mnist("calibration")
    test_images, _ = datasets.load_fashion_mnist("test")

    import keras

    inp = keras.Input((28, 28, 1), batch_size=1)  # TFLite's fixed batch of 1, as the MLTK models have
    fixed_batch = keras.Model(inp, model(inp))

    def representative():
        for i in range(0, 200, 2):
            yield [calibration[i : i + 1]]

    converter = tf.lite.TFLiteConverter.from_keras_model(fixed_batch)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    executor = IntegerExecutor(converter.convert())
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED"} <= set(executor.graph.op_counts())
    _assert_bit_exact(executor.compare_with_litert(test_images[:300]))


@pytest.mark.slow
@pytest.mark.parametrize("param_bw", [8, 4])
def test_models_exported_by_aimet_tf_are_bit_exact(tmp_path, param_bw):
    from aimet_tf import QuantizationSimModel, datasets
    from aimet_tf.export import TFLITE_CONFIG, export_tflite, prepare_model_for_tflite

    model = prepare_model_for_tflite(datasets.load_bundled_model())
    calibration, _ = datasets.load_fashion_mnist("calibration")
    test_images, _ = datasets.load_fashion_mnist("test")
    sim = QuantizationSimModel(model, config_file=TFLITE_CONFIG, default_param_bw=param_bw)
    sim.compute_encodings(calibration[:100])
    path = tmp_path / "model.tflite"
    export_tflite(sim, str(path), input_type="int8")
    executor = IntegerExecutor(path)
    if param_bw == 4:
        assert any(t.type_name == "INT4" for t in executor.graph.tensors)
    scale, zero_point = executor.input_tensors[0].per_tensor()
    _assert_bit_exact(executor.compare_with_litert(reference.quantize(test_images[:200], scale=scale,
                                                                      zero_point=zero_point)))


def test_keras_layer_runs_the_integer_path_in_a_graph(converted):
    executor = IntegerExecutor(converted[("depthwise_add", True)])
    layer = executor.as_keras_layer(name="int8_model")
    import keras

    inp = keras.Input((12, 12, 4), dtype="int8")
    model = keras.Model(inp, layer(inp))
    x = _inputs(executor, 5, seed=11)
    expected = executor.run(x, backend="numpy")
    np.testing.assert_array_equal(model.predict(x, verbose=0), expected)
    graph_fn = tf.function(lambda t: layer(t), input_signature=[tf.TensorSpec([None, 12, 12, 4], tf.int8)])
    np.testing.assert_array_equal(graph_fn(x).numpy(), expected)
    assert model.output.dtype == "int8" and tuple(model.output.shape) == (None, 5)


def test_batched_run_equals_sample_by_sample(converted):
    executor = IntegerExecutor(converted[("conv_pool", False)])
    x = _inputs(executor, 6, seed=2)
    batched = executor.run(x)
    single = np.concatenate([executor.run(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_array_equal(batched, single)


def test_report_text_names_every_layer(converted):
    executor = IntegerExecutor(converted[("dense", False)])
    report = executor.compare_with_litert(_inputs(executor, 4, seed=0))
    text = report.to_text()
    assert text.count("FULLY_CONNECTED") == 3 and "bit-exact" in text
    assert report.first_difference() is None
