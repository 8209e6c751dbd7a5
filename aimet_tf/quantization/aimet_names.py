"""The tensor names AIMET Keras gives activations, from a table measured in tf.keras 2.

AIMET Keras (tf.keras 2) keys an activation encoding by the tf.keras 2 ``KerasTensor`` name of
the tensor: a layer's output is ``"<layer>/<op>:<i>"`` where ``<op>`` is the TF op that ends the
layer (``conv2d/BiasAdd:0``, a Conv2D without bias ``conv2d/Conv2D:0``, with relu
``conv2d/Relu:0``), and a model input is ``"<input layer>:0"``. The op depends on the layer class
and on some of its arguments, so it is not derived by rule: ``benchmarks/peers/keras2_tensor_names.py``
builds every covered layer class and argument combination in tf_keras 2.21 and records the names
(``aimet_tf/assets/keras2_tensor_names.json``). :func:`output_ops` looks a Keras 3 layer up in
that table; a layer, argument combination or input rank the table lacks has no AIMET name here
(None), and callers fall back to aimet_tf's ``"<layer>/output:<i>"``.

Matching. A table row matches a layer when the class is the same built-in Keras class, every
argument the table varies for that class (``matched_keys``) has the row's value in the layer's
``get_config()`` (floats compared to float32 precision; Keras 3's "silu" is tf.keras 2's
"swish"), the number of inputs matches for multi-input layers, and the rank of the first input
matches where the table measured that class at several ranks (Dense, BatchNormalization,
LayerNormalization). A class measured at one rank is named at any rank: its class fixes the rank
(Conv2D, MaxPooling2D...) or its op is elementwise or a reshape, which does not see the rank.
Arguments the table does not vary were measured not to change the op where they might
(``argument_probes``: strides, padding, depth_multiplier, upsampling size).

The names use our model's actual layer names. They equal the names AIMET would write for the
tf.keras 2 version of the model only where the layer names are the same: Keras 3 numbers default
names differently (``input_layer`` vs ``input_1``), so name the layers to keep the two aligned.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
from typing import Any, Sequence

import keras

__all__ = ["TABLE_PATH", "NameTable", "load_table", "output_ops", "output_name", "model_input_name"]

TABLE_PATH = pathlib.Path(__file__).resolve().parent.parent / "assets" / "keras2_tensor_names.json"

# Keras 3 serializes some activations under another name than tf.keras 2 does.
_ACTIVATION_ALIASES = {"silu": "swish"}


class NameTable:
    """The measured table: rows by layer class, the arguments matched per class.

    Attributes:
        matched_keys: class name -> the constructor arguments matched for it.
        rows: class name -> list of (config, ops) with ops one op suffix (or None) per output.
        ranked: classes measured at several input ranks (the rank is matched for those).
    """

    def __init__(self, document: dict):
        """Builds the lookup from the JSON document the measuring script writes.

        Raises:
            ValueError: if the document lacks "matched_keys" or "layers", or a row lacks
                "class", "config" or "op".
        """
        if not isinstance(document, dict) or "matched_keys" not in document or "layers" not in document:
            raise ValueError(
                "Expected the tensor-name table written by benchmarks/peers/keras2_tensor_names.py "
                f"(keys 'matched_keys', 'layers'). Received keys: {sorted(document) if isinstance(document, dict) else type(document).__name__}"
            )
        self.matched_keys: dict[str, list[str]] = {k: list(v) for k, v in document["matched_keys"].items()}
        self.rows: dict[str, list[tuple[dict, list[str | None]]]] = {}
        ranks: dict[str, set[int]] = {}
        for row in document["layers"]:
            missing = {"class", "config", "op"} - set(row)
            if missing:
                raise ValueError(f"Expected table rows with 'class', 'config', 'op'. Received a row without {sorted(missing)}: {row}")
            self.rows.setdefault(row["class"], []).append((dict(row["config"]), list(row["op"])))
            ranks.setdefault(row["class"], set()).add(row["config"].get("input_rank"))
        self.ranked: set[str] = {cls for cls, r in ranks.items() if len(r) > 1}


@functools.lru_cache(maxsize=1)
def load_table() -> NameTable:
    """The table shipped with aimet_tf (read once).

    Raises:
        FileNotFoundError: if the package data file is missing (a stripped install).
    """
    return NameTable(json.loads(TABLE_PATH.read_text()))


def _same_value(a: Any, b: Any) -> bool:
    """Config values equal, numbers to float32 precision (tf.keras 2 stores 0.1 as float32)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return a == b


