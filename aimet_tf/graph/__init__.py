"""The model graph under every pass: nodes and tensors, the layer catalogue, rewrites, preparation.

Only this package reads Keras' private graph attributes (a test checks it). Passes read graphs
through :class:`ModelGraph`, ask :mod:`~aimet_tf.graph.catalogue` what a layer is, and change models
through the rewrite primitives of :mod:`~aimet_tf.graph.rewrite`, each of which returns a new model.
:mod:`~aimet_tf.graph.in_place` holds the two in-place edits AIMET's Keras API needs (``aimet_tf.keras`` only).
"""

from aimet_tf.graph.catalogue import (
    activation_kind,
    bn_folds_backward,
    bn_folds_forward,
    commutes_with_channel_scaling,
    input_channel_axis,
    onnx_op_type,
    output_channel_axis,
)
from aimet_tf.graph.channels import ChannelMappingError, ChannelPlacement, map_reshape_channels
from aimet_tf.graph.model_graph import (
    GraphNode,
    GraphRunner,
    LayerGraph,
    ModelGraph,
    all_layers,
    as_functional,
    is_graph_model,
    is_subclassed_model,
    layer_graph,
    tensor_name,
)
from aimet_tf.graph.op_layer import DataMovementOpLayer, OpLayer
from aimet_tf.graph.prepare import (
    PrepareReport,
    check_prepared,
    needs_preparing,
    prepare_model,
    prepare_model_with_report,
)
from aimet_tf.graph.rewrite import (
    ChannelGroup,
    channel_group,
    clone_layer,
    clone_model_graph,
    has_nested_models,
    inline_nested_models,
    insert_after,
    keep_channels,
    remove_layer,
    rename_layers,
    replace_layer,
    replace_with_chain,
    replace_with_subgraph,
    split_activations,
    with_free_layer_names,
)

__all__ = [
    "ChannelGroup", "ChannelMappingError", "ChannelPlacement", "DataMovementOpLayer", "GraphNode", "GraphRunner", "LayerGraph", "ModelGraph", "OpLayer", "PrepareReport", "activation_kind", "all_layers",
    "as_functional", "bn_folds_backward", "bn_folds_forward", "channel_group", "check_prepared", "clone_layer", "clone_model_graph",
    "commutes_with_channel_scaling", "has_nested_models", "inline_nested_models", "input_channel_axis", "insert_after",
    "is_graph_model", "is_subclassed_model", "keep_channels", "layer_graph", "map_reshape_channels", "needs_preparing", "onnx_op_type", "output_channel_axis",
    "prepare_model", "prepare_model_with_report", "remove_layer", "rename_layers", "replace_layer", "replace_with_chain", "replace_with_subgraph",
    "split_activations", "tensor_name", "with_free_layer_names",
]
