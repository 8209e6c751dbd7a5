"""The C++ TF ops equal the numpy golden model exactly (property-based), and reject bad calls."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from aimet_tf.kernels import DspTarget, load_ops, ops, reference
from aimet_tf.kernels import fixed_point as fp

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None)
TARGETS = [
    DspTarget(),
    DspTarget(name="single", rounding="single"),
    DspTarget(name="wide", accumulator_bits=64, fully_connected_requantize="fixed_point"),
]
targets = st.sampled_from(TARGETS)


def _int8(rng, shape, lo=-128, hi=127):
    return rng.integers(lo, hi + 1, shape).astype(np.int8)


def _requant(rng, channels: int, target: DspTarget):
    """Per-channel multipliers: typical (1e-5..0.1) plus extremes (tiny, > 1, the largest shift)."""
    reals = rng.choice([1e-5, 3e-4, 0.004, 0.09, 0.7, 3.0, 2.0**-30, 2.0**29], size=channels)
    reals = reals * rng.uniform(0.5, 1.5, channels)
    pairs = [fp.quantize_multiplier(r, target) for r in reals]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]), reals


@st.composite
def conv_cases(draw, depthwise: bool):
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilations = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.sampled_from(["SAME", "VALID"]))
    h = draw(st.integers((kh - 1) * dilations[0] + 1, 9))
    w = draw(st.integers((kw - 1) * dilations[1] + 1, 9))
    c = draw(st.integers(1, 6))
    if depthwise:
        out_c = c * draw(st.integers(1, 3))
        filters = _int8(rng, (1, kh, kw, out_c), -127)
    else:
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if c % g == 0]))
        out_c = groups * draw(st.integers(1, 3))
        filters = _int8(rng, (out_c, kh, kw, c // groups), -127)
    x = _int8(rng, (draw(st.integers(1, 2)), h, w, c))
    bias = rng.integers(-(2**20), 2**20, out_c).astype(np.int32) if draw(st.booleans()) else None
    lo = draw(st.integers(-128, 0))
    return dict(x=x, filters=filters, bias=bias, strides=strides, dilations=dilations, padding=padding,
                input_zero_point=draw(st.integers(-128, 127)), output_zero_point=draw(st.integers(-128, 127)),
                activation_min=lo, activation_max=draw(st.integers(lo, 127)), rng=rng)


def _run_conv(kind, case, target, int4: bool):
    case = dict(case)
    rng = case.pop("rng")
    x, filters, bias = case.pop("x"), case.pop("filters"), case.pop("bias")
    if int4:
        filters = np.clip(filters, -8, 7).astype(np.int8)
    out_c = filters.shape[3] if kind == "depthwise_conv2d" else filters.shape[0]
    m, e, _ = _requant(rng, out_c, target)
    expected = getattr(reference, kind)(x, filters, bias, m, e, target=target, **case)
    if int4:
        got = getattr(ops, kind)(x, reference.pack_int4(filters), bias, m, e, weight_bits=4,
                                 filter_shape=filters.shape, target=target, **case)
    else:
        got = getattr(ops, kind)(x, filters, bias, m, e, target=target, **case)
    return got.numpy(), expected


@SETTINGS
@given(conv_cases(depthwise=False), targets, st.booleans())
def test_conv2d_matches_reference(case, target, int4):
    got, expected = _run_conv("conv2d", case, target, int4)
    np.testing.assert_array_equal(got, expected)


@SETTINGS
@given(conv_cases(depthwise=True), targets, st.booleans())
def test_depthwise_conv2d_matches_reference(case, target, int4):
    got, expected = _run_conv("depthwise_conv2d", case, target, int4)
    np.testing.assert_array_equal(got, expected)


@SETTINGS
@given(st.integers(0, 2**31), targets, st.booleans(), st.integers(1, 40), st.integers(1, 12))
def test_fully_connected_matches_reference(seed, target, int4, depth, out_c):
    rng = np.random.default_rng(seed)
    x = _int8(rng, (3, depth))
    weights = _int8(rng, (out_c, depth), -8 if int4 else -127, 7 if int4 else 127)
    bias = rng.integers(-(2**16), 2**16, out_c).astype(np.int32)
    per_channel = bool(rng.integers(2))
    m, e, reals = _requant(rng, out_c if per_channel else 1, target)
    kwargs = dict(input_zero_point=int(rng.integers(-128, 128)), output_zero_point=int(rng.integers(-128, 128)),
                  weight_zero_point=0 if int4 else int(rng.integers(-3, 4)), activation_min=-100, activation_max=120,
                  effective_scale=reals, target=target)
    expected = reference.fully_connected(x, weights, bias, m, e, **kwargs)
    if int4:
        got = ops.fully_connected(x, reference.pack_int4(weights), bias, m, e, weight_bits=4,
                                  filter_shape=weights.shape, **kwargs)
    else:
        got = ops.fully_connected(x, weights, bias, m, e, **kwargs)
    np.testing.assert_array_equal(got.numpy(), expected)


def _add_params(rng, s1, s2, so, target):
    twice_max = 2 * max(s1, s2)
    p1 = fp.quantize_multiplier_smaller_than_one(s1 / twice_max, target)
    p2 = fp.quantize_multiplier_smaller_than_one(s2 / twice_max, target)
    po = fp.quantize_multiplier_smaller_than_one(twice_max / ((1 << target.add_left_shift) * so), target)
    return dict(input1_multiplier=p1[0], input1_shift=p1[1], input2_multiplier=p2[0], input2_shift=p2[1],
                output_multiplier=po[0], output_shift=po[1], input1_zero_point=int(rng.integers(-128, 128)),
                input2_zero_point=int(rng.integers(-128, 128)), output_zero_point=int(rng.integers(-128, 128)))


@SETTINGS
@given(st.integers(0, 2**31), targets, st.sampled_from([((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (1, 3, 1)),
                                                       ((5,), ())]))
def test_add_matches_reference_with_broadcasting(seed, target, shapes):
    rng = np.random.default_rng(seed)
    s1, s2 = rng.uniform(0.001, 0.5, 2)
    so = rng.uniform(0.2, 3.0) * max(s1, s2)  # output ranges from narrower (saturating) to wider
    kwargs = _add_params(rng, s1, s2, so, target)
    x1, x2 = _int8(rng, shapes[0]), _int8(rng, shapes[1])
    expected = reference.add(x1, x2, target=target, activation_min=-120, **kwargs)
    got = ops.add(x1, x2, target=target, activation_min=-120, **kwargs).numpy()
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@SETTINGS
@given(st.integers(0, 2**31), st.sampled_from(["average_pool2d", "max_pool2d"]), st.sampled_from(["SAME", "VALID"]),
       st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3))
def test_pools_match_reference(seed, kind, padding, kh, kw, sh, sw):
    rng = np.random.default_rng(seed)
    x = _int8(rng, (2, int(rng.integers(kh, 9)), int(rng.integers(kw, 9)), 3))
    kwargs = dict(ksize=(kh, kw), strides=(sh, sw), padding=padding, activation_min=-100, activation_max=90)
    np.testing.assert_array_equal(getattr(ops, kind)(x, **kwargs).numpy(), getattr(reference, kind)(x, **kwargs))


@SETTINGS
@given(st.integers(0, 2**31), targets, st.floats(1e-3, 1e3))
def test_requantize_matches_reference(seed, target, ratio):
    rng = np.random.default_rng(seed)
    m, e = fp.quantize_multiplier(ratio, target)
    kwargs = dict(input_zero_point=int(rng.integers(-128, 128)), output_zero_point=int(rng.integers(-128, 128)),
                  multiplier=m, shift=e, target=target)
    x = _int8(rng, (4, 7))
    np.testing.assert_array_equal(ops.requantize(x, **kwargs).numpy(), reference.requantize(x, **kwargs))


def _softmax_params(input_scale: float, beta: float, target: DspTarget):
    max_real = 2.0**30 - 1 if target.rounding == "single" else 2.0**31 - 1
    m, shift = fp.quantize_multiplier_greater_than_one(min(beta * input_scale * 2.0**26, max_real), target)
    return dict(input_multiplier=m, input_left_shift=shift, diff_min=-int(np.floor(31 * 2.0**26 / 2**shift)))


@SETTINGS
@given(st.integers(0, 2**31), targets, st.floats(0.002, 2.0), st.integers(1, 40))
def test_softmax_matches_reference(seed, target, input_scale, depth):
    rng = np.random.default_rng(seed)
    x = _int8(rng, (3, depth))
    x[0] = x[0, :1]  # a constant row: every value at the maximum
    kwargs = dict(_softmax_params(input_scale, 1.0, target), target=target)
    np.testing.assert_array_equal(ops.softmax(x, **kwargs).numpy(), reference.softmax(x, **kwargs))


@SETTINGS
@given(st.integers(0, 2**31), targets, st.sampled_from([([1, 2], True), ([1, 2], False), ([2], True), ([-1], False),
                                                       ([1, 2, 3], False)]), st.floats(0.05, 20.0))
def test_mean_matches_reference(seed, target, axes_keep, ratio):
    rng = np.random.default_rng(seed)
    axes, keep = axes_keep
    m, e = fp.quantize_multiplier(ratio, target)
    kwargs = dict(axes=axes, keep_dims=keep, input_zero_point=int(rng.integers(-128, 128)),
                  output_zero_point=int(rng.integers(-128, 128)), multiplier=m, shift=e, target=target)
    x = _int8(rng, (2, int(rng.integers(1, 8)), int(rng.integers(1, 8)), 3))
    got, expected = ops.mean(x, **kwargs).numpy(), reference.mean(x, **kwargs)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@SETTINGS
@given(st.integers(0, 2**31), st.floats(1e-4, 10.0), st.integers(-128, 127))
def test_quantize_and_dequantize_match_reference(seed, scale, zero_point):
    rng = np.random.default_rng(seed)
    x = (rng.normal(0, 200 * scale, 64) + (rng.integers(-50, 50, 64) + 0.5) * scale * (rng.random(64) < 0.3))
    x = np.concatenate([x, [np.inf, -np.inf, 1e30, -1e30]]).astype(np.float32)  # saturation corners
    q = ops.quantize(x, scale=scale, zero_point=zero_point).numpy()
    np.testing.assert_array_equal(q, reference.quantize(x, scale=scale, zero_point=zero_point))
    np.testing.assert_array_equal(ops.dequantize(q, scale=scale, zero_point=zero_point).numpy(),
                                  reference.dequantize(q, scale=scale, zero_point=zero_point))


@pytest.mark.parametrize("bits, expected", [(32, "wrap"), (64, "saturate")])
def test_accumulator_overflow_corner(bits, expected):
    # 2 x 2 x 20000 taps of (-127) * (-128 - 127) overflow int32: the 32-bit accumulator wraps,
    # the 64-bit one saturates to 2^31 - 1 before requantization.
    target = DspTarget(accumulator_bits=bits)
    x = np.full((1, 2, 2, 20000), -128, np.int8)
    filters = np.full((1, 2, 2, 20000), -127, np.int8)
    kwargs = dict(input_zero_point=127, output_zero_point=0, padding="VALID", target=target)
    m, e = fp.quantize_multiplier(2.0**-24)
    got = ops.conv2d(x, filters, None, [m], [e], **kwargs).numpy()
    np.testing.assert_array_equal(got, reference.conv2d(x, filters, None, [m], [e], **kwargs))
    exact = 80000 * 127 * 255
    acc = fp.wrap_int32(exact) if expected == "wrap" else 2**31 - 1
    assert got.item() == np.clip(fp.round_half_away(acc * 2.0**-24), -128, 127)


def test_ops_reject_bad_arguments_in_python():
    x = np.zeros((1, 4, 4, 3), np.int8)
    with pytest.raises(ValueError, match="dtype int8"):
        ops.conv2d(x.astype(np.float32), np.zeros((2, 3, 3, 3), np.int8), None, [1 << 30], [0],
                   input_zero_point=0, output_zero_point=0)
    with pytest.raises(ValueError, match="do not match"):
        ops.conv2d(x, np.zeros((2, 3, 3, 2), np.int8), None, [1 << 30], [0], input_zero_point=0, output_zero_point=0)
    with pytest.raises(ValueError, match="length 1 or 2"):
        ops.conv2d(x, np.zeros((2, 3, 3, 3), np.int8), None, [1, 2, 3], [0, 0, 0], input_zero_point=0,
                   output_zero_point=0)
    with pytest.raises(ValueError, match="input_zero_point"):
        ops.conv2d(x, np.zeros((2, 3, 3, 3), np.int8), None, [1 << 30], [0], input_zero_point=300, output_zero_point=0)
    with pytest.raises(ValueError, match="exceeds the input size"):
        ops.max_pool2d(x, ksize=5, strides=1, padding="VALID")
    with pytest.raises(ValueError, match="packed int4 bytes"):
        ops.fully_connected(x, np.zeros(5, np.int8), None, [1 << 30], [0], input_zero_point=0, output_zero_point=0,
                            weight_bits=4, filter_shape=(4, 12), effective_scale=[0.1])
    with pytest.raises(ValueError, match="do not broadcast"):
        ops.add(np.zeros((2, 3), np.int8), np.zeros((4,), np.int8), input1_zero_point=0, input2_zero_point=0,
                output_zero_point=0, input1_multiplier=1 << 30, input1_shift=0, input2_multiplier=1 << 30,
                input2_shift=0, output_multiplier=1 << 30, output_shift=-1)


def test_raw_ops_check_shapes_with_op_requires():
    """Calling the generated op directly, past the Python checks, still fails cleanly (no crash)."""
    raw = load_ops()
    x = tf.zeros((1, 4, 4, 3), tf.int8)
    m, e = tf.constant([1 << 30], tf.int32), tf.constant([0], tf.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="do not match filter input channels"):
        raw.aimet_dsp_conv2d(x, tf.zeros((2, 3, 3, 2), tf.int8), tf.zeros([0], tf.int32), m, e, padding="SAME",
                             input_zero_point=0, output_zero_point=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Expected bias of shape"):
        raw.aimet_dsp_conv2d(x, tf.zeros((2, 3, 3, 3), tf.int8), tf.zeros([5], tf.int32), m, e, padding="SAME",
                             input_zero_point=0, output_zero_point=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="packed int4"):
        raw.aimet_dsp_fully_connected(x, tf.zeros([3], tf.int8), tf.zeros([0], tf.int32), m, e,
                                      tf.zeros([0], tf.float64), input_zero_point=0, output_zero_point=0, weight_bits=4,
                                      filter_shape=[2, 48])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="broadcast"):
        raw.aimet_dsp_add(tf.zeros((2, 3), tf.int8), tf.zeros((4,), tf.int8), input1_zero_point=0,
                          input2_zero_point=0, output_zero_point=0, input1_multiplier=1, input1_shift=0,
                          input2_multiplier=1, input2_shift=0, output_multiplier=1, output_shift=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="shift in"):
        raw.aimet_dsp_requantize(tf.zeros([3], tf.int8), input_zero_point=0, output_zero_point=0, multiplier=1,
                                 shift=40)


def test_ops_run_inside_tf_function():
    @tf.function(input_signature=[tf.TensorSpec([None, 6, 6, 2], tf.int8)])
    def block(x):
        y = ops.conv2d(x, np.ones((3, 3, 3, 2), np.int8), None, [1 << 30], [-3], input_zero_point=1,
                       output_zero_point=-2, padding="SAME")
        return ops.average_pool2d(y, ksize=2, strides=2, padding="VALID")

    x = np.random.default_rng(0).integers(-128, 128, (2, 6, 6, 2)).astype(np.int8)
    y = reference.conv2d(x, np.ones((3, 3, 3, 2), np.int8), None, [1 << 30], [-3], input_zero_point=1,
                         output_zero_point=-2, padding="SAME")
    np.testing.assert_array_equal(block(x).numpy(), reference.average_pool2d(y, ksize=2, strides=2, padding="VALID"))
    assert block.get_concrete_function().structured_outputs.shape.as_list() == [None, 3, 3, 3]
