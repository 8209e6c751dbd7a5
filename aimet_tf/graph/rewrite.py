"""Rewrite primitives: each takes a model and returns a new Functional model, weights carried over.

The input model is never modified: every layer of the result is a copy (same config, copied
weights) unless a primitive says otherwise. All of them rerun the graph through
:meth:`ModelGraph.rebuild`, so multi-input/multi-output models, keyword arguments of calls and
``keras.ops`` nodes are kept as they are.

* :func:`clone_model_graph`: a copy, optionally with one layer per call site of shared layers;
* :func:`replace_layer`, :func:`replace_with_chain`, :func:`replace_with_subgraph`, :func:`remove_layer`,
  :func:`insert_after`;
* :func:`rename_layers`; :func:`inline_nested_models`: nested Functional/Sequential models become
  top-level layers (:func:`with_free_layer_names`: its rule for names already taken);
* :func:`split_activations`: ``Conv2D(activation="relu")`` becomes ``Conv2D`` + ``Activation("relu")``;
* :func:`keep_channels` (and :func:`channel_group`, what it would change): keep some output channels
  of a producer and slice every layer that reads them to match (channel pruning).

Example:
    >>> model = split_activations(model)[0]
    >>> model = replace_with_chain(model, "conv1", [keras.layers.Conv2D(8, (3, 1), name="conv1_a"),
    ...                                             keras.layers.Conv2D(16, (1, 3), name="conv1_b")])
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Collection, Mapping, Sequence

import keras
import numpy as np

from aimet_tf.graph.catalogue import activation_kind, input_channel_axis, output_channel_axis
from aimet_tf.graph.channels import ChannelMappingError, map_reshape_channels
from aimet_tf.graph.model_graph import GraphNode, ModelGraph, as_functional, is_graph_model

__all__ = [
    "ChannelGroup",
    "channel_group",
    "clone_layer",
    "clone_model_graph",
    "has_nested_models",
    "inline_nested_models",
    "insert_after",
    "keep_channels",
    "remove_layer",
    "rename_layers",
    "replace_layer",
    "replace_with_chain",
    "replace_with_subgraph",
    "split_activations",
    "with_free_layer_names",
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
    renames: Mapping[str, str] | None = None,
) -> keras.Model:
    """Reruns ``model``'s graph with copied layers.

    ``replace(node, args, kwargs, default)`` may return the node's new output (``default()``
    computes it with the copied layer). With ``unshare``, each call of a shared layer gets its own
    copy, named ``"<layer>_<k>"`` for the k-th call (k >= 1). ``renames`` maps old layer names to
    the names of their copies.
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
            overrides = {"name": renames[op.name]} if renames and op.name in renames else None
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
            name = _free_name(op.name, prefix, used) if prefix else op.name  # prefix: inside a nested model
            copies[id(op)] = clone_layer(op, {"name": name})
        return copies[id(op)](*args, **kwargs)

    return call


def _free_name(name: str, prefix: str, used: set[str]) -> str:
    """``name``, or ``prefix + name`` (prefixed again until free) where it is in ``used``; ``used`` gains it."""
    while name in used:
        name = prefix + name
    used.add(name)
    return name


def with_free_layer_names(model: keras.Model, used: set[str]) -> tuple[keras.Model, dict[str, str]]:
    """``model`` (to be inlined into a graph whose layer names are ``used``) with the layers whose
    names are taken renamed as :func:`inline_nested_models` names them: ``"<model>_<name>"``.

    ``used`` gains every layer's final name (InputLayers aside: inlining drops them).

    Returns:
        ``(model, {old: new})``: ``model`` itself where nothing is renamed, else a renamed copy
        (:func:`rename_layers`).
    """
    functional = as_functional(model, "inlining a nested model")
    renames = {}
    for layer in functional.layers:
        if isinstance(layer, _L.InputLayer):
            continue
        name = _free_name(layer.name, functional.name + "_", used)
        if name != layer.name:
            renames[layer.name] = name
    return (rename_layers(functional, renames) if renames else model), renames


