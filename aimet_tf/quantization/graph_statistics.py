"""Per-tensor calibration statistics accumulated inside the TF graph that runs the model.

A per-tensor range analyzer needs, per calibration batch, only a few numbers: the exact min and max
and, for the SQNR and percentile analyzers, an equal-width histogram over the running range and the
count of exact zeros. ``GraphStatistics`` computes these with TF ops into TF variables, so a
calibration pass copies no tensor out of TF, makes no Python call per batch and per quantizer, and
lets independent quantizers update in parallel. Because the state lives in variables owned by this
object (not in Python closures), a traced calibration function stays valid across
``compute_encodings`` calls: ``reset`` and run it again.

The histogram follows the numpy analyzers' rule: it spans the union of the ranges seen so far; when
a batch widens the range, the counts so far are re-binned over the wider range by linear
interpolation of their cumulative distribution (``analyzers._rebin``), then the batch is binned.

After the pass, ``read`` returns the statistics as numpy values for
``RangeAnalyzer.absorb_graph_statistics``. Batches holding NaN/Inf are counted in ``nonfinite``
and otherwise ignored, so that the caller can reject the pass with a clear error. Empty tensors
are skipped (``RangeAnalyzer.observe`` rejects them instead); a quantizer that only ever saw empty
tensors then counts as having seen no data.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import numpy as np
import tensorflow as tf

__all__ = ["GraphStatisticsSpec", "GraphStatisticsValues", "GraphStatistics", "NonFiniteWatch"]

_SERIALS = itertools.count()


class GraphStatisticsSpec(NamedTuple):
    """What an analyzer needs from the graph: ``num_bins`` (0 = no histogram) and zero counts."""

    num_bins: int = 0
    count_zeros: bool = False


class GraphStatisticsValues(NamedTuple):
    """One pass's statistics, read back as numpy values."""

    num_batches: int
    nonfinite_batches: int
    data_min: float
    data_max: float
    hist_lo: float
    hist_hi: float
    counts: np.ndarray | None  # [num_bins] float64, or None without a histogram
    zeros: float


def _padded_high(lo: tf.Tensor, hi: tf.Tensor) -> tf.Tensor:
    # Same rule as analyzers._positive_span: a constant tensor still needs bins of non-zero width.
    pad = tf.maximum(tf.abs(lo), 1.0) * 1e-6
    return tf.where(hi > lo, hi, lo + pad)


def rebin_counts(counts: tf.Tensor, old_lo, old_hi, new_lo, new_hi) -> tf.Tensor:
    """Re-bins float64 counts over [old_lo, old_hi] into as many bins over the wider [new_lo, new_hi].

    Each old bin's count is spread over the new bins it overlaps in proportion to the overlap (the
    new counts are differences of the old piecewise-linear CDF at the new edges), as
    ``analyzers._rebin`` does in numpy.
    """
    num_bins = counts.shape[0]
    old_lo, old_hi, new_lo, new_hi = (tf.cast(v, tf.float64) for v in (old_lo, old_hi, new_lo, new_hi))
    cdf = tf.concat([tf.zeros([1], tf.float64), tf.cumsum(counts)], axis=0)
    fractions = tf.range(num_bins + 1, dtype=tf.float64) / num_bins
    edges = new_lo + (new_hi - new_lo) * fractions
    # Guarded width: callers compute this unconditionally, also before any bin range exists.
    width = tf.where(old_hi > old_lo, old_hi - old_lo, tf.ones_like(old_hi))
    pos = tf.clip_by_value((edges - old_lo) * (num_bins / width), 0.0, float(num_bins))
    pos = tf.where(tf.math.is_finite(pos), pos, tf.zeros_like(pos))
    k = tf.minimum(tf.cast(tf.floor(pos), tf.int32), num_bins - 1)
    new_cdf = tf.gather(cdf, k) + tf.gather(counts, k) * (pos - tf.cast(k, tf.float64))
    # The new range covers the old one, so the end points hold exactly none and all of the mass.
    new_cdf = tf.concat([tf.zeros([1], tf.float64), new_cdf[1:-1], cdf[-1:]], axis=0)
    return tf.maximum(new_cdf[1:] - new_cdf[:-1], 0.0)


