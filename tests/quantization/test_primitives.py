"""Encoding maths pinned to hand-computed vectors (REFERENCE section 2) and to TF's fake-quant op."""

import numpy as np
import pytest
import tensorflow as tf

from aimet_tf.quantization import primitives as P


def test_asymmetric_encoding_hand_values():
    # min=-1, max=2, 8 bits: scale = 3/255, zero point = round(1/scale) = round(85.0) = 85.
    enc = P.compute_encoding(-1.0, 2.0, 8, symmetric=False)
    assert enc.offset == -85
    np.testing.assert_allclose(enc.scale, 3.0 / 255.0, rtol=1e-6)
    np.testing.assert_allclose(enc.min, -85 * 3.0 / 255.0, rtol=1e-6)
    np.testing.assert_allclose(enc.max, 170 * 3.0 / 255.0, rtol=1e-6)


def test_asymmetric_nudging_makes_zero_exact():
    # min=-0.3, max=1.0: scale = 1.3/255, -min/scale = 58.846 -> zero point 59, min nudged to
    # -59*scale = -0.30078.
    enc = P.compute_encoding(-0.3, 1.0, 8, symmetric=False)
    scale = 1.3 / 255.0
    assert enc.offset == -59
    np.testing.assert_allclose(enc.min, -59 * scale, rtol=1e-5)
    np.testing.assert_allclose(enc.max, 196 * scale, rtol=1e-5)
    y = P.fake_quantize(tf.constant([0.0, -0.0]), enc.min, enc.max, 8).numpy()
    assert np.all(y == 0.0)


def test_symmetric_offset_minus_128_and_strict_minus_127():
    enc = P.compute_encoding(-0.5, 1.27, 8, symmetric=True)
    assert enc.offset == -128
    np.testing.assert_allclose(enc.scale, 1.27 / 127, rtol=1e-6)
    np.testing.assert_allclose([enc.min, enc.max], [-128 * 0.01, 127 * 0.01], rtol=1e-5)
    strict = P.compute_encoding(-0.5, 1.27, 8, symmetric=True, strict=True)
    assert strict.offset == -127
    np.testing.assert_allclose([strict.min, strict.max], [-1.27, 1.27], rtol=1e-5)
    assert strict.steps == 254


def test_four_bit_symmetric_grid():
    # 4 bits: steps 15, scale = absmax/7, offset -8, grid [-8, 7] * scale.
    enc = P.compute_encoding(-0.7, 0.35, 4, symmetric=True)
    assert enc.offset == -8
    np.testing.assert_allclose(enc.scale, 0.1, rtol=1e-5)
    x = tf.constant([-1.0, -0.8, -0.74, -0.05, 0.04, 0.06, 0.71, 5.0])
    y = P.fake_quantize(x, enc.min, enc.max, 4).numpy()
    np.testing.assert_allclose(y, [-0.8, -0.8, -0.7, 0.0, 0.0, 0.1, 0.7, 0.7], atol=1e-6)


def test_unsigned_symmetric_for_non_negative_data():
    enc = P.compute_encoding(0.2, 2.55, 8, symmetric=True, unsigned_symmetric=True)
    assert enc.offset == 0
    np.testing.assert_allclose(enc.scale, 0.01, rtol=1e-5)
    signed = P.compute_encoding(0.2, 2.55, 8, symmetric=True, unsigned_symmetric=False)
    assert signed.offset == -128


def test_range_contains_zero_and_minimum_width():
    enc = P.compute_encoding(0.5, 0.5, 8, symmetric=False)
    assert enc.min == 0.0
    np.testing.assert_allclose(enc.max, 0.5, rtol=1e-5)
    const_zero = P.compute_encoding(0.0, 0.0, 8, symmetric=False)
    np.testing.assert_allclose(const_zero.max - const_zero.min, 0.01, rtol=1e-5)


def test_per_channel_encoding_independent_channels():
    mins = np.array([-1.0, -0.1, 0.0], np.float32)
    maxs = np.array([1.0, 0.1, 2.0], np.float32)
    enc = P.compute_encoding(mins, maxs, 8, symmetric=True)
    assert enc.min.shape == (3,)
    np.testing.assert_allclose(enc.scale, np.array([1.0, 0.1, 2.0]) / 127, rtol=1e-5)
    np.testing.assert_array_equal(enc.offset, [-128, -128, -128])


