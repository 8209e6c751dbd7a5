"""Range analyzers: statistics gathered over calibration batches that propose a quantization range.

An analyzer is fed one batch at a time (``observe``) and keeps only a summary of what it saw - running
min/max, or a histogram whose range grows with the data - never the batches themselves. After
calibration, ``compute_range`` proposes the float range (min, max) of a quantization grid.

Three analyzers follow AIMET's quantization schemes (REFERENCE section 2):

* ``MinMaxAnalyzer`` (``tf``): the exact running min and max.
* ``SqnrAnalyzer`` (``tf_enhanced``): searches candidate grids for the lowest
  gamma * clipping MSE + rounding MSE, estimated from a histogram.
* ``PercentileAnalyzer`` (``percentile``): clips (100 - p)% of the mass in each tail.

The statistics are plain numpy. During calibration a per-tensor quantizer gathers what its analyzer
needs inside the TF graph (``graph_statistics.GraphStatistics``: min/max, histogram, zero count) and
hands it over afterwards with ``absorb_graph_statistics``; other analyzers get whole tensors through
``observe``.

The returned (min, max) is what ``primitives.compute_encoding`` consumes; that step makes the range
contain 0, applies the 0.01 minimum width and nudges, so min/max-style analyzers return the observed
(clipped) range, while ``SqnrAnalyzer`` returns a range that reproduces the grid it chose exactly:

* asymmetric: (scale * offset, scale * (offset + 2^b - 1));
* symmetric: (-absmax, absmax) with absmax = scale * floor(steps / 2);
* unsigned symmetric: (0, scale * steps).

Statistics are per tensor (``channel_axis=None``) or per channel. Several channel axes are flattened
into one channel dimension in C order over the axes sorted ascending (the layout
``primitives.normalize_channel_axis`` and the fake-quant ops use): a depthwise kernel
[kh, kw, in, mult] with ``channel_axis=(2, 3)`` has in * mult channels, channel i * mult + m.

Example:
    >>> analyzer = make_analyzer("tf_enhanced", channel_axis=-1)
    >>> for batch in calibration_batches:
    ...     analyzer.observe(batch)
    >>> min_val, max_val = analyzer.compute_range(bitwidth=8, symmetric=True)
"""

from __future__ import annotations

import abc
import enum
import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from aimet_tf.quantization.graph_statistics import GraphStatisticsSpec, GraphStatisticsValues
from aimet_tf.quantization.primitives import MIN_RANGE_WIDTH, num_steps, validate_bitwidth

__all__ = [
    "QuantScheme",
    "parse_quant_scheme",
    "RangeAnalyzer",
    "MinMaxAnalyzer",
    "SqnrAnalyzer",
    "MseAnalyzer",
    "PercentileAnalyzer",
    "make_analyzer",
    "validate_percentile",
]

# Upper bound on elements converted to float64 at once while binning, to bound peak memory on
# large activations.
_CHUNK_ELEMENTS = 1 << 20


class QuantScheme(enum.Enum):
    """AIMET's quantization schemes (how a quantizer's range is initialised and whether it trains).

    Members:
        post_training_tf: min/max of the calibration data.
        post_training_tf_enhanced: SQNR search on a histogram of the calibration data.
        post_training_percentile: clip a percentile of each tail.
        training_range_learning_with_tf_init: ranges trained in QAT, initialised like ``tf``.
        training_range_learning_with_tf_enhanced_init: ranges trained in QAT, initialised like
            ``tf_enhanced``.

    aimet_tf adds (AIMET's names above keep AIMET's meaning):
        post_training_mse: the lowest exact quantization MSE on the observed values, never above
            min/max's (``MseAnalyzer``; for parameters).
        post_training_output_mse: for a layer's kernel, the grid with the lowest error in the
            layer's output on calibration inputs (``output_mse``), never above that of min/max or
            tf_enhanced; ``mse`` where the sim cannot reach the layer's inputs. Then, for the whole
            model, these grids are kept only if the model's output error on those calibration inputs
            is below that with every such parameter on its min/max grid; else min/max is kept
            (``sim.output_mse_choice`` says which).
        ``mse`` and ``output_mse`` use tight symmetric grids (``primitives.compute_encoding``'s
        ``tight``, AIMET 2's weight rule: the extra negative level is used and tiny weights keep
        their own scale); AIMET's schemes keep AIMET 1's (-absmax, absmax) grids.
        post_training_auto: a scheme per tensor kind, the best measured over the benchmark set
            (BENCHMARKS.md, "Default range scheme"): parameters ``output_mse``, activations
            ``tf_enhanced``. The sim's default.
        training_range_learning_with_mse_init, training_range_learning_with_output_mse_init,
        training_range_learning_with_auto_init: the same initialisations, then ranges trained in
            QAT (``auto_range_learning``: parameters ``output_mse_range_learning``, activations
            ``tf_enhanced_range_learning``).
    """

    post_training_tf = "tf"
    post_training_tf_enhanced = "tf_enhanced"
    post_training_percentile = "percentile"
    training_range_learning_with_tf_init = "tf_range_learning"
    training_range_learning_with_tf_enhanced_init = "tf_enhanced_range_learning"
    post_training_mse = "mse"
    post_training_output_mse = "output_mse"
    post_training_auto = "auto"
    training_range_learning_with_mse_init = "mse_range_learning"
    training_range_learning_with_auto_init = "auto_range_learning"
    training_range_learning_with_output_mse_init = "output_mse_range_learning"

    @property
    def is_range_learning(self) -> bool:
        """Whether the quantization range is trained (QAT range learning)."""
        return self in _RANGE_LEARNING_INIT

    @property
    def init_scheme(self) -> QuantScheme:
        """The post-training scheme that sets the initial range (``self`` if not range learning)."""
        return _RANGE_LEARNING_INIT.get(self, self)

    @property
    def is_per_tensor_kind(self) -> bool:
        """Whether this scheme stands for one scheme for parameters and another for activations."""
        return self in _PER_KIND

    @property
    def for_parameters(self) -> QuantScheme:
        """The scheme a parameter (weight, bias) quantizer uses under this scheme."""
        return _PER_KIND.get(self, (self, self))[0]

    @property
    def for_activations(self) -> QuantScheme:
        """The scheme an activation (input/output) quantizer uses under this scheme."""
        return _PER_KIND.get(self, (self, self))[1]