def rename_layers(model: keras.Model, names: Mapping[str, str]) -> keras.Model:
    """``model`` with layer ``old`` named ``new`` for each ``old: new`` of ``names`` (weights copied).

    Raises:
        ValueError: for an ``old`` name that is not a layer of ``model``, or names that would not be
            distinct afterwards.
    """
    existing = [layer.name for layer in as_functional(model, "renaming layers").layers]
    unknown = sorted(set(names) - set(existing))
    if unknown:
        raise ValueError(f"rename_layers: expected layers of model {model.name!r}. Received: unknown names {unknown}.")
    final = [names.get(name, name) for name in existing]
    if len(set(final)) != len(final):
        clash = sorted({name for name in final if final.count(name) > 1})
        raise ValueError(
            f"rename_layers: expected distinct layer names afterwards. Received: {clash} used more than once."
        )
    return _rebuild(model, "renaming layers", renames=names)


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


def split_activations(model: keras.Model, only: Collection[str] | None = None) -> tuple[keras.Model, list[str]]:
    """``Conv2D(activation="relu", name="c")`` becomes ``Conv2D(name="c")`` + ``Activation("relu", name="c_relu")``.

    Applies to Conv*, SeparableConv*, DepthwiseConv*, Conv*Transpose and Dense layers whose
    built-in activation is not linear, so that the activation gets its own node (and quantizer);
    with ``only``, to the layers of those names only.

    Returns:
        ``(new model, changes)``: one line per split layer.
    """
    graph = ModelGraph(model, "splitting activations")
    taken = {layer.name for layer in graph.model.layers}
    plan: dict[str, tuple[str, str]] = {}
    for node in graph.nodes:
        layer = node.operation
        if node.call_index or not isinstance(layer, _ACTIVATION_HOSTS):
            continue
        if only is not None and layer.name not in only:
            continue
        name = _builtin_activation(layer)
        if name is None:
            continue
        new_name = f"{layer.name}_{name}"
        while new_name in taken:
            new_name += "_"
        taken.add(new_name)
        # The function itself, not its name: a registered custom activation (keras_hub's
        # gelu_approximate) has no entry in keras.activations.get.
        plan[layer.name] = (name, layer.activation, new_name)
    changes = []
    replaced: dict[int, keras.layers.Layer] = {}

    def replace(node, args, kwargs, default):
        if node.operation.name not in plan:
            return None
        activation, function, new_name = plan[node.operation.name]
        op = node.operation
        if id(op) not in replaced:
            replaced[id(op)] = (clone_layer(op, {"activation": "linear"}), _L.Activation(function, name=new_name))
            changes.append(f"split activation {activation!r} out of layer {op.name!r} into layer {new_name!r}")
        bare, act = replaced[id(op)]
        return act(bare(*args, **kwargs))

    return _rebuild(model, "splitting activations", replace), changes


# --- channel counts: keep some output channels of a producer, slice its readers to match -----------


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """The layers that :func:`keep_channels` changes for one producer.

    Attributes:
        producer: the layer whose output channels are kept (Conv*, Dense, SeparableConv*,
            Conv*Transpose).
        channels: its output channel count.
        through: layers between the producer and the consumers, in execution order. Their channels
            are sliced (BatchNormalization, PReLU, DepthwiseConv*, Reshape) or passed through
            (activations, pooling, padding, Dropout, Flatten, Permute, merges, Concatenate).
        consumers: layers whose kernel's input axis is sliced (Conv*, Dense, SeparableConv*,
            Conv*Transpose), in execution order.
    """

    producer: str
    channels: int
    through: tuple[str, ...]
    consumers: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Channels:
    """Which entries of a tensor survive: positions ``kept`` (increasing) of ``size`` along ``axis``.

    ``axis`` counts the batch axis as 0. After a Flatten, the entries along the flat axis are
    pixels x channels, and ``kept`` lists the positions that hold a kept channel.
    """

    axis: int
    rank: int
    kept: np.ndarray
    size: int

    def same_as(self, other: "_Channels") -> bool:
        return (
            self.axis - self.rank == other.axis - other.rank
            and self.size == other.size
            and np.array_equal(self.kept, other.kept)
        )


