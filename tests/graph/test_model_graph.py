"""ModelGraph, the rewrite primitives and the catalogue; and that only aimet_tf.graph reads Keras internals."""

import pathlib
import re

import keras
import numpy as np
import pytest

from aimet_tf import graph
from aimet_tf.graph import (
    GraphRunner,
    ModelGraph,
    activation_kind,
    clone_model_graph,
    commutes_with_channel_scaling,
    inline_nested_models,
    insert_after,
    output_channel_axis,
    remove_layer,
    replace_layer,
    replace_with_chain,
    split_activations,
)

L = keras.layers
RNG = np.random.default_rng(0)


def _residual():
    x = keras.Input((8, 8, 3), name="image")
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    b = L.Conv2D(4, 1, name="conv2")(a)
    c = L.Add(name="add")([a, b])
    y = L.Dense(2, name="fc")(L.GlobalAveragePooling2D(name="gap")(c))
    return keras.Model(x, y, name="residual")


def _images(n=3, shape=(8, 8, 3)):
    return RNG.normal(size=(n, *shape)).astype("float32")


def test_nodes_tensors_producers_and_consumers():
    g = ModelGraph(_residual())
    assert [n.name for n in g.nodes] == ["conv1", "conv2", "add", "gap", "fc"]
    assert g.input_names == ["image/output:0"] and g.output_names == ["fc/output:0"]
    assert g.node("add").inputs == ("conv1/output:0", "conv2/output:0")
    assert g.producer("conv1/output:0").name == "conv1" and g.producer("image/output:0") is None
    assert [(n.name, i) for n, i in g.consumers("conv1/output:0")] == [("conv2", 0), ("add", 0)]
    assert [n.name for n in g.consumer_nodes("conv1")] == ["conv2", "add"]
    assert g.is_model_output("fc") and not g.is_model_output("add")
    assert g.reads_model_input("conv1") == [True]
    producers, consumers = g.layer_edges()
    assert producers["add"] == ["conv1", "conv2"] and consumers["image"] == ["conv1"]
    with pytest.raises(KeyError, match="No node 'nope'.*Expected one of"):
        g.node("nope")


def test_shared_layer_calls_are_separate_nodes():
    shared = L.Dense(3, name="shared")
    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    model = keras.Model([a, b], L.Add(name="add")([shared(a), shared(b)]))
    g = ModelGraph(model)
    assert [n.name for n in g.nodes] == ["shared", "shared#1", "add"]
    assert g.call_count(shared) == 2 and [n.call_index for n in g.nodes_of(shared)] == [0, 1]
    assert g.node("add").inputs == ("shared/output:0", "shared#1/output:0")


def test_graph_runner_matches_the_model():
    model = _residual()
    x = _images(5)
    runner = GraphRunner(model, x, keep=["conv1"], batch_size=2)
    conv2_in = runner.inputs_of("conv2")
    sub = keras.Model(model.input, model.get_layer("conv1").output)
    np.testing.assert_allclose(conv2_in, sub.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runner.output_of("fc"), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="already run"):
        runner.inputs_of("conv2")


def _same_function(a, b, x, rtol=1e-6):
    ya, yb = np.asarray(a(x)), np.asarray(b(x))
    assert ya.shape == yb.shape
    scale = max(float(np.max(np.abs(ya))), 1e-12)
    assert float(np.max(np.abs(ya - yb))) <= rtol * scale