_RANGE_LEARNING_INIT = {
    QuantScheme.training_range_learning_with_tf_init: QuantScheme.post_training_tf,
    QuantScheme.training_range_learning_with_tf_enhanced_init: QuantScheme.post_training_tf_enhanced,
    QuantScheme.training_range_learning_with_mse_init: QuantScheme.post_training_mse,
    QuantScheme.training_range_learning_with_auto_init: QuantScheme.post_training_auto,
    QuantScheme.training_range_learning_with_output_mse_init: QuantScheme.post_training_output_mse,
}

# (parameters, activations) of the per-tensor-kind schemes.
_PER_KIND = {
    QuantScheme.post_training_auto: (QuantScheme.post_training_output_mse, QuantScheme.post_training_tf_enhanced),
    QuantScheme.training_range_learning_with_auto_init: (
        QuantScheme.training_range_learning_with_output_mse_init,
        QuantScheme.training_range_learning_with_tf_enhanced_init,
    ),
}


def _accepted_scheme_names() -> str:
    return ", ".join(f"{s.value!r} ({s.name})" for s in QuantScheme)


def parse_quant_scheme(value: str | QuantScheme) -> QuantScheme:
    """Resolves a quantization scheme given as the enum, its value (``"tf"``) or its name.

    Args:
        value: a ``QuantScheme``, a value such as ``"tf_enhanced"``, or a member name such as
            ``"post_training_tf_enhanced"`` (case and surrounding spaces ignored).

    Returns:
        The ``QuantScheme``.

    Raises:
        TypeError: if ``value`` is neither a ``QuantScheme`` nor a string.
        ValueError: if the string names no scheme; the message lists the accepted ones.

    Example:
        >>> parse_quant_scheme("tf_enhanced")
        <QuantScheme.post_training_tf_enhanced: 'tf_enhanced'>
    """
    if isinstance(value, QuantScheme):
        return value
    if not isinstance(value, str):
        raise TypeError(
            f"Expected a QuantScheme or one of its names/values: {_accepted_scheme_names()}. "
            f"Received: quant_scheme={value!r} of type {type(value).__name__}"
        )
    key = value.strip().lower()
    for scheme in QuantScheme:
        if key in (scheme.value, scheme.name):
            return scheme
    raise ValueError(
        f"Unknown quantization scheme. Expected one of {_accepted_scheme_names()}, or a "
        f"QuantScheme member. Received: quant_scheme={value!r}"
    )


def _check_channel_axis(channel_axis: Any) -> tuple[int, ...] | None:
    """Validates the type of ``channel_axis``; the range is checked per batch, against its rank."""
    if channel_axis is None:
        return None
    if isinstance(channel_axis, (int, np.integer)) and not isinstance(channel_axis, (bool, np.bool_)):
        return (int(channel_axis),)
    if isinstance(channel_axis, (tuple, list)):
        axes = []
        for axis in channel_axis:
            if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
                break
            axes.append(int(axis))
        else:
            if not axes:
                raise ValueError(
                    "Expected at least one channel axis, or channel_axis=None for per-tensor "
                    "statistics. Received: channel_axis=()"
                )
            if len(set(axes)) != len(axes):
                raise ValueError(f"Expected distinct channel axes. Received: channel_axis={channel_axis!r}")
            return tuple(axes)
    raise TypeError(
        "Expected channel_axis to be None, an int or a tuple of ints. "
        f"Received: channel_axis={channel_axis!r}"
    )