@dataclasses.dataclass(frozen=True)
class _Edit:
    """How to rebuild one layer: config overrides, and per weight name (``var.name``) the
    ``(axis, indices)`` to keep, or None to copy the weight unchanged."""

    overrides: Mapping[str, Any]
    slices: Mapping[str, tuple[int, np.ndarray] | None]


class _Walk:
    """The channel walk from one producer: the state of each tensor that carries its channels,
    and the errors, which all name the producer, the layer and the reason."""

    def __init__(self, graph: ModelGraph, producer: str):
        self.graph = graph
        self.producer = producer

    def error(self, node: GraphNode, why: str, expected: str, received: str) -> ValueError:
        layer = node.operation
        return ValueError(
            f"keep_channels({self.producer!r}): {why} at {type(layer).__name__} {node.name!r}. "
            f"Expected {expected}. Received: {received}."
        )

    def edit(self, node: GraphNode, overrides: Mapping[str, Any] | None = None, **slices) -> _Edit:
        """An edit of ``node``'s layer; every weight of the layer must be named in ``slices``."""
        names = [v.name for v in node.operation.weights]
        unknown = [n for n in names if n not in slices]
        if unknown:
            raise self.error(
                node, "weights that cannot be sliced",
                f"weights among {sorted(slices)} (a float layer, not quantized or LoRA-enabled)",
                f"weights {names}",
            )
        return _Edit(dict(overrides or {}), slices)

    def rank(self, tensor: str) -> int:
        return len(self.graph.keras_tensor(tensor).shape)

    def expect_channel_axis(self, node: GraphNode, state: _Channels) -> None:
        """A layer with a ``data_format`` must read the carried channels as its channels."""
        axis = _data_channel_axis(node.operation, state.rank)
        if axis != state.axis:
            raise self.error(
                node, "channels mixed",
                f"the channels of {self.producer!r} on the axis the layer treats as channels ({axis})",
                f"them on axis {state.axis} (data_format={getattr(node.operation, 'data_format', None)!r})",
            )


def _data_channel_axis(layer: Any, rank: int) -> int:
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else rank - 1


# Layers that act on each entry, or each channel, alone: the carried channels pass through.
_ELEMENTWISE = (
    _L.Dropout, _L.SpatialDropout1D, _L.SpatialDropout2D, _L.SpatialDropout3D, _L.GaussianNoise,
    _L.GaussianDropout, _L.AlphaDropout, _L.ActivityRegularization, _L.Identity,
)
# Layers that move or pool pixels and keep channels on their data_format's axis.
_SPATIAL = (
    _L.MaxPooling1D, _L.MaxPooling2D, _L.MaxPooling3D, _L.AveragePooling1D, _L.AveragePooling2D,
    _L.AveragePooling3D, _L.ZeroPadding1D, _L.ZeroPadding2D, _L.ZeroPadding3D, _L.Cropping1D,
    _L.Cropping2D, _L.Cropping3D, _L.UpSampling1D, _L.UpSampling2D, _L.UpSampling3D,
)
_GLOBAL_POOLING = (
    _L.GlobalAveragePooling1D, _L.GlobalAveragePooling2D, _L.GlobalAveragePooling3D,
    _L.GlobalMaxPooling1D, _L.GlobalMaxPooling2D, _L.GlobalMaxPooling3D,
)
_ELEMENTWISE_MERGES = (_L.Add, _L.Subtract, _L.Multiply, _L.Average, _L.Maximum, _L.Minimum)
_DEPTHWISE = (_L.DepthwiseConv1D, _L.DepthwiseConv2D)
_SEPARABLE = (_L.SeparableConv1D, _L.SeparableConv2D)
_TRANSPOSED = (_L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose)
_CONVS = (_L.Conv1D, _L.Conv2D, _L.Conv3D)


