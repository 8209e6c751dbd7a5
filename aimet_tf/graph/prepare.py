"""AIMET's model preparer for Keras 3: any traceable model -> an equivalent one-level Functional model.

:func:`prepare_model` (AIMET: ``aimet_tensorflow.keras.model_preparer.prepare_model``) returns a
Functional model computing the same function, in which every computation is its own layer that the
quantization simulation can wrap:

* subclassed models and custom composite layers are traced: their ``call`` runs on symbolic
  inputs, so the layers it calls become graph nodes (nested Functional and Sequential models are
  inlined the same way; an inner layer whose name is taken becomes ``"<nested model>_<name>"``, as
  in :func:`~aimet_tf.graph.rewrite.inline_nested_models`);
* a layer shared by several call sites gets one copy per call site (``"<name>_<k>"``);
* ``keras.ops`` calls (``x + y``, ``keras.ops.relu(x)``) become layers: the Keras layer that
  computes the same (``Add``, ``ReLU``, ...) where there is one, else an :class:`OpLayer`;
* Lambda layers are traced like ``call``;
* built-in activations are split off (``Conv2D(activation="relu")`` -> ``Conv2D`` + ``Activation``).

The original model is not modified; every layer of the result holds copies of its weights.

Example:
    >>> prepared = prepare_model(my_subclassed_model)
    >>> prepared, report = prepare_model_with_report(my_subclassed_model)
    >>> print("\\n".join(report.changes))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
from absl import logging

from aimet_tf.graph import rewrite
from aimet_tf.graph.model_graph import (
    GraphNode,
    ModelGraph,
    all_layers,
    as_functional,
    is_graph_model,
    is_subclassed_model,
)
from aimet_tf.graph.op_layer import OpLayer, op_layer_for

__all__ = [
    "PrepareReport", "check_prepared", "mark_atomic", "needs_preparing", "prepare_model", "prepare_model_with_report",
]

_L = keras.layers
_MAX_DEPTH = 32
# Layer classes kept as single nodes even though they hold layers of their own (registered by the
# quantization registry for custom layers it knows how to quantize as a whole).
_ATOMIC: set[type] = set()


def mark_atomic(cls: type) -> None:
    """Keep layers of class ``cls`` as single nodes (do not trace into their ``call``)."""
    _ATOMIC.add(cls)


@dataclasses.dataclass
class PrepareReport:
    """What :func:`prepare_model` changed, one line per change (empty: the model was kept as is)."""

    changes: list[str] = dataclasses.field(default_factory=list)


def _is_keras_builtin(layer: Any) -> bool:
    return type(layer).__module__.startswith("keras.")


def _is_composite(op: Any) -> bool:
    """A layer whose call runs other layers (traced through) rather than computing itself."""
    if not isinstance(op, _L.Layer) or isinstance(op, OpLayer):
        return False
    if any(isinstance(op, cls) for cls in _ATOMIC):
        return False
    if is_graph_model(op) or is_subclassed_model(op):
        return True
    if _is_keras_builtin(op):
        return False
    return bool(all_layers(op))


# keras.ops classes with an equivalent Keras layer, for calls on tensors only.
_BINARY_LAYERS = {"Add": _L.Add, "Subtract": _L.Subtract, "Multiply": _L.Multiply, "Maximum": _L.Maximum,
                  "Minimum": _L.Minimum}
_ACTIVATION_OPS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSigmoid": "hard_sigmoid",
                   "HardSilu": "hard_silu", "Silu": "silu", "Elu": "elu", "Selu": "selu",
                   "Softplus": "softplus", "Softsign": "softsign", "Exp": "exponential"}


def _ops_layer(op: keras.Operation, args: tuple, kwargs: dict, name: str) -> tuple[keras.layers.Layer | None, Any]:
    """A layer for ``op(*args, **kwargs)`` and what to call it on (layer None: the op is an identity)."""
    cls = type(op).__name__
    tensors = [a for a in args if isinstance(a, keras.KerasTensor)]
    if cls == "ConvertToTensor" and len(args) == 1 and tensors and (kwargs.get("dtype") in (None, args[0].dtype)):
        return None, args[0]  # an identity on a tensor
    if cls in _BINARY_LAYERS and not kwargs and len(args) == 2 and len(tensors) == 2 and args[0].shape == args[1].shape:
        return _BINARY_LAYERS[cls](name=name), list(args)
    if cls == "Relu6" and len(tensors) == 1 and len(args) == 1 and not kwargs:
        return _L.ReLU(max_value=6.0, name=name), args[0]
    if cls in _ACTIVATION_OPS and len(tensors) == 1 and len(args) == 1 and not kwargs:
        return _L.Activation(_ACTIVATION_OPS[cls], name=name), args[0]
    if cls == "Softmax" and len(tensors) == 1 and len(args) == 1 and not kwargs:
        return _L.Softmax(axis=op.axis, name=name), args[0]
    if cls == "Concatenate" and len(args) == 1 and all(isinstance(a, keras.KerasTensor) for a in args[0]):
        return _L.Concatenate(axis=op.axis, name=name), list(args[0])
    layer, inputs = op_layer_for(op, args, kwargs, name)
    return layer, (inputs[0] if len(inputs) == 1 else inputs)


def _trace_call(op: keras.layers.Layer, args: tuple, kwargs: dict) -> Any:
    """Runs ``op``'s own call (not ``__call__``) on symbolic tensors, so its layers become nodes."""
    before = {id(l) for l in all_layers(op)} if not is_graph_model(op) else None
    try:
        if isinstance(op, _L.Lambda):
            out = op.function(*args, **{k: v for k, v in kwargs.items() if k != "mask"}, **op.arguments)
        else:
            call_kwargs = {k: v for k, v in kwargs.items() if k != "mask"}
            out = op.call(*args, **call_kwargs)
    except Exception as error:  # noqa: BLE001 (reported with the layer's name, not swallowed)
        raise ValueError(
            f"prepare_model cannot trace layer {op.name!r} ({type(op).__name__}): its call() failed on symbolic "
            f"inputs with {type(error).__name__}: {error}. Expected a call() that only calls Keras layers and "
            "keras.ops on its inputs. Python branches on tensor values (if x > 0), TensorFlow functions called "
            "directly on symbolic tensors (tf.*) and numpy conversions cannot be traced; write them with "
            "keras.ops (keras.ops.where, keras.ops.cond) or register the layer to be kept whole."
        ) from error
    if before is not None:
        after = {id(l) for l in all_layers(op)}
        created = after - before
        if created:
            names = [l.name for l in all_layers(op) if id(l) in created]
            raise ValueError(
                f"prepare_model cannot trace layer {op.name!r} ({type(op).__name__}): its call() creates "
                f"layers {names} each time it runs, so their weights are not the trained ones. Expected "
                "layers created in __init__ or build()."
            )
    return out


