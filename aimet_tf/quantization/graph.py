"""Connectivity of Keras 3 functional graphs, and supergroup matching on it.

A Keras Functional model records every layer call as a ``Node`` (``keras/src/ops/node.py``):
the node knows the called operation and its input ``KerasTensor``s, and each tensor's
``_keras_history`` names the operation and call that produced it. This module reads that record
into plain name-keyed adjacency lists and finds the fused op chains ("supergroups") of a
:class:`~aimet_tf.quantization.config.HardwareConfig` on it.

Graph elements are named by ``Operation.name``: a layer's name, or the name Keras gave a
``keras.ops`` call made on symbolic tensors (``x + y`` becomes an ``add`` operation). Keras 3
forbids ``/`` in names, so members of a nested model are reported as ``"outer/inner"`` without
ambiguity.

Example:
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    >>> x = keras.layers.BatchNormalization(name="bn")(x)
    >>> x = keras.layers.ReLU(name="relu")(x)
    >>> find_supergroups(keras.Model(inputs, x), load_config("default"))
    [('conv', 'bn', 'relu')]
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import keras

from aimet_tf.quantization.config import HardwareConfig, load_config, onnx_op_type

__all__ = [
    "as_functional", "clone_layer", "find_supergroups", "flatten_nested_models", "has_nested_models", "layer_edges",
]

# Op types whose layers can carry a built-in ``activation=`` argument.
_ACTIVATION_HOSTS = frozenset({"Conv", "ConvTranspose", "Gemm"})


@dataclasses.dataclass
class _Graph:
    """Name-keyed view of one Functional graph (nested models are single operations)."""

    order: list[str]
    operations: dict[str, keras.Operation]
    producers: dict[str, list[str]]
    consumers: dict[str, list[str]]
    call_count: dict[str, int]
    output_count: dict[str, int]
    model_output_names: set[str]


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
    graph = _build_graph(model)
    producers = {name: list(graph.producers[name]) for name in graph.order}
    consumers = {name: list(graph.consumers[name]) for name in graph.order}
    return producers, consumers


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
    return _find_in_graph(_build_graph(model), patterns, prefix="")


def _find_in_graph(
    graph: _Graph, patterns: list[tuple[str, ...]], prefix: str
) -> list[tuple[str, ...]]:
    op_types = {name: onnx_op_type(op) for name, op in graph.operations.items()}
    grouped: set[str] = set()
    groups: list[tuple[str, ...]] = []
    for name in graph.order:
        operation = graph.operations[name]
        if _is_graph_model(operation):
            inner = _build_graph(operation)
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
    graph: _Graph,
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


def _can_continue(graph: _Graph, op_types: dict[str, str | None], name: str) -> bool:
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


def clone_layer(
    layer: keras.layers.Layer,
    config_overrides: dict | None = None,
    copy_weights: bool = True,
) -> keras.layers.Layer:
    """A new layer from ``layer``'s config (with ``config_overrides``), built like it and, with
    ``copy_weights``, holding copies of its weights. The original stays untouched."""
    config = layer.get_config()
    config.update(config_overrides or {})
    new = layer.__class__.from_config(config)
    build_config = layer.get_build_config()
    if build_config:
        new.build_from_config(build_config)
    if copy_weights:
        new.set_weights(layer.get_weights())
    return new


def as_functional(model: keras.Model, purpose: str = "this pass") -> keras.Model:
    """A Functional view of ``model`` sharing its layers (a Sequential becomes Functional).

    Args:
        model: a Functional or a built Sequential model.
        purpose: what needs the graph, for the error message (e.g. "quantization simulation").

    Raises:
        TypeError: for anything but a keras.Model, and for a subclassed model (its call() is Python
            code whose layer graph cannot be read).
        ValueError: for a Sequential model without an input shape.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model for {purpose}. Received: {type(model).__name__}")
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(
                f"Sequential model {model.name!r} has no input yet. Expected a built model for "
                f"{purpose}. Received: a model without an Input. Start it with keras.Input(shape) "
                "or call model.build(input_shape)."
            )
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if not hasattr(model, "_nodes_by_depth"):
        raise TypeError(
            f"Model {model.name!r} is a subclassed keras.Model ({type(model).__name__}); its call() "
            f"is Python code whose layer graph {purpose} cannot read. Expected a Functional or "
            "Sequential model: rebuild it with the Functional API (keras.Model(inputs, outputs)), "
            "reusing its layers."
        )
    return model


def has_nested_models(model: keras.Model) -> bool:
    """True if a layer of ``model`` is itself a Functional or Sequential model."""
    return any(_is_graph_model(layer) for layer in as_functional(model).layers)