def _histogram(x: tf.Tensor, value_range: tf.Tensor, num_bins: int) -> tf.Tensor:
    """tf.histogram_fixed_width over two halves of the flattened tensor: the op is
    single-threaded, and two independent halves let TF's inter-op threads bin in parallel."""
    flat = tf.reshape(x, [-1])
    half = tf.size(flat) // 2
    first = tf.histogram_fixed_width(flat[:half], value_range, nbins=num_bins, dtype=tf.int32)
    second = tf.histogram_fixed_width(flat[half:], value_range, nbins=num_bins, dtype=tf.int32)
    return first + second


def _update(
    spec: GraphStatisticsSpec, x, num_batches, nonfinite, data_min_var, data_max_var, lo_var, hi_var,
    counts_var, zeros_var,
):
    """One batch's update of the statistics variables (see ``GraphStatistics``).

    Branch-free except around the histogram op (which must not see NaN): the new values are
    computed unconditionally and selected.
    """
    batch_min = tf.reduce_min(x)
    batch_max = tf.reduce_max(x)
    # Empty tensors reduce to +/-inf: they are skipped, not counted as non-finite.
    non_empty = tf.size(x) > 0
    ok = non_empty & tf.math.is_finite(batch_min) & tf.math.is_finite(batch_max)
    first = tf.equal(num_batches, 0)
    data_min = tf.where(first, batch_min, tf.minimum(data_min_var, batch_min))
    data_max = tf.where(first, batch_max, tf.maximum(data_max_var, batch_max))
    updates = [
        data_min_var.assign(tf.where(ok, data_min, data_min_var)),
        data_max_var.assign(tf.where(ok, data_max, data_max_var)),
        nonfinite.assign_add(tf.cast(non_empty & ~ok, tf.int64)),
    ]
    num_bins = spec.num_bins
    if num_bins:
        lo = data_min
        hi = _padded_high(lo, tf.where(first, batch_max, tf.maximum(hi_var, batch_max)))
        old = counts_var.read_value()
        grown = (lo < lo_var) | (hi > hi_var)
        rebinned = rebin_counts(old, lo_var, hi_var, lo, hi)
        kept = tf.where(first, tf.zeros_like(old), tf.where(grown, rebinned, old))
        counts = tf.cond(
            ok,
            lambda: _histogram(x, tf.stack([lo, hi]), num_bins),
            lambda: tf.zeros([num_bins], tf.int32),
        )
        updates += [
            counts_var.assign(tf.where(ok, kept + tf.cast(counts, tf.float64), old)),
            lo_var.assign(tf.where(ok, lo, lo_var)),
            hi_var.assign(tf.where(ok, hi, hi_var)),
        ]
    if spec.count_zeros:
        # int32 sums: tensors are far below 2^31 elements.
        num_zeros = tf.reduce_sum(tf.cast(tf.equal(x, 0.0), tf.int32))
        updates.append(zeros_var.assign_add(tf.where(ok, tf.cast(num_zeros, tf.float64), 0.0)))
    with tf.control_dependencies(updates):
        return num_batches.assign_add(tf.cast(ok, tf.int64))


@functools.lru_cache(maxsize=None)
def _update_function(spec: GraphStatisticsSpec):
    # Plain TF ops with explicit tf.cond/tf.where: nothing for autograph to convert. Not inlined:
    # every call site runs the one instantiated (and Grappler-optimised) body, which keeps the
    # first run of a model with many quantizers fast (see the first-call row of
    # `python -m benchmarks.run --only=quantsim`).
    return tf.function(
        functools.partial(_update, spec), autograph=False, reduce_retracing=True,
        experimental_attributes={"_noinline": True},
    )


