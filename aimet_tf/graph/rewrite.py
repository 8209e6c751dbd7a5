"""Rewrite primitives: each takes a model and returns a new Functional model, weights carried over.

The input model is never modified: every layer of the result is a copy (same config, copied
weights) unless a primitive says otherwise. All of them rerun the graph through
:meth:`ModelGraph.rebuild`, so multi-input/multi-output models, keyword arguments of calls and
``keras.ops`` nodes are kept as they are.

* :func:`clone_model_graph`: a copy, optionally with one layer per call site of shared layers;
* :func:`replace_layer`, :func:`replace_with_chain`, :func:`replace_with_subgraph`, :func:`remove_layer`,
  :func:`insert_after`;
* :func:`inline_nested_models`: nested Functional/Sequential models become top-level layers;
* :func:`split_activations`: ``Conv2D(activation="relu")`` becomes ``Conv2D`` + ``Activation("relu")``.

Example:
    >>> model = split_activations(model)[0]
    >>> model = replace_with_chain(model, "conv1", [keras.layers.Conv2D(8, (3, 1), name="conv1_a"),
    ...                                             keras.layers.Conv2D(16, (1, 3), name="conv1_b")])
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import keras

from aimet_tf.graph.model_graph import GraphNode, ModelGraph, as_functional, is_graph_model

__all__ = [
    "clone_layer",
    "clone_model_graph",
    "has_nested_models",
    "inline_nested_models",
    "insert_after",
    "remove_layer",
    "replace_layer",
    "replace_with_chain",
    "replace_with_subgraph",
    "split_activations",
]

_L = keras.layers


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


def _check_names(model: keras.Model, names: Sequence[str], what: str) -> None:
    existing = {layer.name for layer in model.layers}
    clash = sorted(set(names) & existing)
    if clash:
        raise ValueError(f"{what}: layer name(s) {clash} already exist in model {model.name!r}. Expected new names.")
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: expected distinct layer names. Received: {list(names)}.")


def _rebuild(
    model: keras.Model,
    purpose: str,
    replace: Callable[[GraphNode, tuple, dict, Callable], Any] | None = None,
    unshare: bool = False,
) -> keras.Model:
    """Reruns ``model``'s graph with copied layers.

    ``replace(node, args, kwargs, default)`` may return the node's new output (``default()``
    computes it with the copied layer). With ``unshare``, each call of a shared layer gets its own
    copy, named ``"<layer>_<k>"`` for the k-th call (k >= 1).
    """
    graph = ModelGraph(model, purpose)
    copies: dict[Any, Any] = {}
    used = {layer.name for layer in graph.model.layers}

    def copy_of(node: GraphNode):
        op = node.operation
        if not isinstance(op, _L.Layer):
            return op
        key = (id(op), node.call_index) if unshare else id(op)
        if key not in copies:
            overrides = None
            if unshare and node.call_index:
                name = f"{op.name}_{node.call_index}"
                while name in used:
                    name += "_"
                used.add(name)
                overrides = {"name": name}
            copies[key] = _clone_any(op, overrides)
        return copies[key]

    def call(node: GraphNode, args: tuple, kwargs: dict):
        def default():
            return copy_of(node)(*args, **kwargs)

        if replace is not None:
            out = replace(node, args, kwargs, default)
            if out is not None:
                return out
        return default()

    inputs, outputs = graph.rebuild(call)
    return keras.Model(inputs, outputs, name=graph.model.name)


def _clone_any(layer: keras.layers.Layer, overrides: dict | None) -> keras.layers.Layer:
    if is_graph_model(layer):
        copy = clone_model_graph(layer)
        if overrides:
            copy.name = overrides["name"]
        return copy
    return clone_layer(layer, overrides)


def clone_model_graph(model: keras.Model, unshare: bool = False) -> keras.Model:
    """A Functional copy of ``model`` with copied weights.

    Args:
        model: a Functional or built Sequential model.
        unshare: give every call of a shared layer its own copy (the k-th call's copy is named
            ``"<layer>_<k>"``), so that each call site can get its own quantizers.
    """
    return _rebuild(model, "copying the model", unshare=unshare)


def _single_node(graph: ModelGraph, name: str, what: str) -> GraphNode:
    node = graph.node(name)
    if graph.call_count(node.operation) != 1:
        raise ValueError(
            f"{what}: layer {name!r} is called {graph.call_count(node.operation)} times. Expected a layer called "
            "once. Fix: clone_model_graph(model, unshare=True) gives each call its own layer."
        )
    return node


def replace_with_subgraph(
    model: keras.Model, name: str | Mapping[str, Callable[[tuple, dict], Any]], build: Callable | None = None
) -> keras.Model:
    """``model`` with layer ``name``'s call replaced by ``build(args, kwargs)``.

    ``build`` gets the replaced call's (symbolic) arguments and returns the output, calling new
    layers of its own (e.g. ``x * sigmoid(x)`` as an ``Activation`` and a ``Multiply``). Pass a
    mapping ``{name: build}`` instead to replace many layers in one rebuild.
    """
    builders = dict(name) if isinstance(name, Mapping) else {name: build}
    graph = ModelGraph(model, "replacing a layer")
    targets = {_single_node(graph, n, "replace_with_subgraph").name: b for n, b in builders.items()}

    def replace(node, args, kwargs, default):
        return targets[node.name](args, kwargs) if node.name in targets else None

    return _rebuild(model, "replacing a layer", replace)


def replace_layer(model: keras.Model, name: str, new_layer: keras.layers.Layer) -> keras.Model:
    """``model`` with layer ``name`` replaced by ``new_layer`` (called on the same arguments).

    ``new_layer`` is used as given (not copied); it may already hold weights or be built on call.
    """
    return replace_with_chain(model, name, [new_layer])


def replace_with_chain(model: keras.Model, name: str, layers: Sequence[keras.layers.Layer]) -> keras.Model:
    """``model`` with layer ``name`` replaced by ``layers`` applied one after the other.

    The first layer gets the replaced call's arguments; each next layer gets the previous output.
    The chain's layers are used as given (not copied).

    Raises:
        ValueError: if ``name`` is shared, a new name is taken, or ``layers`` is empty.
    """
    if not layers:
        raise ValueError(f"replace_with_chain: expected at least one layer to replace {name!r}. Received: none.")
    graph = ModelGraph(model, "replacing a layer")
    target = _single_node(graph, name, "replace_with_chain")
    _check_names(graph.model, [l.name for l in layers if l.name != name], "replace_with_chain")

    def replace(node, args, kwargs, default):
        if node.name != target.name:
            return None
        out = layers[0](*args, **_accepted(layers[0], kwargs))
        for layer in layers[1:]:
            out = layer(out)
        return out

    return _rebuild(model, "replacing a layer", replace)


def _accepted(layer: keras.layers.Layer, kwargs: dict) -> dict:
    """The keyword arguments of a replaced call that ``layer``'s call takes (``mask``, ``training``...
    are dropped where it has no such parameter)."""
    parameters = inspect.signature(layer.call).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in parameters}


def remove_layer(model: keras.Model, name: str) -> keras.Model:
    """``model`` without layer ``name``: its readers read its (single) input instead.

    Raises:
        ValueError: if the layer does not have exactly one input and one output of the same shape.
    """
    graph = ModelGraph(model, "removing a layer")
    target = _single_node(graph, name, "remove_layer")
    ins, outs = graph.input_specs(name), graph.output_specs(name)
    if len(ins) != 1 or len(outs) != 1 or ins[0] != outs[0]:
        raise ValueError(
            f"remove_layer: expected layer {name!r} to map one tensor to one tensor of the same shape and dtype. "
            f"Received: inputs {ins}, outputs {outs}."
        )

    def replace(node, args, kwargs, default):
        if node.name != target.name:
            return None
        return keras.tree.flatten(args)[0]

    return _rebuild(model, "removing a layer", replace)


def insert_after(model: keras.Model, name: str, layer: keras.layers.Layer) -> keras.Model:
    """``model`` with ``layer`` applied to layer ``name``'s (single) output, before every reader."""
    graph = ModelGraph(model, "inserting a layer")
    target = _single_node(graph, name, "insert_after")
    if len(target.outputs) != 1:
        raise ValueError(f"insert_after: expected layer {name!r} to have one output. Received: {len(target.outputs)}.")
    _check_names(graph.model, [layer.name], "insert_after")

    def replace(node, args, kwargs, default):
        if node.name != target.name:
            return None
        return layer(default())

    return _rebuild(model, "inserting a layer", replace)


