"""QAT callbacks inside model.fit: freezing ranges, freezing BN statistics, TensorBoard range logs."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from aimet_tf import QuantizationSimModel
from aimet_tf.qat import (
    FreezeBatchNormStats,
    FreezeQuantizerRanges,
    QuantizerRangeLogger,
    find_batch_norms,
    find_quantizers,
    freeze_batch_norm_stats,
    freeze_quantizer_ranges,
    histogram_buckets,
    range_tag,
)
from aimet_tf.testing import models


def _data(n=48, seed=0):
    return models.random_images(n, seed=seed), np.random.default_rng(seed + 1).integers(0, 4, n)


def _sim(scheme="tf_range_learning", config="htp"):
    sim = QuantizationSimModel(
        models.conv_bn_relu_model(), quant_scheme=scheme, default_param_bw=4, default_output_bw=8,
        config_file=config,
    )
    sim.compute_encodings(_data()[0])
    sim.model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return sim


class _Snapshots(keras.callbacks.Callback):
    """Records ranges, BN statistics and weights at the start of training and after each epoch."""

    def __init__(self, sim):
        super().__init__()
        self.sim = sim
        self.records = []

    def _record(self):
        bn = find_batch_norms(self.sim)[0]
        self.records.append(
            {
                "ranges": {n: q.encoding_max.numpy().copy() for n, q in find_quantizers(self.sim)},
                "bn_mean": bn.moving_mean.numpy().copy(),
                "gamma": bn.gamma.numpy().copy(),
                "kernel": self.sim.model.get_layer("c1").layer.kernel.numpy().copy(),
            }
        )

    def on_train_begin(self, logs=None):
        self._record()

    def on_epoch_end(self, epoch, logs=None):
        self._record()


def _changed(records, key, sub=None):
    """Per epoch: did the value change during that epoch?"""
    out = []
    for a, b in zip(records, records[1:]):
        va, vb = (a[key], b[key]) if sub is None else (a[key][sub], b[key][sub])
        out.append(not np.array_equal(va, vb))
    return out


def test_frozen_ranges_stay_frozen_while_weights_train():
    sim = _sim()
    x, y = _data()
    snaps = _Snapshots(sim)
    freeze = FreezeQuantizerRanges(after_epochs=1)
    sim.model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[freeze, snaps])
    assert freeze.frozen_at_epoch == 1
    for name in ("c1/kernel:0", "fc/output:0"):
        assert _changed(snaps.records, "ranges", name) == [True, False, False], name
    assert _changed(snaps.records, "kernel") == [True, True, True]
    assert all(q.frozen and not q.encoding_max.trainable for _, q in find_quantizers(sim))
    # Frozen ranges survive a later calibration as well.
    before = {n: q.encoding_max.numpy().copy() for n, q in find_quantizers(sim)}
    sim.compute_encodings(models.random_images(16, seed=9))
    assert all(np.array_equal(q.encoding_max.numpy(), before[n]) for n, q in find_quantizers(sim))


def test_freeze_only_activation_ranges_from_the_start():
    sim = _sim()
    x, y = _data()
    snaps = _Snapshots(sim)
    sim.model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                  callbacks=[FreezeQuantizerRanges(0, kinds=("activation",)), snaps])
    assert _changed(snaps.records, "ranges", "r1/output:0") == [False, False]
    assert _changed(snaps.records, "ranges", "c1/kernel:0") == [True, True]


def test_freeze_ranges_outside_fit_rebuilds_the_train_function():
    sim = _sim()
    x, y = _data()
    sim.model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    old_function = sim.model.train_function
    frozen = freeze_quantizer_ranges(sim)
    assert sim.model.train_function is not old_function
    assert len(frozen) == len(find_quantizers(sim))
    before = {n: q.encoding_max.numpy().copy() for n, q in frozen}
    sim.model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert all(np.array_equal(q.encoding_max.numpy(), before[n]) for n, q in frozen)


@pytest.mark.parametrize("mode", ["inference", "momentum"])
def test_freeze_batch_norm_stats_after_one_epoch(mode):
    sim = _sim("tf")
    x, y = _data()
    snaps = _Snapshots(sim)
    sim.model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[FreezeBatchNormStats(1, mode), snaps])
    assert _changed(snaps.records, "bn_mean") == [True, False, False]
    # "inference" also stops gamma/beta; "momentum" keeps training them on batch statistics.
    expected_gamma = [True, False, False] if mode == "inference" else [True, True, True]
    assert _changed(snaps.records, "gamma") == expected_gamma
    assert _changed(snaps.records, "kernel") == [True, True, True]


def test_frozen_bn_in_inference_mode_trains_on_moving_statistics():
    sim = _sim("tf")
    x, _ = _data()
    layers = freeze_batch_norm_stats(sim, "inference")
    assert layers and all(not layer.trainable for layer in layers)
    # With BN in inference mode the training-mode forward pass equals the inference one.
    np.testing.assert_array_equal(sim.model(x, training=True).numpy(), sim.model(x, training=False).numpy())


def test_range_logger_writes_expected_tensorboard_tags(tmp_path):
    sim = _sim()
    x, y = _data()
    logger = QuantizerRangeLogger(tmp_path / "tb")
    sim.model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[logger])
    assert logger.steps_logged == [0, 1, 2]
    files = glob.glob(os.path.join(tmp_path, "tb", "events.out.tfevents.*"))
    assert files
    seen: dict[str, dict[int, np.ndarray]] = {}
    plugins: dict[str, str] = {}
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                seen.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor)
                plugins[value.tag] = value.metadata.plugin_data.plugin_name
    # Per-tensor activation: scalars; per-channel weights: channel means + histograms.
    act_max = range_tag("fc/output:0", "max")
    assert act_max == "quantizer_ranges/fc/output_0/max"
    assert plugins[act_max] == "scalars" and sorted(seen[act_max]) == [0, 1, 2]
    q = dict(find_quantizers(sim))["fc/output:0"]
    assert float(seen[act_max][2]) == float(q.encoding_max.numpy())
    assert seen[act_max][0] != seen[act_max][2]  # range learning moved it
    kernel_hist = range_tag("c1/kernel:0", "max")
    assert plugins[kernel_hist] == "histograms"
    hist = seen[kernel_hist][2]
    assert hist.shape[1] == 3 and hist[:, 2].sum() == 8  # 8 output channels counted
    assert plugins[range_tag("c1/kernel:0", "max_mean")] == "scalars"
    expected = {range_tag(n, f) for n, q in find_quantizers(sim) if not q.per_channel for f in ("min", "max")}
    assert expected <= set(seen)


def test_range_logger_every_n_batches(tmp_path):
    sim = _sim()
    x, y = _data()
    logger = QuantizerRangeLogger(tmp_path, update_freq=2, histograms=False, kinds=("param",))
    sim.model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[logger])  # 3 batches / epoch
    assert logger.steps_logged == [0, 2, 4, 6]
    tags = set()
    for path in glob.glob(os.path.join(tmp_path, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(
                v.tag for v in event.summary.value if v.metadata.plugin_data.plugin_name == "histograms"
            )
            assert not any("output" in v.tag for v in event.summary.value)
    assert not tags


def test_histogram_buckets():
    h = histogram_buckets(np.array([0.0, 1.0, 1.0, 2.0]), bucket_count=2)
    np.testing.assert_array_equal(h, [[0.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(histogram_buckets(np.full(5, 0.5)), [[0.5, 0.5, 5.0]])


@pytest.mark.parametrize(
    "make",
    [
        lambda: FreezeQuantizerRanges(-1),
        lambda: FreezeQuantizerRanges(1.5),
        lambda: FreezeQuantizerRanges(1, kinds=("weights",)),
        lambda: FreezeBatchNormStats(1, mode="frozen"),
        lambda: QuantizerRangeLogger("/tmp/x", update_freq=0),
        lambda: QuantizerRangeLogger("/tmp/x", update_freq="batch"),
    ],
)
def test_bad_arguments_rejected(make):
    with pytest.raises(ValueError, match="Expected"):
        make()


def test_non_model_rejected():
    with pytest.raises(TypeError, match="QuantizationSimModel or a keras.Model"):
        freeze_quantizer_ranges("model.keras")
