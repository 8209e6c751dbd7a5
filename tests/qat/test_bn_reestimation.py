"""BN statistics re-estimation: the averaged batch moments, exact restore, settings put back."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aimet_tf import QuantizationSimModel
from aimet_tf.qat import find_batch_norms, freeze_batch_norm_stats, reestimate_bn_stats
from aimet_tf.testing import models


def _calibrated_sim():
    sim = QuantizationSimModel(
        models.conv_bn_relu_model(), quant_scheme="tf", default_param_bw=4, config_file="htp"
    )
    sim.compute_encodings(models.random_images(32))
    return sim


def _stats(layers):
    return [(l.moving_mean.numpy().copy(), l.moving_variance.numpy().copy()) for l in layers]


def _expected_moments(sim, batches):
    """Per-batch moments of the BN input, computed independently: the quantized c1 output."""
    wrapper = sim.model.get_layer("c1")
    probe = keras.Model(sim.model.inputs, wrapper.output)
    means, variances = [], []
    for batch in batches:
        h = probe(batch, training=True).numpy().astype(np.float64)
        means.append(h.mean(axis=(0, 1, 2)))
        variances.append(h.var(axis=(0, 1, 2)))
    return np.mean(means, 0), np.mean(variances, 0)


@pytest.mark.parametrize("data_kind", ["array", "dataset"])
def test_statistics_are_the_average_batch_moments_and_restore_is_exact(data_kind):
    sim = _calibrated_sim()
    layers = find_batch_norms(sim)
    before = _stats(layers)
    images = models.random_images(80, seed=4) * 1.5 + 0.3
    batches = [images[i : i + 16] for i in range(0, 64, 16)]
    if data_kind == "array":
        data = images
    else:
        data = tf.data.Dataset.from_tensor_slices((images, np.zeros(80))).batch(16)
    handle = reestimate_bn_stats(sim, data, bn_num_batches=4, batch_size=16)
    assert handle.num_batches == 4
    mean, variance = _expected_moments(sim, batches)
    bn = layers[0]
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), variance, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(handle.estimated["bn1"].mean, bn.moving_mean.numpy())
    assert not np.allclose(bn.moving_mean.numpy(), before[0][0], atol=1e-3)
    handle.remove()
    for (m0, v0), (m1, v1) in zip(before, _stats(layers)):
        np.testing.assert_array_equal(m1, m0)
        np.testing.assert_array_equal(v1, v0)
    np.testing.assert_array_equal(handle.previous["bn1"].mean, before[0][0])


def test_changes_the_quantized_model_output_and_context_manager_restores():
    sim = _calibrated_sim()
    x = models.random_images(16, seed=7)
    reference = sim.model.predict(x, verbose=0)
    with reestimate_bn_stats(sim, models.random_images(64, seed=5) * 2.0, bn_num_batches=3, batch_size=16):
        assert not np.array_equal(sim.model.predict(x, verbose=0), reference)
    np.testing.assert_array_equal(sim.model.predict(x, verbose=0), reference)


def test_momentum_and_trainability_put_back_and_frozen_bn_reestimated():
    sim = _calibrated_sim()
    freeze_batch_norm_stats(sim, "inference")
    bn = find_batch_norms(sim)[0]
    bn.momentum = 0.95
    before = bn.moving_mean.numpy().copy()
    reestimate_bn_stats(sim, models.random_images(32, seed=2), bn_num_batches=2, batch_size=16)
    assert bn.momentum == 0.95 and bn.trainable is False
    assert not np.array_equal(bn.moving_mean.numpy(), before)


def test_float_model_and_fewer_batches_than_asked():
    model = models.conv_bn_relu_model()
    handle = reestimate_bn_stats(model, models.random_images(20, seed=1), bn_num_batches=100, batch_size=8)
    assert handle.num_batches == 3  # 8 + 8 + 4 images
    assert np.all(find_batch_norms(model)[0].moving_variance.numpy() > 0)


def test_errors_leave_statistics_unchanged():
    sim = _calibrated_sim()
    layers = find_batch_norms(sim)
    before = _stats(layers)
    with pytest.raises(ValueError, match="at least one batch"):
        reestimate_bn_stats(sim, np.zeros((0, 16, 16, 3), np.float32))
    for (m0, v0), (m1, v1) in zip(before, _stats(layers)):
        np.testing.assert_array_equal(m1, m0)
        np.testing.assert_array_equal(v1, v0)
    assert layers[0].momentum == 0.99 and layers[0].trainable
    # In the float model an Inf reaches BN (the sim's input quantizer would clamp it).
    model = models.conv_bn_relu_model()
    float_layers = find_batch_norms(model)
    float_before = _stats(float_layers)
    bad = models.random_images(8)
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="finite"):
        reestimate_bn_stats(model, bad, bn_num_batches=1, batch_size=8)
    for (m0, v0), (m1, v1) in zip(float_before, _stats(float_layers)):
        np.testing.assert_array_equal(m1, m0)
        np.testing.assert_array_equal(v1, v0)


@pytest.mark.parametrize("num_batches", [0, -1, 2.5, True])
def test_bad_num_batches(num_batches):
    with pytest.raises(ValueError, match="num_batches"):
        reestimate_bn_stats(models.conv_bn_relu_model(), models.random_images(8), bn_num_batches=num_batches)


def test_model_without_batch_norm_rejected():
    with pytest.raises(ValueError, match="no BatchNormalization"):
        reestimate_bn_stats(models.dense_model(), np.zeros((4, 10), np.float32))


def test_uncalibrated_sim_raises():
    sim = QuantizationSimModel(models.conv_bn_relu_model())
    with pytest.raises(RuntimeError, match="compute_encodings"):
        reestimate_bn_stats(sim, models.random_images(8), bn_num_batches=1)
