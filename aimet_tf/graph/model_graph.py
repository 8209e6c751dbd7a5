"""The one reader of Keras graph internals: a Functional model as named nodes and tensors.

A Keras 3 Functional model records every call of a layer (or of a ``keras.ops`` function on
symbolic tensors) as a ``Node`` that holds the operation, its input ``KerasTensor``s and its
outputs. :class:`ModelGraph` reads that record once into plain names:

* a **node** is one call of one operation. It is named by the operation's name; the k-th call
  (k >= 1) of a layer shared across several call sites is ``"<name>#<k>"``;
* a **tensor** is one output of one node, named ``"<node>/output:<i>"`` (the same names as the
  activation entries of the encodings files); a model input is the output of its ``InputLayer``
  node, so the input named ``image`` is ``"image/output:0"``;
* nodes come in execution order (producers before consumers), without ``InputLayer`` nodes.

Nested Functional/Sequential models are single nodes here (:func:`aimet_tf.graph.rewrite.inline_nested_models`
flattens them). Everything else in aimet_tf reaches graph structure through this module; only
the :mod:`aimet_tf.graph` package touches Keras' private attributes.

Example:
    >>> inputs = keras.Input((8,), name="x")
    >>> y = keras.layers.Dense(4, name="fc")(inputs)
    >>> g = ModelGraph(keras.Model(inputs, keras.layers.ReLU(name="relu")(y)))
    >>> [n.name for n in g.nodes]
    ['fc', 'relu']
    >>> g.producer("fc/output:0").name, g.node("relu").inputs
    ('fc', ('fc/output:0',))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator, Mapping, Sequence

import keras
import numpy as np

__all__ = [
    "GraphNode",
    "all_layers",
    "GraphRunner",
    "LayerGraph",
    "ModelGraph",
    "as_functional",
    "is_graph_model",
    "is_subclassed_model",
    "layer_graph",
    "tensor_name",
]


def tensor_name(node_name: str, index: int = 0) -> str:
    """The name of output ``index`` of node ``node_name``: ``"conv1/output:0"``."""
    return f"{node_name}/output:{index}"


@dataclasses.dataclass(frozen=True)
class GraphNode:
    """One call of one operation.

    Attributes:
        name: the node name (the operation's name, ``"#k"`` appended for the k-th call of a shared
            layer, k >= 1).
        operation: the Keras layer or operation called.
        call_index: which call of ``operation`` this is (0 for an unshared layer).
        inputs: the names of the tensors it reads, in call-argument order (a tensor read twice is
            listed twice).
        outputs: the names of the tensors it produces.
    """

    name: str
    operation: keras.Operation
    call_index: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def is_layer(self) -> bool:
        """False for a ``keras.ops`` call made on symbolic tensors (an Operation, not a Layer)."""
        return isinstance(self.operation, keras.layers.Layer)


def is_graph_model(operation: Any) -> bool:
    """True for a Functional or Sequential model (one whose layer graph can be read)."""
    return isinstance(operation, keras.Sequential) or (
        isinstance(operation, keras.Model) and hasattr(operation, "_nodes_by_depth")
    )


def is_subclassed_model(operation: Any) -> bool:
    """True for a keras.Model whose ``call`` is Python code (neither Functional nor Sequential)."""
    return isinstance(operation, keras.Model) and not is_graph_model(operation)


def as_functional(model: keras.Model, purpose: str = "this pass") -> keras.Model:
    """A Functional view of ``model`` sharing its layers (a Sequential becomes Functional).

    Args:
        model: a Functional or a built Sequential model.
        purpose: what needs the graph, for the error message (e.g. "quantization simulation").

    Raises:
        TypeError: for anything but a keras.Model, and for a subclassed model (its call() is Python
            code; ``aimet_tf.graph.prepare_model`` traces it into a Functional model).
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
            "Sequential model. Fix: model = aimet_tf.graph.prepare_model(model) traces call() into a "
            "Functional model."
        )
    return model


