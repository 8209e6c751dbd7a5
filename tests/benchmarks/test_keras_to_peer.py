"""benchmarks/peers/keras_to_peer.py: what the peers read (no peer venv needed)."""

import json

import keras
import numpy as np
import pytest

from benchmarks.peers.keras_to_peer import export_for_peer, peer_graph


class _DepthwiseSubclass(keras.layers.DepthwiseConv2D):
    """Stands in for MLTK's _DepthwiseConv2DCompat: written out as its public base class."""


def _tiny_model() -> keras.Model:
    inputs = keras.Input((8, 6, 3), name="image")
    conv = keras.layers.Conv2D(4, 3, strides=(2, 1), padding="same", activation="relu6", name="conv")(inputs)
    dw = _DepthwiseSubclass(3, depth_multiplier=1, padding="same", use_bias=False, name="dw")(conv)
    add = keras.layers.Add(name="add")([conv, dw])
    cat = keras.layers.Concatenate(name="cat")([dw, add])  # call order differs from graph order
    x = keras.layers.ReLU(max_value=6.0, name="relu6")(cat)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="fc")(x)
    return keras.Model(inputs, outputs, name="tiny")


def test_graph_lists_layers_in_order_with_call_inputs_and_configs():
    graph, weights = peer_graph(_tiny_model())

    assert graph["format"] == 1 and graph["name"] == "tiny"
    assert graph["input"] == {"name": "image", "shape": [8, 6, 3]}
    assert graph["output"] == "fc"
    layers = {layer["name"]: layer for layer in graph["layers"]}
    assert [layer["name"] for layer in graph["layers"]] == [
        "image", "conv", "dw", "add", "cat", "relu6", "flatten", "drop", "fc"
    ]
    assert [layer["class"] for layer in graph["layers"]] == [
        "InputLayer", "Conv2D", "DepthwiseConv2D", "Add", "Concatenate", "ReLU", "Flatten", "Dropout", "Dense"
    ]
    assert layers["image"]["inputs"] == []
    assert layers["add"]["inputs"] == ["conv", "dw"]
    assert layers["cat"]["inputs"] == ["dw", "add"]
    assert layers["fc"]["inputs"] == ["drop"]
    assert layers["conv"]["output_shape"] == [4, 6, 4]
    assert layers["cat"]["output_shape"] == [4, 6, 8]
    assert layers["flatten"]["output_shape"] == [192]
    conv = layers["conv"]["config"]
    assert conv["kernel_size"] == [3, 3] and conv["strides"] == [2, 1] and conv["padding"] == "same"
    assert conv["activation"] == "relu6" and conv["dilation_rate"] == [1, 1] and conv["filters"] == 4
    assert layers["dw"]["config"]["depth_multiplier"] == 1 and layers["dw"]["config"]["use_bias"] is False
    assert layers["cat"]["config"]["axis"] == -1
    assert layers["relu6"]["config"]["max_value"] == 6.0
    assert layers["fc"]["config"]["activation"] == "softmax" and layers["fc"]["config"]["units"] == 5
    assert "kernel_initializer" not in conv  # only what the peers read
    assert sorted(weights) == ["conv/bias", "conv/kernel", "dw/kernel", "fc/bias", "fc/kernel"]
    assert weights["conv/kernel"].shape == (3, 3, 3, 4) and weights["dw/kernel"].shape == (3, 3, 4, 1)
    json.dumps(graph)  # plain JSON


def test_export_writes_graph_weights_and_data(tmp_path):
    model = _tiny_model()
    rng = np.random.default_rng(0)
    x_cal = rng.random((6, 8, 6, 3), dtype=np.float32)
    x_test = rng.random((4, 8, 6, 3), dtype=np.float32)

    graph = export_for_peer(model, str(tmp_path), x_cal, x_test, np.array([1, 0, 4, 2]))

    with open(tmp_path / "graph.json", encoding="utf-8") as f:
        assert json.load(f) == graph
    weights = np.load(tmp_path / "weights.npz")
    np.testing.assert_array_equal(weights["fc/kernel"], model.get_layer("fc").kernel.numpy())
    data = np.load(tmp_path / "data.npz")
    np.testing.assert_array_equal(data["x_cal"], x_cal)
    np.testing.assert_array_equal(data["y_test"], [1, 0, 4, 2])
    np.testing.assert_allclose(data["fp32_outputs"], model.predict(x_test, verbose=0), rtol=1e-6)

    export_for_peer(model, str(tmp_path), x_cal, x_test)  # no labels: the peer scores agreement
    assert "y_test" not in np.load(tmp_path / "data.npz").files


def test_unknown_and_batch_norm_layers_are_written_for_the_peer_to_refuse():
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(2, 1, name="conv")(inputs))
    x = keras.layers.LayerNormalization(name="ln")(x)
    graph, _ = peer_graph(keras.Model(inputs, x))
    classes = {layer["name"]: layer["class"] for layer in graph["layers"]}
    assert classes["bn"] == "BatchNormalization"
    assert classes["ln"].endswith(".LayerNormalization")


def test_several_outputs_are_refused():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(1)(inputs)])
    with pytest.raises(ValueError, match="one input and one output"):
        peer_graph(model)
