"""Writes a BN-folded Keras model and its data in the form the peer scripts read (runs in OUR env).

The peers (``benchmarks/peers/aimet_peer.py``) run in their own virtual environments without
TensorFlow or Keras, so the model crosses over as plain files in a work folder:

* ``graph.json``: ``{"format": 1, "name", "input": {"name", "shape"}, "output", "layers": [...]}``;
  ``layers`` lists every layer in topological order (producers first), InputLayer included, each
  as ``{"name", "class", "inputs", "output_shape", "config"}``. ``class`` is the public
  ``keras.layers`` class the layer is (a subclass such as MLTK's ``_DepthwiseConv2DCompat`` is
  written as ``DepthwiseConv2D``; anything else keeps its own ``module.QualName`` so that the
  peer names it when it refuses it). ``inputs`` are producer layer names in call-argument order,
  ``output_shape`` is the Keras (channels-last) shape without the batch axis, ``config`` holds
  only the ``get_config()`` entries the peers need, JSON-friendly (tuples become lists, the
  activation a name).
* ``weights.npz``: ``{layer}/kernel`` and ``{layer}/bias`` in Keras layout.
* ``data.npz``: ``x_cal``, ``x_test`` (Keras layout), ``fp32_outputs`` (the Keras model's
  outputs on ``x_test``) and, when given, ``y_test``.

The graph is read with public Keras APIs and :func:`aimet_tf.quantization.graph.layer_edges`.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from aimet_tf.quantization import graph as graph_module

__all__ = ["FORMAT", "PEER_LAYER_CLASSES", "export_for_peer", "peer_graph"]

FORMAT = 1

# Keras layer classes the peers may know, checked in this order (subclasses before their bases).
PEER_LAYER_CLASSES: tuple[type, ...] = (
    keras.layers.InputLayer,
    keras.layers.DepthwiseConv2D,
    keras.layers.Conv2D,
    keras.layers.Dense,
    keras.layers.ReLU,
    keras.layers.Activation,
    keras.layers.Add,
    keras.layers.Concatenate,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.ZeroPadding2D,
    keras.layers.Softmax,
    keras.layers.Dropout,
    keras.layers.BatchNormalization,  # written out so that the peer can refuse it by name
)

_CONFIG_KEYS = frozenset({
    "activation", "axis", "data_format", "depth_multiplier", "dilation_rate", "filters", "groups",
    "keepdims", "kernel_size", "max_value", "negative_slope", "padding", "pool_size", "strides",
    "target_shape", "threshold", "units", "use_bias",
})


def _class_name(layer: keras.Operation) -> str:
    for cls in PEER_LAYER_CLASSES:
        if isinstance(layer, cls):
            return cls.__name__
    return f"{type(layer).__module__}.{type(layer).__qualname__}"


def _config(layer: keras.Operation) -> dict:
    if not isinstance(layer, keras.layers.Layer):
        return {}
    config = {key: value for key, value in layer.get_config().items() if key in _CONFIG_KEYS}
    if "activation" in config and not isinstance(config["activation"], str):
        config["activation"] = getattr(layer.activation, "__name__", repr(config["activation"]))
    return json.loads(json.dumps(config))  # tuples -> lists, and a check that it is plain JSON


def _shape(tensor) -> list[int | None]:
    return [None if d is None else int(d) for d in tensor.shape[1:]]


def peer_graph(model: keras.Model) -> tuple[dict, dict[str, np.ndarray]]:
    """The ``graph.json`` dictionary and the weights of ``model`` (see the module docstring).

    Args:
        model: a Functional or built Sequential model with one input and one output; nested
            models are inlined first.

    Raises:
        ValueError: for a model with several inputs or outputs, or a layer called more than once.
    """
    functional = graph_module.as_functional(model, "the peer export")
    if graph_module.has_nested_models(functional):
        functional = graph_module.flatten_nested_models(functional)
    if len(functional.inputs) != 1 or len(functional.outputs) != 1:
        raise ValueError(
            f"The peer export takes models with one input and one output. Received: {model.name!r} with "
            f"{len(functional.inputs)} inputs and {len(functional.outputs)} outputs."
        )
    producers, _ = graph_module.layer_edges(functional)
    operations = {operation.name: operation for operation in functional.operations}
    layers, weights = [], {}
    for name, inputs in producers.items():
        layer = operations[name]
        cls = _class_name(layer)
        expected = None if cls in ("Add", "Concatenate") else (0 if cls == "InputLayer" else 1)
        if expected is not None and len(inputs) != expected:
            raise ValueError(
                f"Layer {name!r} ({cls}) has {len(inputs)} input tensors; the peer export expects {expected} "
                "(a layer called more than once is not supported)."
            )
        layers.append({
            "name": name, "class": cls, "inputs": list(inputs), "output_shape": _shape(layer.output),
            "config": _config(layer),
        })
        for attr in ("kernel", "bias"):
            variable = getattr(layer, attr, None) if cls != "InputLayer" else None
            if isinstance(variable, keras.Variable):
                weights[f"{name}/{attr}"] = np.asarray(keras.ops.convert_to_numpy(variable), np.float32)
    input_layer = next(layer for layer in layers if layer["class"] == "InputLayer")
    graph = {
        "format": FORMAT,
        "name": functional.name,
        "input": {"name": input_layer["name"], "shape": input_layer["output_shape"]},
        "output": functional.output_names[0],
        "layers": layers,
    }
    return graph, weights


def export_for_peer(
    folded_model: keras.Model, workdir: str, x_cal: np.ndarray, x_test: np.ndarray, y_test: np.ndarray | None = None,
    batch_size: int = 256,
) -> dict:
    """Writes ``graph.json``, ``weights.npz`` and ``data.npz`` for the peers into ``workdir``.

    Args:
        folded_model: the model to hand over, batch norms already folded
            (``aimet_tf.ptq.batch_norm_fold.fold_batch_norms``).
        workdir: an existing folder.
        x_cal: calibration inputs (Keras layout).
        x_test: evaluation inputs (Keras layout).
        y_test: labels of ``x_test``, or None (the peer then scores agreement with FP32).
        batch_size: batch size of the FP32 reference prediction.

    Returns:
        The graph dictionary written to ``graph.json``.
    """
    graph, weights = peer_graph(folded_model)
    fp32 = folded_model.predict(x_test, batch_size=batch_size, verbose=0)
    data = {
        "x_cal": np.asarray(x_cal, np.float32),
        "x_test": np.asarray(x_test, np.float32),
        "fp32_outputs": np.asarray(fp32, np.float32),
    }
    if y_test is not None:
        data["y_test"] = np.asarray(y_test).astype(np.int64).reshape(-1)
    with open(os.path.join(workdir, "graph.json"), "w", encoding="utf-8") as f:
        json.dump(graph, f, indent=1)
    np.savez(os.path.join(workdir, "weights.npz"), **weights)
    np.savez(os.path.join(workdir, "data.npz"), **data)
    return graph