def _producer_edit(walk: _Walk, node: GraphNode, kept: Sequence[int] | None) -> tuple[_Edit, _Channels]:
    layer = node.operation
    groups = getattr(layer, "groups", 1)
    not_a_producer = walk.error(
        node, "no output channels of its own",
        "a Conv1D/2D/3D (groups=1), Dense, SeparableConv1D/2D or Conv*Transpose producer",
        type(layer).__name__ + (f" with groups={groups}" if groups != 1 else ""),
    )
    try:
        kernel_axis = output_channel_axis(layer)
    except KeyError:
        raise not_a_producer from None
    if groups != 1:
        raise not_a_producer
    if kernel_axis is None:
        raise walk.error(
            node, "output channels that follow its input channels",
            "a producer whose output channels are its own; a depthwise conv has one per input channel "
            "(times depth_multiplier), so prune the layer that feeds it",
            type(layer).__name__,
        )
    if len(node.outputs) != 1:
        raise walk.error(node, "several outputs", "a producer with one output", f"{len(node.outputs)} outputs")
    activation = _builtin_activation(layer)
    if activation in ("softmax", "log_softmax"):
        raise walk.error(node, "channels mixed by the built-in activation", "an activation that acts per channel",
                         f"activation={activation!r}")
    tensor = node.outputs[0]
    rank = walk.rank(tensor)
    axis = _data_channel_axis(layer, rank)
    size = int(walk.graph.keras_tensor(tensor).shape[axis])
    indices = np.arange(size) if kept is None else _checked_kept(walk, node, kept, size)
    count = "units" if "units" in layer.get_config() else "filters"
    kernel = "pointwise_kernel" if isinstance(layer, _SEPARABLE) else "kernel"
    edit = walk.edit(
        node, {count: len(indices)},
        **{kernel: (kernel_axis, indices), "bias": (0, indices), "depthwise_kernel": None},
    )
    return edit, _Channels(axis, rank, indices, size)


def _checked_kept(walk: _Walk, node: GraphNode, kept: Sequence[int], size: int) -> np.ndarray:
    values = np.asarray(list(kept))
    valid = (
        values.ndim == 1 and values.size > 0 and np.issubdtype(values.dtype, np.integer)
        and values.min() >= 0 and values.max() < size and len(np.unique(values)) == values.size
    )
    if not valid:
        raise walk.error(
            node, "invalid kept channels", f"distinct integer channel indices in [0, {size}), at least one",
            f"kept={list(kept)}",
        )
    return np.sort(values)


def _step(walk: _Walk, node: GraphNode, states: list[_Channels | None]) -> tuple[str, _Edit, _Channels | None]:
    """What ``node`` does with the carried channels: ``("through", edit, output state)`` or
    ``("consumer", edit, None)``."""
    layer = node.operation
    if isinstance(layer, _ELEMENTWISE_MERGES):
        return "through", walk.edit(node), _merged(walk, node, states)
    if isinstance(layer, _L.Concatenate):
        return "through", walk.edit(node), _concatenated(walk, node, states)
    if len(states) != 1 or not isinstance(layer, _L.Layer) or is_graph_model(layer):
        raise _unsupported(walk, node)
    state = states[0]
    if isinstance(layer, _ELEMENTWISE) or (isinstance(layer, _L.Activation) and activation_kind(layer) is None):
        return "through", walk.edit(node), state
    if activation_kind(layer) is not None:
        if activation_kind(layer) == "cross_channel":
            raise walk.error(node, "channels mixed by a cross-channel activation", "an activation that acts per channel",
                             f"{type(layer).__name__}")
        if isinstance(layer, _L.PReLU):
            # alpha has the input's shape without the batch axis, 1 on shared axes.
            shared = layer.alpha.shape[state.axis - 1] == 1
            return "through", walk.edit(node, alpha=None if shared else (state.axis - 1, state.kept)), state
        return "through", walk.edit(node), state
    if isinstance(layer, _SPATIAL):
        walk.expect_channel_axis(node, state)
        return "through", walk.edit(node), state
    if isinstance(layer, _GLOBAL_POOLING):
        walk.expect_channel_axis(node, state)
        return "through", walk.edit(node), state if layer.keepdims else _Channels(1, 2, state.kept, state.size)
    if isinstance(layer, _L.BatchNormalization):
        if layer.axis % state.rank != state.axis:
            raise walk.error(node, "channels mixed", f"a batch norm over axis {state.axis}",
                             f"axis={layer.axis}")
        bn = (0, state.kept)
        return "through", walk.edit(node, gamma=bn, beta=bn, moving_mean=bn, moving_variance=bn), state
    if isinstance(layer, _DEPTHWISE):
        walk.expect_channel_axis(node, state)
        out = _multiplied(state, layer.depth_multiplier)
        return "through", walk.edit(node, kernel=(input_channel_axis(layer), state.kept), bias=(0, out.kept)), out
    if isinstance(layer, _L.Permute):
        return "through", walk.edit(node), dataclasses.replace(state, axis=list(layer.dims).index(state.axis) + 1)
    if isinstance(layer, (_L.Flatten, _L.Reshape)):
        return _reshaped(walk, node, state)
    return "consumer", _consumer_edit(walk, node, state), None


