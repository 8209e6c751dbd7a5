"""Where a tensor's channels land after a Flatten or Reshape.

A pass that follows channels from a producer to a consumer (cross-layer equalization pairs them,
channel pruning slices them) must know, past a Flatten or Reshape, which entries of the output
carry which channel of the input. :func:`map_reshape_channels` answers that one question for every
pass, or refuses with the reason where the reshape mixes channels.

Example:
    >>> placement = map_reshape_channels(keras.layers.Flatten(), (None, 2, 4), np.arange(4))
    >>> placement.axis, placement.labels.tolist()
    (1, [0, 1, 2, 3, 0, 1, 2, 3])
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np

from aimet_tf.graph.catalogue import onnx_op_type

__all__ = ["ChannelMappingError", "ChannelPlacement", "map_reshape_channels"]


@dataclasses.dataclass(frozen=True)
class ChannelPlacement:
    """Where channels sit in a tensor: the entry at position ``j`` along ``axis`` carries channel
    ``labels[j]``, whatever its position along the other axes.

    Attributes:
        axis: the axis holding the channels, counting the batch axis as 0.
        labels: one label per position along ``axis`` (the caller's channel labels, e.g. -1 for
            entries that are not the channels it follows).
        shape: the tensor's shape, batch axis first.
    """

    axis: int
    labels: np.ndarray
    shape: tuple


class ChannelMappingError(ValueError):
    """A Flatten or Reshape after which the input's channels cannot be followed.

    Attributes:
        problem: what went wrong, in a few words ("channels mixed", ...).
        expected: what a reshape that keeps channels apart looks like.
        received: the reshape's per-sample input and output shapes.
    """

    def __init__(self, layer: Any, verb: str, problem: str, detail: str, expected: str, received: str):
        self.problem, self.expected, self.received = problem, expected, received
        super().__init__(
            f"{type(layer).__name__} {layer.name!r} {verb}: {detail}. Expected {expected}. Received: {received}."
        )


def map_reshape_channels(
    layer: Any, input_shape: tuple, labels: np.ndarray, axis: int = -1
) -> ChannelPlacement:
    """Where the channels on ``axis`` of a Flatten / Reshape's input land in its output.

    Both layers (and a prepared ``keras.ops.reshape`` node) keep each sample's values in row-major
    order; a channels_first Flatten moves its first per-sample axis last before flattening. Each
    output entry so holds one input entry, and with it the label of that entry's position along
    ``axis``. The channels survive when, in the output, the label depends on the position along one
    axis only; that axis and its labels are the answer (the last axis if no label varies).

    With static per-sample shapes this is read off the index grid. Without them, channels on the
    input's last axis (size C_in) are followed to the output's last axis (size C_out) by residue
    classes: value f = p * C_in + k (position p, index k) lands on index j = f mod C_out, so output
    index j receives exactly the input indices k = j (mod g), g = gcd(C_in, C_out). The channels
    survive when each class holds one label; index j then carries the label of class j mod g. So
    keeping the last axis moves nothing; merging positions into it (a channels-last Flatten) sends
    channel c to c, c + C, c + 2C, ...; splitting it mixes channels.

    Args:
        layer: a Flatten or Reshape layer, or a prepared ``keras.ops.reshape`` node.
        input_shape: the layer's input shape, batch axis first (None for unknown sizes).
        labels: one label per position along ``axis`` of the input.
        axis: the input axis holding the channels (the batch axis counts as 0; negative from the end).

    Returns:
        The :class:`ChannelPlacement` of the labels in the layer's output.

    Raises:
        TypeError: for a layer that is not a Flatten or Reshape.
        ValueError: for the batch axis as ``axis``, or not one label per position along it.
        ChannelMappingError: where the output mixes channels (a label varies along several axes),
            or where unknown sizes hide where they land.
    """
    if onnx_op_type(layer) not in ("Flatten", "Reshape"):
        raise TypeError(
            f"Expected a Flatten or Reshape layer (or a prepared keras.ops.reshape). "
            f"Received: {type(layer).__name__} {getattr(layer, 'name', layer)!r}."
        )
    input_shape = tuple(input_shape)
    if len(input_shape) < 2 or axis % len(input_shape) == 0:
        raise ValueError(
            f"Expected a channel axis other than the batch axis of input shape {input_shape}. Received: axis={axis}."
        )
    out_shape = tuple(layer.compute_output_spec(keras.KerasTensor(input_shape)).shape)
    in_sample, out_sample = input_shape[1:], out_shape[1:]
    axis = axis % len(input_shape) - 1  # per sample
    labels = np.asarray(labels)
    if labels.shape != (in_sample[axis],) and in_sample[axis] is not None:
        raise ValueError(
            f"Expected one label per position along axis {axis + 1} of input shape {input_shape}. "
            f"Received: labels of shape {labels.shape}."
        )
    received = f"input shape {in_sample}, output shape {out_sample}"
    moves_first_axis = (
        onnx_op_type(layer) == "Flatten" and getattr(layer, "data_format", None) == "channels_first"
        and len(in_sample) > 1
    )
    if None not in in_sample + out_sample:
        out_axis, out_labels = _on_grid(layer, in_sample, out_sample, axis, labels, moves_first_axis, received)
    elif axis == len(in_sample) - 1 and not moves_first_axis and None not in (in_sample[-1], out_sample[-1]):
        out_axis, out_labels = len(out_sample) - 1, _by_residues(layer, in_sample, out_sample, labels, received)
    else:
        raise ChannelMappingError(
            layer, "hides where its channels land", "channels moved by a reshape of unknown size",
            "the sizes that decide it are unknown",
            "static per-sample shapes (to follow each channel's entries), or channels on the last axis of both "
            "with known sizes",
            received,
        )
    return ChannelPlacement(out_axis + 1, out_labels, out_shape)


def _mixed(layer: Any, detail: str, received: str) -> ChannelMappingError:
    return ChannelMappingError(
        layer, "mixes channels", "channels mixed", detail,
        "a Flatten or Reshape after which each channel's entries vary along one axis only (one that keeps the "
        "channel axis with its size, or merges whole positions into it)",
        received,
    )


def _last_axis_detail(in_sample: tuple, out_sample: tuple) -> str:
    return (
        f"its last axis goes from {in_sample[-1]} to {out_sample[-1]}, so one output channel carries different "
        "input channels at different positions"
    )


def _on_grid(layer, in_sample, out_sample, axis, labels, moves_first_axis, received) -> tuple[int, np.ndarray]:
    """The labels of every output entry, and the one axis they vary along."""
    size = in_sample[axis]
    stride = math.prod(in_sample[axis + 1:])
    index = (np.arange(math.prod(in_sample)) // stride % size).reshape(in_sample)
    if moves_first_axis:
        index = np.moveaxis(index, 0, -1)
    grid = labels[index].reshape(out_sample)
    varying = [a for a in range(grid.ndim) if (np.diff(grid, axis=a) != 0).any()]
    if len(varying) > 1:
        detail = (
            _last_axis_detail(in_sample, out_sample) if axis == len(in_sample) - 1 and not moves_first_axis
            else f"the channels on input axis {axis + 1} spread over output axes {[a + 1 for a in varying]}"
        )
        raise _mixed(layer, detail, received)
    out_axis = varying[0] if varying else len(out_sample) - 1
    return out_axis, np.moveaxis(grid, out_axis, 0).reshape(out_sample[out_axis], -1)[:, 0]


def _by_residues(layer, in_sample, out_sample, labels, received) -> np.ndarray:
    """The labels along the output's last axis, from residue classes of the input's last axis."""
    c_in, c_out = in_sample[-1], out_sample[-1]
    g = math.gcd(c_in, c_out)
    classes = labels.reshape(-1, g)  # column r: the labels of indices k = r (mod g)
    if np.any(classes != classes[0]):
        raise _mixed(layer, _last_axis_detail(in_sample, out_sample), received)
    return np.tile(classes[0], c_out // g)
