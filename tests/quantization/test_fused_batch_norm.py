"""The wrapper's fused BatchNormalization training pass against Keras's own (unfused) layer."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from aimet_tf.quantization import QuantizationSimModel, QuantizationWrapper
from aimet_tf.quantization.fused_batch_norm import keras_batch_norm_only

_TOL = dict(rtol=1e-5, atol=1e-5)


def _pair(input_shape, **bn_kwargs):
    """A Keras BatchNormalization and a wrapper around an identical copy (same weights)."""
    rng = np.random.default_rng(0)
    ref = keras.layers.BatchNormalization(**bn_kwargs)
    ref.build(input_shape)
    channels = input_shape[ref.axis]
    values = []
    for w in ref.weights:
        if "variance" in w.path:
            values.append(rng.uniform(0.5, 2.0, channels).astype(np.float32))
        else:
            values.append(rng.normal(0.0, 1.0, channels).astype(np.float32))
    ref.set_weights(values)
    copy = keras.layers.BatchNormalization.from_config(ref.get_config())
    copy.build(input_shape)
    copy.set_weights(values)
    return ref, QuantizationWrapper(copy)


def _uses_fused_kernel(layer, x, training=True) -> bool:
    graph = tf.function(lambda t: layer(t, training=training)).get_concrete_function(x).graph
    return any(op.type == "FusedBatchNormV3" for op in graph.get_operations())


def _train_steps(layer, batches, head):
    """SGD steps on sum(head * layer(x)); returns per-step outputs and (x, weight) gradients."""
    optimizer = keras.optimizers.SGD(0.05)
    outputs, grads = [], []
    for x in batches:
        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * head)
        variables = layer.trainable_variables
        g = tape.gradient(loss, [x, *variables])
        optimizer.apply_gradients(zip(g[1:], variables))
        outputs.append(y.numpy())
        grads.append([t.numpy() for t in g])
    return outputs, grads


@pytest.mark.parametrize(
    "shape, bn_kwargs",
    [
        ((8, 5, 6, 3), {}),
        ((8, 5, 6, 3), {"momentum": 0.5, "epsilon": 1e-5}),
        ((4, 3, 3, 2), {"center": False}),
        ((4, 3, 3, 2), {"scale": False}),
        ((1, 1, 1, 4), {"momentum": 0.7}),  # one value per channel: Keras's variance is 0
    ],
)
def test_fused_training_matches_keras(shape, bn_kwargs):
    ref, wrapper = _pair(shape, **bn_kwargs)
    rng = np.random.default_rng(1)
    batches = [rng.normal(3.0, 2.0, size=shape).astype(np.float32) for _ in range(4)]
    head = tf.constant(rng.normal(size=shape).astype(np.float32))
    assert _uses_fused_kernel(wrapper, batches[0])

    ref_out, ref_grads = _train_steps(ref, batches, head)
    out, grads = _train_steps(wrapper, batches, head)
    for a, b in zip(out, ref_out):
        np.testing.assert_allclose(a, b, **_TOL)
    for step, (gs, ref_gs) in enumerate(zip(grads, ref_grads)):
        assert len(gs) == len(ref_gs)
        for g, ref_g in zip(gs, ref_gs):
            np.testing.assert_allclose(g, ref_g, rtol=1e-4, atol=1e-4, err_msg=f"step {step}")
    bn = wrapper.layer
    np.testing.assert_allclose(bn.moving_mean.numpy(), ref.moving_mean.numpy(), **_TOL)
    np.testing.assert_allclose(bn.moving_variance.numpy(), ref.moving_variance.numpy(), **_TOL)
    # Inference afterwards: the moving statistics the fused steps left behave as Keras's.
    x = tf.constant(batches[0])
    np.testing.assert_allclose(wrapper(x, training=False).numpy(), ref(x, training=False).numpy(), **_TOL)


def test_inference_is_keras_call():
    ref, wrapper = _pair((4, 5, 5, 3))
    x = tf.constant(np.random.default_rng(2).normal(size=(4, 5, 5, 3)).astype(np.float32))
    assert not _uses_fused_kernel(wrapper, x, training=False)
    np.testing.assert_array_equal(wrapper(x, training=False).numpy(), ref(x, training=False).numpy())
    np.testing.assert_array_equal(wrapper(x).numpy(), ref(x).numpy())


@pytest.mark.parametrize(
    "shape, bn_kwargs",
    [
        ((16, 6), {}),  # Dense features
        ((8, 7, 3), {"momentum": 0.8}),  # Conv1D features
        ((4, 3, 5, 5), {"axis": 1}),  # channels first
        ((2, 3, 4, 5, 2), {}),  # 5-D
    ],
)
def test_other_ranks_and_axes_fall_back_to_keras(shape, bn_kwargs):
    ref, wrapper = _pair(shape, **bn_kwargs)
    rng = np.random.default_rng(3)
    batches = [rng.normal(1.0, 2.0, size=shape).astype(np.float32) for _ in range(3)]
    head = tf.constant(rng.normal(size=shape).astype(np.float32))
    assert not _uses_fused_kernel(wrapper, batches[0])
    ref_out, _ = _train_steps(ref, batches, head)
    out, _ = _train_steps(wrapper, batches, head)
    for a, b in zip(out, ref_out):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(wrapper.layer.moving_variance.numpy(), ref.moving_variance.numpy())


def test_frozen_batch_norm_keeps_keras_inference_behaviour_in_training():
    ref, wrapper = _pair((4, 3, 3, 2))
    ref.trainable = False
    wrapper.layer.trainable = False
    x = tf.constant(np.random.default_rng(4).normal(size=(4, 3, 3, 2)).astype(np.float32))
    assert not _uses_fused_kernel(wrapper, x)
    before = wrapper.layer.moving_mean.numpy().copy()
    np.testing.assert_array_equal(wrapper(x, training=True).numpy(), ref(x, training=True).numpy())
    np.testing.assert_array_equal(wrapper.layer.moving_mean.numpy(), before)


def test_keras_batch_norm_only_switches_the_fused_path_off():
    _, wrapper = _pair((4, 3, 3, 2))
    x = tf.zeros((4, 3, 3, 2))
    with keras_batch_norm_only():
        assert not _uses_fused_kernel(wrapper, x)
    assert _uses_fused_kernel(wrapper, x)


def _fit_sim(fused: bool):
    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", name="conv")(inp)
    h = keras.layers.BatchNormalization(momentum=0.9, name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D(name="gap")(h))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(6)
    x = rng.normal(1.0, 2.0, size=(48, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 3, 48)
    sim = QuantizationSimModel(model, quant_scheme="tf_range_learning", default_param_bw=8, default_output_bw=8)
    sim.compute_encodings(x)
    sim.model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with contextlib.nullcontext() if fused else keras_batch_norm_only():
        sim.model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return sim, x


def test_sim_fit_matches_keras_batch_norm():
    fused, x = _fit_sim(True)
    unfused, _ = _fit_sim(False)
    for a, b in zip(fused.model.weights, unfused.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    np.testing.assert_allclose(
        fused.model.predict(x, verbose=0), unfused.model.predict(x, verbose=0), rtol=1e-4, atol=1e-4
    )