def _multiplied(state: _Channels, multiplier: int) -> _Channels:
    """Depthwise output channel ``c * multiplier + m`` comes from input channel ``c``."""
    kept = (state.kept[:, None] * multiplier + np.arange(multiplier)).ravel()
    return _Channels(state.axis, state.rank, kept, state.size * multiplier)


def _consumer_edit(walk: _Walk, node: GraphNode, state: _Channels) -> _Edit:
    layer = node.operation
    if isinstance(layer, _L.Dense):
        if state.axis != state.rank - 1:
            raise walk.error(node, "channels mixed", f"the channels of {walk.producer!r} on the last axis",
                             f"them on axis {state.axis}")
        return walk.edit(node, kernel=(input_channel_axis(layer), state.kept), bias=None)
    if isinstance(layer, _CONVS + _TRANSPOSED + _SEPARABLE) and getattr(layer, "groups", 1) == 1:
        walk.expect_channel_axis(node, state)
        if isinstance(layer, _SEPARABLE):
            # The catalogue's input axis is the depthwise kernel's; the pointwise kernel [1.., in * mult, out]
            # reads the depthwise output channels on its axis -2.
            pointwise = (-2, _multiplied(state, layer.depth_multiplier).kept)
            return walk.edit(node, depthwise_kernel=(input_channel_axis(layer), state.kept), pointwise_kernel=pointwise,
                             bias=None)
        return walk.edit(node, kernel=(input_channel_axis(layer), state.kept), bias=None)
    raise _unsupported(walk, node)


def _unsupported(walk: _Walk, node: GraphNode) -> ValueError:
    layer = node.operation
    groups = getattr(layer, "groups", 1)
    if is_graph_model(layer):
        fix = "inline_nested_models(model) first"
    elif not isinstance(layer, _L.Layer):
        fix = "prepare_model(model) first, which turns keras.ops calls into layers"
    else:
        fix = "prune another producer"
    return walk.error(
        node, f"channels of {walk.producer!r} read by a layer that keep_channels cannot slice",
        "BatchNormalization, a per-channel activation, pooling, padding, cropping, upsampling, Dropout, "
        "DepthwiseConv*, Flatten, Reshape, Permute, a merge, Concatenate, or a Conv*/Dense/SeparableConv*/"
        f"Conv*Transpose (groups=1) consumer. Fix: {fix}",
        type(layer).__name__ + (f" with groups={groups}" if groups != 1 else ""),
    )


def _merged(walk: _Walk, node: GraphNode, states: list[_Channels | None]) -> _Channels:
    first = next(s for s in states if s is not None)
    if all(s is not None and s.same_as(first) for s in states):
        return first
    received = ", ".join(
        f"{t!r} " + ("(all channels stay)" if s is None else f"({s.size} -> {len(s.kept)} entries on axis {s.axis})")
        for t, s in zip(node.inputs, states)
    )
    raise walk.error(
        node, "channels tied",
        f"every input of {node.name!r} to carry the same kept channels of {walk.producer!r}: slicing "
        f"{walk.producer!r} alone would leave the other input(s) with channels that no longer line up. "
        "Prune the tied producers together, or choose another producer",
        f"inputs {received}",
    )


