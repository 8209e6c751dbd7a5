"""tf.distribute: per-replica statistics merged; calibration, QAT and AdaRound under MirroredStrategy
(2 logical CPUs) and MultiWorkerMirroredStrategy (2 local worker processes), each against one device."""

import argparse
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from aimet_tf import distribute
from aimet_tf.quantization.graph_statistics import (
    GraphStatistics,
    GraphStatisticsSpec,
    GraphStatisticsValues,
    merge_values,
    rebin_counts,
)
from aimet_tf.testing import distributed

SCHEMES = "tf,auto"  # tf: min/max; auto: output_mse parameters, tf_enhanced (histogram) activations
MODELS = "bundled,ds_cnn"  # the bundled CNN, and MLTK's keyword-spotting DS-CNN on its real inputs


def _values(x: np.ndarray, num_bins: int = 0, count_zeros: bool = False) -> GraphStatisticsValues:
    stats = GraphStatistics(GraphStatisticsSpec(num_bins=num_bins, count_zeros=count_zeros))
    for batch in np.array_split(x, 3):
        stats.observe(tf.constant(batch))
    return stats.read()


# -- merging per-replica statistics ----------------------------------------------------------------


def test_merge_adds_counts_and_takes_the_extremes():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 300).astype(np.float32)
    b = rng.normal(2, 3, 300).astype(np.float32)
    b[:7] = 0.0
    merged = merge_values([_values(a, count_zeros=True), _values(b, count_zeros=True)])
    assert merged.num_batches == 6
    assert merged.data_min == float(min(a.min(), b.min()))
    assert merged.data_max == float(max(a.max(), b.max()))
    assert merged.zeros == 7 + int(np.sum(a == 0))


def test_merged_histograms_are_rebinned_over_the_union_and_summed():
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, 500).astype(np.float32)
    b = rng.uniform(0, 4, 700).astype(np.float32)
    va, vb = _values(a, num_bins=64), _values(b, num_bins=64)
    merged = merge_values([va, vb])
    assert (merged.hist_lo, merged.hist_hi) == (min(va.hist_lo, vb.hist_lo), max(va.hist_hi, vb.hist_hi))
    expected = sum(
        rebin_counts(tf.constant(v.counts), v.hist_lo, v.hist_hi, merged.hist_lo, merged.hist_hi).numpy()
        for v in (va, vb)
    )
    np.testing.assert_allclose(merged.counts, expected)
    assert merged.counts.sum() == pytest.approx(1200.0)
    # The merged histogram and one device's, which saw every batch, agree bin by bin within the
    # mass that re-binning moves across one bin edge.
    single = _values(np.concatenate([a, b]), num_bins=64)
    assert (single.hist_lo, single.hist_hi) == (merged.hist_lo, merged.hist_hi)
    assert np.max(np.abs(np.cumsum(single.counts) - np.cumsum(merged.counts))) < 0.05 * 1200


def test_merge_with_an_idle_replica_keeps_the_other_and_sums_nonfinite_batches():
    seen = _values(np.arange(10, dtype=np.float32) - 3.0, num_bins=8)
    idle = GraphStatistics(GraphStatisticsSpec(num_bins=8))
    idle.observe(tf.constant([np.nan], tf.float32))
    merged = merge_values([idle.read(), seen])
    assert (merged.data_min, merged.data_max, merged.num_batches) == (-3.0, 6.0, 3)
    assert merged.nonfinite_batches == 1
    np.testing.assert_allclose(merged.counts, seen.counts)
    nothing = merge_values([idle.read(), idle.read()])
    assert (nothing.num_batches, nothing.nonfinite_batches) == (0, 2)


def test_merge_refuses_nothing_and_mixed_bin_counts():
    with pytest.raises(ValueError, match="at least one replica"):
        merge_values([])
    with pytest.raises(ValueError, match="one number of bins"):
        merge_values([_values(np.ones(4, np.float32), 8), _values(np.ones(4, np.float32), 16)])


# -- distribute helpers on one device ---------------------------------------------------------------


def _tiny_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_replica_strategy_is_none_on_one_device():
    assert distribute.replica_strategy(_tiny_model()) is None
    assert distribute.num_workers(None) == 1


def test_fit_runs_the_same_train_step_as_keras_fit():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = rng.integers(0, 3, 96)
    ours, theirs = _tiny_model(), _tiny_model()
    history = distribute.fit(ours, x, y, batch_size=32, epochs=2)
    keras_history = theirs.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0).history
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(history["loss"], keras_history["loss"], rtol=1e-5)


def test_fit_refuses_bad_arguments():
    model = _tiny_model()
    x, y = np.zeros((4, 6), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="Expected labels y"):
        distribute.fit(model, x)
    with pytest.raises(ValueError, match="y=None with a tf.data.Dataset"):
        distribute.fit(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(2), y)
    with pytest.raises(ValueError, match="epochs to be an integer >= 1"):
        distribute.fit(model, x, y, epochs=0)
    uncompiled = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="compiled model"):
        distribute.fit(uncompiled, x, y)


