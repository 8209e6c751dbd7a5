"""Tests for aimet_tf.quantization.graph: functional-graph edges and supergroup matching."""

import keras
import numpy as np
import pytest

from aimet_tf.quantization import graph
from aimet_tf.quantization.config import load_config
from aimet_tf.quantization.graph import find_supergroups, layer_edges
from aimet_tf.testing import models

L = keras.layers


def _image_input(name="image"):
    return keras.Input((8, 8, 3), name=name)


def conv_bn_relu6():
    inputs = _image_input()
    x = L.Conv2D(4, 3, name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(max_value=6.0, name="relu6")(x)
    return keras.Model(inputs, L.GlobalAveragePooling2D(name="gap")(x))


def conv_relu():
    inputs = _image_input()
    x = L.Conv2D(4, 3, name="conv")(inputs)
    x = L.ReLU(name="relu")(x)
    return keras.Model(inputs, L.Flatten(name="flat")(x))


def add_relu():
    inputs = _image_input()
    a = L.Conv2D(3, 1, name="conv_a")(inputs)
    x = L.Add(name="add")([inputs, a])
    x = L.ReLU(name="relu")(x)
    return keras.Model(inputs, L.Flatten(name="flat")(x))


def dense_relu():
    inputs = keras.Input((6,), name="features")
    x = L.Dense(5, name="fc")(inputs)
    x = L.ReLU(name="relu")(x)
    return keras.Model(inputs, L.Dense(2, name="head")(x))


def conv_with_two_consumers():
    inputs = _image_input()
    x = L.Conv2D(4, 3, name="conv")(inputs)
    a = L.ReLU(name="relu")(x)
    b = L.MaxPooling2D(1, name="pool")(x)
    return keras.Model(inputs, L.Add(name="add")([a, b]))


def conv_bn_relu_then_conv_relu():
    inputs = _image_input()
    x = L.Conv2D(4, 3, name="conv1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.Conv2D(4, 3, name="conv2")(x)
    x = L.ReLU(name="relu2")(x)
    return keras.Model(inputs, x)


def nested_branch_model():
    """An outer model whose two branches are a nested model and a conv chain."""
    branch_in = keras.Input((8, 8, 3), name="branch_in")
    y = L.Conv2D(4, 1, name="b_conv")(branch_in)
    y = L.BatchNormalization(name="b_bn")(y)
    y = L.ReLU(name="b_relu")(y)
    branch = keras.Model(branch_in, y, name="branch")

    inputs = _image_input()
    left = branch(inputs)
    right = L.Conv2D(4, 1, name="r_conv")(inputs)
    right = L.ReLU(name="r_relu")(right)
    x = L.Add(name="merge")([left, right])
    x = L.ReLU(name="merge_relu")(x)
    return keras.Model(inputs, x)


def sequential_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(4, 3, name="s_conv"),
            L.BatchNormalization(name="s_bn"),
            L.ReLU(name="s_relu"),
            L.Flatten(name="s_flat"),
            L.Dense(3, name="s_fc"),
            L.ReLU(max_value=6.0, name="s_relu6"),
        ],
        name="seq",
    )


# --- layer_edges ---------------------------------------------------------------------------------


def test_layer_edges_of_branching_model():
    inputs = keras.Input((4,), name="x")
    a = L.Dense(4, name="a")(inputs)
    b = L.Dense(4, name="b")(inputs)
    diff = L.Subtract(name="diff")([b, a])
    twice = L.Add(name="twice")([diff, diff])
    model = keras.Model(inputs, twice)
    producers, consumers = layer_edges(model)
    assert producers == {"x": [], "a": ["x"], "b": ["x"], "diff": ["b", "a"],
                         "twice": ["diff", "diff"]}
    # Keras orders a and b by its own traversal from the outputs; the edges follow that order.
    order = [op.name for op in model.operations]
    assert list(producers) == list(consumers) == order
    assert consumers == {"x": [name for name in order if name in ("a", "b")], "a": ["diff"],
                         "b": ["diff"], "diff": ["twice"], "twice": []}
    # Every producer precedes its consumers.
    for name, sources in producers.items():
        assert all(order.index(source) < order.index(name) for source in sources)