def _concatenated(walk: _Walk, node: GraphNode, states: list[_Channels | None]) -> _Channels:
    """Along the carried axis, Concatenate offsets each input's kept positions; other inputs keep all."""
    rank = walk.rank(node.outputs[0])
    axis = node.operation.axis % rank
    if any(s is not None and s.axis != axis for s in states):
        return _merged(walk, node, states)
    kept, offset = [], 0
    for tensor, state in zip(node.inputs, states):
        size = walk.graph.keras_tensor(tensor).shape[axis]
        if size is None:
            raise walk.error(node, "channels joined with an input of unknown size",
                             f"inputs with a static size on the concatenation axis {axis}", f"{tensor!r} with None")
        kept.append(offset + (np.arange(size) if state is None else state.kept))
        offset += size
    return _Channels(axis, rank, np.concatenate(kept), offset)


def _reshaped(walk: _Walk, node: GraphNode, state: _Channels) -> tuple[str, _Edit, _Channels]:
    """Flatten and Reshape: the entries that hold a kept channel stay (:func:`map_reshape_channels`)."""
    layer = node.operation
    in_shape = tuple(walk.graph.keras_tensor(node.inputs[0]).shape)
    try:
        placement = map_reshape_channels(layer, in_shape, np.arange(state.size), state.axis)
    except ChannelMappingError as e:
        raise walk.error(node, e.problem, e.expected, e.received) from None
    kept = np.flatnonzero(np.isin(placement.labels, state.kept))
    out_shape = placement.shape[1:]
    carried = _Channels(placement.axis, len(placement.shape), kept, out_shape[placement.axis - 1])
    if isinstance(layer, _L.Flatten):
        return "through", _Edit({}, {}), carried
    # A reshape that keeps the carried axis last, with its size, keeps its target whatever the other axes.
    if state.axis == len(in_shape) - 1 and out_shape and out_shape[-1] == state.size:
        target = tuple(layer.target_shape)
        target = target if target[-1] == -1 else target[:-1] + (len(kept),)
        return "through", _Edit({"target_shape": target}, {}), carried
    if None in out_shape:
        raise walk.error(node, "channels moved by a reshape of unknown size",
                         "static per-sample shapes (to write the sliced target shape)",
                         f"input shape {in_shape[1:]}, output shape {out_shape}")
    axis = placement.axis - 1
    target = out_shape[:axis] + (len(kept),) + out_shape[axis + 1:]
    return "through", _Edit({"target_shape": target}, {}), carried


def _channel_plan(model: keras.Model, producer: str, kept: Sequence[int] | None):
    graph = ModelGraph(model, "changing channel counts")
    walk = _Walk(graph, producer)
    start = _single_node(graph, producer, "keep_channels")
    edit, state = _producer_edit(walk, start, kept)
    edits = {start.name: edit}
    carried: dict[str, _Channels] = {}
    through, consumers = [], []

    def carry(node: GraphNode, tensor: str, value: _Channels) -> None:
        if tensor in graph.output_names:
            raise walk.error(
                node, "channels reach a model output",
                f"the channels of {producer!r} to be read only inside the model (its outputs keep their shapes)",
                f"output {tensor!r} with {value.size} entries on axis {value.axis}",
            )
        carried[tensor] = value

    carry(start, start.outputs[0], state)
    for node in graph.nodes[graph.nodes.index(start) + 1:]:
        states = [carried.get(t) for t in node.inputs]
        if all(s is None for s in states):
            continue
        if isinstance(node.operation, _L.Layer) and graph.call_count(node.operation) != 1:
            raise walk.error(
                node, "a shared layer", "a layer called once. Fix: clone_model_graph(model, unshare=True) gives "
                "each call its own layer", f"{graph.call_count(node.operation)} calls",
            )
        role, edits[node.name], out = _step(walk, node, states)
        if role == "consumer":
            consumers.append(node.name)
        else:
            through.append(node.name)
            for tensor in node.outputs:
                carry(node, tensor, out)
    group = ChannelGroup(start.name, state.size, tuple(through), tuple(consumers))
    return group, edits


