"""Tests of the range analyzers (aimet_tf/quantization/analyzers.py)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from aimet_tf.quantization import analyzers
from aimet_tf.quantization.analyzers import (
    MinMaxAnalyzer,
    PercentileAnalyzer,
    QuantScheme,
    RangeAnalyzer,
    SqnrAnalyzer,
    make_analyzer,
    parse_quant_scheme,
)

ANALYZER_FACTORIES = {
    "minmax": MinMaxAnalyzer,
    "sqnr": SqnrAnalyzer,
    "percentile": lambda channel_axis=None: PercentileAnalyzer(channel_axis, percentile=99.0),
}


def _grid(min_val, max_val, bitwidth: int, symmetric: bool, strict: bool = False,
          tight: bool = False) -> tuple[float, float, int]:
    """(scale, offset, steps) of AIMET's encoding for a range (REFERENCE section 2); ``tight``: the
    symmetric scale is max(max / floor(steps / 2), -min / ceil(steps / 2)), no minimum width."""
    mn, mx = float(min_val), float(max_val)
    non_negative = mn >= 0
    mn, mx = min(mn, 0.0), max(mx, 0.0)
    mx = max(mx, mn + 0.01) if not (tight and symmetric) or mx == mn else mx
    steps = 2**bitwidth - 1 - int(strict and symmetric)
    if symmetric and non_negative:
        return mx / steps, 0.0, steps
    if symmetric and tight:
        return max(mx / (steps // 2), -mn / math.ceil(steps / 2)), -math.ceil(steps / 2), steps
    if symmetric:
        return max(-mn, mx) / (steps // 2), -math.ceil(steps / 2), steps
    scale = (mx - mn) / steps
    return scale, -round(-mn / scale), steps


def _qdq(x: np.ndarray, min_val, max_val, bitwidth: int, symmetric: bool, strict: bool = False,
         tight: bool = False) -> np.ndarray:
    """Reference quantize-dequantize: q = clamp(round(x / scale) - offset, 0, steps)."""
    scale, offset, steps = _grid(min_val, max_val, bitwidth, symmetric, strict, tight)
    q = np.clip(np.round(x / scale) - offset, 0, steps)
    return scale * (q + offset)


def _channel_slices(x: np.ndarray, channel_axis) -> list[np.ndarray]:
    """Channel slices in the documented order, by explicit indexing (independent of moveaxis)."""
    if channel_axis in (-1, 3):
        return [x[..., c] for c in range(x.shape[3])]
    if channel_axis == 0:
        return [x[c] for c in range(x.shape[0])]
    if channel_axis in ((2, 3), (3, 2), (-2, -1)):
        return [x[:, :, i, m] for i in range(x.shape[2]) for m in range(x.shape[3])]
    raise AssertionError(channel_axis)


# ----------------------------------------------------------------------------------------------
# Schemes


@pytest.mark.parametrize(
    "value, expected",
    [(s, s) for s in QuantScheme]
    + [(s.value, s) for s in QuantScheme]
    + [(s.name, s) for s in QuantScheme]
    + [(" TF_Enhanced ", QuantScheme.post_training_tf_enhanced)],
)
def test_parse_quant_scheme_accepts_members_values_and_names(value, expected):
    assert parse_quant_scheme(value) is expected


@pytest.mark.parametrize("junk", ["tf-enhanced", "", "minmax", "post_training"])
def test_parse_quant_scheme_rejects_junk_listing_accepted_values(junk):
    with pytest.raises(ValueError) as info:
        parse_quant_scheme(junk)
    message = str(info.value)
    assert repr(junk) in message
    for scheme in QuantScheme:
        assert repr(scheme.value) in message and scheme.name in message


@pytest.mark.parametrize("junk", [3, None, 1.5])
def test_parse_quant_scheme_rejects_non_strings(junk):
    with pytest.raises(TypeError, match="tf_enhanced"):
        parse_quant_scheme(junk)


@pytest.mark.parametrize(
    "scheme, is_range_learning, init_scheme",
    [
        (QuantScheme.post_training_tf, False, QuantScheme.post_training_tf),
        (QuantScheme.post_training_tf_enhanced, False, QuantScheme.post_training_tf_enhanced),
        (QuantScheme.post_training_percentile, False, QuantScheme.post_training_percentile),
        (QuantScheme.training_range_learning_with_tf_init, True, QuantScheme.post_training_tf),
        (
            QuantScheme.training_range_learning_with_tf_enhanced_init,
            True,
            QuantScheme.post_training_tf_enhanced,
        ),
    ],
)
def test_scheme_properties(scheme, is_range_learning, init_scheme):
    assert scheme.is_range_learning is is_range_learning
    assert scheme.init_scheme is init_scheme


@pytest.mark.parametrize(
    "scheme, cls",
    [
        ("tf", MinMaxAnalyzer),
        ("tf_enhanced", SqnrAnalyzer),
        ("percentile", PercentileAnalyzer),
        ("tf_range_learning", MinMaxAnalyzer),
        (QuantScheme.training_range_learning_with_tf_enhanced_init, SqnrAnalyzer),
    ],
)
def test_make_analyzer_picks_the_scheme_analyzer(scheme, cls):
    analyzer = make_analyzer(scheme, channel_axis=[2, 3])
    assert type(analyzer) is cls
    assert analyzer.channel_axis == (2, 3)


def test_make_analyzer_passes_options_and_rejects_unknown_ones():
    analyzer = make_analyzer("percentile", percentile=99.9, num_bins=64)
    assert analyzer.percentile == 99.9 and analyzer.num_bins == 64
    assert make_analyzer("tf_enhanced", gamma=1.5).gamma == 1.5
    with pytest.raises(TypeError, match="percentile"):
        make_analyzer("tf", percentile=99.9)


# ----------------------------------------------------------------------------------------------
# Min/max


@pytest.mark.parametrize(
    "data, symmetric, unsigned_symmetric, expected",
    [
        ([[-1.5, 2.0], [0.25, 3.0]], False, True, (-1.5, 3.0)),
        ([[-1.5, 2.0], [0.25, 3.0]], True, True, (-3.0, 3.0)),
        ([-4.0, 1.0], True, True, (-4.0, 4.0)),
        ([0.5, 2.0, 1.0], False, True, (0.5, 2.0)),
        ([0.5, 2.0, 1.0], True, True, (0.0, 2.0)),
        ([0.5, 2.0, 1.0], True, False, (-2.0, 2.0)),
        ([7.0], False, True, (7.0, 7.0)),
    ],
)
def test_minmax_hand_values(data, symmetric, unsigned_symmetric, expected):
    analyzer = MinMaxAnalyzer()
    analyzer.observe(np.asarray(data, dtype=np.float32))
    min_val, max_val = analyzer.compute_range(8, symmetric, unsigned_symmetric=unsigned_symmetric)
    assert min_val.dtype == np.float32 and max_val.dtype == np.float32
    assert min_val.shape == () and max_val.shape == ()
    assert (float(min_val), float(max_val)) == expected


@pytest.mark.parametrize("channel_axis", [-1, (2, 3)])
def test_minmax_accumulation_equals_one_big_batch_exactly(channel_axis):
    rng = np.random.default_rng(0)
    batches = [rng.standard_t(3, size=(2 + i, 3, 4, 5)).astype(np.float32) * (1 + i) for i in range(5)]
    many = MinMaxAnalyzer(channel_axis)
    for batch in batches:
        many.observe(batch)
    one = MinMaxAnalyzer(channel_axis)
    one.observe(np.concatenate(batches, axis=0))
    assert many.num_batches == 5 and one.num_batches == 1
    for symmetric in (False, True):
        np.testing.assert_array_equal(many.compute_range(8, symmetric), one.compute_range(8, symmetric))


# ----------------------------------------------------------------------------------------------
# Per-channel statistics (all analyzers)


@pytest.mark.parametrize("name", list(ANALYZER_FACTORIES))
@pytest.mark.parametrize("channel_axis", [-1, 0, (2, 3), (3, 2), (-2, -1)])
def test_per_channel_equals_per_tensor_on_each_channel(name, channel_axis):
    factory = ANALYZER_FACTORIES[name]
    rng = np.random.default_rng(1)
    # The second batch is wider, so the histograms grow and re-bin.
    batches = [rng.laplace(size=(3, 4, 5, 6)), 2.5 * rng.laplace(size=(3, 4, 5, 6)) + 0.3]
    per_channel = factory(channel_axis=channel_axis)
    for batch in batches:
        per_channel.observe(batch)
    num_channels = len(_channel_slices(batches[0], channel_axis))
    assert per_channel.num_channels == num_channels
    for symmetric in (False, True):
        min_val, max_val = per_channel.compute_range(4, symmetric, unsigned_symmetric=False)
        assert min_val.shape == (num_channels,) and max_val.dtype == np.float32
        for c in range(num_channels):
            reference = factory()
            for batch in batches:
                reference.observe(_channel_slices(batch, channel_axis)[c])
            ref_min, ref_max = reference.compute_range(4, symmetric, unsigned_symmetric=False)
            np.testing.assert_allclose([min_val[c], max_val[c]], [ref_min, ref_max], rtol=1e-5)
        if name == "minmax" and not symmetric:
            expected_min = [s.min() for s in _channel_slices(np.minimum(*batches), channel_axis)]
            np.testing.assert_array_equal(min_val, np.float32(expected_min))


def test_depthwise_kernel_channels_are_in_times_mult():
    kernel = np.zeros((3, 3, 4, 2), dtype=np.float32)
    kernel[1, 1, 2, 1] = -5.0  # input channel 2, multiplier 1 -> channel 2 * 2 + 1 = 5
    analyzer = MinMaxAnalyzer(channel_axis=(2, 3))
    analyzer.observe(kernel)
    min_val, _ = analyzer.compute_range(8, symmetric=False)
    assert min_val.shape == (8,)
    assert np.flatnonzero(min_val) == [5] and min_val[5] == -5.0


# ----------------------------------------------------------------------------------------------
# Histogram analyzers


def test_rebin_spreads_each_bin_proportionally():
    def rebin(counts, old, new):
        return analyzers._rebin(np.array([counts], dtype=np.float64), *(np.array([v]) for v in old + new))

    # Old bins [0, 1): 4 and [1, 2): 8.
    np.testing.assert_allclose(rebin([4, 8], (0.0, 2.0), (-1.0, 3.0)), [[4, 8]])
    np.testing.assert_allclose(rebin([4, 8], (0.0, 2.0), (-2.0, 2.0)), [[0, 12]])
    # Old bins of width 0.5 over [0, 2); new edges 0, 0.75, 1.5, 2.25, 3.
    np.testing.assert_allclose(rebin([2, 2, 4, 4], (0.0, 2.0), (0.0, 3.0)), [[3, 5, 4, 0]])


@pytest.mark.parametrize(
    "factory, tolerance",
    [
        (lambda: SqnrAnalyzer(), 2e-3),
        (lambda: PercentileAnalyzer(percentile=99.0), 2e-3),
        (lambda: PercentileAnalyzer(percentile=99.9), 2e-3),
    ],
)
@pytest.mark.parametrize("bitwidth, symmetric", [(8, False), (8, True), (4, False), (4, True)])
def test_histogram_accumulation_is_close_to_one_big_batch(factory, tolerance, bitwidth, symmetric):
    rng = np.random.default_rng(2)
    # Growing scales force several re-binnings of the accumulated histogram.
    batches = [rng.standard_t(4, size=4000) * (1.0 + 0.5 * i) for i in range(8)]
    many = factory()
    for batch in batches:
        many.observe(batch)
    one = factory()
    big = np.concatenate(batches)
    one.observe(big)
    span = big.max() - big.min()
    diff = np.subtract(many.compute_range(bitwidth, symmetric), one.compute_range(bitwidth, symmetric))
    assert np.max(np.abs(diff)) <= tolerance * span


@pytest.mark.parametrize("distribution", ["laplace", "student_t"])
@pytest.mark.parametrize("bitwidth, max_ratio", [(8, 0.93), (4, 0.5)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_sqnr_beats_minmax_on_heavy_tailed_data(distribution, bitwidth, max_ratio, symmetric):
    rng = np.random.default_rng(3)
    if distribution == "laplace":
        x = rng.laplace(size=100_000)
    else:
        x = rng.standard_t(3, size=100_000)
    mse = {}
    for cls in (MinMaxAnalyzer, SqnrAnalyzer):
        analyzer = cls()
        for batch in np.split(x, 10):
            analyzer.observe(batch.astype(np.float32))
        min_val, max_val = analyzer.compute_range(bitwidth, symmetric)
        mse[cls] = np.mean((_qdq(x, min_val, max_val, bitwidth, symmetric) - x) ** 2)
    assert mse[SqnrAnalyzer] < max_ratio * mse[MinMaxAnalyzer]


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("low, high", [(-1.0, 2.0), (5.0, 6.0), (-6.0, -5.0)])
def test_sqnr_range_of_uniform_data_is_close_to_min_max(symmetric, low, high):
    rng = np.random.default_rng(4)
    x = rng.uniform(low, high, size=50_000)
    sqnr, minmax = SqnrAnalyzer(), MinMaxAnalyzer()
    sqnr.observe(x)
    minmax.observe(x)

    def contain_zero(min_val, max_val):
        # SQNR returns its grid (which holds 0); min/max returns the raw range.
        return min(float(min_val), 0.0), max(float(max_val), 0.0)

    np.testing.assert_allclose(
        contain_zero(*sqnr.compute_range(8, symmetric)),
        contain_zero(*minmax.compute_range(8, symmetric)),
        rtol=0.015,
    )


@pytest.mark.parametrize("bitwidth", [2, 4, 8, 16])
@pytest.mark.parametrize("strict", [False, True])
def test_sqnr_range_encodes_its_grid(bitwidth, strict):
    rng = np.random.default_rng(5)
    x = rng.normal(0.7, 1.0, size=(2000, 3)) * [1.0, 0.1, 10.0]
    analyzer = SqnrAnalyzer(channel_axis=-1)
    analyzer.observe(x)
    steps = 2**bitwidth - 1
    min_val, max_val = (v.astype(np.float64) for v in analyzer.compute_range(bitwidth, symmetric=False))
    scale = (max_val - min_val) / steps
    zero_point = -min_val / scale
    np.testing.assert_allclose(zero_point, np.round(zero_point), atol=2e-3 * max(1, steps / 255))
    assert np.all((zero_point > -0.5) & (zero_point < steps + 0.5))
    min_val, max_val = analyzer.compute_range(bitwidth, symmetric=True, strict=strict)
    np.testing.assert_array_equal(min_val, -max_val)
    assert np.all(max_val > 0)


def test_sqnr_unsigned_symmetric_range_starts_at_zero():
    rng = np.random.default_rng(6)
    x = np.maximum(rng.normal(size=(5000, 4)), 0.0)
    analyzer = SqnrAnalyzer(channel_axis=-1)
    analyzer.observe(x)
    min_val, max_val = analyzer.compute_range(4, symmetric=True)
    np.testing.assert_array_equal(min_val, 0.0)
    assert np.all((max_val > 0.5 * x.max(axis=0)) & (max_val <= x.max(axis=0) * 1.011))
    signed_min, _ = analyzer.compute_range(4, symmetric=True, unsigned_symmetric=False)
    assert np.all(signed_min < 0)


@pytest.mark.parametrize("bitwidth", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_sqnr_exact_zeros_are_free(bitwidth, symmetric):
    # ReLU outputs: the exact zeros sit on every candidate grid, so piling up more of them must not
    # pull the range in (it would if they were charged rounding noise).
    rng = np.random.default_rng(7)
    x = np.maximum(rng.normal(size=20_000), 0.0)
    plain, padded = SqnrAnalyzer(), SqnrAnalyzer()
    plain.observe(x)
    padded.observe(x)
    padded.observe(np.zeros(60_000))
    np.testing.assert_allclose(
        padded.compute_range(bitwidth, symmetric), plain.compute_range(bitwidth, symmetric), rtol=1e-6
    )


@pytest.mark.parametrize("percentile", [90.0, 99.0, 99.9])
def test_percentile_clips_the_expected_fraction(percentile):
    rng = np.random.default_rng(8)
    x = rng.normal(1.0, 2.0, size=200_000)
    analyzer = PercentileAnalyzer(percentile=percentile)
    for batch in np.split(x, 4):
        analyzer.observe(batch)
    min_val, max_val = analyzer.compute_range(8, symmetric=False)
    tail = (100.0 - percentile) / 100.0
    np.testing.assert_allclose(np.mean(x < min_val), tail, rtol=0.05)
    np.testing.assert_allclose(np.mean(x > max_val), tail, rtol=0.05)
    sym_min, sym_max = analyzer.compute_range(8, symmetric=True)
    assert sym_min == -sym_max == -max(abs(min_val), abs(max_val))


def test_percentile_100_is_exact_min_max():
    rng = np.random.default_rng(9)
    batches = [rng.normal(size=(100, 3)) * s for s in (1.0, 3.0)]
    analyzer = PercentileAnalyzer(channel_axis=1, percentile=100)
    for batch in batches:
        analyzer.observe(batch)
    min_val, max_val = analyzer.compute_range(8, symmetric=False)
    both = np.concatenate(batches)
    np.testing.assert_array_equal(min_val, both.min(axis=0).astype(np.float32))
    np.testing.assert_array_equal(max_val, both.max(axis=0).astype(np.float32))


@pytest.mark.parametrize("name", list(ANALYZER_FACTORIES))
@pytest.mark.parametrize("value", [0.0, 5.0, -0.25])
def test_constant_data_gives_a_finite_range_containing_the_value(name, value):
    analyzer = ANALYZER_FACTORIES[name]()
    analyzer.observe(np.full((4, 4), value))
    for symmetric in (False, True):
        min_val, max_val = analyzer.compute_range(8, symmetric)
        assert np.isfinite(min_val) and np.isfinite(max_val)
        scale = _grid(min_val, max_val, 8, symmetric)[0]
        # Represented within rounding, not clipped.
        assert abs(_qdq(np.float64(value), min_val, max_val, 8, symmetric) - value) <= 0.5 * scale + 1e-7


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int32, ml_dtypes.bfloat16])
def test_observe_accepts_numeric_dtypes(dtype):
    data = np.array([[-3.0, 1.0], [2.0, 4.0]])
    analyzer = MinMaxAnalyzer(channel_axis=0)
    analyzer.observe(data.astype(dtype))
    min_val, max_val = analyzer.compute_range(8, symmetric=False)
    np.testing.assert_array_equal(min_val, [-3.0, 2.0])
    np.testing.assert_array_equal(max_val, [1.0, 4.0])


# ----------------------------------------------------------------------------------------------
# Errors


def _bad_batches():
    nan = np.ones((4, 3), dtype=np.float32)
    nan[1, 2] = np.nan
    inf = np.ones((4, 3), dtype=np.float32)
    inf[0, 0] = -np.inf
    return [
        ("nan", nan, "1 NaN and 0 Inf"),
        ("inf", inf, "0 NaN and 1 Inf"),
        ("empty", np.zeros((0, 3), dtype=np.float32), "at least one element"),
        ("channels", np.ones((4, 5), dtype=np.float32), "Expected 3 channels"),
    ]


@pytest.mark.parametrize("name", list(ANALYZER_FACTORIES))
@pytest.mark.parametrize("case, batch, message", _bad_batches(), ids=[c[0] for c in _bad_batches()])
def test_bad_batch_raises_and_records_nothing(name, case, batch, message):
    analyzer = ANALYZER_FACTORIES[name](channel_axis=-1)
    analyzer.observe(np.random.default_rng(10).normal(size=(16, 3)))
    before = [analyzer.compute_range(4, s) for s in (False, True)]
    with pytest.raises(ValueError, match=message):
        analyzer.observe(batch)
    assert analyzer.num_batches == 1
    after = [analyzer.compute_range(4, s) for s in (False, True)]
    np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("name", list(ANALYZER_FACTORIES))
def test_first_bad_batch_leaves_the_analyzer_empty(name):
    analyzer = ANALYZER_FACTORIES[name]()
    with pytest.raises(ValueError, match="NaN"):
        analyzer.observe(np.array([1.0, np.nan]))
    assert analyzer.num_batches == 0
    with pytest.raises(RuntimeError, match="observe"):
        analyzer.compute_range(8, symmetric=False)


@pytest.mark.parametrize("batch", [np.array(["a", "b"]), np.array([1 + 2j]), np.array([True, False])])
def test_non_numeric_batch_is_a_type_error(batch):
    with pytest.raises(TypeError, match="numeric"):
        MinMaxAnalyzer().observe(batch)


@pytest.mark.parametrize("name", list(ANALYZER_FACTORIES))
@pytest.mark.parametrize("bitwidth", [1, 17, 0, 8.0, True, "8"])
def test_bad_bitwidth(name, bitwidth):
    analyzer = ANALYZER_FACTORIES[name]()
    analyzer.observe(np.arange(5.0))
    with pytest.raises(ValueError, match="bitwidth"):
        analyzer.compute_range(bitwidth, symmetric=False)


@pytest.mark.parametrize("percentile", [89.9, 100.5, float("nan"), True, "99"])
def test_bad_percentile(percentile):
    with pytest.raises(ValueError, match=r"percentile in \[90, 100\]"):
        PercentileAnalyzer(percentile=percentile)


@pytest.mark.parametrize(
    "kwargs", [{"gamma": 0.0}, {"gamma": float("inf")}, {"num_bins": 1}, {"num_bins": 64.0}]
)
def test_bad_sqnr_options(kwargs):
    with pytest.raises(ValueError, match="gamma|num_bins"):
        SqnrAnalyzer(**kwargs)


@pytest.mark.parametrize("name", list(ANALYZER_FACTORIES))
def test_no_data_and_reset(name):
    analyzer = ANALYZER_FACTORIES[name](channel_axis=0)
    with pytest.raises(RuntimeError, match=r"call observe\(\) / compute_encodings"):
        analyzer.compute_range(8, symmetric=True)
    analyzer.observe(np.ones((2, 3)))
    analyzer.observe(np.ones((2, 7)))
    assert analyzer.num_batches == 2
    analyzer.reset()
    assert analyzer.num_batches == 0 and analyzer.num_channels is None
    with pytest.raises(RuntimeError):
        analyzer.compute_range(8, symmetric=True)
    analyzer.observe(np.ones((5, 3)))  # a new channel count is fine after reset
    assert analyzer.compute_range(8, symmetric=False)[0].shape == (5,)


@pytest.mark.parametrize(
    "channel_axis, error",
    [(1.5, TypeError), ("x", TypeError), ((), ValueError), ((1, 1), ValueError), (True, TypeError)],
)
def test_bad_channel_axis_at_construction(channel_axis, error):
    with pytest.raises(error, match="channel_axis"):
        MinMaxAnalyzer(channel_axis)


@pytest.mark.parametrize("channel_axis", [2, -3, (0, -2)])
def test_channel_axis_out_of_range_or_repeated_for_the_batch(channel_axis):
    analyzer = SqnrAnalyzer(channel_axis)
    with pytest.raises(ValueError, match="channel axes"):
        analyzer.observe(np.ones((2, 3)))
    assert analyzer.num_batches == 0


def test_every_analyzer_is_a_range_analyzer():
    for factory in ANALYZER_FACTORIES.values():
        assert isinstance(factory(), RangeAnalyzer)


# ----------------------------------------------------------------------------------------------
# MSE (exact values) and the per-tensor-kind "auto" scheme


def _exact_mse(x: np.ndarray, lo, hi, bitwidth: int, symmetric: bool, tight: bool = False) -> float:
    return float(np.mean((_qdq(x, lo, hi, bitwidth, symmetric, tight=tight) - x) ** 2))


@pytest.mark.parametrize("bitwidth", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("distribution", ["normal", "laplace", "uniform", "outlier"])
def test_mse_never_loses_to_minmax_on_the_observed_values(bitwidth, symmetric, distribution):
    rng = np.random.default_rng(bitwidth * 7 + symmetric)
    x = {
        "normal": lambda: rng.normal(0.1, 1.0, (64, 3)),
        "laplace": lambda: rng.laplace(0.0, 0.5, (64, 3)),
        "uniform": lambda: rng.uniform(-0.2, 1.0, (64, 3)),
        "outlier": lambda: np.concatenate([rng.normal(0, 0.05, (4095, 3)), np.full((1, 3), 2.0)]),
    }[distribution]().astype(np.float32)
    mse, minmax = analyzers.MseAnalyzer(channel_axis=-1), MinMaxAnalyzer(channel_axis=-1)
    mse.observe(x)
    minmax.observe(x)
    mse_lo, mse_hi = mse.compute_range(bitwidth, symmetric, unsigned_symmetric=False)
    mm_lo, mm_hi = minmax.compute_range(bitwidth, symmetric, unsigned_symmetric=False)
    for c in range(3):
        chosen = _exact_mse(x[:, c], mse_lo[c], mse_hi[c], bitwidth, symmetric, tight=True)
        reference = _exact_mse(x[:, c], mm_lo[c], mm_hi[c], bitwidth, symmetric)
        assert chosen <= reference * (1 + 1e-6) + 1e-12
    if distribution == "outlier" and bitwidth == 4:
        # One far value among many small ones: clipping it is much better at 4 bits.
        assert np.all(mse_hi < mm_hi)


def test_mse_chooses_the_exhaustive_best_among_its_symmetric_candidates():
    rng = np.random.default_rng(3)
    x = rng.standard_t(3, 500).astype(np.float32)
    analyzer = analyzers.MseAnalyzer()
    analyzer.observe(x)
    lo, hi = analyzer.compute_range(4, symmetric=True, unsigned_symmetric=False)
    absmax = float(np.max(np.abs(x)))
    errors = {f: _exact_mse(x, -f * absmax, f * absmax, 4, True) for f in np.arange(80, 0, -1) / 80}
    best = min(errors.values())
    assert _exact_mse(x, lo, hi, 4, True, tight=True) <= best * (1 + 1e-5)
    assert float(hi) < absmax  # heavy tails: the search clips


def test_mse_refuses_more_values_than_it_may_keep():
    analyzer = analyzers.MseAnalyzer(max_values=100)
    analyzer.observe(np.zeros(60, np.float32))
    with pytest.raises(ValueError, match="at most 100.*activations use 'tf_enhanced'"):
        analyzer.observe(np.zeros(60, np.float32))
    assert analyzer.num_batches == 1


def test_auto_scheme_resolves_per_tensor_kind_and_cannot_build_one_analyzer():
    auto = parse_quant_scheme("auto")
    assert auto.for_parameters is QuantScheme.post_training_output_mse
    assert auto.for_activations is QuantScheme.post_training_tf_enhanced
    learning = parse_quant_scheme("auto_range_learning")
    assert learning.is_range_learning and learning.init_scheme is auto
    assert learning.for_parameters is QuantScheme.training_range_learning_with_output_mse_init
    assert learning.for_parameters.init_scheme is QuantScheme.post_training_output_mse
    assert learning.for_activations is QuantScheme.training_range_learning_with_tf_enhanced_init
    assert QuantScheme.post_training_tf.for_parameters is QuantScheme.post_training_tf
    assert type(make_analyzer("mse_range_learning")) is analyzers.MseAnalyzer
    with pytest.raises(ValueError, match="per tensor kind"):
        make_analyzer("auto")


def test_mse_scheme_quantizers_use_tight_grids_and_aimet_schemes_do_not():
    from aimet_tf.quantization import Quantizer

    for scheme, tight in [("mse", True), ("output_mse", True), ("output_mse_range_learning", True),
                          ("tf", False), ("tf_enhanced", False), ("tf_range_learning", False)]:
        assert Quantizer(4, symmetric=True, quant_scheme=scheme).tight is tight, scheme
    assert not Quantizer(8, symmetric=False, quant_scheme="mse").tight  # only symmetric grids
    # A channel whose largest magnitude is negative: the mse scheme finds a grid at least as good as
    # the tight min/max grid (scale 1/8 here), which the (-absmax, absmax) rule cannot express.
    x = np.array([-1.0, -0.6, -0.25, 0.0, 0.3, 0.5], np.float32)
    analyzer = analyzers.MseAnalyzer()
    analyzer.observe(x)
    lo, hi = analyzer.compute_range(4, symmetric=True, unsigned_symmetric=False)
    assert _grid(-1.0, 0.5, 4, True, tight=True)[0] == pytest.approx(1 / 8)
    assert _exact_mse(x, lo, hi, 4, True, tight=True) <= _exact_mse(x, -1.0, 0.5, 4, True, tight=True) * (1 + 1e-6)
    assert _exact_mse(x, -1.0, 0.5, 4, True, tight=True) < _exact_mse(x, -1.0, 0.5, 4, True)  # the finer grid helps