def _split_bidirectional(op: keras.layers.Bidirectional, args: tuple, kwargs: dict) -> Any:
    """A Bidirectional layer as its two recurrent layers and their merge, as its call computes it."""
    if len(args) != 1 or kwargs.get("initial_state") is not None or kwargs.get("mask") is not None:
        raise ValueError(
            f"prepare_model cannot split Bidirectional layer {op.name!r}: expected a call on the sequences "
            "alone. Received: an initial_state or a mask as well."
        )
    forward, backward = op.forward_layer(args[0]), op.backward_layer(args[0])
    states: list = []
    if op.return_state:
        states = [*forward[1:], *backward[1:]]
        forward, backward = forward[0], backward[0]
    if op.return_sequences:
        # The backward layer reads the sequence from its end: its outputs come last step first.
        backward = keras.ops.flip(backward, axis=1)
    merge = {"concat": _L.Concatenate(axis=-1), "sum": _L.Add(), "ave": _L.Average(), "mul": _L.Multiply()}
    merged = [forward, backward] if op.merge_mode is None else [merge[op.merge_mode]([forward, backward])]
    return [*merged, *states] if op.return_state or op.merge_mode is None else merged[0]


def _expand_once(model: keras.Model, report: PrepareReport) -> tuple[keras.Model, bool]:
    """Traces every composite node and turns every ops node into a layer, one level deep."""
    graph = ModelGraph(model, "preparing the model")
    taken = {layer.name for layer in graph.model.layers}
    inlined: dict[int, keras.Model] = {}  # nested model -> itself, or its copy with free layer names
    changed = False

    def fresh(base: str) -> str:
        name = base
        k = 1
        while name in taken:
            name = f"{base}_{k}"
            k += 1
        taken.add(name)
        return name

    def with_free_names(op: keras.Model) -> keras.Model:
        # Its layers join this level's names: those taken are renamed as inline_nested_models does
        # (once per nested model, so that a model called twice still shares its layers).
        if id(op) not in inlined:
            inlined[id(op)], renames = rewrite.with_free_layer_names(op, taken)
            report.changes.extend(
                f"renamed layer {old!r} of nested model {op.name!r} to {new!r} (the name is taken)"
                for old, new in renames.items()
            )
        return inlined[id(op)]

    def with_free_sublayer_names(op: keras.layers.Layer) -> keras.layers.Layer:
        # The layers a composite calls become nodes of this level: where one's name is taken
        # (two TransformerEncoders each hold a "self_attention_layer"), a copy of the composite
        # gets "<composite>_<name>" for it, so the user's layers keep their names.
        if id(op) in inlined:
            return inlined[id(op)]
        names = [child.name for child in op._flatten_layers(include_self=False, recursive=False)]
        if len(set(names)) == len(names) and taken.isdisjoint(names):
            taken.update(names)
            inlined[id(op)] = op
            return op
        copy = rewrite.clone_layer(op)
        for child in copy._flatten_layers(include_self=False, recursive=False):
            new = rewrite._free_name(child.name, op.name + "_", taken)
            if new != child.name:
                report.changes.append(f"renamed layer {child.name!r} of {op.name!r} to {new!r} (the name is taken)")
                child.name = new
        inlined[id(op)] = copy
        return copy

    def call(node: GraphNode, args: tuple, kwargs: dict):
        nonlocal changed
        op = node.operation
        if _is_composite(op) or isinstance(op, _L.Lambda):
            changed = True
            kind = "Lambda" if isinstance(op, _L.Lambda) else (
                "nested model" if is_graph_model(op) else f"{type(op).__name__} (custom)")
            report.changes.append(f"traced {kind} {node.name!r} into its layers")
            if is_graph_model(op):
                return _trace_call(with_free_names(op), args, kwargs)
            return _trace_call(op if isinstance(op, _L.Lambda) else with_free_sublayer_names(op), args, kwargs)
        if isinstance(op, _L.Bidirectional):
            changed = True
            report.changes.append(f"split Bidirectional {node.name!r} into {op.forward_layer.name!r}, "
                                  f"{op.backward_layer.name!r} and their merge ({op.merge_mode})")
            return _split_bidirectional(op, args, kwargs)
        if not isinstance(op, _L.Layer):
            changed = True
            layer, inputs = _ops_layer(op, args, kwargs, fresh(op.name))
            if layer is None:
                report.changes.append(f"ops node {node.name!r} ({type(op).__name__}) is an identity: removed")
                return inputs
            report.changes.append(f"ops node {node.name!r} ({type(op).__name__}) became layer {layer.name!r} "
                                  f"({type(layer).__name__})")
            return layer(inputs)
        return op(*args, **kwargs)

    inputs, outputs = graph.rebuild(call)
    return keras.Model(inputs, outputs, name=graph.model.name), changed