# -- against one device, in fresh processes ---------------------------------------------------------


@pytest.fixture(scope="module")
def single_calibration():
    return distributed._calibrate(None, argparse.Namespace(samples=500, batch=64, scheme=SCHEMES, model=MODELS))


def _bin_width(table: dict, name: str) -> float:
    low, high, _ = table[name]
    return (high - low) / 512  # the SQNR analyzer's histogram (AIMET's 512 bins)


def _check_calibration(result: dict, single: dict, models: str, workers: int) -> None:
    assert result["replicas"] == 2
    for model in models.split(","):
        _check_model_calibration(result[model], single[model], workers)


def _check_model_calibration(result: dict, single: dict, workers: int) -> None:
    for scheme in SCHEMES.split(","):
        want = single[scheme]
        got = result[scheme]
        assert got["params"] == want["params"]
        sources = ["arrays", "distributed_dataset"]
        if scheme == "auto" and workers > 1:
            # Each worker's shard would give the parameter search its own grids: refused.
            assert "every worker reads whole" in got["distributed_dataset_error"]
            sources.remove("distributed_dataset")
        else:
            assert got["distributed_dataset_params"] == want["params"]
        for source in sources:
            assert got[source].keys() == want["arrays"].keys()
            for name, (low, high, bits) in want["arrays"].items():
                if scheme == "tf":  # min/max: exact
                    assert got[source][name] == [low, high, bits], (source, name)
                else:
                    width = _bin_width(want["arrays"], name)
                    assert abs(got[source][name][0] - low) <= width, (source, name)
                    assert abs(got[source][name][1] - high) <= width, (source, name)
        assert "not built under a tf.distribute strategy" in got["outside_scope_error"]


@pytest.fixture(scope="module")
def single_qat():
    return distributed._qat(None, argparse.Namespace(strategy="none", batch=64, epochs=1))


def _check_qat(result: dict, single: dict) -> None:
    assert single["reload_outputs_identical"] and single["reload_variables_identical"]
    assert result["replicas"] == 2
    assert result["distributed_variables"] == result["num_variables"] > 0
    assert result["before"] == pytest.approx(single["before"], abs=1e-9)  # same encodings
    # 1 epoch on 2,000 images, then 5,000 held-out images: the same training within noise.
    assert abs(result["after"] - single["after"]) <= 0.005
    assert result["after"] > result["before"] - 0.005
    assert result["reload_outputs_identical"] and result["reload_variables_identical"]


ADAROUND_ITERATIONS = 100


@pytest.fixture(scope="module")
def single_adaround():
    return distributed._adaround(None, argparse.Namespace(iterations=ADAROUND_ITERATIONS))


def _check_adaround(result: dict, single: dict) -> None:
    assert result["kernels"].keys() == single["kernels"].keys() and len(single["kernels"]) == 14
    for name, want in single["kernels"].items():
        got = np.asarray(result["kernels"][name])
        # The split batch's losses and gradients are summed in another order: a rounding decision
        # at a near-tie may flip, nothing more.
        assert np.mean(got == np.asarray(want)) >= 0.999, name


@pytest.mark.slow
def test_calibration_qat_and_adaround_under_mirrored_strategy_match_one_device(single_calibration, single_qat, single_adaround):
    result = distributed.run_mirrored("calibrate,qat,adaround", scheme=SCHEMES, model=MODELS, iterations=ADAROUND_ITERATIONS)
    assert result["strategy"] == "mirrored"
    _check_calibration(result["calibrate"], single_calibration, MODELS, workers=1)
    _check_qat(result["qat"], single_qat)
    _check_adaround(result["adaround"], single_adaround)


@pytest.mark.slow
def test_calibration_and_qat_under_multi_worker_strategy_match_one_device(single_calibration, single_qat):
    # AdaRound and the second model run under MirroredStrategy above: the same replica code, and
    # this suite's time budget.
    result = distributed.run_multi_worker("calibrate,qat", scheme=SCHEMES, model="bundled")
    assert result["strategy"] == "multi_worker"
    _check_calibration(result["calibrate"], single_calibration, "bundled", workers=2)
    _check_qat(result["qat"], single_qat)


def test_adaround_refuses_a_batch_smaller_than_the_replicas(monkeypatch):
    from aimet_tf import datasets
    from aimet_tf.ptq.adaround import AdaroundParameters, apply_adaround

    two = types.SimpleNamespace(num_replicas_in_sync=2)
    monkeypatch.setattr(distribute, "replica_strategy", lambda model: two)
    params = AdaroundParameters(np.zeros((4, 28, 28, 1), np.float32), num_batches=1, default_num_iterations=1, batch_size=1)
    with pytest.raises(ValueError, match="batch_size >= the 2 replicas"):
        apply_adaround(datasets.load_bundled_model(), params)