def test_layer_edges_of_multi_input_model_keeps_argument_order():
    first = keras.Input((3,), name="first")
    second = keras.Input((3,), name="second")
    out = L.Concatenate(name="cat")([second, first])
    producers, consumers = layer_edges(keras.Model([first, second], out))
    assert producers["cat"] == ["second", "first"]
    assert consumers["first"] == ["cat"] and consumers["second"] == ["cat"]


def test_layer_edges_of_sequential_model():
    model = sequential_model()
    producers, consumers = layer_edges(model)
    names = list(producers)
    assert names[1:] == ["s_conv", "s_bn", "s_relu", "s_flat", "s_fc", "s_relu6"]
    assert producers["s_conv"] == [names[0]]
    assert consumers["s_flat"] == ["s_fc"]


def test_layer_edges_treat_nested_model_as_one_layer():
    producers, consumers = layer_edges(nested_branch_model())
    assert producers["branch"] == ["image"]
    assert producers["merge"] == ["branch", "r_relu"]
    assert "b_conv" not in producers
    assert sorted(consumers["image"]) == ["branch", "r_conv"]


def test_layer_edges_include_keras_ops_nodes():
    inputs = keras.Input((3,), name="x")
    a = L.Dense(3, name="fc")(inputs)
    out = keras.ops.relu(a + inputs)
    producers, _ = layer_edges(keras.Model(inputs, out))
    add_name, relu_name = list(producers)[-2:]
    assert producers[add_name] == ["fc", "x"]
    assert producers[relu_name] == [add_name]


# --- find_supergroups ----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["default_fused", "htp"])
@pytest.mark.parametrize(
    "build, expected",
    [
        (conv_bn_relu6, [("conv", "bn", "relu6")]),
        (conv_relu, [("conv", "relu")]),
        (add_relu, [("add", "relu")]),
        (dense_relu, [("fc", "relu")]),
        (conv_with_two_consumers, []),
        (conv_bn_relu_then_conv_relu, [("conv1", "bn1", "relu1"), ("conv2", "relu2")]),
        (nested_branch_model,
         [("r_conv", "r_relu"), ("branch/b_conv", "branch/b_bn", "branch/b_relu"),
          ("merge", "merge_relu")]),
        (sequential_model, [("s_conv", "s_bn", "s_relu"), ("s_fc", "s_relu6")]),
    ],
)
def test_find_supergroups_on_presets(build, expected, preset):
    assert find_supergroups(build(), load_config(preset)) == expected


def _config(*op_lists):
    return load_config({"supergroups": [{"op_list": list(ops)} for ops in op_lists]})


@pytest.mark.parametrize(
    "op_lists",
    [
        # The shorter list comes first, the longer one still wins.
        [("Conv", "BatchNormalization"), ("Conv", "BatchNormalization", "Relu")],
        [("Conv", "BatchNormalization", "Relu"), ("Conv", "BatchNormalization")],
    ],
)
def test_longest_match_wins(op_lists):
    model = conv_bn_relu_then_conv_relu()
    assert find_supergroups(model, _config(*op_lists)) == [("conv1", "bn1", "relu1")]


def test_without_bn_supergroup_conv_bn_is_not_fused():
    model = conv_bn_relu_then_conv_relu()
    assert find_supergroups(model, _config(("Conv", "Relu"))) == [("conv2", "relu2")]


def test_layer_joins_at_most_one_supergroup():
    inputs = _image_input()
    x = L.Conv2D(4, 3, name="conv")(inputs)
    x = L.ReLU(name="relu")(x)
    x = L.MaxPooling2D(2, name="pool")(x)
    config = _config(("Conv", "Relu"), ("Relu", "MaxPool"))
    assert find_supergroups(keras.Model(inputs, x), config) == [("conv", "relu")]


@pytest.mark.parametrize("make_layer", [lambda: L.Conv2D(4, 3, activation="relu", name="conv"),
                                        lambda: L.Dense(4, activation="relu", name="conv")])