def has_nested_models(model: keras.Model) -> bool:
    """True if a layer of ``model`` is itself a Functional or Sequential model."""
    return any(is_graph_model(layer) for layer in as_functional(model).layers)


def inline_nested_models(model: keras.Model) -> keras.Model:
    """A one-level Functional copy of ``model``: nested Functional/Sequential models are inlined.

    Every layer of a nested model is called directly on the outer graph's tensors. Layers are
    copies holding copies of the weights; a nested model called twice gets two sets of copies. A
    layer whose name is already taken becomes ``"<nested model>_<name>"``. The function is
    unchanged (same ops on the same weights); the original is untouched.

    Raises:
        TypeError: for a subclassed model, at any nesting level.
    """
    functional = as_functional(model, "inlining nested models")
    # Top-level names stay; names from inside nested models give way when they clash.
    used: set[str] = {layer.name for layer in functional.layers if not is_graph_model(layer)}
    graph = ModelGraph(functional, "inlining nested models")
    inputs, outputs = graph.rebuild(_inliner(used, prefix=""))
    return keras.Model(inputs, outputs, name=functional.name)


def _inliner(used: set[str], prefix: str):
    copies: dict[int, keras.layers.Layer] = {}

    def call(node: GraphNode, args: tuple, kwargs: dict):
        op = node.operation
        if is_graph_model(op):
            inner = ModelGraph(op, "inlining nested models")
            values = dict(zip(inner.input_names, keras.tree.flatten(args)))
            return _run_inlined(inner, values, used, op.name + "_")
        if not isinstance(op, _L.Layer):
            return op(*args, **kwargs)
        if id(op) not in copies:
            name = op.name
            if prefix:  # inside a nested model
                while name in used:
                    name = f"{prefix}{name}"
                used.add(name)
            copies[id(op)] = clone_layer(op, {"name": name})
        return copies[id(op)](*args, **kwargs)

    return call


