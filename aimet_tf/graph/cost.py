"""Compute and memory cost of a model's layers: multiply-accumulates (MACs) and parameters.

MACs count the multiplications of the layers that carry the model's arithmetic, per sample, from
the shapes the graph records:

* Conv1D/2D/3D: prod(kernel) * c_in / groups * c_out per output position;
* DepthwiseConv1D/2D: prod(kernel) * c_in * depth_multiplier per output position;
* SeparableConv1D/2D: the depthwise part, then c_in * depth_multiplier * c_out per output position;
* Conv*Transpose: prod(kernel) * c_in * c_out per input position;
* Dense / EinsumDense: in * out per row (every position of a rank > 2 input is a row).

Other layers count 0 MACs. Parameters are each layer's weight count (``count_params``), so a
shared layer counts once. Only top-level layers are listed; a nested model is one entry whose
MACs and parameters are its layers' sums.
"""

from __future__ import annotations

import dataclasses
import math

import keras

from aimet_tf.graph.model_graph import ModelGraph, is_graph_model

__all__ = ["LayerCost", "layer_costs", "total_cost"]

_L = keras.layers


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """MACs per sample and parameter count of one layer."""

    macs: int
    params: int


def _positions(shape: tuple) -> int:
    """Number of positions of a channels-last tensor [batch, ..., channels]."""
    inner = shape[1:-1]
    if any(d is None for d in inner):
        raise ValueError(f"Expected known spatial dimensions to count MACs. Received shape {shape}")
    return int(math.prod(inner)) if inner else 1


def _macs(layer, in_shape: tuple, out_shape: tuple) -> int:
    if isinstance(layer, (_L.SeparableConv1D, _L.SeparableConv2D)):
        c_in = int(in_shape[-1])
        depthwise = math.prod(layer.kernel_size) * c_in * layer.depth_multiplier
        return _positions(out_shape) * (depthwise + c_in * layer.depth_multiplier * layer.filters)
    if isinstance(layer, (_L.DepthwiseConv1D, _L.DepthwiseConv2D)):
        return _positions(out_shape) * math.prod(layer.kernel_size) * int(in_shape[-1]) * layer.depth_multiplier
    if isinstance(layer, (_L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose)):
        return _positions(in_shape) * math.prod(layer.kernel_size) * int(in_shape[-1]) * layer.filters
    if isinstance(layer, (_L.Conv1D, _L.Conv2D, _L.Conv3D)):
        groups = getattr(layer, "groups", 1)
        return _positions(out_shape) * math.prod(layer.kernel_size) * int(in_shape[-1]) // groups * layer.filters
    if isinstance(layer, (_L.Dense, _L.EinsumDense)):
        return _positions(in_shape) * int(math.prod(layer.kernel.shape))
    return 0


def layer_costs(model: keras.Model) -> dict[str, LayerCost]:
    """MACs per sample and parameters of every top-level layer of ``model`` (see the module docstring).

    Raises:
        ValueError: for a MAC-carrying layer with unknown spatial dimensions.
    """
    graph = ModelGraph(model, "counting MACs")
    costs: dict[str, LayerCost] = {}
    for node in graph.nodes:
        op = node.operation
        if not isinstance(op, _L.Layer):
            continue
        name = op.name
        if is_graph_model(op):
            inner = layer_costs(op)
            macs = sum(c.macs for c in inner.values())
        elif node.inputs and node.outputs:
            in_shape = graph.input_specs(node.name)[0][0]
            out_shape = graph.output_specs(node.name)[0][0]
            macs = _macs(op, in_shape, out_shape)
        else:
            macs = 0
        previous = costs.get(name)
        costs[name] = LayerCost(macs + (previous.macs if previous else 0), op.count_params())
    return costs


def total_cost(model: keras.Model) -> LayerCost:
    """The model's total MACs per sample and parameter count."""
    costs = layer_costs(model).values()
    return LayerCost(sum(c.macs for c in costs), sum(c.params for c in costs))
