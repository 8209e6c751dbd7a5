"""Batch-norm folding keeps the FP32 function (1e-5 relative) and removes the folded BNs."""

import keras
import numpy as np
import pytest

from aimet_tf.ptq import find_foldable_pairs, fold_batch_norms
from aimet_tf.testing import models

L = keras.layers


def _randomize_bns(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _randomize_bns(layer, seed + 1)
        if isinstance(layer, L.BatchNormalization):
            c = layer.moving_mean.shape[0]
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, c))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.3, c))
            layer.moving_mean.assign(rng.normal(0, 0.3, c))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, c))
    return model


def _relative_error(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def _producer_then_bn(kind: str) -> keras.Model:
    keras.utils.set_random_seed(1)
    inp = keras.Input((9, 9, 4))
    if kind == "conv":
        x = L.Conv2D(6, 3, use_bias=False, name="p")(inp)
    elif kind == "conv_bias":
        x = L.Conv2D(6, 3, strides=2, name="p")(inp)
    elif kind == "depthwise_multiplier":
        x = L.DepthwiseConv2D(3, depth_multiplier=3, name="p")(inp)
    elif kind == "separable":
        x = L.SeparableConv2D(5, 3, depth_multiplier=2, name="p")(inp)
    elif kind == "transpose":
        x = L.Conv2DTranspose(5, 3, strides=2, name="p")(inp)
    elif kind == "dense":
        x = L.Dense(7, name="p")(L.Flatten()(inp))
    else:
        raise ValueError(kind)
    center_scale = {"conv": (False, True), "dense": (True, False)}.get(kind, (True, True))
    x = L.BatchNormalization(center=center_scale[0], scale=center_scale[1], epsilon=1e-3, name="bn")(x)
    out = L.ReLU(name="relu")(x)
    return _randomize_bns(keras.Model(inp, out))


@pytest.mark.parametrize(
    "kind", ["conv", "conv_bias", "depthwise_multiplier", "separable", "transpose", "dense"]
)
def test_fold_preserves_fp32_output(kind):
    model = _producer_then_bn(kind)
    x = np.random.default_rng(0).normal(size=(8, 9, 9, 4)).astype(np.float32)
    folded = fold_batch_norms(model)
    assert find_foldable_pairs(model) == [("p", "bn")]
    assert not any(isinstance(l, L.BatchNormalization) for l in folded.layers)
    assert folded.get_layer("p").use_bias
    assert _relative_error(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-5


def test_fold_on_the_shared_test_model_and_original_untouched():
    model = models.conv_bn_relu_model()
    weights = [w.copy() for w in model.get_weights()]
    x = models.random_images(16)
    folded = fold_batch_norms(model)
    assert _relative_error(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-5
    assert "bn1" not in [l.name for l in folded.layers]
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert folded.get_layer("c1") is not model.get_layer("c1")


def test_unfoldable_batch_norms_stay():
    keras.utils.set_random_seed(2)
    inp = keras.Input((6, 6, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(inp)
    b1 = L.BatchNormalization(name="bn_shared_input")(a)       # 'a' also feeds the Add
    y = L.Add(name="add")([a, b1])
    y = L.ReLU(name="relu")(y)
    y = L.BatchNormalization(name="bn_after_relu")(y)          # no linear producer
    z = L.Conv2D(4, 1, activation="relu", name="c_act")(y)
    z = L.BatchNormalization(name="bn_after_activation")(z)    # activation inside the conv
    model = _randomize_bns(keras.Model(inp, z))
    assert find_foldable_pairs(model) == []
    folded = fold_batch_norms(model)
    assert len([l for l in folded.layers if isinstance(l, L.BatchNormalization)]) == 3
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_nested_and_sequential_models_fold_inside():
    keras.utils.set_random_seed(3)
    inner = keras.Sequential(
        [keras.Input((6, 6, 3)), L.Conv2D(4, 3, name="ic"), L.BatchNormalization(name="ibn"),
         L.ReLU(name="ir")],
        name="inner",
    )
    inp = keras.Input((6, 6, 3))
    out = L.Dense(2, name="head")(L.Flatten()(inner(inp)))
    model = _randomize_bns(keras.Model(inp, out))
    folded = fold_batch_norms(model)
    inner_folded = folded.get_layer("inner")
    assert not any(isinstance(l, L.BatchNormalization) for l in inner_folded.layers)
    x = np.random.default_rng(1).normal(size=(4, 6, 6, 3)).astype(np.float32)
    assert _relative_error(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-5


def test_subclassed_model_rejected():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="Functional"):
        fold_batch_norms(Net())
