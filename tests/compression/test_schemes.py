"""Compressed layers in real Keras models: exact at full rank, traceable names, costs, ranks."""

import keras
import numpy as np
import pytest

from aimet_tf.compression import schemes
from aimet_tf.testing.models import random_images


def _model(padding="same", strides=1, dilation=1, kernel=(3, 3), seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 11, 4))
    x = keras.layers.Conv2D(6, kernel, strides=strides, dilation_rate=dilation, padding=padding, activation="relu", name="conv")(inputs)
    x = keras.layers.Conv2D(5, 1, strides=strides, name="pw")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(7, activation="tanh", name="fc")(x)
    model = keras.Model(inputs, x)
    for layer in model.layers:
        if getattr(layer, "use_bias", False):
            layer.bias.assign(np.random.default_rng(seed).normal(size=layer.bias.shape))
    return model


def _relative(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.mark.parametrize(
    "padding,strides,dilation,kernel",
    [("same", 1, 1, (3, 3)), ("valid", 1, 1, (3, 3)), ("same", 2, 1, (3, 3)), ("valid", 1, 2, (3, 2)), ("same", 2, 1, (4, 2))],
)
def test_full_rank_reproduces_the_layer(padding, strides, dilation, kernel):
    model = _model(padding, strides, dilation, kernel)
    x = random_images(3, (12, 11, 4), seed=1)
    y = model(x)
    top = min(4 * kernel[0], kernel[1] * 6)
    svd = schemes.spatial_svd_layer(model, "conv", top)
    assert [l.name for l in svd.layers if l.name.startswith("conv")] == ["conv_a", "conv_b"]
    assert _relative(svd(x), y) < 1e-5
    tucker = schemes.tucker2_layer(model, "conv", 4, 6, iterations=2)
    assert [l.name for l in tucker.layers if l.name.startswith("conv")] == ["conv_a", "conv_b", "conv_c"]
    assert _relative(tucker(x), y) < 1e-5
    dense = schemes.weight_svd_layer(model, "fc", 7)
    assert _relative(dense(x), y) < 1e-5
    pointwise = schemes.weight_svd_layer(model, "pw", 5)
    assert _relative(pointwise(x), y) < 1e-5
    assert model.get_layer("conv").kernel.shape == (*kernel, 4, 6)  # the input model is untouched


def test_reduced_rank_error_follows_singular_values():
    model = _model()
    x = random_images(4, (12, 11, 4), seed=2)
    y = model(x)
    errors = [_relative(schemes.weight_svd_layer(model, "fc", r)(x), y) for r in (1, 3, 5, 7)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-5
    layer = model.get_layer("conv")
    svd = schemes.spatial_svd_layer(model, "conv", 3)
    composed = np.einsum("ick,jko->ijco", svd.get_layer("conv_a").kernel.numpy()[:, 0], svd.get_layer("conv_b").kernel.numpy()[0])
    from aimet_tf.compression.decompose import spatial_svd

    np.testing.assert_allclose(np.linalg.norm(composed - layer.kernel.numpy()), spatial_svd(layer.kernel.numpy(), 3).error, rtol=1e-4)


def test_costs_and_rank_for_ratio():
    model = _model(padding="valid")
    # conv: 3x3x4x6 at 10x9 output positions
    assert schemes.layer_cost(model, "conv", "mac") == 10 * 9 * 3 * 3 * 4 * 6
    assert schemes.layer_cost(model, "conv", "memory") == 3 * 3 * 4 * 6
    for scheme, name in (("spatial_svd", "conv"), ("tucker", "conv"), ("weight_svd", "fc"), ("weight_svd", "pw")):
        for metric in ("mac", "memory"):
            full = schemes.layer_cost(model, name, metric)
            for ratio in (0.3, 0.5, 0.8):
                ranks = schemes.rank_for_ratio(model, name, scheme, ratio, metric)
                layer = model.get_layer(name)
                from aimet_tf.graph import ModelGraph

                g = ModelGraph(model)
                cost = schemes.chain_cost(scheme, layer, g.input_specs(name)[0][0], g.output_specs(name)[0][0], ranks, metric)
                assert cost <= ratio * full or min(ranks) == 1
    # the chain's real MACs equal chain_cost's
    from aimet_tf.graph.cost import layer_costs

    new = schemes.spatial_svd_layer(model, "conv", 2)
    costs = layer_costs(new)
    g = ModelGraph(model)
    assert costs["conv_a"].macs + costs["conv_b"].macs == schemes.chain_cost(
        "spatial_svd", model.get_layer("conv"), g.input_specs("conv")[0][0], g.output_specs("conv")[0][0], (2,), "mac"
    )
    new = schemes.tucker2_layer(model, "conv", 2, 3)
    costs = layer_costs(new)
    assert costs["conv_a"].macs + costs["conv_b"].macs + costs["conv_c"].macs == schemes.chain_cost(
        "tucker", model.get_layer("conv"), g.input_specs("conv")[0][0], g.output_specs("conv")[0][0], (2, 3), "mac"
    )


def test_refusals():
    model = _model()
    with pytest.raises(ValueError, match="ratio in \\(0, 1\\]"):
        schemes.rank_for_ratio(model, "conv", "spatial_svd", 1.5)
    with pytest.raises(ValueError, match="ratio in \\(0, 1\\]"):
        schemes.rank_for_ratio(model, "conv", "spatial_svd", 0.0)
    with pytest.raises(ValueError, match="Spatial SVD applies to Conv2D layers. Received: Dense 'fc'"):
        schemes.spatial_svd_layer(model, "fc", 1)
    with pytest.raises(ValueError, match="Weight SVD applies to Dense and 1x1 Conv2D layers. Received: Conv2D 'conv' with kernel_size=\\(3, 3\\)"):
        schemes.weight_svd_layer(model, "conv", 1)
    with pytest.raises(ValueError, match="Received: 'nope'"):
        schemes.tucker2_layer(model, "nope", 1, 1)
    assert schemes.compressible_layers(model, "spatial_svd") == ["conv"]
    assert schemes.compressible_layers(model, "weight_svd") == ["pw", "fc"]
