"""map_reshape_channels: where the channels of a Flatten / Reshape input land, checked against the
values the layer actually moves."""

import keras
import numpy as np
import pytest

from aimet_tf.graph import ChannelMappingError, map_reshape_channels

L = keras.layers


def _moved_labels(layer, sample_shape, axis, labels):
    """Runs the layer on a tensor whose every entry holds the label of its position along ``axis``."""
    index = np.indices(sample_shape)[axis - 1]
    values = np.asarray(labels, np.float32)[index][None]
    return keras.ops.convert_to_numpy(layer(values))[0]


@pytest.mark.parametrize(
    "layer, sample_shape, axis, out_axis",
    [
        (L.Flatten(), (3, 2, 4), 3, 1),                              # channels last: c, c + C, ...
        (L.Flatten(data_format="channels_first"), (3, 2, 4), 3, 1),  # axis 1 moved last first
        (L.Reshape((6, 4)), (3, 2, 4), 3, 2),                        # positions merged, last axis kept
        (L.Reshape((3, 8)), (3, 2, 4), 3, 2),                        # positions merged into the last axis
        (L.Reshape((12,)), (4, 3), 1, 1),                            # channels on axis 1 flattened
        (L.Reshape((4, 3, 1)), (4, 3), 1, 1),                        # a unit axis appended
        (L.Flatten(), (1, 4), 1, 1),                                 # one channel: every entry carries it
    ],
)
def test_placement_matches_the_moved_values(layer, sample_shape, axis, out_axis):
    labels = np.arange(sample_shape[axis - 1]) * 10 + 7
    placement = map_reshape_channels(layer, (None,) + sample_shape, labels, axis)
    moved = _moved_labels(layer, sample_shape, axis, labels)
    assert placement.axis == out_axis and placement.shape == (None,) + moved.shape
    # Every output entry holds the label of its position along the placement's axis.
    expected = placement.labels.reshape([-1 if a == out_axis - 1 else 1 for a in range(moved.ndim)])
    np.testing.assert_array_equal(moved, np.broadcast_to(expected, moved.shape))


def test_unknown_positions_on_the_last_axis_by_residue_classes():
    labels = np.array([0, -1, 1])  # -1: an entry that is not one of the followed channels
    kept = map_reshape_channels(L.Reshape((-1, 3)), (None, None, None, 3), labels)
    assert (kept.axis, kept.labels.tolist(), kept.shape) == (2, [0, -1, 1], (None, None, 3))
    merged = map_reshape_channels(L.Reshape((-1, 6)), (None, None, 3), labels)
    assert (merged.axis, merged.labels.tolist()) == (2, [0, -1, 1, 0, -1, 1])


@pytest.mark.parametrize(
    "layer, input_shape, message",
    [
        (L.Reshape((12, 2)), (None, 6, 4), r"Reshape '.*' mixes channels: its last axis goes from 4 to 2.*"
                                           r"Received: input shape \(6, 4\), output shape \(12, 2\)"),
        (L.Reshape((-1, 2)), (None, None, 4), r"mixes channels: its last axis goes from 4 to 2"),
        (L.Reshape((4, 6)), (None, 6, 4), r"mixes channels: the channels on input axis 1 spread over output axes"),
        (L.Flatten(), (None, None, 4), r"hides where its channels land.*Expected static per-sample shapes"),
    ],
)
def test_mixing_or_unknown_reshapes_are_refused_with_the_reason(layer, input_shape, message):
    axis = 1 if "axis 1" in message else -1
    with pytest.raises(ChannelMappingError, match=message) as info:
        map_reshape_channels(layer, input_shape, np.arange(input_shape[axis]), axis)
    assert info.value.problem in ("channels mixed", "channels moved by a reshape of unknown size")


def test_wrong_arguments_name_what_was_expected():
    with pytest.raises(TypeError, match="Expected a Flatten or Reshape layer.*Received: Dense"):
        map_reshape_channels(L.Dense(2), (None, 4), np.arange(4))
    with pytest.raises(ValueError, match=r"Expected one label per position along axis 2.*Received: labels of shape \(3,\)"):
        map_reshape_channels(L.Flatten(), (None, 2, 4), np.arange(3))
    with pytest.raises(ValueError, match="other than the batch axis"):
        map_reshape_channels(L.Flatten(), (None, 2, 4), np.arange(4), axis=0)