def flatten_nested_models(model: keras.Model) -> keras.Model:
    """A one-level Functional copy of ``model``: nested Functional/Sequential models are inlined.

    Every layer of a nested model is called directly on the outer graph's tensors, so passes that
    work on one graph level (cross-layer equalization, AdaRound, bias correction) see all of
    them. Layers are copies holding copies of the weights; a nested model called twice gets two
    sets of copies. A layer whose name is already taken becomes "<nested model>_<name>". The
    function is unchanged (same ops on the same weights); the original is untouched.

    Args:
        model: a Functional or built Sequential model.

    Raises:
        TypeError: for a subclassed model, at any nesting level.

    Example:
        >>> flat = flatten_nested_models(keras.Sequential([base_model, keras.layers.Dense(10)]))
    """
    functional = as_functional(model, "flattening nested models")
    # Top-level names stay; names from inside nested models give way when they clash.
    used: set[str] = {layer.name for layer in functional.layers if not _is_graph_model(layer)}
    inputs = []
    for tensor in functional.inputs:
        name = tensor._keras_history.operation.name
        inputs.append(keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=name))
    structure = inputs[0] if len(inputs) == 1 else inputs
    outputs = _inline_graph(functional, structure, used, prefix="")
    return keras.Model(structure, outputs, name=model.name)


def _inline_graph(model: keras.Model, inputs: Any, used: set[str], prefix: str) -> Any:
    """Runs ``model``'s graph on ``inputs`` with copies of its layers; nested models inline."""
    functional = as_functional(model, "flattening nested models")
    copies: dict[int, keras.layers.Layer] = {}

    def operation(op):
        if _is_graph_model(op):
            return op
        if id(op) not in copies:
            name = op.name
            if prefix:  # inside a nested model
                while name in used:
                    name = f"{prefix}{name}"
                used.add(name)
            copies[id(op)] = clone_layer(op, {"name": name})
        return copies[id(op)]

    def call(op, *args, **kwargs):
        if _is_graph_model(op):
            return _inline_graph(op, args[0] if len(args) == 1 else list(args), used, op.name + "_")
        return op(*args, **kwargs)

    return functional._run_through_graph(inputs, operation_fn=operation, call_fn=call)


def _is_graph_model(operation: keras.Operation) -> bool:
    return isinstance(operation, keras.Sequential) or (
        isinstance(operation, keras.Model) and hasattr(operation, "_nodes_by_depth")
    )


def _functional_graph(model: keras.Model) -> Any:
    """Returns the Keras ``Functional`` object that holds ``model``'s node graph."""
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise ValueError(
                f"Sequential model {model.name!r} has no layer graph yet. Expected a Sequential "
                "model with a known input shape. Received: a model with no input shape. Start it "
                "with keras.Input(shape) or call model.build(input_shape) first."
            )
        return functional
    if isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth"):
        return model
    raise TypeError(
        "Expected a Functional keras.Model or a keras.Sequential model (a subclassed model has "
        f"no layer graph to read). Received: model of type {type(model).__name__}. Rebuild it "
        "with the functional API."
    )


def _build_graph(model: keras.Model) -> _Graph:
    functional = _functional_graph(model)
    graph_nodes = {id(node) for nodes in functional._nodes_by_depth.values() for node in nodes}
    order = [operation.name for operation in functional._operations]
    position = {name: index for index, name in enumerate(order)}
    operations = {operation.name: operation for operation in functional._operations}
    producers: dict[str, list[str]] = {name: [] for name in order}
    consumer_sets: dict[str, set[str]] = {name: set() for name in order}
    call_count = dict.fromkeys(order, 0)
    output_count = dict.fromkeys(order, 0)

    # Deepest nodes first: the order Keras itself runs the graph in.
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for node in functional._nodes_by_depth[depth]:
            name = node.operation.name
            if name not in operations:
                continue
            call_count[name] += 1
            output_count[name] = max(output_count[name], len(node.outputs))
            for tensor in node.input_tensors:
                history = tensor._keras_history
                producer = history.operation
                # Tensors made outside this graph (a model built on another model's
                # intermediate tensors) have no producer inside it.
                if (
                    producer is None
                    or id(producer._inbound_nodes[history.node_index]) not in graph_nodes
                ):
                    continue
                producers[name].append(producer.name)
                consumer_sets[producer.name].add(name)

    consumers = {
        name: sorted(consumer_sets[name], key=position.__getitem__) for name in order
    }
    model_output_names = {
        tensor._keras_history.operation.name
        for tensor in functional.outputs
        if tensor._keras_history.operation is not None
    }
    return _Graph(
        order=order,
        operations=operations,
        producers=producers,
        consumers=consumers,
        call_count=call_count,
        output_count=output_count,
        model_output_names=model_output_names,
    )

