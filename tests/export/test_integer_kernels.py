"""The integer-kernel arithmetic the simulation models, pinned to hand-computed values.

Where these numbers come from: LiteRT 2.3 measured here (see aimet_tf/export/prepare.py):
int32 biases on s_in * s_w, XNNPACK's float requantization (ties to even), TFLite's fixed-point
multiplier with two roundings (int4 CONV_2D: second rounding ties up; TRANSPOSE_CONV and the
reference kernels: ties away from zero), and AVERAGE_POOL_2D rounding ties away from zero on
the raw int8 value.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aimet_tf.quantization import primitives as P
from aimet_tf.quantization.quantizers import BiasQuantizer, Quantizer, Requantizer


def _quantizer(min_val, max_val, bitwidth=8, symmetric=False, strict=False, shape=()):
    q = Quantizer(bitwidth=bitwidth, symmetric=symmetric, strict=strict,
                  channel_axis=-1 if shape else None)
    q.build(shape if shape else ())
    q.set_encoding(P.compute_encoding(np.asarray(min_val, np.float32),
                                      np.asarray(max_val, np.float32), bitwidth, symmetric, strict))
    return q


def test_quantize_bias_hand_values_and_straight_through_gradient():
    bias = tf.Variable([0.104, -0.25, 0.3, 7.0])
    scale = tf.constant([0.01, 0.1, 0.0, 2.0])
    with tf.GradientTape() as tape:
        out = P.quantize_bias(bias, scale)
    # 0.104 -> 10 * 0.01; -2.5 ties away -> -3 * 0.1; scale 0 passes through; 3.5 -> 4 * 2.
    np.testing.assert_allclose(out.numpy(), [0.10, -0.3, 0.3, 8.0], rtol=1e-6)
    np.testing.assert_array_equal(tape.gradient(out, bias).numpy(), [1, 1, 1, 1])


@pytest.mark.parametrize(
    "multiplier, fraction, shift",
    [(0.0425, 0.68, 4), (0.5, 0.5, 0), (0.25, 0.5, 1), (0.0027, 0.6912, 8)],
)
def test_quantized_multiplier(multiplier, fraction, shift):
    q, s = P.quantized_multiplier(tf.constant(multiplier, tf.float64))
    assert float(s) == shift
    assert float(q) == round(float(q))  # an int31
    np.testing.assert_allclose(float(q) / 2**31, fraction, rtol=1e-9)


def test_quantized_multiplier_above_one_is_a_single_rounding():
    q, s = P.quantized_multiplier(tf.constant(3.0))
    assert float(s) == 0.0
    np.testing.assert_allclose(float(q) / 2**31, 3.0)


def test_fixed_point_rounds_twice():
    # M = 0.0425 -> shift 4: the high multiply rounds to 1/16 of a level first.
    m = tf.constant(0.0425, tf.float64)
    acc = tf.constant([152.0, 294.0, -294.0, -295.0])  # acc * M = 6.46, 12.495, -12.495, -12.5375
    up = P.requantize_fixed_point(acc, m).numpy()
    away = P.requantize_fixed_point(acc, m, ties_away=True).numpy()
    # 12.495 * 16 = 199.92 -> 200 / 16 = 12.5 -> 13 (one rounding would give 12).
    np.testing.assert_array_equal(up, [6, 13, -12, -13])
    np.testing.assert_array_equal(away, [6, 13, -13, -13])
    single = np.round(acc.numpy() * 0.0425)
    assert not np.array_equal(single, up)


def test_float_requantization_ties_to_even():
    acc = tf.constant([5.0, 7.0, -5.0, 3.0])
    out = P.requantize_float(acc, tf.constant(0.5)).numpy()
    np.testing.assert_array_equal(out, [2, 4, -2, 2])


def test_average_pool_rounds_ties_away_from_zero_on_raw_int8():
    # Levels 0..255 are raw int8 values level - 128.
    levels = tf.constant([130.5, 125.5, 125.3, 125.7, 128.5, 127.5])
    out = P.round_average_pool(levels, 8).numpy()
    np.testing.assert_array_equal(out, [131, 125, 125, 126, 129, 127])


def test_bias_quantizer_derives_scale_from_linked_quantizers():
    q_in = _quantizer(-1.0, 1.55)          # scale 0.01
    q_w = _quantizer([-1.27, -0.254], [1.27, 0.254], symmetric=True, strict=True, shape=(3, 2))
    bias_q = BiasQuantizer()
    bias_q.build((2,))
    bias_q.link(q_in, q_w)
    s_w = q_w.get_encoding().scale
    expected_scale = q_in.get_encoding().scale * s_w
    out = bias_q(tf.constant([0.123456, -0.0123456])).numpy()
    np.testing.assert_allclose(out, np.round(np.array([0.123456, -0.0123456]) / expected_scale)
                               * expected_scale, rtol=1e-5)
    assert not np.allclose(out, [0.123456, -0.0123456], rtol=1e-7, atol=0)


def test_bias_quantizer_is_identity_without_a_grid_and_uses_snapshot_when_unlinked():
    q_in = Quantizer(bitwidth=8)
    q_in.build(())
    q_w = _quantizer(-1.0, 1.0, symmetric=True)
    bias_q = BiasQuantizer()
    bias_q.build((1,))
    bias_q.link(q_in, q_w)
    b = np.array([0.123456], np.float32)
    np.testing.assert_array_equal(bias_q(tf.constant(b)).numpy(), b)
    q_in.set_encoding(P.compute_encoding(-1.0, 1.0, 8, False))
    expected = bias_q(tf.constant(b)).numpy()
    assert not np.array_equal(expected, b)
    config = bias_q.get_config()          # refreshes the snapshot
    assert config["initialized"]
    reloaded = BiasQuantizer.from_config(config)
    reloaded.build((1,))
    reloaded.set_weights(bias_q.get_weights())
    np.testing.assert_array_equal(reloaded(tf.constant(b)).numpy(), expected)


def test_requantizer_float_mode_matches_integer_arithmetic():
    q_in, q_w, q_out = _quantizer(-1.0, 1.55), _quantizer(-0.5, 0.5, symmetric=True), _quantizer(-2, 3)
    rq = Requantizer(channels=1, mode="float")
    rq.build()
    rq.link(q_in, q_w, q_out)
    s_acc = q_in.get_encoding().scale * q_w.get_encoding().scale
    acc = np.arange(-3000, 3000, 7, dtype=np.float32).reshape(-1, 1)
    y = rq(tf.constant(acc * s_acc)).numpy()
    m = np.float32(np.float32(s_acc) / q_out.get_encoding().scale)
    expected = np.round(acc * m) * q_out.get_encoding().scale
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)


def test_requantizer_modes_validated():
    with pytest.raises(ValueError, match="requantization mode"):
        Requantizer(channels=1, mode="nearest")


def test_tied_quantizer_uses_and_reports_the_leader_encoding():
    leader = _quantizer(-1.0, 2.0)
    follower = _quantizer(-0.5, 0.5)
    follower.tie_to(leader)
    x = tf.constant([0.3, 1.7, -0.9])
    np.testing.assert_array_equal(follower(x).numpy(), leader(x).numpy())
    np.testing.assert_array_equal(follower.get_encoding().min, leader.get_encoding().min)
    config = follower.get_config()  # copies the leader's range into the follower's variables
    np.testing.assert_array_equal(follower.encoding_max.numpy(), leader.encoding_max.numpy())
    assert config["initialized"]
    follower.tie_to(None)
    np.testing.assert_array_equal(follower(x).numpy(), leader(x).numpy())


def test_tie_rejects_other_granularity():
    per_channel = _quantizer([-1, -1], [1, 1], symmetric=True, shape=(2, 2))
    per_tensor = _quantizer(-1.0, 1.0)
    with pytest.raises(ValueError, match="granularity"):
        per_tensor.tie_to(per_channel)


def test_keras_serialization_of_derived_quantizers():
    rq = Requantizer(channels=3, mode="fixed_point_ties_away", name="rq")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(rq))
    assert isinstance(clone, Requantizer) and clone.mode == "fixed_point_ties_away"
    assert clone.channels == 3