def _layer_config(layer: keras.layers.Layer, keys: Sequence[str]) -> dict[str, Any] | None:
    """The layer's values of ``keys`` (activation names as tf.keras 2 spells them), or None when
    the layer's config lacks one or serializes it as an object (a custom activation)."""
    config = layer.get_config()
    values = {}
    for key in keys:
        if key not in config:
            return None
        value = config[key]
        if key == "activation":
            if not isinstance(value, str):
                return None
            value = _ACTIVATION_ALIASES.get(value, value)
        values[key] = value
    return values


def output_ops(
    layer: keras.layers.Layer,
    input_shapes: Sequence[Sequence[int | None]],
    num_outputs: int = 1,
    table: NameTable | None = None,
) -> list[str | None] | None:
    """The op suffix tf.keras 2 gives each output of ``layer``, per the measured table.

    Args:
        layer: a layer of a Keras 3 model (built-in Keras class; a subclass or custom layer has
            no entry).
        input_shapes: the shapes of the tensors the layer is called on (batch axis included).
        num_outputs: how many output tensors the layer has in our model; a row with another
            count does not match (an LSTM with ``return_state`` is not the measured LSTM).
        table: the table to use (default: the shipped one).

    Returns:
        One suffix per output (``"BiasAdd:0"``; None for an output tf.keras 2 does not name under
        the layer, e.g. ``Activation("linear")``, which returns its input), or None when no row
        matches (class, arguments or input rank not measured).

    Raises:
        ValueError: if ``input_shapes`` is empty.
    """
    if not input_shapes:
        raise ValueError(f"Expected the shapes of the tensors layer {layer.name!r} reads. Received none.")
    table = table or load_table()
    cls = type(layer).__name__
    if not type(layer).__module__.startswith("keras.") or cls not in table.rows:
        return None
    values = _layer_config(layer, table.matched_keys.get(cls, []))
    if values is None:
        return None
    if len(input_shapes) > 1:
        values["num_inputs"] = len(input_shapes)
    rank = len(input_shapes[0])
    for config, ops in table.rows[cls]:
        wanted = {k: v for k, v in config.items() if k != "input_rank"}
        if cls in table.ranked and config.get("input_rank") != rank:
            continue
        if len(ops) != num_outputs:
            continue
        if set(wanted) == set(values) and all(_same_value(values[k], wanted[k]) for k in wanted):
            return ops
    return None


def output_name(
    layer: keras.layers.Layer,
    index: int,
    input_shapes: Sequence[Sequence[int | None]],
    num_outputs: int = 1,
    table: NameTable | None = None,
) -> str | None:
    """The name AIMET Keras gives output ``index`` of ``layer``: ``"<layer name>/<op>:<i>"``.

    Args:
        layer: a layer of a Keras 3 model; its actual name is used.
        index: which output (0 for a single-output layer).
        input_shapes, num_outputs, table: as for :func:`output_ops`.

    Returns:
        The name, or None when the table does not cover the layer or that output.

    Raises:
        ValueError: for a negative index or empty ``input_shapes``.
    """
    if index < 0:
        raise ValueError(f"Expected an output index >= 0. Received: {index}")
    ops = output_ops(layer, input_shapes, num_outputs, table)
    if ops is None or index >= len(ops) or ops[index] is None:
        return None
    return f"{layer.name}/{ops[index]}"


def model_input_name(input_layer_name: str) -> str:
    """AIMET Keras's name of a model input: its input tensor's name plus ':0' (``"input_1:0"``)."""
    return f"{input_layer_name}:0"
