"""AIMET's ``aimet_common.defs``: the enums and small records AIMET's Keras API takes.

``QuantScheme`` is aimet_tf's own enum, which holds AIMET's members with AIMET's meaning (and adds
aimet_tf's schemes); ``QuantizationDataType``, ``CallbackFunc``, ``CompressionScheme``,
``CostMetric``, ``GreedySelectionParameters``, ``EvalFunction`` and ``AMPSearchAlgo`` have AIMET's shapes;
``CompressionStats`` is ``aimet_tf.compression.compressor.CompressionStats``.
"""

from __future__ import annotations

import decimal
import enum
from typing import Any, Callable, Mapping, Optional

from aimet_tf.compression.compressor import CompressionStats
from aimet_tf.ptq.mixed_precision import AMPSearchAlgo
from aimet_tf.quantization.analyzers import QuantScheme

__all__ = [
    "AMPSearchAlgo",
    "CallbackFunc",
    "CompressionScheme",
    "CompressionStats",
    "CostMetric",
    "EvalFunction",
    "GreedySelectionParameters",
    "QuantScheme",
    "QuantizationDataType",
]

# AIMET's evaluation callback for compression: eval_callback(model, eval_iterations) -> score.
EvalFunction = Callable[[Any, Optional[int]], float]


class QuantizationDataType(enum.Enum):
    """AIMET's data types of a quantizer: ``int`` (fixed point) or ``float`` (float16 passthrough)."""

    undefined = 0
    int = 1
    float = 2


class CallbackFunc:
    """A function and the argument it is called with: ``func(model, func_callback_args)``.

    AIMET's ``CallbackFunc``: AIMET's APIs that take a forward-pass or evaluation callback accept one.

    Args:
        func: called as ``func(model, func_callback_args)``.
        func_callback_args: the second argument (any object; None if the function needs none).

    Raises:
        TypeError: if ``func`` is not callable.
    """

    def __init__(self, func: Callable[[Any, Any], Any], func_callback_args: Any = None):
        if not callable(func):
            raise TypeError(
                f"Expected a callable func(model, func_callback_args). Received: {func!r} "
                f"(type {type(func).__name__})"
            )
        self.func = func
        self.func_callback_args = func_callback_args

    def __repr__(self) -> str:
        return f"CallbackFunc({getattr(self.func, '__name__', self.func)!r}, {self.func_callback_args!r})"


class CompressionScheme(enum.Enum):
    """AIMET's compression schemes (``tucker`` is aimet_tf's; AIMET's Keras flavour only has spatial SVD)."""

    weight_svd = 1
    spatial_svd = 2
    channel_pruning = 3
    tucker = 4


class CostMetric(enum.Enum):
    """What a compression ratio counts: multiply-accumulates or weights."""

    mac = 1
    memory = 2


class GreedySelectionParameters:
    """AIMET's greedy per-layer ratio selection settings.

    Args:
        target_comp_ratio: the fraction of the cost that stays, in (0, 1] (a float or a Decimal).
        num_comp_ratio_candidates: candidate ratios k / n, k = 1..n.
        use_monotonic_fit: make each layer's scores non-decreasing in the ratio first.
        saved_eval_scores_dict: a path to a scores file written by an earlier run (aimet_tf's
            cache JSON), reused instead of evaluating again; or the ``{layer: {ratio: score}}``
            mapping itself.
    """

    def __init__(
        self,
        target_comp_ratio: float | decimal.Decimal,
        num_comp_ratio_candidates: int = 10,
        use_monotonic_fit: bool = False,
        saved_eval_scores_dict: Optional[str | Mapping] = None,
    ):
        self.target_comp_ratio = target_comp_ratio
        self.num_comp_ratio_candidates = num_comp_ratio_candidates
        self.use_monotonic_fit = use_monotonic_fit
        self.saved_eval_scores_dict = saved_eval_scores_dict

    def __repr__(self) -> str:
        return (
            f"GreedySelectionParameters(target_comp_ratio={self.target_comp_ratio!r}, "
            f"num_comp_ratio_candidates={self.num_comp_ratio_candidates!r}, use_monotonic_fit={self.use_monotonic_fit!r})"
        )