def _symbolic_inputs(model: keras.Model, input_layer: Any) -> Any:
    """Symbolic inputs for tracing a subclassed model."""
    if input_layer is not None:
        tensors = input_layer if isinstance(input_layer, (list, tuple)) else [input_layer]
        made = []
        for t in tensors:
            if isinstance(t, _L.InputLayer):
                t = t.output
            if not isinstance(t, keras.KerasTensor):
                raise TypeError(
                    f"Expected input_layer to be keras.Input tensors or InputLayers. Received: {type(t).__name__}"
                )
            made.append(t)
        return made[0] if len(made) == 1 else made
    build = model.get_build_config() or {}
    shapes = build.get("input_shape")
    if shapes is None:
        raise ValueError(
            f"Subclassed model {model.name!r} has not been built, so its input shapes are unknown. Expected a "
            "model called once on real data, or prepare_model(model, input_layer=keras.Input(shape))."
        )
    if isinstance(shapes, dict):
        raise ValueError(
            f"Subclassed model {model.name!r} takes dict inputs; pass input_layer=[keras.Input(...), ...]."
        )
    # The batch dimension of the build call is not part of the model: leave it open.
    if isinstance(shapes, (list, tuple)) and shapes and isinstance(shapes[0], (list, tuple)):
        return [keras.Input(shape=tuple(s)[1:]) for s in shapes]
    return keras.Input(shape=tuple(shapes)[1:])


def needs_preparing(model: keras.Model, *, allow_shared_layers: bool = False) -> list[str]:
    """Why ``model`` must go through :func:`prepare_model` first (empty: it need not).

    Args:
        model: a Keras model; nested Functional/Sequential models are not looked into (see
            :func:`check_prepared`).
        allow_shared_layers: do not count a layer called at several sites (float passes such as
            batch-norm folding leave shared layers alone; the simulation needs one layer per call site).
    """
    if is_subclassed_model(model):
        return [f"model {model.name!r} is a subclassed keras.Model ({type(model).__name__})"]
    graph = ModelGraph(model, "checking the model")
    reasons = []
    for node in graph.nodes:
        op = node.operation
        if not isinstance(op, _L.Layer):
            reasons.append(f"ops node {node.name!r} ({type(op).__name__}) is not a layer")
        elif isinstance(op, _L.Lambda):
            reasons.append(f"Lambda layer {node.name!r} hides its computation")
        elif isinstance(op, _L.Bidirectional):
            reasons.append(f"Bidirectional layer {node.name!r} runs two recurrent layers and a merge")
        elif is_subclassed_model(op) or (_is_composite(op) and not is_graph_model(op)):
            reasons.append(f"layer {node.name!r} ({type(op).__name__}) runs other layers in its call()")
        elif node.call_index == 1 and not allow_shared_layers:
            reasons.append(f"layer {op.name!r} is shared by {graph.call_count(op)} call sites")
    return reasons