@pytest.mark.parametrize("bitwidth", [1, 0, 17, 33, 8.0, True, "8"])
def test_bad_bitwidth_rejected(bitwidth):
    with pytest.raises(ValueError, match="bitwidth"):
        P.compute_encoding(-1.0, 1.0, bitwidth, symmetric=False)


def test_nan_range_rejected():
    with pytest.raises(ValueError, match="finite"):
        P.compute_encoding(np.nan, 1.0, 8, symmetric=False)


@pytest.mark.parametrize("bitwidth", [2, 4, 8, 16])
@pytest.mark.parametrize("symmetric,strict", [(False, False), (True, False), (True, True)])
def test_pure_qdq_matches_tf_fake_quant(bitwidth, symmetric, strict):
    rng = np.random.default_rng(bitwidth)
    x = (rng.standard_t(3, size=4096) * 2).astype(np.float32)
    enc = P.compute_encoding(x.min() * 0.7, x.max() * 0.6, bitwidth, symmetric, strict)
    tf_op = P.fake_quantize(tf.constant(x), enc.min, enc.max, bitwidth, enc.strict).numpy()
    ours = P.quantize_dequantize(tf.constant(x), enc.min, enc.max, bitwidth, enc.strict).numpy()
    ours_np = P.dequantize(P.quantize(x, enc), enc)
    # Same integer levels; only the final float multiply-add may round differently (TF's kernel
    # may fuse it), far below one step.
    scale = float(enc.scale)
    np.testing.assert_array_equal(np.round((tf_op - enc.min) / scale), np.round((ours - enc.min) / scale))
    float_rounding = 4 * np.finfo(np.float32).eps * float(np.abs(tf_op).max())
    atol = scale * 1e-4 + float_rounding
    np.testing.assert_allclose(ours, tf_op, rtol=0, atol=atol)
    np.testing.assert_allclose(ours_np, tf_op, rtol=0, atol=atol)
    q = P.quantize(x, enc)
    assert q.min() >= 0 and q.max() <= enc.steps


@pytest.mark.parametrize("axes,shape", [((3,), (3, 3, 4, 5)), ((2, 3), (3, 3, 4, 2)), ((0,), (6, 4))])
def test_per_channel_any_axis_matches_per_channel_loop(axes, shape):
    rng = np.random.default_rng(0)
    w = rng.normal(size=shape).astype(np.float32)
    moved = np.moveaxis(w, axes, list(range(w.ndim - len(axes), w.ndim)))
    flat = moved.reshape(-1, int(np.prod([shape[a] for a in axes])))
    enc = P.compute_encoding(flat.min(0), flat.max(0), 4, symmetric=True)
    y = P.fake_quantize(tf.constant(w), enc.min, enc.max, 4, False, axes).numpy()
    y2 = P.quantize_dequantize(tf.constant(w), enc.min, enc.max, 4, False, axes).numpy()
    y_moved = np.moveaxis(y, axes, list(range(w.ndim - len(axes), w.ndim))).reshape(flat.shape)
    for c in range(flat.shape[1]):
        expect = P.fake_quantize(tf.constant(flat[:, c]), enc.min[c], enc.max[c], 4).numpy()
        np.testing.assert_array_equal(y_moved[:, c], expect)
    np.testing.assert_allclose(y2, y, atol=float(enc.scale.max()) * 1e-4)


def test_straight_through_gradient():
    enc = P.compute_encoding(-1.0, 1.0, 8, symmetric=False)
    x = tf.constant([-2.0, -0.5, 0.1, 0.9, 3.0])
    for fn in (P.fake_quantize, P.quantize_dequantize):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x, tf.constant(enc.min), tf.constant(enc.max), 8)
        g = tape.gradient(y, x).numpy()
        np.testing.assert_array_equal(g, [0.0, 1.0, 1.0, 1.0, 0.0])


def test_range_learning_gradients_follow_formula():
    # scale = 0.1 (min=-0.8, max=0.7 at 4 bits, steps 15, offset -8).
    enc = P.compute_encoding(-0.8, 0.7, 4, symmetric=False)
    mn = tf.Variable(enc.min)
    mx = tf.Variable(enc.max)
    scale = float(enc.scale)
    x = np.array([0.123, -0.456, 2.0, -3.0], np.float32)
    with tf.GradientTape() as tape:
        y = P.quantize_dequantize(tf.constant(x), mn, mx, 4)
        loss = tf.reduce_sum(y)
    gmin, gmax = tape.gradient(loss, [mn, mx])
    r = x / scale
    inside = (x >= enc.min) & (x <= enc.max)
    levels = np.clip(np.floor((np.clip(x, enc.min, enc.max) - enc.min) / scale + 0.5), 0, 15)
    ds = np.where(inside, np.round(r) - r, levels + enc.offset)
    np.testing.assert_allclose(gmax.numpy(), ds.sum() / 15, rtol=1e-4)
    np.testing.assert_allclose(gmin.numpy(), -ds.sum() / 15, rtol=1e-4)
    assert abs(gmax.numpy()) > 0.1  # the clipped values dominate: the range must be able to grow


