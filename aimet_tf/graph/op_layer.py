"""Layers that hold one ``keras.ops`` call, so that ops nodes become quantizable, saveable layers.

A Functional model built with ``x + 1.0`` or ``keras.ops.mean(x, axis=1)`` records a
``keras.Operation`` node, not a layer: it has no name a config can address, no place for
quantizers and no serialization of its own. :func:`op_layer_for` turns such a node into an
:class:`OpLayer` (values are computed) or a :class:`DataMovementOpLayer` (values are only moved:
reshape, transpose, slicing...), which rebuild the operation from its config and call it with the
node's constant arguments.
"""

from __future__ import annotations

import importlib
from typing import Any

import keras
import numpy as np

__all__ = ["DataMovementOpLayer", "OpLayer", "op_layer_for"]

# Operations that only move or select values (their output keeps the input's grid).
_DATA_MOVEMENT = frozenset({
    "Reshape", "Transpose", "ExpandDims", "Squeeze", "GetItem", "Flip", "Tile", "Repeat", "Take",
    "Slice", "Split", "Swapaxes", "Moveaxis", "Ravel", "Stack", "Concatenate", "Max", "Min", "Maximum",
    "Minimum",
})
_TENSOR = "__tensor__"


def _is_index_key(value: Any) -> bool:
    """An indexing key such as ``x[:, 0]``: kept a tuple (a tuple indexes per axis, a list would gather)."""
    return isinstance(value, tuple) and any(isinstance(v, slice) or v is Ellipsis for v in value)


def _constant(value: Any, where: str) -> Any:
    """``value`` as JSON-able config, or an error naming ``where``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, slice):
        return {"__slice__": [_constant(v, where) for v in (value.start, value.stop, value.step)]}
    if value is Ellipsis:
        return {"__ellipsis__": True}
    if _is_index_key(value):
        return {"__tuple__": [_constant(v, where) for v in value]}
    if isinstance(value, (list, tuple)):
        return [_constant(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _constant(v, where) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.size <= 4096:
        return {"__array__": value.tolist(), "dtype": str(value.dtype)}
    raise ValueError(
        f"{where}: a constant argument of type {type(value).__name__} cannot be stored in a layer config. "
        "Expected numbers, strings, None, small numpy arrays or lists of them."
    )


def _restore(value: Any) -> Any:
    if isinstance(value, dict) and "__array__" in value:
        return np.asarray(value["__array__"], dtype=value["dtype"])
    if isinstance(value, dict) and "__slice__" in value:
        return slice(*value["__slice__"])
    if isinstance(value, dict) and "__ellipsis__" in value:
        return Ellipsis
    if isinstance(value, dict) and "__tuple__" in value:
        return tuple(_restore(v) for v in value["__tuple__"])
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


@keras.saving.register_keras_serializable(package="aimet_tf")
class OpLayer(keras.layers.Layer):
    """One ``keras.ops`` operation as a layer.

    Args:
        op_module, op_class: where the operation class lives (e.g. ``keras.src.ops.numpy``, ``Add``).
        op_config: the operation's ``get_config()`` (its constructor arguments).
        arguments: the call's positional arguments, each tensor replaced by
            ``{"__tensor__": i}`` (the i-th layer input), constants kept.
        keyword_arguments: the same for keyword arguments.
    """

    def __init__(self, op_module: str, op_class: str, op_config: dict, arguments: list, keyword_arguments: dict,
                 **kwargs):
        super().__init__(**kwargs)
        self.op_module, self.op_class = op_module, op_class
        self.op_config = dict(op_config)
        self.arguments, self.keyword_arguments = list(arguments), dict(keyword_arguments)
        if not op_module.startswith("keras."):
            raise ValueError(f"Expected a keras.ops operation. Received: {op_module}.{op_class}")
        cls = getattr(importlib.import_module(op_module), op_class)
        config = {k: v for k, v in self.op_config.items() if k != "name"}
        self.operation = cls(**config)

    def _fill(self, value: Any, tensors: list) -> Any:
        if isinstance(value, dict) and _TENSOR in value:
            return tensors[value[_TENSOR]]
        if isinstance(value, dict) and "__tuple__" in value:
            return tuple(self._fill(v, tensors) for v in value["__tuple__"])
        if isinstance(value, list):
            return [self._fill(v, tensors) for v in value]
        return _restore(value)

    def call(self, inputs):
        tensors = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        args = [self._fill(a, tensors) for a in self.arguments]
        kwargs = {k: self._fill(v, tensors) for k, v in self.keyword_arguments.items()}
        return self.operation(*args, **kwargs)

    def compute_output_spec(self, inputs):
        tensors = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        args = [self._fill(a, tensors) for a in self.arguments]
        kwargs = {k: self._fill(v, tensors) for k, v in self.keyword_arguments.items()}
        return self.operation.compute_output_spec(*args, **kwargs)

    def get_config(self):
        return {
            **super().get_config(), "op_module": self.op_module, "op_class": self.op_class,
            "op_config": self.op_config, "arguments": self.arguments, "keyword_arguments": self.keyword_arguments,
        }


@keras.saving.register_keras_serializable(package="aimet_tf")
class DataMovementOpLayer(OpLayer):
    """An :class:`OpLayer` whose operation only moves or selects values (reshape, transpose...)."""


def _template(value: Any, tensor_index: dict[int, int], where: str) -> Any:
    if isinstance(value, keras.KerasTensor):
        return {_TENSOR: tensor_index[id(value)]}
    if _is_index_key(value):
        return {"__tuple__": [_template(v, tensor_index, where) for v in value]}
    if isinstance(value, (list, tuple)):
        return [_template(v, tensor_index, where) for v in value]
    return _constant(value, where)


def op_layer_for(operation: keras.Operation, args: tuple, kwargs: dict, name: str) -> tuple[OpLayer, list]:
    """A layer computing ``operation(*args, **kwargs)``, and the tensors to call it on.

    Args:
        operation: the ``keras.ops`` operation of a graph node.
        args, kwargs: the node's call arguments (symbolic tensors and constants).
        name: the new layer's name.

    Returns:
        ``(layer, tensors)``: call ``layer(tensors[0] if len(tensors) == 1 else tensors)``.
    """
    tensors = [t for t in keras.tree.flatten((list(args), dict(kwargs))) if isinstance(t, keras.KerasTensor)]
    index: dict[int, int] = {}
    for t in tensors:
        index.setdefault(id(t), len(index))
    unique = list({id(t): t for t in tensors}.values())
    where = f"ops node {name!r} ({type(operation).__name__})"
    cls = type(operation)
    layer_cls = DataMovementOpLayer if cls.__name__ in _DATA_MOVEMENT else OpLayer
    config = operation.get_config()
    layer = layer_cls(
        cls.__module__, cls.__name__, _constant(config, where),
        [_template(a, index, where) for a in args], {k: _template(v, index, where) for k, v in kwargs.items()},
        name=name,
    )
    return layer, unique