def check_prepared(model: keras.Model, purpose: str, *, allow_shared_layers: bool = False) -> ModelGraph:
    """The :class:`ModelGraph` of ``model``, or an error that says to call :func:`prepare_model` first.

    The check every pass runs on the model it is given: :func:`needs_preparing` on ``model`` and on
    every Functional/Sequential model nested in it.

    Args:
        model: a Functional or Sequential model.
        purpose: what needs the model prepared, for the error (e.g. ``"cross-layer equalization"``).
        allow_shared_layers: accept layers called at several sites (see :func:`needs_preparing`).

    Returns:
        The model's graph (a Sequential model is read as a Functional one).

    Raises:
        TypeError: for a subclassed model (``prepare_model`` traces it).
        ValueError: naming every node that needs preparing and why, at any nesting level.

    Example:
        >>> graph = check_prepared(model, "batch-norm folding", allow_shared_layers=True)
    """
    graph = ModelGraph(model, purpose)
    reasons = _reasons_at_every_level(graph.model, allow_shared_layers, where="")
    if reasons:
        expected = "every computation a Keras layer" + ("" if allow_shared_layers else ", each layer called once")
        raise ValueError(
            f"Model {model.name!r} must be prepared before {purpose}. Expected {expected}. Received: "
            + "; ".join(reasons) + ". Fix: model = aimet_tf.graph.prepare_model(model) (the same function, one "
            "layer per computation and call site)."
        )
    return graph


def _reasons_at_every_level(model: keras.Model, allow_shared_layers: bool, where: str) -> list[str]:
    reasons = [where + r for r in needs_preparing(model, allow_shared_layers=allow_shared_layers)]
    for layer in model.layers:
        if is_graph_model(layer):
            reasons += _reasons_at_every_level(
                as_functional(layer), allow_shared_layers, f"{where}in nested model {layer.name!r}: "
            )
    return reasons


def prepare_model_with_report(original_model: keras.Model, input_layer: Any = None) -> tuple[keras.Model, PrepareReport]:
    """:func:`prepare_model`, also returning the :class:`PrepareReport` of every change."""
    if not isinstance(original_model, keras.Model):
        raise TypeError(f"Expected a keras.Model. Received: {type(original_model).__name__}")
    report = PrepareReport()
    if is_subclassed_model(original_model):
        inputs = _symbolic_inputs(original_model, input_layer)
        outputs = _trace_call(original_model, (inputs,), {})
        report.changes.append(f"traced subclassed model {original_model.name!r} ({type(original_model).__name__})")
        model = keras.Model(inputs, outputs, name=original_model.name)
    else:
        model = original_model
    for _ in range(_MAX_DEPTH):
        model, changed = _expand_once(model, report)
        if not changed:
            break
    else:
        raise ValueError(f"prepare_model: layers nested more than {_MAX_DEPTH} deep in {original_model.name!r}.")
    graph = ModelGraph(model, "preparing the model")
    shared = [node.operation.name for node in graph.nodes if node.call_index == 1]
    model = rewrite.clone_model_graph(model, unshare=True)
    for name in shared:
        report.changes.append(f"shared layer {name!r} got one copy per call site")
    model, split = rewrite.split_activations(model)
    report.changes.extend(split)
    for line in report.changes:
        logging.info("prepare_model: %s", line)
    return model, report


def prepare_model(original_model: keras.Model, input_layer: Any = None) -> keras.Model:
    """A one-level Functional model computing the same function as ``original_model``.

    AIMET's ``model_preparer.prepare_model`` for Keras 3 (see the module docstring for what changes);
    :func:`prepare_model_with_report` also returns the list of changes.

    Args:
        original_model: a Functional, Sequential or subclassed Keras model. Not modified.
        input_layer: for a subclassed model that was never built: its ``keras.Input`` tensor(s).

    Raises:
        ValueError: naming the layer and the reason, for a ``call`` that cannot be traced.
    """
    return prepare_model_with_report(original_model, input_layer)[0]