def _run_inlined(graph: ModelGraph, values: dict, used: set[str], prefix: str):
    call = _inliner(used, prefix)
    values = dict(values)
    for node in graph.nodes:
        args, kwargs = graph.call_arguments(node.name, values)
        for t, v in zip(node.outputs, keras.tree.flatten(call(node, args, kwargs))):
            values[t] = v
    outs = [values[t] for t in graph.output_names]
    return outs[0] if len(outs) == 1 else outs


# Layers whose ``activation=`` argument runs inside the layer and can be split off.
_ACTIVATION_HOSTS = (
    _L.Conv1D, _L.Conv2D, _L.Conv3D, _L.SeparableConv1D, _L.SeparableConv2D, _L.DepthwiseConv1D,
    _L.DepthwiseConv2D, _L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose, _L.Dense,
)


def _builtin_activation(layer: Any) -> str | None:
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    name = keras.activations.serialize(activation)
    name = name if isinstance(name, str) else getattr(activation, "__name__", None)
    return None if name in (None, "linear") else name


def split_activations(model: keras.Model) -> tuple[keras.Model, list[str]]:
    """``Conv2D(activation="relu", name="c")`` becomes ``Conv2D(name="c")`` + ``Activation("relu", name="c_relu")``.

    Applies to Conv*, SeparableConv*, DepthwiseConv*, Conv*Transpose and Dense layers whose
    built-in activation is not linear, so that the activation gets its own node (and quantizer).

    Returns:
        ``(new model, changes)``: one line per split layer.

    Raises:
        ValueError: for a built-in activation that is not a registered Keras activation (it cannot be
            rebuilt as an ``Activation`` layer).
    """
    graph = ModelGraph(model, "splitting activations")
    taken = {layer.name for layer in graph.model.layers}
    plan: dict[str, tuple[str, str]] = {}
    for node in graph.nodes:
        layer = node.operation
        if node.call_index or not isinstance(layer, _ACTIVATION_HOSTS):
            continue
        name = _builtin_activation(layer)
        if name is None:
            continue
        if keras.activations.get(name) is None:
            raise ValueError(
                f"Layer {layer.name!r} has activation {name!r}, which is not a Keras activation; it cannot be "
                "split into its own Activation layer. Expected a built-in activation name."
            )
        new_name = f"{layer.name}_{name}"
        while new_name in taken:
            new_name += "_"
        taken.add(new_name)
        plan[layer.name] = (name, new_name)
    changes = []
    replaced: dict[int, keras.layers.Layer] = {}

    def replace(node, args, kwargs, default):
        if node.operation.name not in plan:
            return None
        activation, new_name = plan[node.operation.name]
        op = node.operation
        if id(op) not in replaced:
            replaced[id(op)] = (clone_layer(op, {"activation": "linear"}), _L.Activation(activation, name=new_name))
            changes.append(f"split activation {activation!r} out of layer {op.name!r} into layer {new_name!r}")
        bare, act = replaced[id(op)]
        return act(bare(*args, **kwargs))

    return _rebuild(model, "splitting activations", replace), changes