def channel_group(model: keras.Model, producer: str) -> ChannelGroup:
    """The layers whose channels follow ``producer``'s output channels: what :func:`keep_channels`
    would slice. Cheap (no model is built), so a pruning pass can list its candidates with it.

    Raises:
        ValueError: as :func:`keep_channels` does, for a producer whose channels cannot be sliced alone.
    """
    return _channel_plan(model, producer, None)[0]


def keep_channels(model: keras.Model, producer: str, kept: Sequence[int]) -> keras.Model:
    """``model`` with only the output channels ``kept`` of layer ``producer``, and every layer that
    reads them sliced to match.

    The walk starts at ``producer``'s output and follows the channels through the layers that keep
    them apart, until layers that mix them (the consumers):

    * through: BatchNormalization (gamma, beta, moving mean and variance sliced), PReLU (alpha
      sliced unless shared on the channel axis), per-channel activations, pooling, padding,
      cropping, upsampling, Dropout and noise layers, Permute; DepthwiseConv* (kernel input axis
      and bias sliced: output channel ``c * depth_multiplier + m`` stays iff input channel ``c``
      does); Flatten and Reshape (the entries that hold a kept channel stay); Add / Subtract /
      Multiply / Average / Maximum / Minimum whose inputs all carry the same kept channels (e.g.
      ``x + relu(x)``); Concatenate along the channel axis, whose output keeps the other inputs'
      channels whole and ``producer``'s kept channels at their offset (a Concatenate along another
      axis is a merge);
    * consumers: Conv1D/2D/3D and Conv*Transpose (groups=1), Dense and SeparableConv*, whose
      kernel's input axis is sliced (a Dense after a Flatten loses the rows of the removed
      channels' pixels).

    Layer names, configs (but for ``filters`` / ``units`` / ``target_shape``) and all other weights
    stay. With ``y = f(x)`` the original model, ``y' = f'(x)`` the result and the removed channels
    dead (their entries reach the consumers as 0 everywhere, e.g. a zero kernel slice and bias
    before a ReLU), ``y' == y`` up to float rounding. Otherwise the consumers lose those channels'
    contribution; a pruning pass re-fits them (e.g. by least squares) on the new model's layers,
    found by the same names.

    Args:
        model: a Functional or built Sequential model (nested models: :func:`inline_nested_models`
            first).
        producer: the name of a Conv1D/2D/3D (groups=1), Dense, SeparableConv1D/2D or Conv*Transpose
            layer, called once.
        kept: the output channels to keep, distinct indices in ``[0, channels)``; kept in increasing
            order whatever the given order.

    Returns:
        A new Functional model; ``model`` is untouched.

    Raises:
        ValueError: naming the layer and the reason, where slicing ``producer`` alone is inconsistent
            or unsupported: channels tied at a merge with a tensor that does not carry the same kept
            channels (a residual Add), channels mixed (softmax, a Reshape that splits the channel
            axis, a layer whose data_format reads another axis as channels), channels reaching a
            model output, a shared layer, a layer it cannot slice (LayerNormalization, grouped
            convs, keras.ops nodes, nested models), or invalid ``kept``.

    Example:
        >>> pruned = keep_channels(model, "conv1", [0, 2, 3])   # conv1: 4 -> 3 filters
        >>> pruned.get_layer("conv1").filters, channel_group(model, "conv1").consumers
        (3, ('conv2',))
    """
    _, edits = _channel_plan(model, producer, kept)

    def replace(node, args, kwargs, default):
        edit = edits.get(node.name)
        if edit is None:
            return None
        layer = node.operation
        new = layer.__class__.from_config({**layer.get_config(), **edit.overrides})
        out = new(*args, **kwargs)
        new.set_weights([
            w if edit.slices[v.name] is None else np.take(w, edit.slices[v.name][1], axis=edit.slices[v.name][0])
            for v, w in zip(layer.weights, layer.get_weights())
        ])
        return out

    return _rebuild(model, "changing channel counts", replace)
