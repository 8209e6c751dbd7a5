"""Measures the tensor names tf.keras 2 (tf_keras) gives layer outputs: the names AIMET Keras writes.

AIMET Keras (tf.keras 2) keys an activation encoding by the tf.keras 2 ``KerasTensor`` name of the
tensor: a layer's output is ``layer.output.name`` (``"conv2d/BiasAdd:0"``), a model input is its
input tensor's name with ":0" appended (``"input_1:0"``). The op after the layer name depends on
the layer class and on arguments (a Conv2D without bias ends in ``Conv2D``, with relu in ``Relu``).
This script builds one small functional tf_keras model per layer class and argument combination
that can change that op, and records what tf_keras names the output, so aimet_tf can write the
same names without guessing (``aimet_tf/assets/keras2_tensor_names.json``).

Run it in the tf_keras venv (``bash benchmarks/peers/setup_tfmot.sh /tmp/tfmot_venv``):

    TF_USE_LEGACY_KERAS=1 /tmp/tfmot_venv/bin/python benchmarks/peers/keras2_tensor_names.py OUT.json

Output JSON: ``{"tensorflow", "tf_keras", "matched_keys", "layers": [ROW...], "argument_probes":
[ROW...], "inputs": [...], "probes": [...]}``. ``matched_keys[class]`` lists the constructor
arguments some case of that class varies; ROW = ``{"class", "config", "fixed", "input_shapes",
"op": [suffix per output], "tensor": [full name per output]}``: ``config`` holds the layer's value
of each matched key (its ``get_config()`` value, JSON-encoded), ``input_rank`` (rank of the first
input, batch axis included) and, for several inputs, ``num_inputs``; ``fixed`` the other
constructor arguments used; ``op`` the part of each output name after ``"<layer name>/"`` (None
when tf_keras does not name the output under the layer: an identity returns its input tensor).
``argument_probes`` are arguments measured not to change the op (so the naming ignores them),
``inputs`` model-input tensor names (named and unnamed input layers), ``probes`` whether a
layer's own name is what prefixes its output name (a name reused in a second model, a
default-numbered name, a layer of a nested model).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
from typing import Any

import tensorflow as tf  # noqa: F401  (loads TF before tf_keras, as TF_USE_LEGACY_KERAS expects)
import tf_keras as keras

ACTIVATIONS = ("linear", "relu", "relu6", "tanh", "sigmoid", "softmax", "swish", "gelu", "elu")


def _case(cls: str, config: dict, fixed: dict, shapes: list[tuple]) -> dict:
    """One layer to measure: class name, varied arguments, other arguments, input shapes (no batch)."""
    return {"class": cls, "config": config, "fixed": fixed, "input_shapes": [list(s) for s in shapes]}


def _weighted_cases() -> list[dict]:
    """Conv*, depthwise, separable, transposed and Dense layers, with/without bias, every activation."""
    layers = [
        ("Conv1D", {"filters": 2, "kernel_size": 3}, [(8, 3)]),
        ("Conv2D", {"filters": 2, "kernel_size": 3}, [(8, 8, 3)]),
        ("Conv3D", {"filters": 2, "kernel_size": 3}, [(6, 6, 6, 3)]),
        ("DepthwiseConv1D", {"kernel_size": 3}, [(8, 3)]),
        ("DepthwiseConv2D", {"kernel_size": 3}, [(8, 8, 3)]),
        ("SeparableConv1D", {"filters": 2, "kernel_size": 3}, [(8, 3)]),
        ("SeparableConv2D", {"filters": 2, "kernel_size": 3}, [(8, 8, 3)]),
        ("Conv2DTranspose", {"filters": 2, "kernel_size": 3}, [(8, 8, 3)]),
        ("Dense", {"units": 4}, [(5,)]),
        ("Dense", {"units": 4}, [(6, 5)]),
    ]
    cases = [
        _case(cls, {"activation": act, "use_bias": bias}, fixed, shapes)
        for (cls, fixed, shapes), act, bias in itertools.product(layers, ACTIVATIONS, (True, False))
    ]
    # Dilation and groups change the last op of a conv without bias (measured): crossed with
    # every activation and bias, so that the naming can match on them.
    for (cls, fixed, shapes, extra), act, bias in itertools.product(
        [
            ("Conv1D", {"filters": 2, "kernel_size": 3}, [(8, 3)], {"dilation_rate": 2}),
            ("Conv2D", {"filters": 2, "kernel_size": 3}, [(8, 8, 3)], {"dilation_rate": 2}),
            ("Conv2D", {"filters": 3, "kernel_size": 3}, [(8, 8, 3)], {"groups": 3}),
            ("DepthwiseConv2D", {"kernel_size": 3}, [(8, 8, 3)], {"dilation_rate": 2}),
        ],
        ACTIVATIONS,
        (True, False),
    ):
        cases.append(_case(cls, {"activation": act, "use_bias": bias, **extra}, fixed, shapes))
    return cases


def _activation_cases() -> list[dict]:
    """Activation layers: ReLU forms, LeakyReLU, PReLU, ELU, Softmax, Activation(each)."""
    shape = [(4, 4, 3)]
    cases = [
        _case("ReLU", {}, {}, shape),
        _case("ReLU", {"max_value": 6.0}, {}, shape),
        _case("ReLU", {"negative_slope": 0.1}, {}, shape),
        _case("ReLU", {"max_value": 6.0, "negative_slope": 0.1}, {}, shape),
        _case("ReLU", {"threshold": 0.5}, {}, shape),
        _case("LeakyReLU", {}, {}, shape),
        _case("PReLU", {}, {}, shape),
        _case("ELU", {}, {}, shape),
        _case("Softmax", {}, {}, shape),
    ]
    cases += [_case("Activation", {"activation": act}, {}, shape) for act in ACTIVATIONS]
    return cases


def _structural_cases() -> list[dict]:
    """Merges, pooling, reshaping, normalization, recurrent, embedding, attention."""
    img, seq, vol = (6, 6, 3), (8, 3), (4, 4, 4, 3)
    cases = [
        _case(cls, {}, {}, [img, img])
        for cls in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")
    ]
    for cls in ("Add", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"):
        for n in (3, 4):
            cases.append(_case(cls, {"num_inputs": n}, {}, [img] * n))
    for dims, shape in (("1D", seq), ("2D", img), ("3D", vol)):
        for kind in ("Max", "Average"):
            cases.append(_case(f"{kind}Pooling{dims}", {}, {"pool_size": 2}, [shape]))
            for keepdims in (False, True):
                cases.append(_case(f"Global{kind}Pooling{dims}", {"keepdims": keepdims}, {}, [shape]))
    cases += [
        _case("Flatten", {}, {}, [img]),
        _case("Reshape", {}, {"target_shape": [36, 3]}, [img]),
        _case("Permute", {}, {"dims": [2, 1, 3]}, [img]),
        _case("ZeroPadding1D", {}, {}, [seq]),
        _case("ZeroPadding2D", {}, {}, [img]),
        _case("ZeroPadding3D", {}, {}, [vol]),
        _case("Cropping1D", {}, {}, [seq]),
        _case("Cropping2D", {}, {}, [img]),
        _case("Cropping3D", {}, {}, [vol]),
        _case("UpSampling1D", {}, {}, [seq]),
        _case("UpSampling2D", {"interpolation": "nearest"}, {}, [img]),
        _case("UpSampling2D", {"interpolation": "bilinear"}, {}, [img]),
        _case("UpSampling3D", {}, {}, [vol]),
        _case("BatchNormalization", {}, {}, [(5,)]),
        _case("BatchNormalization", {}, {}, [img]),
        _case("LayerNormalization", {}, {}, [(5,)]),
        _case("LayerNormalization", {}, {}, [seq]),
        _case("Dropout", {}, {"rate": 0.5}, [img]),
        _case("Identity", {}, {}, [img]),
        _case("Embedding", {}, {"input_dim": 10, "output_dim": 4}, [(5,)]),
        _case("MultiHeadAttention", {"num_inputs": 2}, {"num_heads": 2, "key_dim": 4}, [seq, seq]),
        _case("MultiHeadAttention", {"num_inputs": 3}, {"num_heads": 2, "key_dim": 4}, [seq, seq, seq]),
    ]
    for cls in ("LSTM", "GRU", "SimpleRNN"):
        for return_sequences in (False, True):
            cases.append(_case(cls, {"return_sequences": return_sequences}, {"units": 4}, [seq]))
    return cases


def _argument_probes() -> list[dict]:
    """Arguments measured NOT to change the last op (each is the linear, no-bias case, where the
    layer's own op ends it): recorded to show why the naming ignores them."""
    common = {"activation": "linear", "use_bias": False}
    return [
        _case("Conv2D", {**common, "strides": 2}, {"filters": 2, "kernel_size": 3}, [(8, 8, 3)]),
        _case("Conv2D", {**common, "padding": "same"}, {"filters": 2, "kernel_size": 3}, [(8, 8, 3)]),
        _case("Conv1D", {**common, "padding": "causal"}, {"filters": 2, "kernel_size": 3}, [(8, 3)]),
        _case("DepthwiseConv2D", {**common, "depth_multiplier": 2}, {"kernel_size": 3}, [(8, 8, 3)]),
        _case("UpSampling1D", {"size": 3}, {}, [(8, 3)]),
        _case("UpSampling2D", {"interpolation": "nearest", "size": 3}, {}, [(6, 6, 3)]),
        _case("MaxPooling2D", {"strides": 1, "padding": "same"}, {"pool_size": 2}, [(6, 6, 3)]),
    ]


def _matched_keys(cases: list[dict]) -> dict[str, list[str]]:
    """Per layer class, the constructor arguments some case varies: every row of that class
    records the layer's value of each (its default where the case did not set it)."""
    keys: dict[str, set[str]] = {}
    for case in cases:
        keys.setdefault(case["class"], set()).update(k for k in case["config"] if k != "num_inputs")
    return {cls: sorted(k) for cls, k in keys.items()}


def _constructor_kwargs(case: dict) -> dict:
    """The case's arguments for the tf_keras constructor (``num_inputs`` is about the call)."""
    kwargs = {**case["fixed"], **case["config"]}
    kwargs.pop("num_inputs", None)
    return kwargs


def _measure(case: dict, matched_keys: list[str]) -> dict:
    """Builds ``Input(s) -> layer`` and records the op suffix of every output tensor name."""
    dtype = "int32" if case["class"] == "Embedding" else "float32"
    inputs = [keras.Input(shape=tuple(s), dtype=dtype) for s in case["input_shapes"]]
    layer = getattr(keras.layers, case["class"])(**_constructor_kwargs(case))
    if case["class"] == "MultiHeadAttention":
        outputs = layer(*inputs)
    else:
        outputs = layer(inputs if len(inputs) > 1 else inputs[0])
    keras.Model(inputs, outputs)
    flat = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    prefix = layer.name + "/"
    # An output not named under the layer (an identity passes its input tensor on) gets op None.
    ops = [t.name[len(prefix):] if t.name.startswith(prefix) else None for t in flat]
    layer_config = layer.get_config()
    config = {k: _jsonable(layer_config[k]) for k in matched_keys}
    if "num_inputs" in case["config"] or len(inputs) > 1:
        config["num_inputs"] = len(inputs)
    config["input_rank"] = len(case["input_shapes"][0]) + 1
    return {
        "class": case["class"],
        "config": config,
        "fixed": case["fixed"],
        "input_shapes": case["input_shapes"],
        "op": ops,
        "tensor": [t.name for t in flat],
    }


def _jsonable(value: Any) -> Any:
    """A config value as JSON keeps it (tuples become lists, numpy scalars numbers)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist()))


def _input_names() -> list[dict]:
    """Model-input tensor names of unnamed and named input layers, as AIMET keys them (+':0')."""
    keras.backend.clear_session()
    unnamed = [keras.Input(shape=(3,)), keras.Input(shape=(3,))]
    named = keras.Input(shape=(3,), name="image")
    model = keras.Model(unnamed + [named], keras.layers.Concatenate()(unnamed + [named]))
    rows = []
    for tensor, layer_name in zip(model.inputs, ["(unnamed)", "(unnamed)", "image"]):
        rows.append({"input_layer": layer_name, "tensor": tensor.name, "aimet_key": tensor.name + ":0"})
    return rows


def _probes() -> list[dict]:
    """Whether an output name is always prefixed by the layer's own name."""
    rows = []
    for attempt in range(2):  # the same user name in two models of one session
        x = keras.Input(shape=(4,))
        layer = keras.layers.Dense(2, name="fc")
        keras.Model(x, layer(x))
        rows.append({"probe": f"user name 'fc', model {attempt + 1}", "layer": layer.name,
                     "tensor": layer.output.name})
    x = keras.Input(shape=(4,))
    layer = keras.layers.Dense(2)
    keras.Model(x, layer(x))
    rows.append({"probe": "default name", "layer": layer.name, "tensor": layer.output.name})
    x = keras.Input(shape=(4,))
    inner_in = keras.Input(shape=(4,))
    inner_layer = keras.layers.Dense(2, name="inner_fc")
    inner = keras.Model(inner_in, inner_layer(inner_in), name="inner")
    outer_out = inner(x)
    keras.Model(x, outer_out)
    rows.append({"probe": "nested model layer", "layer": inner_layer.name, "tensor": inner_layer.output.name})
    rows.append({"probe": "nested model output", "layer": inner.name, "tensor": outer_out.name})
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.splitlines()[0] + "\nUsage: keras2_tensor_names.py OUT.json", file=sys.stderr)
        return 2
    cases = _weighted_cases() + _activation_cases() + _structural_cases()
    keys = _matched_keys(cases)
    result: dict[str, Any] = {
        "tensorflow": tf.__version__,
        "tf_keras": keras.__version__,
        "matched_keys": keys,
        "layers": [_measure(c, keys.get(c["class"], [])) for c in cases],
        "argument_probes": [_measure(c, sorted(c["config"])) for c in _argument_probes()],
        "inputs": _input_names(),
        "probes": _probes(),
    }
    out = os.path.abspath(argv[1])
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), prefix=".keras2_names.")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the table ships as package data
    os.replace(tmp, out)
    print(f"{len(result['layers'])} layer rows written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