def test_rewrites_return_new_models_and_leave_the_original_alone():
    model = _residual()
    x = _images()
    before = [w.copy() for w in model.get_weights()]
    copy = clone_model_graph(model)
    _same_function(model, copy, x)
    assert all(a is not b for a, b in zip(copy.layers[1:], model.layers[1:]))

    split, changes = split_activations(model)
    assert changes == ["split activation 'relu' out of layer 'conv1' into layer 'conv1_relu'"]
    assert split.get_layer("conv1").get_config()["activation"] == "linear"
    assert [n.name for n in ModelGraph(split).nodes][:2] == ["conv1", "conv1_relu"]
    _same_function(model, split, x)

    with_identity = insert_after(split, "conv2", L.Identity(name="id"))
    assert ModelGraph(with_identity).node("add").inputs[1] == "id/output:0"
    _same_function(model, with_identity, x)
    _same_function(model, remove_layer(with_identity, "id"), x)

    # conv2 (1x1, 4 -> 4) as a chain of two 1x1 convs whose product is the original kernel.
    k, bias = model.get_layer("conv2").get_weights()
    first = L.Conv2D(4, 1, use_bias=False, name="conv2_a")
    second = L.Conv2D(4, 1, name="conv2_b")
    chained = replace_with_chain(model, "conv2", [first, second])
    first.set_weights([np.eye(4, dtype="float32").reshape(1, 1, 4, 4)])
    second.set_weights([k, bias])
    _same_function(model, chained, x)

    swapped = replace_layer(model, "gap", L.GlobalMaxPooling2D(name="gmp"))
    assert "gmp" in [l.name for l in swapped.layers] and "gap" not in [l.name for l in swapped.layers]
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_rewrite_errors_say_what_was_expected():
    model = _residual()
    with pytest.raises(ValueError, match="same shape"):
        remove_layer(model, "gap")
    with pytest.raises(ValueError, match=r"layer name\(s\) \['conv2'\] already exist"):
        insert_after(model, "conv1", L.Identity(name="conv2"))
    with pytest.raises(ValueError, match="at least one layer"):
        replace_with_chain(model, "conv2", [])


def test_inline_nested_models():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(4, name="d"), L.ReLU(name="r")], name="inner")
    x = keras.Input((4,))
    model = keras.Model(x, L.Dense(2, name="d_out")(inner(inner(x))))
    flat = inline_nested_models(model)
    assert not graph.has_nested_models(flat)
    assert [l.name for l in flat.layers[1:]] == ["d", "r", "inner_d", "inner_r", "d_out"]
    _same_function(model, flat, RNG.normal(size=(3, 4)).astype("float32"))


def test_catalogue():
    assert output_channel_axis(L.Conv2D(2, 3)) == -1
    assert output_channel_axis(L.Conv2DTranspose(2, 3)) == -2
    assert output_channel_axis(L.DepthwiseConv2D(3)) is None
    with pytest.raises(KeyError, match="has no kernel"):
        output_channel_axis(L.ReLU())
    assert activation_kind(L.Softmax()) == "cross_channel"
    assert activation_kind(L.Activation("softmax")) == "cross_channel"
    assert activation_kind(L.Activation("sigmoid")) == "channelwise"
    assert activation_kind(L.Activation("linear")) is None and activation_kind(L.Dense(2)) is None
    assert commutes_with_channel_scaling(L.ReLU()) and commutes_with_channel_scaling(L.PReLU())
    assert not commutes_with_channel_scaling(L.ReLU(max_value=6.0))
    assert not commutes_with_channel_scaling(L.Activation("sigmoid"))
    # The property itself, on numbers: relu(s * x) == s * relu(x) for positive s; not for ReLU6.
    x = RNG.normal(size=(64, 4)).astype("float32") * 10
    s = np.array([0.5, 2.0, 3.0, 7.0], "float32")
    for layer in (L.ReLU(), L.LeakyReLU(negative_slope=0.2), L.ReLU(max_value=6.0)):
        equal = np.allclose(np.asarray(layer(x * s)), s * np.asarray(layer(x)), rtol=1e-5, atol=1e-5)
        assert equal == commutes_with_channel_scaling(layer)


# Keras internals that only aimet_tf/graph may touch.
_PRIVATE = re.compile(
    r"\._(nodes_by_depth|inbound_nodes|outbound_nodes|keras_history|flatten_layers|operations|run_through_graph|"
    r"outputs_struct|functional|build_shapes_dict)\b"
)


def test_only_the_graph_package_reads_keras_graph_internals():
    root = pathlib.Path(graph.__file__).resolve().parent.parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.is_relative_to(root / "graph"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _PRIVATE.search(line):
                offenders.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert offenders == []
    # The pattern does find what it looks for (the graph package itself uses them).
    assert _PRIVATE.search((root / "graph" / "model_graph.py").read_text())
