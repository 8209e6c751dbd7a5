"""In-place primitives for AIMET's Keras API, which edits the layers it is given.

Every other rewrite of :mod:`aimet_tf.graph` returns a new model of copied layers. AIMET's Keras
functions (``fold_given_batch_norms``, ``CrossLayerScaling.scale_cls_sets``, ``HighBiasFold``)
change the user's layer objects instead, and AIMET users' scripts rely on it: they fold, then
scale the layers they picked from the same model, then return that model. ``aimet_tf.keras``
reproduces this with the two primitives here; nothing else in aimet_tf uses them.

* :func:`add_bias` gives a built Conv/Dense layer without bias a zero bias variable, in place.
* :func:`without_layers` builds a new Functional model over the SAME layer objects as ``model``
  (not copies), skipping some one-input, one-output layers, as AIMET's batch-norm removal does.
"""

from __future__ import annotations

from typing import Collection

import keras

from aimet_tf.graph.model_graph import ModelGraph

__all__ = ["add_bias", "without_layers"]


def add_bias(layer: keras.layers.Layer) -> None:
    """Gives ``layer`` (a built Conv*/Dense/DepthwiseConv* with ``use_bias=False``) a zero bias, in place.

    Afterwards ``layer.use_bias`` is True, ``layer.bias`` is a new variable of the output channel
    count, and every model that calls the layer adds it (a zero bias changes no output).

    Raises:
        ValueError: for a layer that already has a bias, is not built, or has no ``use_bias``.
    """
    if not hasattr(layer, "use_bias"):
        raise ValueError(f"Expected a layer with a use_bias option (Conv*, Dense). Received: {type(layer).__name__} {layer.name!r}.")
    if layer.use_bias:
        raise ValueError(f"Layer {layer.name!r} already has a bias.")
    if not layer.built:
        raise ValueError(f"Layer {layer.name!r} is not built; build it (call it once) first.")
    kernel = layer.kernel
    depthwise = isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D))
    channels = int(kernel.shape[-2] * kernel.shape[-1]) if depthwise else int(kernel.shape[-1])
    # Keras locks a built layer's state; AIMET adds the bias variable to the live layer all the same.
    layer._tracker.unlock()
    try:
        layer.bias = layer.add_weight(name="bias", shape=(channels,), initializer="zeros", dtype=kernel.dtype)
    finally:
        layer._tracker.lock()
    layer.use_bias = True


def without_layers(model: keras.Model, names: Collection[str]) -> keras.Model:
    """A new Functional model calling ``model``'s own layer objects, minus the layers ``names``.

    Each removed layer's readers read its single input instead. Layers are shared, not copied:
    changing a layer's weights changes both models. Layers inside nested models are not removed.

    Raises:
        ValueError: for a name that is not a top-level layer of ``model``, or a layer that is not
            called exactly once with one input and one output.
    """
    graph = ModelGraph(model, "removing layers")
    wanted = set(names)
    for name in sorted(wanted):
        try:
            node = graph.node(name)
        except KeyError as error:
            raise ValueError(f"Expected a top-level layer of model {graph.model.name!r}. Received: {name!r}.") from error
        if graph.call_count(node.operation) != 1 or len(node.inputs) != 1 or len(node.outputs) != 1:
            raise ValueError(f"Cannot remove layer {name!r}: expected one call with one input and one output.")

    def call(node, args, kwargs):
        if node.name in wanted:
            return keras.tree.flatten(args)[0]
        return node.operation(*args, **kwargs)

    inputs, outputs = graph.rebuild(call)
    return keras.Model(inputs, outputs, name=graph.model.name)