def test_builtin_activation_stops_a_chain(make_layer):
    inputs = _image_input()
    x = make_layer()(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    config = _config(("Conv", "BatchNormalization", "Relu"), ("Gemm", "BatchNormalization"))
    assert find_supergroups(keras.Model(inputs, x), config) == []


def test_builtin_activation_layer_can_end_a_chain():
    inputs = _image_input()
    x = L.Conv2D(4, 3, name="conv")(inputs)
    x = L.Conv2D(4, 1, activation="relu", name="conv_relu")(x)
    assert find_supergroups(keras.Model(inputs, x), _config(("Conv", "Conv"))) == [
        ("conv", "conv_relu")
    ]


def test_model_output_is_not_fused_into_the_next_layer():
    inputs = _image_input()
    conv = L.Conv2D(4, 3, name="conv")(inputs)
    relu = L.ReLU(name="relu")(conv)
    model = keras.Model(inputs, [conv, relu])
    assert find_supergroups(model, load_config("default")) == []


def test_shared_layer_is_not_fused():
    inputs = _image_input()
    shared = L.Conv2D(3, 1, name="shared")
    x = L.ReLU(name="relu")(shared(inputs))
    x = shared(x)
    assert find_supergroups(keras.Model(inputs, x), load_config("default")) == []


def test_keras_ops_nodes_are_matched():
    inputs = keras.Input((4,), name="x")
    a = L.Dense(4, name="fc")(inputs)
    out = keras.ops.relu(a + inputs)
    model = keras.Model(inputs, out)
    add_name, relu_name = [op.name for op in model.operations][-2:]
    assert find_supergroups(model, load_config("default")) == [(add_name, relu_name)]


def test_config_argument_accepts_preset_names_and_dicts():
    model = conv_bn_relu6()
    assert find_supergroups(model) == find_supergroups(model, "default")
    assert find_supergroups(model, {"supergroups": []}) == []


def test_subclassed_model_is_rejected():
    class Net(keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(TypeError, match="subclassed keras.Model .*prepare_model"):
        layer_edges(Net())


def test_sequential_without_input_shape_is_rejected():
    model = keras.Sequential([L.Dense(2)], name="unbuilt")
    with pytest.raises(ValueError, match="Sequential model 'unbuilt' has no input yet"):
        find_supergroups(model, load_config("default"))


# -- flattening nested models ----------------------------------------------------------------------


def _flat_check(model, x):
    flat = graph.flatten_nested_models(model)
    assert not graph.has_nested_models(flat)
    np.testing.assert_allclose(flat.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    return flat


def test_flatten_inlines_a_nested_functional_model_and_copies_weights():
    model = models.branchy_model()
    assert graph.has_nested_models(model)
    x = np.random.default_rng(0).normal(size=(4, 12, 12, 4)).astype(np.float32)
    flat = _flat_check(model, x)
    names = [layer.name for layer in flat.layers]
    assert "inner_conv" in names and "inner" not in names
    assert flat.get_layer("inner_conv").kernel is not model.get_layer("inner").get_layer("inner_conv").kernel


def test_flatten_transfer_learning_style_sequential_with_clashing_names_and_two_levels():
    keras.utils.set_random_seed(5)
    deep = keras.Sequential([keras.Input((6, 6, 4)), keras.layers.Conv2D(4, 1, name="head")], name="deep")
    base_in = keras.Input((6, 6, 3))
    y = deep(keras.layers.Conv2D(4, 3, padding="same", name="c")(base_in))
    base = keras.Model(base_in, keras.layers.GlobalAveragePooling2D(name="gap")(y), name="base")
    model = keras.Sequential([keras.Input((6, 6, 3)), base, keras.layers.Dense(2, name="head")])
    x = np.random.default_rng(1).normal(size=(3, 6, 6, 3)).astype(np.float32)
    flat = _flat_check(model, x)
    names = [layer.name for layer in flat.layers]
    assert "head" in names and "deep_head" in names  # the top-level name stays, the inner one moves
    assert isinstance(flat.get_layer("head"), keras.layers.Dense)


def test_flatten_copies_a_nested_model_called_twice():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="d")], name="inner")
    inp = keras.Input((4,))
    out = keras.layers.Add(name="add")([inner(inp), inner(keras.layers.ReLU(name="r")(inp))])
    model = keras.Model(inp, out)
    x = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    flat = _flat_check(model, x)
    dense = [layer for layer in flat.layers if isinstance(layer, keras.layers.Dense)]
    assert len(dense) == 2 and dense[0].name != dense[1].name