class GraphStatistics:
    """TF variables holding one per-tensor quantizer's calibration statistics.

    Args:
        spec: histogram bins (0 for min/max only) and whether to count exact zeros.

    The variables are created eagerly (outside any tf.function) and are not tracked by Keras, so
    they are never saved with a model.
    """

    def __init__(self, spec: GraphStatisticsSpec) -> None:
        if spec.num_bins == 1 or spec.num_bins < 0:
            raise ValueError(f"Expected num_bins 0 (no histogram) or >= 2. Received: {spec.num_bins}")
        self.spec = spec
        # Unique for the life of the process (unlike id()): traced functions are cached on it.
        self.serial = next(_SERIALS)
        with tf.init_scope():
            self._num_batches = tf.Variable(0, dtype=tf.int64, trainable=False)
            self._nonfinite = tf.Variable(0, dtype=tf.int64, trainable=False)
            self._data_min = tf.Variable(0.0, dtype=tf.float32, trainable=False)
            self._data_max = tf.Variable(0.0, dtype=tf.float32, trainable=False)
            self._lo = tf.Variable(0.0, dtype=tf.float32, trainable=False)
            self._hi = tf.Variable(0.0, dtype=tf.float32, trainable=False)
            self._counts = tf.Variable(tf.zeros([max(spec.num_bins, 1)], tf.float64), trainable=False)
            self._zeros = tf.Variable(0.0, dtype=tf.float64, trainable=False)

    def reset(self) -> None:
        """Forgets every observed batch."""
        for var in (self._num_batches, self._nonfinite, self._data_min, self._data_max, self._lo,
                    self._hi, self._zeros):
            var.assign(tf.zeros_like(var))
        self._counts.assign(tf.zeros_like(self._counts))

    def observe(self, x: tf.Tensor) -> tf.Operation | tf.Tensor:
        """Adds one batch (graph or eager); returns the update to depend on.

        The update is one traced function per spec, shared by every ``GraphStatistics`` (the
        variables are its arguments): a model with many quantizers traces it once.
        """
        flat = tf.reshape(tf.cast(x, tf.float32), [-1])
        return _update_function(self.spec)(
            flat, self._num_batches, self._nonfinite, self._data_min, self._data_max, self._lo,
            self._hi, self._counts, self._zeros,
        )

    def read(self) -> GraphStatisticsValues:
        """The statistics so far, as numpy values."""
        return GraphStatisticsValues(
            num_batches=int(self._num_batches.numpy()),
            nonfinite_batches=int(self._nonfinite.numpy()),
            data_min=float(self._data_min.numpy()),
            data_max=float(self._data_max.numpy()),
            hist_lo=float(self._lo.numpy()),
            hist_hi=float(self._hi.numpy()),
            counts=self._counts.numpy().copy() if self.spec.num_bins else None,
            zeros=float(self._zeros.numpy()),
        )


class NonFiniteWatch:
    """Counts, in a TF variable, the batches in which a layer's output held NaN or Inf.

    Quantizers only see the tensors they quantize; inside a fused group (conv -> BN -> ReLU) an
    overflow to Inf can turn into NaN and then into 0 (ReLU) before any quantizer sees it. A
    watch on every layer's output during calibration names the first layer that went non-finite.
    Like ``GraphStatistics``, the variable is created eagerly and never saved with a model.
    """

    def __init__(self) -> None:
        # Unique for the life of the process (unlike id()): traced functions are cached on it.
        self.serial = next(_SERIALS)
        with tf.init_scope():
            self._batches = tf.Variable(0, dtype=tf.int64, trainable=False)

    def reset(self) -> None:
        """Forgets every observed batch."""
        self._batches.assign(0)

    def watch(self, outputs):
        """Returns ``outputs`` unchanged, made to depend on counting whether they are all finite.

        Only floating tensors are checked; a structure of tensors (a layer's outputs) counts once.
        """
        flat = [t for t in tf.nest.flatten(outputs) if tf.is_tensor(t) and t.dtype.is_floating]
        if not flat:
            return outputs
        finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in flat]))
        update = self._batches.assign_add(tf.cast(tf.logical_not(finite), tf.int64))
        with tf.control_dependencies([update]):
            return tf.nest.map_structure(
                lambda t: tf.identity(t) if tf.is_tensor(t) else t, outputs
            )

    def read(self) -> int:
        """How many batches held NaN/Inf since the last ``reset``."""
        return int(self._batches.numpy())
