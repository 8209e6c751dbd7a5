"""LiteRT's optimized int8 SOFTMAX (what its "builtin" and "default" op resolvers run) is the
float-table kernel that `reference.softmax_float_table` models, not the fixed-point reference one."""

import numpy as np
import pytest

from aimet_tf.kernels import reference, requantize
from aimet_tf.kernels.litert import interpreter
from tests.kernels.test_transformer_ops import _options, _q
from tests.kernels.tflite_models import op_model


def _peaked_rows(shape, seed: int) -> np.ndarray:
    # Rows of different spreads: flat ones, and ones with a few dominant codes (large probabilities).
    rng = np.random.default_rng(seed)
    spread = rng.uniform(1, 60, shape[:-1] + (1,))
    return np.clip(np.round(rng.normal(0, 1, shape) * spread), -128, 127).astype(np.int8)


def _litert(model: bytes, kernels: str, x: np.ndarray) -> np.ndarray:
    it = interpreter(model, kernels)
    index = it.get_input_details()[0]["index"]
    it.resize_tensor_input(index, x.shape)
    it.allocate_tensors()
    it.set_tensor(index, x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@pytest.mark.parametrize("s_x, zero_point, shape, beta", [
    (0.1047971, -13, (20, 4, 50, 50), 1.0),
    (0.0123, -100, (20, 8, 197), 1.0),
    (0.25, 0, (200, 10), 0.5),
    (0.05, 7, (50, 4, 4), 2.0),
])
def test_float_table_softmax_is_litert_optimized_kernel(s_x, zero_point, shape, beta):
    model = op_model("SOFTMAX", [_q((1, *shape[1:]), s_x, zero_point)], [_q((1, *shape[1:]), 1 / 256, -128)],
                     _options("SoftmaxOptionsT", beta=beta), "SoftmaxOptions")
    x = _peaked_rows(shape, seed=int(s_x * 1e4))
    mine = reference.softmax_float_table(x, input_scale=s_x, beta=beta)
    for kernels in ("builtin", "default"):
        np.testing.assert_array_equal(_litert(model, kernels, x), mine, err_msg=kernels)


def test_float_table_and_fixed_point_softmax_differ_by_a_step_on_few_elements():
    x = _peaked_rows((20, 4, 50, 50), seed=1047)
    table = reference.softmax_float_table(x, input_scale=0.1047971).astype(int)
    fixed = requantize.softmax_levels(x, 0.1047971) - 128
    differ = table != fixed
    assert 0 < differ.mean() < 1e-3 and np.abs(table - fixed).max() == 1


def test_softmax_levels_are_offset_free_and_refuse_a_span_wider_than_int8():
    q = np.array([[3, 1, -2, 0]])
    for float_table in (False, True):
        np.testing.assert_array_equal(requantize.softmax_levels(q + 1000, 0.3, float_table=float_table),
                                      requantize.softmax_levels(q, 0.3, float_table=float_table))
    with pytest.raises(ValueError, match="at most 255 steps.*span of 300"):
        requantize.softmax_levels(np.array([[0, 300]]), 0.1)
