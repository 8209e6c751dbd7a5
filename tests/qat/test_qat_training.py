"""Quantization-aware training with plain sim.model.compile / fit: weights, ranges, gradients, BN."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aimet_tf import QuantizationSimModel, register_layer
from aimet_tf.qat import find_batch_norms, find_quantizers
from aimet_tf.quantization.registry import ParamSpec
from aimet_tf.testing import models

CONFIGS = {"per-tensor": "default_fused", "per-channel": "htp"}


def _data(n=48, seed=0):
    x = models.random_images(n, seed=seed)
    y = np.random.default_rng(seed + 1).integers(0, 4, n)
    return x, y


def _sim(scheme, config="htp", param_bw=8, output_bw=8, model=None):
    x, _ = _data()
    sim = QuantizationSimModel(
        model or models.conv_bn_relu_model(),
        quant_scheme=scheme,
        default_param_bw=param_bw,
        default_output_bw=output_bw,
        config_file=config,
    )
    sim.compute_encodings(x)
    return sim


def _compile(sim, lr=1e-2, run_eagerly=False):
    sim.model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=run_eagerly,
    )


def _ranges(sim):
    return {
        n: (q.encoding_min.numpy().copy(), q.encoding_max.numpy().copy()) for n, q in find_quantizers(sim)
    }


def _weights(sim):
    return {v.path: v.numpy().copy() for v in sim.model.weights if "encoding_" not in v.path}


# Graph mode (the default of fit) for two cases; the bitwidth sweep runs eagerly, which executes
# the same ops without paying a trace per case.
@pytest.mark.parametrize(
    "granularity,scheme,param_bw,output_bw,run_eagerly",
    [
        ("per-channel", "tf", 4, 8, False),
        ("per-tensor", "tf_range_learning", 4, 8, False),
        ("per-tensor", "tf_enhanced", 8, 8, True),
        ("per-channel", "tf_range_learning", 2, 2, True),
        ("per-tensor", "tf_range_learning", 3, 5, True),
        ("per-channel", "tf_enhanced_range_learning", 8, 4, True),
        ("per-channel", "tf_range_learning", 16, 16, True),
    ],
)
def test_fit_trains_weights_and_only_learned_ranges(granularity, scheme, param_bw, output_bw, run_eagerly):
    sim = _sim(scheme, CONFIGS[granularity], param_bw, output_bw)
    per_channel = {n: q.per_channel for n, q in find_quantizers(sim, ("param",))}
    expected = granularity == "per-channel"
    assert per_channel["c1/kernel:0"] is expected and per_channel["dw/kernel:0"] is expected
    x, y = _data()
    ranges_before, weights_before = _ranges(sim), _weights(sim)
    _compile(sim, run_eagerly=run_eagerly)
    history = sim.model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    kernel = "c1/kernel"
    assert not np.array_equal(_weights(sim)[kernel], weights_before[kernel])
    ranges_after = _ranges(sim)
    moved = [n for n in ranges_before if not np.array_equal(ranges_after[n][1], ranges_before[n][1])]
    if "range_learning" in scheme:
        # Every range that sees a gradient moves under Adam; at least the weights' and the
        # output's ranges must have.
        assert {"c1/kernel:0", "fc/output:0"} <= set(moved), moved
    else:
        assert moved == []


@pytest.mark.parametrize(
    "granularity,bitwidth", [("per-tensor", 2), ("per-channel", 4), ("per-tensor", 8), ("per-channel", 16)]
)
def test_gradients_reach_every_range(granularity, bitwidth):
    sim = _sim("tf_range_learning", CONFIGS[granularity], bitwidth, bitwidth)
    x, y = _data()
    range_vars = [v for v in sim.model.trainable_variables if "encoding_" in v.path]
    names = find_quantizers(sim)
    assert len(range_vars) == 2 * len(names)
    with tf.GradientTape() as tape:
        logits = sim.model(x, training=True)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
    grads = tape.gradient(loss, range_vars)
    assert all(g is not None for g in grads)
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    # d loss / d max = -d loss / d min for one quantizer (AIMET's range gradients).
    by_path = {v.path: g.numpy() for v, g in zip(range_vars, grads)}
    for name, q in names:
        np.testing.assert_allclose(by_path[q.encoding_min.path], -by_path[q.encoding_max.path], rtol=1e-6)
    nonzero = {path for path, g in by_path.items() if np.any(g != 0)}
    # The last layer's ranges always receive gradient; at 2 bits the clipped network may block
    # the gradient to earlier ranges (the STE is 0 outside the range), at 4+ bits it must not.
    assert {"fc_output_0/encoding_max", "fc_kernel_quantizer/encoding_max"} <= nonzero
    if bitwidth >= 4:
        assert len(nonzero) == len(by_path), sorted(set(by_path) - nonzero)


def test_static_grid_ranges_get_no_trainable_variables():
    sim = _sim("tf_enhanced")
    assert not [v for v in sim.model.trainable_variables if "encoding_" in v.path]
    with tf.GradientTape() as tape:
        out = sim.model(_data()[0], training=True)
        loss = tf.reduce_sum(out**2)
    kernel = sim.model.get_layer("c1").layer.kernel
    grad = tape.gradient(loss, kernel)
    assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0  # STE reaches the weights


def test_uncalibrated_sim_refuses_to_train():
    sim = QuantizationSimModel(models.conv_bn_relu_model(), quant_scheme="tf_range_learning")
    _compile(sim)
    x, y = _data(16)
    with pytest.raises(RuntimeError, match="compute_encodings"):
        sim.model.fit(x, y, batch_size=8, epochs=1, verbose=0)


def test_batch_norm_statistics_update_in_fit_and_not_in_predict():
    sim = _sim("tf_range_learning", "htp", 4, 8)
    bn = find_batch_norms(sim)[0]
    x, y = _data()
    before = (bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy())
    sim.model.predict(x, verbose=0)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before[0])
    _compile(sim)
    sim.model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert not np.array_equal(bn.moving_mean.numpy(), before[0])
    assert not np.array_equal(bn.moving_variance.numpy(), before[1])
    assert np.all(bn.moving_variance.numpy() > 0)


@register_layer(params={"gamma": ParamSpec("weight", (-1,))})
class _QuantizedGammaBN(keras.layers.BatchNormalization):
    """A BN whose gamma is quantized: the wrapper then runs it inside a keras.StatelessScope."""


def test_state_updates_inside_stateless_scope_reach_the_variables():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, name="conv")(inp)
    h = _QuantizedGammaBN(name="qbn")(h)
    out = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D(name="gap")(h))
    model = keras.Model(inp, out)
    # Non-constant gamma: a value sitting exactly on the edge of its (nudged) range may fall just
    # outside it and get no straight-through gradient.
    model.get_layer("qbn").gamma.assign([0.6, 0.9, 1.1, 1.3])
    sim = QuantizationSimModel(model, quant_scheme="tf", default_param_bw=4)
    x = np.random.default_rng(0).normal(2.0, 1.0, size=(32, 6, 6, 3)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 2, 32)
    sim.compute_encodings(x)
    wrapper = sim.model.get_layer("qbn")
    assert wrapper.param_quantizers_by_path()["gamma"] is not None
    bn = wrapper.layer
    mean_before = bn.moving_mean.numpy().copy()
    gamma_before = bn.gamma.numpy().copy()
    sim.model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    sim.model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.array_equal(bn.moving_mean.numpy(), mean_before)
    assert not np.array_equal(bn.gamma.numpy(), gamma_before)
    # The float gamma holds float values, never the 4-bit grid the forward pass used.
    q = wrapper.param_quantizers_by_path()["gamma"]
    grid = q(bn.gamma.value).numpy()
    assert not np.array_equal(bn.gamma.numpy(), grid)


def test_qat_recovers_accuracy_lost_to_w4_quantization():
    # A model trained in float, quantized to 4-bit weights, then fine-tuned: QAT must beat PTQ.
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    centers = rng.normal(0, 1.0, size=(4, 10)).astype(np.float32)
    labels = rng.integers(0, 4, 1024)
    x = (centers[labels] + rng.normal(0, 0.9, size=(1024, 10))).astype(np.float32)
    inp = keras.Input((10,))
    h = keras.layers.Dense(32, activation="relu", name="d1")(inp)
    h = keras.layers.Dense(32, activation="relu", name="d2")(h)
    model = keras.Model(inp, keras.layers.Dense(4, name="cls")(h))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, labels, batch_size=64, epochs=15, verbose=0)

    def accuracy(m):
        return float(np.mean(np.argmax(m.predict(x, verbose=0), -1) == labels))

    sim = QuantizationSimModel(model, "tf_range_learning", default_param_bw=2, default_output_bw=4)
    sim.compute_encodings(x)
    ptq = accuracy(sim.model)
    _compile(sim, lr=3e-3)
    sim.model.fit(x, labels, batch_size=64, epochs=6, verbose=0)
    assert accuracy(sim.model) > ptq + 0.1, (ptq, accuracy(sim.model), accuracy(model))


def test_learned_ranges_are_projected_to_contain_zero():
    # Range learning may push a ReLU output's min above 0 (no encoding can express that); the
    # optimizer projects every learned range back to min <= 0 <= max after each step.
    sim = _sim("tf_range_learning", "htp", 4, 8)
    pairs = find_quantizers(sim)
    optimizer = keras.optimizers.SGD(1.0)
    variables = [v for _, q in pairs for v in (q.encoding_min, q.encoding_max)]
    # Gradients that move every min up and every max down by 100.
    grads = [tf.fill(v.shape, -100.0 if "encoding_min" in v.path else 100.0) for v in variables]
    optimizer.apply_gradients(zip(grads, variables))
    for name, q in pairs:
        assert np.all(q.encoding_min.numpy() == 0.0), name
        # max keeps a tiny positive floor: a zero-width range would make the scale 0 (NaN).
        np.testing.assert_allclose(q.encoding_max.numpy(), 1e-6, err_msg=name)
    out = sim.model(_data(8)[0])
    assert np.all(np.isfinite(out.numpy()))
    # Trained for real, every range stays valid and exports.
    sim = _sim("tf_range_learning", "htp", 4, 4)
    x, y = _data()
    _compile(sim, lr=5e-2)
    sim.model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for name, q in find_quantizers(sim):
        enc = q.get_encoding()
        assert np.all(enc.min <= 0) and np.all(enc.max >= 0), name
    assert sim.get_encodings_dict()["activation_encodings"]