def test_encoding_validates_range():
    with pytest.raises(ValueError, match="min <= 0 <= max"):
        P.Encoding(np.float32(0.5), np.float32(1.0), 8, False)
    with pytest.raises(ValueError, match="same shape"):
        P.Encoding(np.zeros(2, np.float32), np.ones(3, np.float32), 8, False)


def test_tight_symmetric_grid_is_sized_by_the_side_that_needs_it():
    # 4 bits, grid [-8, 7] * scale. Negative side wider: scale = 1/8, the -8 level reaches -1 exactly;
    # positive side wider: scale = 1/7, as the (-absmax, absmax) rule gives.
    enc = P.compute_encoding([-1.0, -0.5], [0.5, 1.0], 4, symmetric=True, tight=True)
    np.testing.assert_allclose(enc.scale, [1 / 8, 1 / 7], rtol=1e-6)
    np.testing.assert_array_equal(enc.offset, [-8, -8])
    np.testing.assert_allclose(enc.min, [-1.0, -8 / 7], rtol=1e-6)
    np.testing.assert_allclose(enc.max, [7 / 8, 1.0], rtol=1e-6)
    untight = P.compute_encoding([-1.0, -0.5], [0.5, 1.0], 4, symmetric=True)
    np.testing.assert_allclose(untight.scale, [1 / 7, 1 / 7], rtol=1e-6)
    # Strict (narrow range) grids are symmetric in their levels: tight changes nothing.
    strict = P.compute_encoding(-1.0, 0.5, 8, symmetric=True, strict=True, tight=True)
    np.testing.assert_allclose(strict.scale, 1 / 127, rtol=1e-6)


def test_tight_encoding_is_idempotent_and_keeps_tiny_ranges():
    enc = P.compute_encoding([-0.004, -0.3, 0.0], [0.003, 0.7, 0.0], 4, symmetric=True, tight=True)
    again = P.compute_encoding(enc.min, enc.max, 4, symmetric=True, tight=True)
    np.testing.assert_allclose(again.scale, enc.scale, rtol=1e-6)
    np.testing.assert_array_equal(again.offset, enc.offset)
    # A weight channel of absmax 0.004 (a layer fed raw 0..255 inputs) keeps its own scale 0.004/8;
    # AIMET's 0.01 minimum width would make it 0.006/7, 1.7x coarser. A zero range still gets 0.01.
    np.testing.assert_allclose(enc.scale[0], 0.004 / 8, rtol=1e-6)
    np.testing.assert_allclose(P.compute_encoding(-0.004, 0.003, 4, symmetric=True).scale, 0.006 / 7, rtol=1e-6)
    np.testing.assert_allclose(enc.max[2], 0.01, rtol=1e-6)
    # The grid covers the observed range without clipping.
    assert np.all(enc.min <= np.float32([-0.004, -0.3, 0.0])) and np.all(enc.max >= np.float32([0.003, 0.7, 0.0]))


def test_requantize_mean_follows_xnnpack_on_a_near_tie():
    """Measured on LiteRT (bundled model's MEAN): acc = 699 over 49 elements is 34.50003 output steps
    exactly, and XNNPACK outputs 34 (its float32 multiplier (s_in / s_out) * (1 / 49) and float32
    zero-point bias land just below the tie), where round(acc * s_in / (s_out * n)) gives 35."""
    s_in, s_out = np.float32(0.0235294122248888), np.float32(0.00972910039126873)
    min_in, min_out = np.float32(0.0), np.float32(0.0)  # zero points -128 on both grids
    level = P.requantize_mean(tf.constant([699.0, 700.0]), 49.0, s_in, s_out, min_in, min_out)
    naive = np.round(np.array([699.0, 700.0]) * float(s_in) / (float(s_out) * 49))
    assert list(np.asarray(level)) == [34.0, 35.0]
    assert list(naive) == [35.0, 35.0]  # the plain product would round the other way
