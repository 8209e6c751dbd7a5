"""The transformer operators of the integer executor are bit-exact with LiteRT's reference kernels.

Each operator runs alone in a one-op model with awkward scales and zero points (every int8 code
where the op is a table), then a random-weight one-block transformer exported by aimet_tf's own
flow runs end to end; the bundled ViT is the slow test.
"""

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from aimet_tf.kernels import IntegerExecutor, UnsupportedOperatorError, fixed_point, reference
from tests.kernels import tflite_models
from tests.kernels.tflite_models import op_model

I8, I32 = np.int8, np.int32
BACKENDS = pytest.mark.parametrize("backend", ["numpy", "cpp"])


def _q(shape, scale, zero_point, data=None) -> dict:
    spec = dict(shape=list(shape), dtype=I8, scale=scale, zero_point=zero_point)
    if data is not None:
        spec["data"] = data
    return spec


def _const_i32(values) -> dict:
    values = np.asarray(values, dtype=I32)
    return dict(shape=list(values.shape), dtype=I32, data=values)


def _codes(shape, seed: int, low: int = -128) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, 128, shape).astype(I8)


def _assert_bit_exact(model: bytes, *inputs, backend: str = "numpy") -> None:
    report = IntegerExecutor(model, backend=backend).compare_with_litert(*inputs)
    assert report.output_bytes > 0 and all(layer.elements > 0 for layer in report.layers)
    assert report.bit_exact, report.to_text()


def _options(cls, **fields):
    options = getattr(schema, cls)()
    for name, value in fields.items():
        setattr(options, name, value)
    return options


@pytest.mark.parametrize("adj_x, adj_y, rhs_batch", [(False, False, 2), (False, True, 2), (True, False, 1)])
@BACKENDS
def test_batch_matmul(adj_x, adj_y, rhs_batch, backend):
    lhs_shape = (1, 2, 7, 5) if adj_x else (1, 2, 5, 7)
    rhs_shape = (1, rhs_batch, 4, 7) if adj_y else (1, rhs_batch, 7, 4)
    model = op_model("BATCH_MATMUL", [_q(lhs_shape, 0.037, 5), _q(rhs_shape, 0.0213, -9)],
                     [_q((1, 2, 5, 4), 0.113, 3)], _options("BatchMatMulOptionsT", adjX=adj_x, adjY=adj_y),
                     "BatchMatMulOptions")
    _assert_bit_exact(model, _codes((24, *lhs_shape[1:]), 0), _codes((24, *rhs_shape[1:]), 1), backend=backend)


@pytest.mark.parametrize("second, scales, fused", [
    ("same", (0.037, 0.051, 0.0029), 0),        # multiplier < 1
    ("channel", (0.41, 0.73, 0.0093), 1),       # multiplier > 1 (left shift), fused RELU
    ("scalar", (0.0731, 0.00098, 0.0179), 0),    # the attention scale: a scalar constant
])
@BACKENDS
def test_mul(second, scales, fused, backend):
    shape = (1, 4, 5, 3)
    s1, s2, s_y = scales
    if second == "same":
        other, inputs = _q(shape, s2, -17), [_codes((16, *shape[1:]), 2), _codes((16, *shape[1:]), 3)]
    elif second == "channel":
        other, inputs = _q((3,), s2, 11, _codes((3,), 4)), [_codes((16, *shape[1:]), 2)]
    else:
        other, inputs = _q((), s2, -128, np.array(127, I8)), [_codes((16, *shape[1:]), 2)]
    model = op_model("MUL", [_q(shape, s1, 7), other], [_q(shape, s_y, -3)],
                     _options("MulOptionsT", fusedActivationFunction=fused), "MulOptions")
    _assert_bit_exact(model, *inputs, backend=backend)