def all_layers(layer: keras.layers.Layer, include_self: bool = False) -> list[keras.layers.Layer]:
    """Every layer tracked by ``layer`` (a model or a composite layer), at every depth, each once."""
    return list(layer._flatten_layers(include_self=include_self, recursive=True))


class ModelGraph:
    """Nodes, tensors, producers and consumers of one Functional (or built Sequential) model.

    Args:
        model: the model. A Sequential model is read through a Functional view of its layers.
        purpose: what reads the graph, for error messages.

    Raises:
        TypeError: for a subclassed model (see :func:`as_functional`).
    """

    def __init__(self, model: keras.Model, purpose: str = "this pass"):
        functional = as_functional(model, purpose)
        self.model: keras.Model = functional
        keras_nodes = [
            node
            for depth in sorted(functional._nodes_by_depth, reverse=True)
            for node in functional._nodes_by_depth[depth]
        ]
        in_graph = {id(node) for node in keras_nodes}
        self._tensor_of_id: dict[int, str] = {}
        self._keras_tensor: dict[str, Any] = {}
        self._keras_node: dict[str, Any] = {}
        self.input_names: list[str] = []
        nodes: list[GraphNode] = []
        seen_calls: dict[int, int] = {}
        for tensor in functional.inputs:
            layer = tensor._keras_history.operation
            name = tensor_name(layer.name)
            self._tensor_of_id[id(tensor)] = name
            self._keras_tensor[name] = tensor
            self.input_names.append(name)
        for node in keras_nodes:
            op = node.operation
            if op is None or isinstance(op, keras.layers.InputLayer):
                continue
            k = seen_calls.get(id(op), 0)
            seen_calls[id(op)] = k + 1
            name = op.name if k == 0 else f"{op.name}#{k}"
            inputs = []
            for tensor in node.input_tensors:
                key = self._tensor_of_id.get(id(tensor))
                if key is None:
                    history = tensor._keras_history
                    producer = history.operation
                    if producer is not None and id(producer._inbound_nodes[history.node_index]) in in_graph:
                        raise RuntimeError(f"Node {name!r} reads a tensor before it is produced.")
                    raise ValueError(
                        f"Layer {op.name!r} of model {functional.name!r} reads a tensor made outside the model "
                        f"(by {getattr(producer, 'name', None)!r}). Expected every tensor to come from the "
                        "model's inputs. Rebuild the model from keras.Input tensors."
                    )
                inputs.append(key)
            outputs = []
            for i, tensor in enumerate(node.outputs):
                out = tensor_name(name, i)
                self._tensor_of_id[id(tensor)] = out
                self._keras_tensor[out] = tensor
                outputs.append(out)
            graph_node = GraphNode(name, op, k, tuple(inputs), tuple(outputs))
            self._keras_node[name] = node
            nodes.append(graph_node)
        self.nodes: list[GraphNode] = nodes
        self._by_name = {n.name: n for n in nodes}
        self._calls: dict[int, list[GraphNode]] = {}
        for n in nodes:
            self._calls.setdefault(id(n.operation), []).append(n)
        self._producer = {t: n for n in nodes for t in n.outputs}
        self._consumers: dict[str, list[tuple[GraphNode, int]]] = {}
        for n in nodes:
            for i, t in enumerate(n.inputs):
                self._consumers.setdefault(t, []).append((n, i))
        self.output_names: list[str] = [self._tensor_of_id[id(t)] for t in functional.outputs]

    # -- lookups ---------------------------------------------------------------------------------

    @property
    def operations(self) -> list[keras.Operation]:
        """Every operation of the graph (InputLayers included), in Keras' topological order."""
        return list(self.model._operations)

    def node(self, name: str) -> GraphNode:
        """The node called ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(
                f"No node {name!r} in model {self.model.name!r}. Expected one of {sorted(self._by_name)}."
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def nodes_of(self, operation: keras.Operation) -> list[GraphNode]:
        """Every node that calls ``operation``, in execution order."""
        return list(self._calls.get(id(operation), []))

    def call_count(self, operation: keras.Operation) -> int:
        """How many times ``operation`` is called in this graph (a shared layer: more than once)."""
        return len(self._calls.get(id(operation), []))

    def producer(self, tensor: str) -> GraphNode | None:
        """The node that produces ``tensor``; None for a model input."""
        if tensor not in self._producer and tensor not in self.input_names:
            raise KeyError(f"No tensor {tensor!r} in model {self.model.name!r}.")
        return self._producer.get(tensor)

    def consumers(self, tensor: str) -> list[tuple[GraphNode, int]]:
        """``(node, input index)`` of every read of ``tensor``, in execution order."""
        return list(self._consumers.get(tensor, []))

    def consumer_nodes(self, name: str) -> list[GraphNode]:
        """Every node reading an output of node ``name``, once each, in execution order."""
        seen: dict[str, GraphNode] = {}
        for t in self.node(name).outputs:
            for n, _ in self._consumers.get(t, []):
                seen.setdefault(n.name, n)
        order = {n.name: i for i, n in enumerate(self.nodes)}
        return sorted(seen.values(), key=lambda n: order[n.name])

    def is_model_output(self, name: str) -> bool:
        """True if an output of node ``name`` is an output of the model."""
        return any(t in self.output_names for t in self.node(name).outputs)

    def reads_model_input(self, name: str) -> list[bool]:
        """Per input of node ``name``: whether it is a model input."""
        return [t in self.input_names for t in self.node(name).inputs]

    def keras_tensor(self, tensor: str) -> Any:
        """The symbolic ``KerasTensor`` behind ``tensor`` (to build sub-models on it)."""
        return self._keras_tensor[tensor]

    def probe(self, tensors: Sequence[str], name: str | None = None) -> keras.Model:
        """A model over the same layers whose outputs are ``tensors`` (e.g. ``"conv1/output:0"``), in order;
        it takes the model's inputs (one tensor, or a list for several)."""
        inputs = self.model.inputs[0] if len(self.model.inputs) == 1 else self.model.inputs
        missing = [t for t in tensors if t not in self._keras_tensor]
        if missing:
            raise KeyError(f"Model {self.model.name!r} has no tensor named {missing}. Expected names like "
                           f"{(self.nodes[0].outputs[0] if self.nodes else 'layer/output:0')!r}.")
        return keras.Model(inputs, [self._keras_tensor[t] for t in tensors], name=name)

    def input_specs(self, name: str) -> list[tuple[tuple, str]]:
        """``(shape, dtype)`` of every input of node ``name`` (batch dimension first, None if unknown)."""
        return [(tuple(self._keras_tensor[t].shape), str(self._keras_tensor[t].dtype)) for t in self.node(name).inputs]

    def output_specs(self, name: str) -> list[tuple[tuple, str]]:
        """``(shape, dtype)`` of every output of node ``name``."""
        return [(tuple(self._keras_tensor[t].shape), str(self._keras_tensor[t].dtype)) for t in self.node(name).outputs]

    def layer_edges(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Producer and consumer layer names of every layer, InputLayers included.

        ``producers[layer]`` has one entry per input tensor of each of its calls, in order;
        ``consumers[layer]`` lists every layer reading one of its outputs once. Keyed by layer name,
        in Keras' topological order.
        """
        order = [op.name for op in self.operations]
        position = {name: i for i, name in enumerate(order)}
        producers: dict[str, list[str]] = {name: [] for name in order}
        consumers: dict[str, set[str]] = {name: set() for name in order}
        for node in self.nodes:
            for t in node.inputs:
                src = self._producer.get(t)
                src_name = src.operation.name if src is not None else t.split("/output:")[0]
                producers[node.operation.name].append(src_name)
                consumers[src_name].add(node.operation.name)
        return producers, {name: sorted(consumers[name], key=position.__getitem__) for name in order}

    # -- running ---------------------------------------------------------------------------------

    def run_node(self, name: str, values: Mapping[str, Any]) -> list[Any]:
        """Calls node ``name`` on ``values`` (tensor name -> value); returns its outputs as a list.

        The node's own call arguments (keyword arguments such as ``training`` included) are
        reproduced, with each symbolic input replaced by its value.
        """
        args, kwargs = self.call_arguments(name, values)
        return keras.tree.flatten(self.node(name).operation(*args, **kwargs))

    def call_arguments(self, name: str, values: Mapping[str, Any]) -> tuple[tuple, dict]:
        """The positional and keyword arguments of node ``name``'s call with ``values`` filled in."""
        node = self._keras_node[name]
        by_id = {id(self._keras_tensor[t]): values[t] for t in self.node(name).inputs}
        args, kwargs = node.arguments.fill_in(by_id)
        return tuple(args), dict(kwargs)

    def rebuild(self, call_fn) -> Any:
        """Reruns the graph symbolically: ``call_fn(node, args, kwargs)`` returns each node's output.

        ``args``/``kwargs`` are the node's original call arguments with the new symbolic tensors
        filled in. Returns ``(new input tensors, new output structure)`` ready for ``keras.Model``.
        """
        new_inputs = []
        values: dict[str, Any] = {}
        for t in self.input_names:
            old = self._keras_tensor[t]
            layer_name = t.split("/output:")[0]
            new = keras.Input(batch_shape=old.shape, dtype=old.dtype, name=layer_name)
            new_inputs.append(new)
            values[t] = new
        for node in self.nodes:
            args, kwargs = self.call_arguments(node.name, values)
            out = keras.tree.flatten(call_fn(node, args, kwargs))
            if len(out) != len(node.outputs):
                raise ValueError(
                    f"Rebuilding node {node.name!r}: expected {len(node.outputs)} output(s), received {len(out)}."
                )
            for t, v in zip(node.outputs, out):
                values[t] = v
        outs = [values[t] for t in self.output_names]
        structure = self.model._outputs_struct if hasattr(self.model, "_outputs_struct") else outs
        flat_outs = iter(outs)
        outputs = keras.tree.map_structure(lambda _: next(flat_outs), structure)
        return (new_inputs[0] if len(new_inputs) == 1 else new_inputs), outputs


@dataclasses.dataclass
class LayerGraph:
    """A name-keyed, layer-level view of a :class:`ModelGraph` (nested models are single layers).

    Attributes:
        order: every operation name (InputLayers included), in Keras' topological order.
        operations: name -> operation.
        producers: name -> producer layer names, one per input tensor of each call, in order.
        consumers: name -> every layer reading one of its outputs, once each, in ``order``.
        call_count: name -> number of calls in this graph (shared layers: more than one).
        output_count: name -> number of outputs of its calls.
        model_output_names: layers producing a model output.
        input_shapes: name -> shapes of the inputs of its first call.
    """

    order: list[str]
    operations: dict[str, keras.Operation]
    producers: dict[str, list[str]]
    consumers: dict[str, list[str]]
    call_count: dict[str, int]
    output_count: dict[str, int]
    model_output_names: set[str]
    input_shapes: dict[str, list[tuple]]


def layer_graph(model: keras.Model, purpose: str = "this pass") -> LayerGraph:
    """The :class:`LayerGraph` of a Functional or built Sequential model."""
    g = ModelGraph(model, purpose)
    producers, consumers = g.layer_edges()
    operations = {op.name: op for op in g.operations}
    first = {}
    for node in g.nodes:
        first.setdefault(node.operation.name, node)
    return LayerGraph(
        order=list(producers),
        operations=operations,
        producers=producers,
        consumers=consumers,
        call_count={name: g.call_count(op) for name, op in operations.items()},
        output_count={name: len(first[name].outputs) if name in first else 1 for name in operations},
        model_output_names={g.producer(t).operation.name for t in g.output_names if g.producer(t) is not None},
        input_shapes={name: [shape for shape, _ in g.input_specs(node.name)] for name, node in first.items()},
    )


class GraphRunner:
    """Runs a model node by node over cached numpy samples, keeping only the live tensors.

    Nodes are asked for in execution order, so each node's inputs (and its outputs) are found by
    running the graph forward from where the previous question left off: one pass over the model in
    total instead of one pass per node. Single-input models only.

    Args:
        model: a Functional model.
        samples: the model's input, all samples.
        keep: node names whose outputs are never freed (asked for later).
        batch_size: samples per call of a node.
    """

    def __init__(self, model: keras.Model, samples: np.ndarray, keep: Iterable[str] = (), batch_size: int = 500):
        self.graph = ModelGraph(model, "running the model node by node")
        if len(self.graph.input_names) != 1:
            raise ValueError(
                f"Expected a single-input model. Received: model {model.name!r} with "
                f"{len(self.graph.input_names)} inputs."
            )
        self.batch_size = batch_size
        self.position = 0
        self.values: dict[str, np.ndarray] = {self.graph.input_names[0]: samples}
        self.uses: dict[str, int] = {}
        for node in self.graph.nodes:
            for t in node.inputs:
                self.uses[t] = self.uses.get(t, 0) + 1
        self.pinned = {t for name in keep for t in self.graph.node(name).outputs}
        self._index = {n.name: i for i, n in enumerate(self.graph.nodes)}

    def _node_index(self, name: str) -> int:
        if name not in self._index:
            raise KeyError(f"Layer {name!r} is not in the model graph.")
        return self._index[name]

    def _run(self, node: GraphNode) -> None:
        count = len(self.values[node.inputs[0]]) if node.inputs else 0
        chunks = []
        for start in range(0, count, self.batch_size):
            part = {t: self.values[t][start : start + self.batch_size] for t in node.inputs}
            chunks.append([np.asarray(v) for v in self.graph.run_node(node.name, part)])
        for i, t in enumerate(node.outputs):
            self.values[t] = np.concatenate([c[i] for c in chunks], axis=0)
        for t in node.inputs:
            self.uses[t] -= 1
            if self.uses[t] == 0 and t not in self.pinned:
                self.values.pop(t, None)

    def _advance_to(self, name: str) -> GraphNode:
        """Runs every node before ``name`` (not yet run) and returns node ``name``."""
        index = self._node_index(name)
        if index < self.position:
            raise RuntimeError(f"Layer {name!r} was already run; layers must be asked for in graph order.")
        while self.position < index:
            self._run(self.graph.nodes[self.position])
            self.position += 1
        return self.graph.nodes[index]

    def inputs_of(self, name: str) -> np.ndarray:
        """The (first) input of node ``name``, computed with the model's current weights."""
        return self.values[self._advance_to(name).inputs[0]]

    def call_batches(self, name: str) -> Iterator[tuple[tuple, dict]]:
        """Node ``name``'s call arguments ``(args, kwargs)``, ``batch_size`` samples at a time.

        Every input of the node (a MultiHeadAttention's query and value, a mask...) is computed
        with the model's current weights and filled into the node's own call arguments, as
        ``run_node`` calls it; the node itself is not run. Like ``inputs_of``, nodes must be
        asked for in graph order.
        """
        node = self._advance_to(name)
        if not node.inputs:
            raise ValueError(f"Expected node {name!r} to read at least one tensor. Received: a node without inputs.")
        count = len(self.values[node.inputs[0]])
        for start in range(0, count, self.batch_size):
            part = {t: self.values[t][start : start + self.batch_size] for t in node.inputs}
            yield self.graph.call_arguments(name, part)

    def output_of(self, name: str) -> np.ndarray:
        """The (first) output of node ``name``."""
        index = self._node_index(name)
        while self.position <= index:
            self._run(self.graph.nodes[self.position])
            self.position += 1
        return self.values[self.graph.nodes[index].outputs[0]]
