"""Channel pruning: least-squares re-fit beats plain removal; consistency through BN/ReLU/depthwise; refusals."""

import keras
import numpy as np
import pytest

from aimet_tf.compression.channel_pruning import producer_of, prune_input_channels
from aimet_tf.testing.models import random_images, randomize_batch_norms


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.ReLU(name="r2")(x)
    x = keras.layers.Conv2D(6, 3, name="c2")(x)
    skip = keras.layers.Conv2D(6, 1, name="c3")(x)
    x = keras.layers.Add(name="add")([x, skip])
    x = keras.layers.Conv2D(4, 1, name="c4")(x)
    return randomize_batch_norms(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)), seed=seed)


def _correlated(n, seed):
    """Inputs whose channels are correlated, so that a re-fit can make up for removed channels."""
    base = random_images(n, (12, 12, 1), seed=seed)
    return np.concatenate([base, 0.5 * base + 0.1 * random_images(n, (12, 12, 1), seed=seed + 1), random_images(n, (12, 12, 1), seed=seed + 2)], -1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refit_beats_plain_removal_and_model_stays_consistent(seed):
    model = _model(seed)
    samples = _correlated(32, seed)
    new, record = prune_input_channels(model, "c2", 0.5, samples)
    assert record.producer == "c1" and len(record.kept) == 4
    assert record.refit_error < record.removal_error
    assert new.get_layer("c1").filters == 4 and new.get_layer("bn1").moving_mean.shape == (4,)
    assert new.get_layer("dw").kernel.shape == (3, 3, 4, 1) and new.get_layer("c2").kernel.shape == (3, 3, 4, 6)
    # The re-fit layer's output error on new data is below plain removal's.
    x = _correlated(8, seed + 10)
    from aimet_tf.graph import GraphRunner

    want = GraphRunner(model, x).output_of("c2")
    got = GraphRunner(new, x).output_of("c2")
    plain = keras.models.clone_model(new)
    plain.set_weights(new.get_weights())
    plain.get_layer("c2").kernel.assign(model.get_layer("c2").kernel.numpy()[:, :, list(record.kept), :])
    removed = GraphRunner(plain, x).output_of("c2")
    assert np.linalg.norm(got - want) < np.linalg.norm(removed - want)
    assert model.get_layer("c1").filters == 8  # the input model is untouched


def test_full_ratio_keeps_the_function():
    model = _model(3)
    samples = _correlated(16, 3)
    new, record = prune_input_channels(model, "c2", 1.0, samples)
    assert record.kept == tuple(range(8)) and record.refit_error < 1e-5
    x = _correlated(4, 7)
    np.testing.assert_allclose(new(x), model(x), rtol=1e-3, atol=1e-4)


def test_refusals():
    model = _model(4)
    samples = _correlated(4, 4)
    with pytest.raises(ValueError, match="they are the model input's"):
        prune_input_channels(model, "c1", 0.5, samples)
    with pytest.raises(ValueError, match="reads 2 tensors"):
        prune_input_channels(model, "c4", 0.5, samples)
    with pytest.raises(ValueError, match=r"also reach \['c3'\]|tied|Add"):
        prune_input_channels(model, "c3", 0.5, samples)
    with pytest.raises(ValueError, match=r"ratio of kept channels in \(0, 1\]"):
        prune_input_channels(model, "c2", 0.0, samples)
    with pytest.raises(ValueError, match="Conv2D layers with groups=1. Received: DepthwiseConv2D 'dw'"):
        prune_input_channels(model, "dw", 0.5, samples)
    assert producer_of(model, "c2") == "c1"
