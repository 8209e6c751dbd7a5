"""prepare_model on layer names that clash across nesting levels: the inner copy is renamed, as
inline_nested_models renames it, and the report says so."""

import keras
import numpy as np
import pytest

from aimet_tf.graph import inline_nested_models, prepare_model_with_report, rename_layers

L = keras.layers


def _rel_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def _sequential_in_functional():
    """A top-level "dense" and a nested Sequential whose first layer is also "dense"."""
    inner = keras.Sequential([keras.Input((4,)), L.Dense(4, name="dense"), L.ReLU(name="relu")], name="inner")
    x = keras.Input((3,))
    return keras.Model(x, L.Dense(2, name="head")(inner(L.Dense(4, name="dense")(x))), name="outer")


def _two_levels_deep():
    """"dense" at the top, inside a nested Functional, and inside a Sequential nested in that one."""
    deepest = keras.Sequential([keras.Input((4,)), L.Dense(4, activation="tanh", name="dense")], name="deepest")
    y = keras.Input((4,))
    middle = keras.Model(y, deepest(L.Dense(4, name="dense")(y)), name="middle")
    x = keras.Input((3,))
    return keras.Model(x, L.Dense(2, name="head")(middle(L.Dense(4, name="dense")(x))), name="outer")


def _renamed(model: str, new: str) -> str:
    return f"renamed layer 'dense' of nested model {model!r} to {new!r} (the name is taken)"


@pytest.mark.parametrize(
    "build, renames",
    [
        (_sequential_in_functional, [_renamed("inner", "inner_dense")]),
        (_two_levels_deep, [_renamed("middle", "middle_dense"), _renamed("deepest", "deepest_dense")]),
    ],
    ids=["one_level", "two_levels"],
)
def test_clashing_inner_names_are_renamed_as_inlining_does(build, renames):
    keras.utils.set_random_seed(3)
    model = build()
    prepared, report = prepare_model_with_report(model)
    x = np.random.default_rng(4).normal(size=(16, 3)).astype(np.float32)
    assert _rel_error(model.predict(x, verbose=0), prepared.predict(x, verbose=0)) <= 1e-6
    assert [line for line in report.changes if line.startswith("renamed layer")] == renames
    names = [layer.name for layer in prepared.layers if not isinstance(layer, L.InputLayer)]
    inlined = [layer.name for layer in inline_nested_models(model).layers if not isinstance(layer, L.InputLayer)]
    # The names inline_nested_models gives, but for the activation prepare_model splits off.
    assert [n for n in names if not n.endswith("_tanh")] == inlined and len(set(names)) == len(names)
    # The original keeps its names: the renamed layers are copies.
    nested = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    assert "dense" in [layer.name for layer in nested.layers]


def test_a_nested_model_called_twice_is_renamed_once_and_shared_like_any_layer():
    keras.utils.set_random_seed(5)
    inner = keras.Sequential([keras.Input((4,)), L.Dense(4, name="dense"), L.ReLU(name="relu")], name="inner")
    x = keras.Input((4,))
    model = keras.Model(x, inner(inner(L.Dense(4, name="dense")(x))), name="twice")
    prepared, report = prepare_model_with_report(model)
    data = np.random.default_rng(6).normal(size=(16, 4)).astype(np.float32)
    assert _rel_error(model.predict(data, verbose=0), prepared.predict(data, verbose=0)) <= 1e-6
    assert [line for line in report.changes if line.startswith("renamed layer")] == [
        "renamed layer 'dense' of nested model 'inner' to 'inner_dense' (the name is taken)"
    ]
    assert "shared layer 'inner_dense' got one copy per call site" in report.changes
    assert {"dense", "inner_dense", "inner_dense_1", "relu", "relu_1"} <= {l.name for l in prepared.layers}


def test_rename_layers_copies_weights_and_refuses_clashes():
    keras.utils.set_random_seed(7)
    model = _sequential_in_functional().get_layer("inner")
    renamed = rename_layers(model, {"dense": "first", "relu": "act"})
    assert [l.name for l in renamed.layers][1:] == ["first", "act"]
    np.testing.assert_array_equal(renamed.get_layer("first").kernel.numpy(), model.get_layer("dense").kernel.numpy())
    assert renamed.get_layer("first") is not model.get_layer("dense")
    with pytest.raises(ValueError, match=r"expected layers of model 'inner'\. Received: unknown names \['nope'\]"):
        rename_layers(model, {"nope": "x"})
    with pytest.raises(ValueError, match=r"expected distinct layer names afterwards\. Received: \['relu'\]"):
        rename_layers(model, {"dense": "relu"})


class _Block(keras.layers.Layer):
    """A composite whose sublayer names are fixed, as KerasHub's TransformerEncoder's are."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = L.Dense(4, name="inner_dense")
        self.norm = L.LayerNormalization(name="norm")

    def build(self, shape):
        self.inner.build(shape)
        self.norm.build(shape[:-1] + (4,))

    def call(self, x):
        return self.norm(self.inner(x) + x[:, :4])


def test_composites_with_the_same_sublayer_names_are_renamed_on_a_copy():
    x = keras.Input((4,))
    first, second = _Block(name="block_a"), _Block(name="block_b")
    model = keras.Model(x, second(first(x)))
    prepared, report = prepare_model_with_report(model)

    names = [layer.name for layer in prepared.layers]
    assert len(names) == len(set(names))
    assert {"inner_dense", "norm", "block_b_inner_dense", "block_b_norm"} <= set(names)
    assert "renamed layer 'inner_dense' of 'block_b' to 'block_b_inner_dense' (the name is taken)" in report.changes
    # The user's layers keep their names; the renamed copy holds the same weights.
    assert second.inner.name == "inner_dense"
    np.testing.assert_array_equal(prepared.get_layer("block_b_inner_dense").kernel, second.inner.kernel)
    data = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    assert _rel_error(model(data), prepared(data)) < 1e-6


def test_an_indexing_key_with_slices_survives_the_layer_config():
    from aimet_tf.graph.op_layer import OpLayer

    x = keras.Input((6, 5))
    model = keras.Model(x, x[:, 1:4, ::2] * 2.0)
    prepared = prepare_model_with_report(model)[0]
    (get_item,) = [layer for layer in prepared.layers if isinstance(layer, OpLayer) and layer.op_class == "GetItem"]
    again = type(get_item).from_config(get_item.get_config())
    data = np.arange(2 * 6 * 5, dtype="float32").reshape(2, 6, 5)
    np.testing.assert_array_equal(again(data), data[:, 1:4, ::2])
    np.testing.assert_array_equal(prepared(data), data[:, 1:4, ::2] * 2.0)
