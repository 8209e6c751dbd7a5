"""Supergroup matching: the fused op chains of a hardware config, found on the model graph.

The graph itself is read by :class:`aimet_tf.graph.ModelGraph` (the only reader of Keras graph
internals); this module finds the chains ("supergroups") of a
:class:`~aimet_tf.quantization.config.HardwareConfig` on it, and re-exports the graph helpers its
callers used before the graph package existed (``layer_edges``, ``as_functional``,
``clone_layer``, ``flatten_nested_models``, ``has_nested_models``).

Graph elements are named by ``Operation.name``: a layer's name, or the name Keras gave a
``keras.ops`` call made on symbolic tensors (``x + y`` becomes an ``add`` operation). Keras 3
forbids ``/`` in names, so members of a nested model are reported as ``"outer/inner"`` without
ambiguity.

Example:
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    >>> x = keras.layers.BatchNormalization(name="bn")(x)
    >>> x = keras.layers.ReLU(name="relu")(x)
    >>> find_supergroups(keras.Model(inputs, x), load_config("default_fused"))
    [('conv', 'bn', 'relu')]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import keras

from aimet_tf.graph.catalogue import onnx_op_type
from aimet_tf.graph.model_graph import LayerGraph, ModelGraph, as_functional, is_graph_model, layer_graph
from aimet_tf.graph.rewrite import clone_layer, has_nested_models
from aimet_tf.graph.rewrite import inline_nested_models as flatten_nested_models
from aimet_tf.quantization.config import HardwareConfig, load_config

__all__ = [
    "as_functional", "clone_layer", "find_supergroups", "flatten_nested_models", "has_nested_models", "layer_edges",
]

# Op types whose layers can carry a built-in ``activation=`` argument.
_ACTIVATION_HOSTS = frozenset({"Conv", "ConvTranspose", "Gemm"})


def layer_edges(model: keras.Model) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Returns the producer and consumer lists of every layer of a Functional model.

    ``InputLayer``s are included (they have no producers). A nested model is one entry: its
    inner layers are not listed. A ``Sequential`` model is read through the functional graph
    Keras builds for it once its input shape is known.

    Args:
        model: A built ``keras.Model`` made with the functional API, or a ``keras.Sequential``
            whose input shape is known.

    Returns:
        ``(producers, consumers)``, both keyed by layer name in the order of
        ``model.operations`` (Keras' own topological order: producers before consumers).
        ``producers[name]`` has one entry per input tensor of the layer's call, in call-argument
        order (a layer called on the same tensor twice lists its producer twice; a layer shared
        across several calls lists each call's inputs in turn). ``consumers[name]`` lists every
        layer that reads an output of ``name`` once, in that same order.

    Raises:
        TypeError: If ``model`` is not a Functional or Sequential model.
        ValueError: If ``model`` is a Sequential model with no input shape yet.

    Example:
        >>> inputs = keras.Input((4,), name="x")
        >>> y = keras.layers.Dense(2, name="fc")(inputs)
        >>> layer_edges(keras.Model(inputs, y))
        ({'x': [], 'fc': ['x']}, {'x': ['fc'], 'fc': []})
    """
    return ModelGraph(model, "reading layer edges").layer_edges()


def find_supergroups(
    model: keras.Model,
    config: HardwareConfig | str | os.PathLike | Mapping[str, Any] | None = None,
) -> list[tuple[str, ...]]:
    """Finds the chains of layers that a target runs fused, per the config's supergroups.

    A chain matches a supergroup ``op_list`` when the ONNX op types (:func:`onnx_op_type`) of
    its layers equal the list in order, and every member except the last is called once, has a
    single output tensor, is not a model output and has exactly one consuming layer, which is
    the next member. Matching is greedy in topological order: from each layer not yet grouped,
    the longest matching ``op_list`` wins (ties: the one listed first), and a layer belongs to
    at most one supergroup.

    A ``Conv*`` / ``Dense`` layer built with ``activation=`` counts as plain ``Conv`` / ``Gemm``:
    its activation runs inside the layer, so the layer can end a chain but not continue one
    (a following BatchNormalization would sit after the activation and could not fold).

    Nested Functional / Sequential models are searched too; their chains never cross the
    nested model's boundary and their members are named ``"<nested model>/<layer>"``.

    Args:
        model: A Functional model or a Sequential model with a known input shape.
        config: The hardware config, or anything :func:`load_config` accepts (``None`` is the
            default preset).

    Returns:
        The supergroups as tuples of layer names, ordered by the position of their first member
        in ``model.operations`` (a topological order; a nested model's groups sit at the nested
        model's position).

    Raises:
        TypeError: If ``model`` is not a Functional or Sequential model.
        ValueError: If ``model`` is a Sequential model with no input shape yet.
    """
    config = load_config(config)
    # Longest first so that Conv+BN+Relu beats Conv+BN; the index keeps equal lengths stable.
    ranked = sorted(enumerate(config.supergroups), key=lambda item: (-len(item[1]), item[0]))
    patterns = [group for _, group in ranked]
    return _find_in_graph(layer_graph(model), patterns, prefix="")


def _find_in_graph(
    graph: LayerGraph, patterns: list[tuple[str, ...]], prefix: str
) -> list[tuple[str, ...]]:
    op_types = {name: onnx_op_type(op) for name, op in graph.operations.items()}
    grouped: set[str] = set()
    groups: list[tuple[str, ...]] = []
    for name in graph.order:
        operation = graph.operations[name]
        if is_graph_model(operation):
            inner = layer_graph(operation)
            groups.extend(_find_in_graph(inner, patterns, prefix=f"{prefix}{name}/"))
            continue
        if name in grouped:
            continue
        for pattern in patterns:
            chain = _match_chain(graph, op_types, name, pattern, grouped)
            if chain is not None:
                grouped.update(chain)
                groups.append(tuple(f"{prefix}{member}" for member in chain))
                break
    return groups


def _match_chain(
    graph: LayerGraph,
    op_types: dict[str, str | None],
    start: str,
    pattern: tuple[str, ...],
    grouped: set[str],
) -> tuple[str, ...] | None:
    if op_types[start] != pattern[0] or graph.call_count[start] != 1:
        return None
    chain = [start]
    for wanted in pattern[1:]:
        current = chain[-1]
        if not _can_continue(graph, op_types, current):
            return None
        successor = graph.consumers[current][0]
        if (
            successor in grouped
            or op_types[successor] != wanted
            or graph.call_count[successor] != 1
        ):
            return None
        chain.append(successor)
    return tuple(chain)


def _can_continue(graph: LayerGraph, op_types: dict[str, str | None], name: str) -> bool:
    """Whether ``name``'s output may stay unquantized inside a chain."""
    if len(graph.consumers[name]) != 1 or graph.output_count[name] != 1:
        return False
    # A model output is read outside the graph, so it must keep its own quantizer.
    if name in graph.model_output_names:
        return False
    if op_types[name] in _ACTIVATION_HOSTS and _has_builtin_activation(graph.operations[name]):
        return False
    return True


def _has_builtin_activation(layer: keras.Operation) -> bool:
    activation = getattr(layer, "activation", None)
    if activation is None:
        return False
    return getattr(activation, "__name__", None) != "linear"