@pytest.mark.parametrize("fused", [0, 1])
@pytest.mark.parametrize("second_shape", [(1, 4, 5, 3), (1, 4, 5, 1)])
@BACKENDS
def test_sub_with_broadcasting(second_shape, fused, backend):
    shape = (1, 4, 5, 3)
    model = op_model("SUB", [_q(shape, 0.0371, 19), _q(second_shape, 0.00119, 36)], [_q(shape, 0.0389, -21)],
                     _options("SubOptionsT", fusedActivationFunction=fused), "SubOptions")
    _assert_bit_exact(model, _codes((16, *shape[1:]), 5), _codes((16, *second_shape[1:]), 6), backend=backend)


@pytest.mark.parametrize("s_x, z_x, s_y, z_y", [(0.00067158, -128, 0.0572715, -128), (0.2077, -128, 0.0035575, -128),
                                                 (0.0131, -20, 0.41, 9)])
@BACKENDS
def test_rsqrt_on_every_valid_code(s_x, z_x, s_y, z_y, backend):
    model = op_model("RSQRT", [_q((1, 256 - (z_x + 128)), s_x, z_x)], [_q((1, 256 - (z_x + 128)), s_y, z_y)])
    x = np.arange(z_x, 128, dtype=np.int64).astype(I8)[None]
    _assert_bit_exact(model, np.repeat(x, 3, axis=0), backend=backend)


def test_rsqrt_rejects_negative_values():
    with pytest.raises(ValueError, match="non-negative"):
        reference.rsqrt(np.array([-5], I8), input_zero_point=-3, output_zero_point=0, multiplier=1 << 30, shift=0)


@pytest.mark.parametrize("approximate", [False, True])
@pytest.mark.parametrize("s_x, z_x, s_y, z_y", [(0.0394, 33, 0.016657, -118), (0.0123, -5, 0.0077, -100),
                                                 (0.11, 7, 0.043, -90)])
@BACKENDS
def test_gelu_on_every_code(approximate, s_x, z_x, s_y, z_y, backend):
    model = op_model("GELU", [_q((1, 256), s_x, z_x)], [_q((1, 256), s_y, z_y)],
                     _options("GeluOptionsT", approximate=approximate), "GeluOptions")
    _assert_bit_exact(model, np.arange(-128, 128, dtype=np.int64).astype(I8)[None], backend=backend)


@pytest.mark.parametrize("perm", [[0, 2, 1, 3], [0, 3, 1, 2], [0, 1, 3, 2]])
@BACKENDS
def test_transpose(perm, backend):
    shape = (1, 3, 4, 5)
    out = tuple(shape[p] for p in perm)
    model = op_model("TRANSPOSE", [_q(shape, 0.04, -7), _const_i32(perm)], [_q(out, 0.04, -7)])
    _assert_bit_exact(model, _codes((8, *shape[1:]), 7), backend=backend)


@BACKENDS
def test_broadcast_to_keeps_the_batch(backend):
    model = op_model("BROADCAST_TO", [_q((1, 1, 5), 0.02, 3), _const_i32([1, 4, 5])], [_q((1, 4, 5), 0.02, 3)],
                     version=2)
    _assert_bit_exact(model, _codes((6, 1, 5), 8), backend=backend)


def test_shape_reports_each_sample_shape():
    model = op_model("SHAPE", [_q((1, 3, 4), 0.02, 3)], [dict(shape=[3], dtype=I32)],
                     _options("ShapeOptionsT", outType=schema.TensorType.INT32), "ShapeOptions")
    executor = IntegerExecutor(model, backend="numpy")
    x = _codes((5, 3, 4), 9)
    np.testing.assert_array_equal(executor.run(x), [5, 3, 4])  # the batch run sees its batch
    _assert_bit_exact(model, x)  # LiteRT runs one sample at a time: [1, 3, 4] each