def _normalize_axes(axes: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    out = []
    for axis in axes:
        if not -ndim <= axis < ndim:
            raise ValueError(
                f"Expected channel axes in [{-ndim}, {ndim - 1}] for an array of rank {ndim}. "
                f"Received: channel_axis={axes!r}. Fix: build the analyzer with the channel axis of "
                "the tensor it observes."
            )
        out.append(axis % ndim)
    if len(set(out)) != len(out):
        raise ValueError(
            f"Expected distinct channel axes for an array of rank {ndim}. Received: channel_axis={axes!r}"
        )
    return tuple(sorted(out))


def _as_numeric_array(x: Any) -> np.ndarray:
    x = np.asarray(x)
    kind = x.dtype.kind
    if kind in "fiu":
        return x
    if kind == "V":
        # ml_dtypes floats (bfloat16, float8) that tf.numpy_function hands over are kind "V".
        try:
            return x.astype(np.float32)
        except (TypeError, ValueError):
            pass
    raise TypeError(
        "Expected a real numeric (float or integer) array to observe. "
        f"Received: dtype={x.dtype}, shape={x.shape}"
    )


def _rows(x: np.ndarray, axes: tuple[int, ...] | None, num_channels: int) -> np.ndarray:
    """[C, N] view (or copy) of ``x`` with one row per channel."""
    if axes is None:
        return x.reshape(1, -1)
    return np.moveaxis(x, axes, tuple(range(len(axes)))).reshape(num_channels, -1)


# ----------------------------------------------------------------------------------------------
# Base class


class RangeAnalyzer(abc.ABC):
    """Accumulates statistics over calibration batches and proposes a quantization range.

    Args:
        channel_axis: None for per-tensor statistics; otherwise an axis, or a tuple of axes that
            are flattened together into one channel dimension (negative axes allowed).

    Raises:
        TypeError: if ``channel_axis`` is not None, an int or a tuple of ints.
        ValueError: if ``channel_axis`` is an empty tuple or repeats an axis.
    """

    def __init__(self, channel_axis: int | tuple[int, ...] | None = None) -> None:
        self._channel_axis = _check_channel_axis(channel_axis)
        self._num_batches = 0
        self._num_channels: int | None = None
        self._data_min: np.ndarray | None = None
        self._data_max: np.ndarray | None = None
        self._reset_statistics()

    @property
    def channel_axis(self) -> tuple[int, ...] | None:
        """The channel axes as given (None for per-tensor)."""
        return self._channel_axis

    @property
    def num_batches(self) -> int:
        """How many batches were observed since construction or the last ``reset``."""
        return self._num_batches

    @property
    def num_channels(self) -> int | None:
        """Channels seen so far (1 for per-tensor), or None before the first batch."""
        return self._num_channels

    def reset(self) -> None:
        """Forgets every observed batch."""
        self._num_batches = 0
        self._num_channels = None
        self._data_min = None
        self._data_max = None
        self._reset_statistics()

    def observe(self, x: np.ndarray) -> None:
        """Adds one batch to the statistics.

        Nothing is recorded when the batch is rejected.

        Args:
            x: float (or integer) array of any shape; with ``channel_axis`` set it must have those
                axes and the same number of channels as earlier batches.

        Raises:
            TypeError: if ``x`` is not a real numeric array.
            ValueError: if ``x`` has no elements, contains NaN or Inf, lacks the channel axes, or
                its channel count differs from earlier batches.
        """
        x = _as_numeric_array(x)
        if x.size == 0:
            raise ValueError(
                "Expected a batch with at least one element. "
                f"Received: x with shape={x.shape}. Fix: drop empty batches before calibration."
            )
        if self._channel_axis is None:
            axes = None
            num_channels = 1
            batch_min = np.asarray([np.min(x)], dtype=np.float64)
            batch_max = np.asarray([np.max(x)], dtype=np.float64)
        else:
            axes = _normalize_axes(self._channel_axis, x.ndim)
            num_channels = math.prod(x.shape[a] for a in axes)
            # Reducing over the other axes keeps the channel axes in ascending order, which is the
            # C order that _rows produces as well.
            others = tuple(a for a in range(x.ndim) if a not in axes)
            batch_min = np.min(x, axis=others).reshape(-1).astype(np.float64)
            batch_max = np.max(x, axis=others).reshape(-1).astype(np.float64)
        self._check_channel_count(num_channels, x.shape)
        if not (np.all(np.isfinite(batch_min)) and np.all(np.isfinite(batch_max))):
            num_nan = int(np.count_nonzero(np.isnan(x)))
            num_inf = int(np.count_nonzero(np.isinf(x)))
            raise ValueError(
                "Expected only finite values to calibrate on. "
                f"Received: x with {num_nan} NaN and {num_inf} Inf among {x.size} elements "
                f"(shape={x.shape}). Fix: check the model/inputs that produce this tensor."
            )
        self._update_statistics(x, axes, num_channels, batch_min, batch_max)
        # Only reached when the subclass update succeeded, so a failure records nothing.
        if self._data_min is None:
            self._data_min, self._data_max = batch_min, batch_max
        else:
            self._data_min = np.minimum(self._data_min, batch_min)
            self._data_max = np.maximum(self._data_max, batch_max)
        self._num_channels = num_channels
        self._num_batches += 1

    @property
    def graph_statistics_spec(self) -> GraphStatisticsSpec | None:
        """What a TF graph must gather for ``absorb_graph_statistics``; None if whole batches are
        needed (``observe``)."""
        return None

    def absorb_graph_statistics(self, values: GraphStatisticsValues) -> None:
        """Takes the statistics of a calibration pass gathered in the graph (see
        ``graph_statistics``) as if the batches had been observed here.

        Raises:
            RuntimeError: if this analyzer cannot take graph statistics or has already observed data.
            ValueError: if the pass saw NaN/Inf.
        """
        if self.graph_statistics_spec is None:
            raise RuntimeError(f"{type(self).__name__} with channel_axis={self._channel_axis} needs whole batches (observe).")
        if self._num_batches:
            raise RuntimeError("absorb_graph_statistics() needs an analyzer that has observed nothing yet.")
        if values.nonfinite_batches:
            raise ValueError(
                "Expected only finite values to calibrate on. "
                f"Received: {values.nonfinite_batches} batch(es) containing NaN/Inf. "
                "Fix: check the model/inputs that produce this tensor."
            )
        if values.num_batches == 0:
            return
        self._absorb_statistics(values)
        self._data_min = np.asarray([values.data_min], dtype=np.float64)
        self._data_max = np.asarray([values.data_max], dtype=np.float64)
        self._num_channels = 1
        self._num_batches = values.num_batches

    def _absorb_statistics(self, values: GraphStatisticsValues) -> None:
        """Subclass hook: take what ``graph_statistics_spec`` asked for beyond min/max."""

    def _check_channel_count(self, num_channels: int, shape: tuple[int, ...]) -> None:
        if self._num_channels is not None and num_channels != self._num_channels:
            raise ValueError(
                f"Expected {self._num_channels} channels along channel_axis={self._channel_axis}, as "
                f"in earlier batches. Received: {num_channels} channels in a batch of shape={shape}. "
                "Fix: call reset() before observing a tensor of a different layout."
            )

    def compute_range(
        self,
        bitwidth: int,
        symmetric: bool,
        strict: bool = False,
        unsigned_symmetric: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Proposes the range of a quantization grid for the observed data.

        The unsigned symmetric grid is used when ``symmetric`` and ``unsigned_symmetric`` are set
        and the observed minimum of every channel is >= 0 (the rule ``compute_encoding`` applies).

        Args:
            bitwidth: integer in [2, 16].
            symmetric: symmetric grid (absmax = max(|min|, |max|)).
            strict: strict symmetric grid with 2^b - 2 steps; ignored when not symmetric.
            unsigned_symmetric: allow the unsigned grid for non-negative data.

        Returns:
            (min, max) as float32 arrays of shape () per tensor or (C,) per channel.

        Raises:
            ValueError: if ``bitwidth`` is not an integer in [2, 16].
            RuntimeError: if nothing was observed.
        """
        bitwidth = validate_bitwidth(bitwidth)
        if self._num_batches == 0:
            raise RuntimeError(
                f"{type(self).__name__} has no statistics. Expected at least one observed batch. "
                "Received: num_batches=0. Fix: call observe() / compute_encodings with calibration "
                "data first."
            )
        symmetric = bool(symmetric)
        strict = bool(strict) and symmetric
        unsigned = symmetric and bool(unsigned_symmetric) and bool(np.all(self._data_min >= 0))
        lo, hi = self._compute_range(bitwidth, symmetric, strict, unsigned)
        lo = np.asarray(lo, dtype=np.float32)
        hi = np.asarray(hi, dtype=np.float32)
        if self._channel_axis is None:
            return lo.reshape(()), hi.reshape(())
        return lo, hi

    @abc.abstractmethod
    def _reset_statistics(self) -> None:
        """Clears the subclass's statistics."""

    @abc.abstractmethod
    def _update_statistics(
        self,
        x: np.ndarray,
        axes: tuple[int, ...] | None,
        num_channels: int,
        batch_min: np.ndarray,
        batch_max: np.ndarray,
    ) -> None:
        """Adds a validated batch; must assign its state only after everything else succeeded."""

    @abc.abstractmethod
    def _compute_range(
        self, bitwidth: int, symmetric: bool, strict: bool, unsigned: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns float64 (min, max) of shape (C,)."""


def _range_for_grid(
    lo: np.ndarray, hi: np.ndarray, symmetric: bool, unsigned: bool, tight: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Maps an observed/clipped range to the (min, max) that encodes the intended grid.

    Symmetric grids are kept as (-absmax, absmax), except ``tight`` ones (``compute_encoding``'s
    ``tight``), whose scale depends on which side is wider."""
    if unsigned:
        return np.zeros_like(hi), np.maximum(hi, 0.0)
    if symmetric and not tight:
        absmax = np.maximum(np.abs(lo), np.abs(hi))
        return -absmax, absmax
    return lo, hi


def tight_symmetric_candidates(
    mn: np.ndarray, mx: np.ndarray, steps: int, factors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """[K, C] (min, max) of the tight symmetric grids (``compute_encoding``'s ``tight``) with scale
    f * max(max / floor(steps / 2), -min / ceil(steps / 2)) for each f of ``factors`` ([K, 1])."""
    pos, neg = steps // 2, -(-steps // 2)
    scale = np.maximum(np.maximum(mx, 0.0) / pos, -np.minimum(mn, 0.0) / neg)[None, :] * factors
    return -neg * scale, pos * scale


# ----------------------------------------------------------------------------------------------
# Min/max


class MinMaxAnalyzer(RangeAnalyzer):
    """AIMET's ``tf`` scheme: the exact running min and max.

    compute_range returns (min, max) for asymmetric grids, (-absmax, absmax) with
    absmax = max(|min|, |max|) for symmetric ones and (0, max) for unsigned symmetric ones.

    Args:
        channel_axis: see ``RangeAnalyzer``.
    """

    def _reset_statistics(self) -> None:
        pass

    def _update_statistics(self, x, axes, num_channels, batch_min, batch_max) -> None:
        pass  # The base class already tracks the exact min/max.

    @property
    def graph_statistics_spec(self) -> GraphStatisticsSpec | None:
        return GraphStatisticsSpec() if self._channel_axis is None else None

    def _compute_range(self, bitwidth, symmetric, strict, unsigned):
        return _range_for_grid(self._data_min, self._data_max, symmetric, unsigned)


# ----------------------------------------------------------------------------------------------
# Adaptive histogram


class _Histogram:
    """Per-channel histograms with ``num_bins`` equal bins over [lo, hi] (arrays of shape (C,))."""

    __slots__ = ("lo", "hi", "counts")

    def __init__(self, lo: np.ndarray, hi: np.ndarray, counts: np.ndarray) -> None:
        self.lo = lo
        self.hi = hi
        self.counts = counts

    @property
    def num_bins(self) -> int:
        return self.counts.shape[1]

    @property
    def bin_width(self) -> np.ndarray:
        return (self.hi - self.lo) / self.num_bins

    def cumulative(self) -> np.ndarray:
        """[C, num_bins + 1]: mass of bins [0, k)."""
        out = np.zeros((self.counts.shape[0], self.num_bins + 1))
        np.cumsum(self.counts, axis=1, out=out[:, 1:])
        return out


def _positive_span(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    # A constant channel still needs bins of non-zero width.
    pad = np.maximum(np.abs(lo), 1.0) * 1e-6
    return np.where(hi > lo, hi, lo + pad)


def _bin_counts(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, num_bins: int) -> np.ndarray:
    """Counts rows [C, N] into ``num_bins`` bins per channel over [lo, hi]; values must lie inside."""
    num_channels, n = rows.shape
    per_unit = num_bins / (hi - lo)
    row_base = (np.arange(num_channels, dtype=np.intp) * num_bins)[:, None]
    counts = np.zeros(num_channels * num_bins)
    cols = max(1, _CHUNK_ELEMENTS // num_channels)
    for start in range(0, n, cols):
        pos = rows[:, start : start + cols].astype(np.float64)
        pos -= lo[:, None]
        pos *= per_unit[:, None]
        # The top edge belongs to the last bin; clipping also absorbs rounding just outside.
        np.clip(pos, 0, num_bins - 1, out=pos)
        index = pos.astype(np.intp)
        index += row_base
        counts += np.bincount(index.ravel(), minlength=num_channels * num_bins)
    return counts.reshape(num_channels, num_bins)


def _rebin(
    counts: np.ndarray,
    old_lo: np.ndarray,
    old_hi: np.ndarray,
    new_lo: np.ndarray,
    new_hi: np.ndarray,
) -> np.ndarray:
    """Re-bins [R, B] counts from [old_lo, old_hi] into the wider [new_lo, new_hi].

    Each old bin's count is spread over the new bins it overlaps in proportion to the overlap,
    i.e. the new counts are differences of the old piecewise-linear CDF at the new edges.
    """
    num_bins = counts.shape[1]
    cdf = np.zeros((counts.shape[0], num_bins + 1))
    np.cumsum(counts, axis=1, out=cdf[:, 1:])
    fractions = np.arange(num_bins + 1) / num_bins
    edges = new_lo[:, None] + (new_hi - new_lo)[:, None] * fractions[None, :]
    pos = (edges - old_lo[:, None]) * (num_bins / (old_hi - old_lo))[:, None]
    np.clip(pos, 0, num_bins, out=pos)
    k = np.minimum(pos.astype(np.intp), num_bins - 1)
    new_cdf = np.take_along_axis(cdf, k, axis=1) + np.take_along_axis(counts, k, axis=1) * (pos - k)
    # The new range covers the old one, so the end points hold exactly none and all of the mass.
    new_cdf[:, 0] = 0.0
    new_cdf[:, -1] = cdf[:, -1]
    return np.maximum(np.diff(new_cdf, axis=1), 0.0)


def _updated_histogram(
    hist: _Histogram | None,
    rows: np.ndarray,
    batch_min: np.ndarray,
    batch_max: np.ndarray,
    num_bins: int,
) -> _Histogram:
    """A new histogram holding ``hist`` (may be None) plus ``rows``; ``hist`` is not modified."""
    if hist is None:
        lo = batch_min.copy()
        hi = _positive_span(batch_min, batch_max)
        counts = np.zeros((lo.shape[0], num_bins))
    else:
        lo = np.minimum(hist.lo, batch_min)
        hi = np.maximum(hist.hi, batch_max)
        counts = hist.counts.copy()
        grown = (lo < hist.lo) | (hi > hist.hi)
        if np.any(grown):
            counts[grown] = _rebin(hist.counts[grown], hist.lo[grown], hist.hi[grown], lo[grown], hi[grown])
    counts += _bin_counts(rows, lo, hi, num_bins)
    return _Histogram(lo, hi, counts)


def _check_num_bins(num_bins: Any) -> int:
    if isinstance(num_bins, (bool, np.bool_)) or not isinstance(num_bins, (int, np.integer)) or num_bins < 2:
        raise ValueError(f"Expected an integer num_bins >= 2. Received: num_bins={num_bins!r}")
    return int(num_bins)


class _HistogramAnalyzer(RangeAnalyzer):
    """Shared histogram bookkeeping of the SQNR and percentile analyzers."""

    def __init__(self, channel_axis: int | tuple[int, ...] | None, num_bins: int) -> None:
        self._num_bins = _check_num_bins(num_bins)
        super().__init__(channel_axis)

    @property
    def num_bins(self) -> int:
        """Bins per channel histogram."""
        return self._num_bins

    def _reset_statistics(self) -> None:
        self._histogram: _Histogram | None = None

    def _update_statistics(self, x, axes, num_channels, batch_min, batch_max) -> None:
        self._update_from_rows(_rows(x, axes, num_channels), batch_min, batch_max)

    def _update_from_rows(self, rows: np.ndarray, batch_min: np.ndarray, batch_max: np.ndarray) -> None:
        self._histogram = _updated_histogram(self._histogram, rows, batch_min, batch_max, self._num_bins)

    @property
    def graph_statistics_spec(self) -> GraphStatisticsSpec | None:
        if self._channel_axis is not None:
            return None
        return GraphStatisticsSpec(num_bins=self._num_bins, count_zeros=self.counts_zeros)

    def histogram(self, channel: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
        """``(counts, edges)`` of channel ``channel``'s histogram so far (None before any data);
        ``edges`` has one more entry than ``counts``."""
        if self._histogram is None:
            return None
        h = self._histogram
        edges = np.linspace(h.lo[channel], h.hi[channel], h.num_bins + 1)
        return h.counts[channel].copy(), edges

    def _absorb_statistics(self, values: GraphStatisticsValues) -> None:
        counts = np.asarray(values.counts, dtype=np.float64).reshape(1, -1)
        if counts.shape[1] != self._num_bins:
            raise ValueError(f"Expected {self._num_bins} histogram counts. Received: {counts.shape[1]}")
        self._histogram = _Histogram(np.asarray([values.hist_lo]), np.asarray([values.hist_hi]), counts)
        self._record_zeros(np.asarray([values.zeros]))

    # Whether exact zeros matter to this analyzer's statistics (they do for the SQNR cost).
    counts_zeros = False

    def _record_zeros(self, zeros: np.ndarray) -> None:
        """Hook for analyzers that count exact zeros."""


# ----------------------------------------------------------------------------------------------
# SQNR (tf_enhanced)

_ASYMMETRIC_DELTA_CANDIDATES = 17
_SYMMETRIC_DELTA_CANDIDATES = 101
_OFFSET_CANDIDATES = 21


def _moment_table(counts: np.ndarray) -> np.ndarray:
    """[C, B + 1, 4] table: mass, first and second moment of bins [0, k) in bin units, and m_k.

    Bin j covers [j, j + 1) with its mass m_j uniform inside: the integral of x over it is
    m_j (j + 1/2) and of x^2 is m_j ((j + 1/2)^2 + 1/12). Working in bin units (not data units)
    keeps the moments O(B^2) whatever the data's offset from 0, so the clipping cost below does not
    cancel catastrophically. The four quantities share one table so that one gather fetches them.
    """
    num_channels, num_bins = counts.shape
    centres = np.arange(num_bins) + 0.5
    table = np.zeros((num_channels, num_bins + 1, 4))
    np.cumsum(counts, axis=1, out=table[:, 1:, 0])
    np.cumsum(counts * centres, axis=1, out=table[:, 1:, 1])
    np.cumsum(counts * (centres * centres + 1.0 / 12.0), axis=1, out=table[:, 1:, 2])
    table[:, :num_bins, 3] = counts
    return table


def _moments_below(table: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mass, first and second moment of the histogram below ``pos`` ([C, K] in [0, B], bin units)."""
    num_channels, num_edges, _ = table.shape
    k = np.minimum(pos.astype(np.intp), num_edges - 2)
    s = pos - k
    k += (np.arange(num_channels, dtype=np.intp) * num_edges)[:, None]
    gathered = table.reshape(-1, 4)[k]
    kf = k - (np.arange(num_channels, dtype=np.intp) * num_edges)[:, None]
    kf = kf.astype(np.float64)
    m = gathered[..., 3]
    # The partial bin k contributes its uniform mass over [k, k + s).
    ms = m * s
    mass = gathered[..., 0] + ms
    first = gathered[..., 1] + ms * (kf + 0.5 * s)
    second = gathered[..., 2] + ms * (kf * kf + s * (kf + s / 3.0))
    return mass, first, second


def _grid_costs(
    hist: _Histogram,
    zeros: np.ndarray,
    grid_min: np.ndarray,
    grid_max: np.ndarray,
    delta: np.ndarray,
    gamma: float,
) -> np.ndarray:
    """gamma * clipping SE + rounding SE of each candidate grid [C, K], in squared bin widths.

    clipping = integral over x < L of (L - x)^2 + integral over x > U of (x - U)^2, integrated
    exactly with each bin's mass uniform inside the bin; rounding = delta^2 / 12 per in-range value,
    except exact zeros, which every candidate grid represents without error.
    """
    num_bins = hist.num_bins
    width = hist.bin_width[:, None]
    table = _moment_table(hist.counts)
    total0, total1, total2 = (table[:, -1:, i] for i in range(3))
    lower = (grid_min - hist.lo[:, None]) / width
    upper = (grid_max - hist.lo[:, None]) / width
    # Moments are looked up inside the histogram, but the clipping distances below use the
    # unclipped bounds: a grid can end short of all the mass (e.g. U below every value).
    m0_l, m1_l, m2_l = _moments_below(table, np.clip(lower, 0.0, num_bins))
    m0_u, m1_u, m2_u = _moments_below(table, np.clip(upper, 0.0, num_bins))
    clip_low = lower * (lower * m0_l - 2.0 * m1_l) + m2_l
    clip_high = (total2 - m2_u) - upper * (2.0 * (total1 - m1_u) - upper * (total0 - m0_u))
    cost = np.maximum(clip_low, 0.0)
    cost += np.maximum(clip_high, 0.0)
    cost *= gamma
    in_range = np.maximum(m0_u - m0_l - zeros[:, None], 0.0)
    cost += (delta / width) ** 2 / 12.0 * in_range
    return cost


class SqnrAnalyzer(_HistogramAnalyzer):
    """AIMET's ``tf_enhanced`` scheme: the candidate grid with the lowest estimated noise.

    Statistics: a histogram per channel (``num_bins`` bins) whose range grows when a batch falls
    outside it (old counts re-binned proportionally), plus the count of exact zeros.

    Candidates, with [min, max] the observed range made to contain 0 and >= 0.01 wide:

    * asymmetric: delta = f * delta_max, delta_max = (max - min) / (2^b - 1), f = 1/16, ..., 17/16,
      times 21 offsets (20 spread evenly over [-(2^b - 1), 0] plus round(min / delta_max)); each
      candidate is clamped into the observed grid and re-derived (delta, offset), as AIMET does;
    * symmetric: delta = f * 2 * absmax / steps, f = 0.01, ..., 1.01, offset -ceil(steps / 2);
    * unsigned symmetric: delta = f * max / steps, f = 0.01, ..., 1.01, offset 0;

    with steps = 2^b - 1 (strict: 2^b - 2). A candidate's grid covers [L, U] =
    [delta * offset, delta * (offset + steps)]. Its cost, from the histogram with each bin's mass
    spread uniformly inside the bin, is

        gamma * (integral_{x < L} (L - x)^2 + integral_{x > U} (x - U)^2) + delta^2 / 12 * n_in,

    where n_in is the in-range mass minus the exact zeros (0 is on every grid). The lowest cost wins
    per channel; ties go to the wider grid.

    Args:
        channel_axis: see ``RangeAnalyzer``.
        num_bins: histogram bins per channel (AIMET: 512).
        gamma: weight of the clipping noise relative to the rounding noise (AIMET: 3.0).

    Raises:
        ValueError: if ``num_bins`` < 2 or ``gamma`` is not a positive finite number.
    """

    def __init__(
        self,
        channel_axis: int | tuple[int, ...] | None = None,
        num_bins: int = 512,
        gamma: float = 3.0,
    ) -> None:
        if isinstance(gamma, (bool, np.bool_)) or not isinstance(gamma, (int, float, np.number)):
            raise ValueError(f"Expected a positive finite gamma. Received: gamma={gamma!r}")
        if not (math.isfinite(float(gamma)) and float(gamma) > 0):
            raise ValueError(f"Expected a positive finite gamma. Received: gamma={gamma!r}")
        self._gamma = float(gamma)
        super().__init__(channel_axis, num_bins)

    @property
    def gamma(self) -> float:
        """Weight of the clipping noise."""
        return self._gamma

    def _reset_statistics(self) -> None:
        super()._reset_statistics()
        self._zeros: np.ndarray | None = None

    def _update_from_rows(self, rows: np.ndarray, batch_min: np.ndarray, batch_max: np.ndarray) -> None:
        hist = _updated_histogram(self._histogram, rows, batch_min, batch_max, self._num_bins)
        self._histogram = hist
        self._record_zeros(np.count_nonzero(rows == 0, axis=1).astype(np.float64))

    counts_zeros = True

    def _record_zeros(self, zeros: np.ndarray) -> None:
        self._zeros = zeros if self._zeros is None else self._zeros + zeros

    def _candidates(self, bitwidth: int, symmetric: bool, strict: bool, unsigned: bool):
        """Candidate (delta, offset) per channel as [C, K] arrays, widest first."""
        mn = np.minimum(self._data_min, 0.0)
        mx = np.maximum(self._data_max, 0.0)
        mx = np.maximum(mx, mn + MIN_RANGE_WIDTH)
        steps = 2**bitwidth - 1 - int(strict)
        if symmetric:
            f = np.arange(_SYMMETRIC_DELTA_CANDIDATES, 0, -1) / (_SYMMETRIC_DELTA_CANDIDATES - 1)
            if unsigned:
                delta_max = mx / steps
                offset = 0.0
            else:
                delta_max = 2.0 * np.maximum(-mn, mx) / steps
                offset = -float(math.ceil(steps / 2))
            delta = delta_max[:, None] * f[None, :]
            return delta, np.full_like(delta, offset), steps

        delta_max = (mx - mn) / steps
        observed_offset = np.round(mn / delta_max)
        observed_min = delta_max * observed_offset
        observed_max = observed_min + delta_max * steps
        f = np.arange(_ASYMMETRIC_DELTA_CANDIDATES, 0, -1) / (_ASYMMETRIC_DELTA_CANDIDATES - 1)
        spread = np.round(np.linspace(-steps, 0, min(steps + 1, _OFFSET_CANDIDATES - 1)))
        num_channels = mn.shape[0]
        offsets = np.concatenate(
            [np.broadcast_to(spread, (num_channels, spread.size)), observed_offset[:, None]], axis=1
        )
        delta = delta_max[:, None, None] * f[None, :, None]  # [C, deltas, 1]
        offsets = offsets[:, None, :]  # [C, 1, offsets]
        # Keep every candidate inside the observed grid, then re-derive its delta and offset.
        test_min = np.maximum(observed_min[:, None, None], delta * offsets)
        test_max = np.minimum(observed_max[:, None, None], test_min + delta * steps)
        delta = np.maximum((test_max - test_min) / steps, delta_max[:, None, None] * 1e-6)
        offsets = np.clip(np.round(test_min / delta), -steps, 0)
        return delta.reshape(num_channels, -1), offsets.reshape(num_channels, -1), steps

    def _compute_range(self, bitwidth, symmetric, strict, unsigned):
        delta, offset, steps = self._candidates(bitwidth, symmetric, strict, unsigned)
        grid_min = delta * offset
        grid_max = delta * (offset + steps)
        cost = _grid_costs(self._histogram, self._zeros, grid_min, grid_max, delta, self._gamma)
        best = np.argmin(cost, axis=1)[:, None]
        best_delta = np.take_along_axis(delta, best, axis=1)[:, 0]
        best_offset = np.take_along_axis(offset, best, axis=1)[:, 0]
        if unsigned:
            return np.zeros_like(best_delta), best_delta * steps
        if symmetric:
            absmax = best_delta * (steps // 2)
            return -absmax, absmax
        return best_delta * best_offset, best_delta * (best_offset + steps)


# ----------------------------------------------------------------------------------------------
# MSE on the exact values (for parameters)

_MSE_SHRINK_CANDIDATES = 80
_MSE_ASYMMETRIC_SIDE_CANDIDATES = 12
# Default cap on the values an MseAnalyzer keeps (float32): 2^24 values = 64 MiB.
_MSE_MAX_VALUES = 1 << 24


class MseAnalyzer(RangeAnalyzer):
    """The grid with the lowest quantization MSE on the exact observed values (meant for weights).

    Unlike ``tf_enhanced``, which estimates the noise from a histogram and weights clipping by
    gamma = 3, this scheme keeps every observed value and measures, for each candidate range, the
    exact squared error of quantize-dequantize through the very encoding ``compute_encoding``
    would build (nudging included). Candidates, per channel, with [min, max] the observed range:

    * symmetric (and unsigned symmetric): [-f * absmax, f * absmax] (unsigned: [0, f * max]) for
      f = 1, 1 - 1/80, ..., 1/80; then the tight grids (``compute_encoding``'s ``tight``, which the
      scheme's encodings use) with scale f * max(max / floor(steps / 2), -min / ceil(steps / 2));
    * asymmetric: [a * min, b * max] for a, b in {1, 11/12, ..., 1/12}.

    f = 1 (a = b = 1) is exactly the ``tf`` (min/max) grid, and ties go to the earlier grid, so the
    chosen grid's error on the observed values is never above min/max's.

    Every value is kept until ``compute_range``, so the scheme is for tensors seen whole once
    (parameters), not for activations streamed over many batches.

    Args:
        channel_axis: see ``RangeAnalyzer``.
        max_values: most values kept; observing more raises ``ValueError``.

    Raises:
        ValueError: if ``max_values`` is not a positive integer.
    """

    def __init__(self, channel_axis: int | tuple[int, ...] | None = None, max_values: int = _MSE_MAX_VALUES) -> None:
        if isinstance(max_values, (bool, np.bool_)) or not isinstance(max_values, (int, np.integer)) or max_values < 1:
            raise ValueError(f"Expected a positive integer max_values. Received: max_values={max_values!r}")
        self._max_values = int(max_values)
        super().__init__(channel_axis)

    def _reset_statistics(self) -> None:
        self._values: list[np.ndarray] = []
        self._num_values = 0

    def _update_statistics(self, x, axes, num_channels, batch_min, batch_max) -> None:
        if self._num_values + x.size > self._max_values:
            raise ValueError(
                f"MseAnalyzer keeps every observed value; expected at most {self._max_values} in all. "
                f"Received: {self._num_values} kept plus a batch of {x.size} (shape={x.shape}). "
                "Fix: use the 'mse' scheme for parameters only; activations use 'tf_enhanced' "
                "(the 'auto' scheme does this per tensor kind)."
            )
        self._values.append(np.asarray(_rows(x, axes, num_channels), dtype=np.float32).copy())
        self._num_values += x.size

    def _candidate_ranges(self, symmetric: bool, unsigned: bool, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """[K, C] candidate (min, max), the min/max grid first."""
        mn, mx = self._data_min, self._data_max
        if symmetric:
            f = np.arange(_MSE_SHRINK_CANDIDATES, 0, -1)[:, None] / _MSE_SHRINK_CANDIDATES
            if unsigned:
                return np.zeros((f.shape[0], mx.shape[0])), f * np.maximum(mx, 0.0)[None, :]
            absmax = np.maximum(np.abs(mn), np.abs(mx))[None, :]
            lo, hi = tight_symmetric_candidates(mn, mx, steps, f)
            return np.concatenate([-f * absmax, lo]), np.concatenate([f * absmax, hi])
        side = np.arange(_MSE_ASYMMETRIC_SIDE_CANDIDATES, 0, -1) / _MSE_ASYMMETRIC_SIDE_CANDIDATES
        a, b = np.meshgrid(side, side, indexing="ij")
        a, b = a.reshape(-1, 1), b.reshape(-1, 1)
        return a * np.minimum(mn, 0.0)[None, :], b * np.maximum(mx, 0.0)[None, :]

    def _compute_range(self, bitwidth, symmetric, strict, unsigned):
        from aimet_tf.quantization.primitives import quantize_dequantize_rows

        rows = np.concatenate(self._values, axis=1)  # [C, N]
        lows, highs = self._candidate_ranges(symmetric, unsigned, num_steps(bitwidth, strict))
        best_err = np.full(rows.shape[0], np.inf)
        best_lo = np.zeros(rows.shape[0])
        best_hi = np.zeros(rows.shape[0])
        for lo, hi in zip(lows, highs):
            restored = quantize_dequantize_rows(rows, lo, hi, bitwidth, symmetric, strict, unsigned, tight=True)
            err = np.sum(np.square(restored - rows, dtype=np.float64), axis=1)
            # Strictly lower only: candidates go from wide to narrow, so ties keep the wider grid.
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_lo = np.where(better, lo, best_lo)
            best_hi = np.where(better, hi, best_hi)
        return _range_for_grid(best_lo, best_hi, symmetric, unsigned, tight=True)


# ----------------------------------------------------------------------------------------------
# Percentile


def validate_percentile(percentile: float) -> float:
    """Returns ``percentile`` as a float after checking it is a number in [90, 100].

    Raises:
        ValueError: for a non-number (a string, a bool, None) or a value outside [90, 100].
    """
    if (
        isinstance(percentile, (bool, np.bool_))
        or not isinstance(percentile, (int, float, np.number))
        or not 90.0 <= float(percentile) <= 100.0
    ):
        raise ValueError(
            f"Expected a percentile in [90, 100], as a number. Received: percentile={percentile!r} "
            f"(type {type(percentile).__name__}). Fix: pass e.g. percentile=99.99 (or use the "
            "'tf' scheme for no clipping)."
        )
    return float(percentile)


class PercentileAnalyzer(_HistogramAnalyzer):
    """Clips (100 - percentile)% of the observed mass in each tail.

    With cdf the histogram's piecewise-linear cumulative mass (uniform inside each bin) and
    t = (100 - percentile) / 100: min = cdf^-1(t * n), max = cdf^-1((1 - t) * n), both kept inside
    the exact observed [min, max]; percentile = 100 gives the exact min and max. The grid mapping
    is that of ``MinMaxAnalyzer`` (symmetric: (-absmax, absmax); unsigned symmetric: (0, max)).

    Args:
        channel_axis: see ``RangeAnalyzer``.
        percentile: in [90, 100].
        num_bins: histogram bins per channel.

    Raises:
        ValueError: if ``percentile`` is outside [90, 100] or ``num_bins`` < 2.
    """

    def __init__(
        self,
        channel_axis: int | tuple[int, ...] | None = None,
        percentile: float = 100.0,
        num_bins: int = 2048,
    ) -> None:
        self._percentile = validate_percentile(percentile)
        super().__init__(channel_axis, num_bins)

    @property
    def percentile(self) -> float:
        """The kept percentile."""
        return self._percentile

    def _quantile(self, fraction: float) -> np.ndarray:
        """Value below which ``fraction`` of each channel's mass lies (linear inside a bin)."""
        hist = self._histogram
        cdf = hist.cumulative()
        target = fraction * cdf[:, -1:]
        k = np.minimum(np.sum(cdf[:, 1:] < target, axis=1, keepdims=True), hist.num_bins - 1)
        mass = np.take_along_axis(hist.counts, k, axis=1)
        below = np.take_along_axis(cdf, k, axis=1)
        s = np.clip((target - below) / np.where(mass > 0, mass, 1.0), 0.0, 1.0)
        return (hist.lo[:, None] + (k + s) * hist.bin_width[:, None])[:, 0]

    def _compute_range(self, bitwidth, symmetric, strict, unsigned):
        if self._percentile >= 100.0:
            lo, hi = self._data_min, self._data_max
        else:
            tail = (100.0 - self._percentile) / 100.0
            lo = np.clip(self._quantile(tail), self._data_min, self._data_max)
            hi = np.clip(self._quantile(1.0 - tail), self._data_min, self._data_max)
        return _range_for_grid(lo, hi, symmetric, unsigned)


# ----------------------------------------------------------------------------------------------
# Factory

_ANALYZERS: dict[QuantScheme, type[RangeAnalyzer]] = {
    QuantScheme.post_training_tf: MinMaxAnalyzer,
    QuantScheme.post_training_tf_enhanced: SqnrAnalyzer,
    QuantScheme.post_training_percentile: PercentileAnalyzer,
    QuantScheme.post_training_mse: MseAnalyzer,
    # The sim refines output_mse kernels from their layer inputs; alone it is plain mse.
    QuantScheme.post_training_output_mse: MseAnalyzer,
}


def make_analyzer(
    scheme: str | QuantScheme,
    channel_axis: int | Sequence[int] | None = None,
    **kwargs: Any,
) -> RangeAnalyzer:
    """Builds the analyzer of a quantization scheme.

    Range-learning schemes get the analyzer of their initialisation scheme.

    Args:
        scheme: a ``QuantScheme`` or its name/value (see ``parse_quant_scheme``).
        channel_axis: None (per tensor), an axis or a tuple of axes (per channel).
        **kwargs: options of the analyzer class, e.g. ``percentile=99.9`` or ``num_bins=1024``.

    Returns:
        A fresh ``RangeAnalyzer``.

    Raises:
        TypeError: if a keyword is not an option of the scheme's analyzer.
        ValueError: if the scheme is unknown or an option is invalid.

    Example:
        >>> make_analyzer("percentile", percentile=99.9)
    """
    resolved = parse_quant_scheme(scheme).init_scheme
    if resolved.is_per_tensor_kind:
        raise ValueError(
            f"Expected one tensor's scheme. Received: {resolved.value!r}, which picks a scheme per "
            f"tensor kind (parameters {resolved.for_parameters.value!r}, activations "
            f"{resolved.for_activations.value!r}). Fix: pass the scheme of this tensor's kind."
        )
    cls = _ANALYZERS[resolved]
    accepted = [
        name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "channel_axis")
    ]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"Expected options of {cls.__name__} (scheme {resolved.value!r}): {accepted or 'none'}. "
            f"Received: {', '.join(unknown)}"
        )
    if isinstance(channel_axis, list):
        channel_axis = tuple(channel_axis)
    return cls(channel_axis=channel_axis, **kwargs)
