"""In-graph calibration statistics (aimet_tf/quantization/graph_statistics.py) against the numpy
analyzers they feed, and the sim's reuse of its traced calibration step."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from aimet_tf import QuantizationSimModel
from aimet_tf.quantization import analyzers
from aimet_tf.quantization.analyzers import MinMaxAnalyzer, PercentileAnalyzer, SqnrAnalyzer
from aimet_tf.quantization.graph_statistics import GraphStatistics, GraphStatisticsSpec, rebin_counts
from aimet_tf.testing import models


def _batches(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Ranges that grow on both sides, ReLU-like exact zeros, a heavy tail.
    out = [np.maximum(rng.normal(0.5, 1.0, (64, 7, 7)), 0.0)]
    out.append(rng.normal(-0.2, 2.0, (64, 7, 7)))
    out.append(rng.standard_t(3, (64, 7, 7)) * 3.0)
    out.append(np.maximum(rng.normal(0.0, 0.5, (64, 7, 7)), 0.0))
    return [b.astype(np.float32) for b in out]


def _via_graph(analyzer, batches, eager: bool):
    stats = GraphStatistics(analyzer.graph_statistics_spec)
    observe = stats.observe if eager else tf.function(stats.observe)
    for b in batches:
        observe(tf.constant(b))
    analyzer.absorb_graph_statistics(stats.read())
    return analyzer, stats


def test_rebin_matches_numpy():
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 50, 64).astype(np.float64)
    got = rebin_counts(tf.constant(counts), -1.0, 2.0, -1.75, 3.125).numpy()
    want = analyzers._rebin(counts[None], np.array([-1.0]), np.array([2.0]), np.array([-1.75]), np.array([3.125]))[0]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert got.sum() == pytest.approx(counts.sum())


@pytest.mark.parametrize("eager", [True, False])
def test_min_max_exactly_as_numpy(eager):
    batches = _batches()
    ref = MinMaxAnalyzer()
    for b in batches:
        ref.observe(b)
    got, _ = _via_graph(MinMaxAnalyzer(), batches, eager)
    assert got.num_batches == ref.num_batches == len(batches)
    for symmetric in (False, True):
        np.testing.assert_array_equal(got.compute_range(8, symmetric), ref.compute_range(8, symmetric))


@pytest.mark.parametrize(
    "factory",
    [lambda: SqnrAnalyzer(), lambda: PercentileAnalyzer(percentile=99.0)],
    ids=["sqnr", "percentile"],
)
def test_histogram_analyzers_agree_with_numpy(factory):
    batches = _batches()
    ref = factory()
    for b in batches:
        ref.observe(b)
    got, stats = _via_graph(factory(), batches, eager=False)
    values = stats.read()
    assert values.counts.sum() == pytest.approx(sum(b.size for b in batches))
    # Same histogram up to elements on bin edges (float32 binning in TF, float64 in numpy).
    np.testing.assert_allclose(got._histogram.lo, ref._histogram.lo)
    np.testing.assert_allclose(got._histogram.hi, ref._histogram.hi, rtol=1e-6)
    assert np.abs(got._histogram.counts - ref._histogram.counts).sum() <= 1e-3 * values.counts.sum()
    for bitwidth, symmetric in ((8, False), (8, True), (4, False)):
        np.testing.assert_allclose(
            got.compute_range(bitwidth, symmetric), ref.compute_range(bitwidth, symmetric), rtol=1e-3, atol=1e-4
        )


def test_zero_count_and_constant_tensor():
    stats = GraphStatistics(GraphStatisticsSpec(num_bins=16, count_zeros=True))
    stats.observe(tf.constant([0.0, 0.0, 2.0, 0.0]))
    stats.observe(tf.zeros([0]))  # empty: skipped
    values = stats.read()
    assert values.num_batches == 1 and values.zeros == 3.0
    stats.reset()
    stats.observe(tf.fill([10], 5.0))
    values = stats.read()
    assert values.hist_lo == 5.0 and values.hist_hi > 5.0  # bins of non-zero width
    assert values.counts.sum() == 10 and values.zeros == 0.0


def test_non_finite_batches_are_counted_and_rejected():
    analyzer = SqnrAnalyzer()
    stats = GraphStatistics(analyzer.graph_statistics_spec)
    stats.observe(tf.constant([1.0, 2.0]))
    stats.observe(tf.constant([1.0, np.nan]))
    stats.observe(tf.constant([np.inf, 2.0]))
    values = stats.read()
    assert values.num_batches == 1 and values.nonfinite_batches == 2
    with pytest.raises(ValueError, match="2 batch.*NaN/Inf"):
        analyzer.absorb_graph_statistics(values)
    assert analyzer.num_batches == 0


def test_absorb_refuses_per_channel_and_used_analyzers():
    with pytest.raises(RuntimeError, match="whole batches"):
        MinMaxAnalyzer(channel_axis=-1).absorb_graph_statistics(None)
    used = MinMaxAnalyzer()
    used.observe(np.ones(3))
    stats = GraphStatistics(used.graph_statistics_spec)
    with pytest.raises(RuntimeError, match="observed nothing"):
        used.absorb_graph_statistics(stats.read())


def test_spec_validation():
    with pytest.raises(ValueError, match="num_bins"):
        GraphStatistics(GraphStatisticsSpec(num_bins=1))


def test_sim_reuses_its_calibration_trace_and_results_are_stable():
    model = models.conv_bn_relu_model()
    data = models.random_images(40)
    sim = QuantizationSimModel(model, quant_scheme="tf_enhanced", config_file="htp")
    sim.compute_encodings(data, batch_size=16)
    first = sim.get_encodings_dict()
    assert len(sim._calibration_steps) == 1
    (step,) = sim._calibration_steps.values()
    traces = step.experimental_get_tracing_count()
    sim.compute_encodings(data, batch_size=16)
    assert step.experimental_get_tracing_count() == traces  # no retrace
    assert sim.get_encodings_dict() == first  # statistics were reset, not accumulated
    fresh = QuantizationSimModel(model, quant_scheme="tf_enhanced", config_file="htp")
    fresh.compute_encodings(data, batch_size=16)
    assert fresh.get_encodings_dict() == first
    # A different set of observing quantizers is a different trace.
    name, q = sim.activation_quantizers()[0]
    q.enabled = False
    sim.compute_encodings(data, batch_size=16)
    assert len(sim._calibration_steps) == 2
    assert name not in sim.get_encodings_dict()["activation_encodings"]
    # Alternating schemes reuses the statistics variables and traces of each.
    for scheme in ("tf", "tf_enhanced", "tf", "tf_enhanced"):
        for _, quantizer in sim.activation_quantizers():
            quantizer.quant_scheme = scheme
        sim.compute_encodings(data, batch_size=16)
    assert len(sim._calibration_steps) == 3


def test_sim_error_names_the_tensors_in_graph_order():
    sim = QuantizationSimModel(models.conv_bn_relu_model(), quant_scheme="tf")
    data = models.random_images(8)
    data[0, 0, 0, 0] = np.inf
    first = sim.activation_quantizers()[0][0]
    with pytest.raises(ValueError, match=f"finite.*in graph order: {first} \\(1 batch"):
        sim.compute_encodings(lambda m, a: m(a, training=False), data)
    assert all(not q.is_initialized for _, q in sim.activation_quantizers())


def test_sim_error_lists_the_layer_where_values_overflow():
    import keras

    inp = keras.Input((4,), name="x")
    d1 = keras.layers.Dense(3, name="d1")
    out = keras.layers.Dense(2, name="d2")(d1(inp))
    model = keras.Model(inp, out)
    kernel = d1.kernel.numpy()
    kernel[:, 0] = 1e38
    d1.kernel.assign(kernel)
    data = np.zeros((16, 4), np.float32)
    data[8:] = 10.0  # the second batch overflows inside d1
    sim = QuantizationSimModel(model, quant_scheme="tf_enhanced")
    with pytest.raises(ValueError, match="in graph order: d1/output:0 \\(1 batch\\(es\\)\\), d2/output:0"):
        sim.compute_encodings(data, batch_size=8)