@pytest.mark.parametrize("begin, end, strides, masks, out_shape", [
    ([0, 1, 0], [1, 5, 5], [1, 2, 1], {}, (1, 2, 5)),
    ([0, 0, 0], [0, 1, 0], [1, 1, 1], dict(beginMask=7, endMask=5), (1, 1, 5)),  # the class token
    ([0, -2, 1], [1, 0, 4], [1, 1, 1], dict(endMask=2, shrinkAxisMask=0), (1, 2, 3)),
    ([0, 3, 0], [1, 4, 5], [1, 1, 1], dict(shrinkAxisMask=2), (1, 5)),
])
@BACKENDS
def test_strided_slice(begin, end, strides, masks, out_shape, backend):
    model = op_model("STRIDED_SLICE", [_q((1, 6, 5), 0.05, -1), _const_i32(begin), _const_i32(end),
                                       _const_i32(strides)], [_q(out_shape, 0.05, -1)],
                     _options("StridedSliceOptionsT", **masks), "StridedSliceOptions")
    _assert_bit_exact(model, _codes((7, 6, 5), 10), backend=backend)


@BACKENDS
def test_pack(backend):
    model = op_model("PACK", [_q((1, 5), 0.03, 4), _q((1, 5), 0.03, 4)], [_q((1, 2, 5), 0.03, 4)],
                     _options("PackOptionsT", valuesCount=2, axis=1), "PackOptions")
    _assert_bit_exact(model, _codes((6, 5), 11), _codes((6, 5), 12), backend=backend)


@pytest.mark.parametrize("axis", [2, -1])
@BACKENDS
def test_mean_over_the_last_axis_with_keep_dims(axis, backend):
    model = op_model("MEAN", [_q((1, 50, 64), 0.0100521, 20), _const_i32([axis])], [_q((1, 50, 1), 0.000118785, 36)],
                     _options("ReducerOptionsT", keepDims=True), "ReducerOptions")
    _assert_bit_exact(model, _codes((4, 50, 64), 13), backend=backend)


@BACKENDS
def test_softmax_on_4d_attention_scores(backend):
    model = op_model("SOFTMAX", [_q((1, 4, 50, 50), 0.1047971, -13)], [_q((1, 4, 50, 50), 1 / 256, -128)],
                     _options("SoftmaxOptionsT", beta=1.0), "SoftmaxOptions")
    _assert_bit_exact(model, _codes((3, 4, 50, 50), 14), backend=backend)


def test_inv_sqrt_multiplier_approximates_the_reciprocal_square_root():
    x = np.concatenate([np.arange(2, 300), np.random.default_rng(0).integers(300, 2**31 - 1, 2000)])
    m, e = fixed_point.inv_sqrt_quantized_multiplier_exp(x)
    value = m.astype(np.float64) * np.exp2(e.astype(np.float64) - 31)
    np.testing.assert_allclose(value, 1 / np.sqrt(x.astype(np.float64)), rtol=2e-6)
    m1, e1 = fixed_point.inv_sqrt_quantized_multiplier_exp(np.array([0, 1]))
    assert m1.tolist() == [2**31 - 1] * 2 and e1.tolist() == [0, 0]


# --- a one-block transformer exported by aimet_tf ------------------------------------------------


@pytest.fixture(scope="module")
def transformer():
    return tflite_models.tiny_transformer(param_bw=8)


def test_exported_transformer_holds_every_new_operator(transformer):
    counts = IntegerExecutor(transformer[0], backend="numpy").graph.op_counts()
    assert {"BATCH_MATMUL", "TRANSPOSE", "MUL", "SUB", "RSQRT", "GELU", "BROADCAST_TO", "SHAPE", "STRIDED_SLICE",
            "PACK", "MEAN", "SOFTMAX"} <= set(counts), counts


def test_exported_transformer_is_bit_exact(transformer):
    model, shape = transformer
    x = np.random.default_rng(1).normal(0.0, 1.5, (20, *shape)).astype(np.float32)
    report = IntegerExecutor(model, backend="numpy").compare_with_litert(x)
    assert report.samples == 20 and len(report.layers) > 40
    assert report.bit_exact, report.to_text()


def test_exported_transformer_runs_bit_exact_on_the_cpp_backend(transformer):
    model, shape = transformer
    x = np.random.default_rng(2).normal(0.0, 1.5, (20, *shape)).astype(np.float32)
    executor = IntegerExecutor(model)
    assert executor.backend_name == "cpp"
    report = executor.compare_with_litert(x)
    assert report.bit_exact, report.to_text()
    np.testing.assert_array_equal(executor.run(x), executor.run(x, backend="numpy"))


