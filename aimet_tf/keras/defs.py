"""AIMET's compression parameter classes (``aimet_tensorflow.keras.defs`` / ``aimet_tensorflow.defs``).

``SpatialSvdParameters(input_op_names, output_op_names, mode, params, multiplicity=1)`` and
``ChannelPruningParameters(input_op_names, output_op_names, data_set, batch_size,
num_reconstruction_samples, allow_custom_downsample_ops, mode, params, multiplicity=1)`` have
AIMET's shapes, with ``.Mode.manual/.auto``, ``.ManualModeParams(list_of_module_comp_ratio_pairs)``
and ``.AutoModeParams(greedy_select_params, modules_to_ignore=None)``. ``WeightSvdParameters`` and
``TuckerParameters`` (aimet_tf's; AIMET's Keras flavour has neither) take SpatialSvdParameters'
arguments. ``input_op_names`` / ``output_op_names`` are accepted and not used: a Keras model
knows its inputs and outputs.
"""

from __future__ import annotations

import enum
from typing import Any, Optional, Sequence

from aimet_tf.common.defs import GreedySelectionParameters

__all__ = [
    "ChannelPruningParameters",
    "ModuleCompRatioPair",
    "SpatialSvdParameters",
    "TuckerParameters",
    "WeightSvdParameters",
]


class ModuleCompRatioPair:
    """A layer (object or name) and the fraction of its cost that stays, for manual mode."""

    def __init__(self, module: Any, comp_ratio: float):
        self.module = module
        self.comp_ratio = comp_ratio

    def __repr__(self) -> str:
        return f"ModuleCompRatioPair({getattr(self.module, 'name', self.module)!r}, {self.comp_ratio!r})"


class _Mode(enum.Enum):
    manual = 1
    auto = 2


class _ManualModeParams:
    def __init__(self, list_of_module_comp_ratio_pairs: Sequence[ModuleCompRatioPair]):
        self.list_of_module_comp_ratio_pairs = list(list_of_module_comp_ratio_pairs)


class _AutoModeParams:
    def __init__(self, greedy_select_params: GreedySelectionParameters, modules_to_ignore: Optional[Sequence[Any]] = None):
        self.greedy_params = greedy_select_params
        self.greedy_select_params = greedy_select_params
        self.modules_to_ignore = list(modules_to_ignore or [])


class _Parameters:
    """Shared shape of the per-scheme parameter classes."""

    Mode = _Mode
    ManualModeParams = _ManualModeParams
    AutoModeParams = _AutoModeParams

    def __init__(self, input_op_names: Any, output_op_names: Any, mode: _Mode, params: Any, multiplicity: int = 1):
        if not isinstance(mode, _Mode):
            raise TypeError(f"Expected mode as {type(self).__name__}.Mode.manual or .auto. Received: {mode!r}")
        expected = _ManualModeParams if mode is _Mode.manual else _AutoModeParams
        if not isinstance(params, expected):
            raise TypeError(
                f"Expected params as {type(self).__name__}.{expected.__name__.lstrip('_')} for mode {mode.name}. "
                f"Received: {type(params).__name__}"
            )
        self.input_op_names = input_op_names
        self.output_op_names = output_op_names
        self.mode = mode
        self.mode_params = params
        self.multiplicity = multiplicity


class SpatialSvdParameters(_Parameters):
    """AIMET's spatial SVD parameters."""


class WeightSvdParameters(_Parameters):
    """Weight SVD (Dense and 1x1 Conv2D), with SpatialSvdParameters' arguments."""


class TuckerParameters(_Parameters):
    """Tucker-2 (Conv2D), with SpatialSvdParameters' arguments and ``iterations`` ALS sweeps."""

    def __init__(self, input_op_names: Any, output_op_names: Any, mode: _Mode, params: Any, multiplicity: int = 1, *, iterations: int = 10):
        super().__init__(input_op_names, output_op_names, mode, params, multiplicity)
        self.iterations = iterations


class ChannelPruningParameters(_Parameters):
    """AIMET's channel pruning parameters (its TF flavour's shape).

    ``data_set`` gives the calibration images for the least-squares re-fit (an array, a
    ``tf.data.Dataset`` of batches, or any form ``aimet_tf.quantization.calibration_data`` reads);
    ``allow_custom_downsample_ops`` is accepted and must be False (aimet_tf never inserts
    down-sampling layers).
    """

    def __init__(
        self,
        input_op_names: Any,
        output_op_names: Any,
        data_set: Any,
        batch_size: int,
        num_reconstruction_samples: int,
        allow_custom_downsample_ops: bool,
        mode: _Mode,
        params: Any,
        multiplicity: int = 1,
    ):
        super().__init__(input_op_names, output_op_names, mode, params, multiplicity)
        if allow_custom_downsample_ops:
            raise ValueError(
                "allow_custom_downsample_ops=True is not supported: aimet_tf prunes through strided layers "
                "without inserting down-sampling layers. Expected False."
            )
        self.data_set = data_set
        self.batch_size = batch_size
        self.num_reconstruction_samples = num_reconstruction_samples
        self.allow_custom_downsample_ops = allow_custom_downsample_ops