def test_cpp_backend_names_an_operator_it_lacks(transformer, monkeypatch):
    from aimet_tf.kernels import executor as executor_module

    monkeypatch.setattr(executor_module, "NUMPY_ONLY_OPERATORS", ("BATCH_MATMUL",))
    with pytest.raises(UnsupportedOperatorError, match=r'BATCH_MATMUL.*backend="numpy"'):
        IntegerExecutor(transformer[0])
    numpy_executor = IntegerExecutor(transformer[0], backend="numpy")
    with pytest.raises(UnsupportedOperatorError, match="BATCH_MATMUL"):
        numpy_executor.run(np.zeros((1, *transformer[1]), np.float32), backend="cpp")


@pytest.mark.slow
def test_bundled_vit_export_is_bit_exact(tmp_path):
    import copy
    import json

    from aimet_tf import datasets
    from aimet_tf.export import TFLITE_CONFIG, export_tflite, prepare_model_for_tflite
    from aimet_tf.quantization import QuantizationSimModel

    with open(TFLITE_CONFIG) as f:
        config = copy.deepcopy(json.load(f))
    config["op_type"]["Gemm"] = {"per_channel_quantization": "False"}
    calibration, _ = datasets.load_fashion_mnist("calibration")
    images, _ = datasets.load_fashion_mnist("test")
    sim = QuantizationSimModel(prepare_model_for_tflite(datasets.load_bundled_vit()), quant_scheme="tf_enhanced",
                               default_param_bw=8, default_output_bw=8, config_file=config)
    sim.compute_encodings(calibration[:200], batch_size=100)
    path = export_tflite(sim, str(tmp_path / "vit.tflite"))
    for backend in ("numpy", "cpp"):
        report = IntegerExecutor(path, backend=backend).compare_with_litert(images[:20])
        assert report.samples == 20 and len(report.layers) > 300
        assert report.bit_exact, (backend, report.to_text())


@pytest.mark.parametrize("target", ["tflite_reference", "tflite_single_rounding", "fixed_point_dsp"])
def test_cpp_ops_match_the_golden_model_on_every_target(target):
    from aimet_tf.kernels import ops, requantize, resolve_target

    t = resolve_target(target)
    a, b = _codes((3, 4, 6, 5), 17), _codes((3, 1, 5, 7), 18)
    m, e = requantize.mul_parameters(0.41, 0.73, 0.0093, t)
    kwargs = dict(input1_zero_point=7, input2_zero_point=-11, output_zero_point=-3, multiplier=m, shift=e, target=t)
    x1, x2 = _codes((2, 4, 5), 19), _codes((2, 1, 5), 20)
    np.testing.assert_array_equal(ops.mul(x1, x2, **kwargs).numpy(), reference.mul(x1, x2, **kwargs))
    add = dict(requantize.add_parameters(0.037, 0.0012, 0.039, t), input1_zero_point=19, input2_zero_point=36,
               output_zero_point=-21, activation_min=-100, activation_max=120, target=t)
    np.testing.assert_array_equal(ops.sub(x1, x2, **add).numpy(), reference.sub(x1, x2, **add))
    np.testing.assert_array_equal(ops.add(x1, x2, **add).numpy(), reference.add(x1, x2, **add))
    mm, me = requantize.conv_multipliers(0.037, 0.021, 0.113, t)
    bmm = dict(lhs_zero_point=5, rhs_zero_point=-9, output_zero_point=3, multiplier=int(mm[0]), shift=int(me[0]),
               target=t)
    np.testing.assert_array_equal(ops.batch_matmul(a, b, **bmm).numpy(), reference.batch_matmul(a, b, **bmm))
    bt = np.ascontiguousarray(np.swapaxes(b, -1, -2))
    np.testing.assert_array_equal(ops.batch_matmul(a, bt, adj_y=True, **bmm).numpy(),
                                  reference.batch_matmul(a, b, **bmm))
