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

Under a ``tf.distribute`` strategy with more than one replica (``strategy`` argument), every
variable is a sync-on-read variable: each replica (on every worker) accumulates the batches it
runs into its own copy, and ``read`` gathers the copies from all replicas and merges them with
``merge_values`` (exact for counts and min/max; histograms are re-binned over the union range
and summed, which differs from one device's sequential re-binning by at most the re-binning's
interpolation, within a bin). An update run outside replica context (a forward pass that calls
the model directly) goes to the first local copy, so no batch is counted twice.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import numpy as np
import tensorflow as tf

__all__ = ["GraphStatisticsSpec", "GraphStatisticsValues", "GraphStatistics", "NonFiniteWatch", "merge_values"]

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

    def __init__(self, spec: GraphStatisticsSpec, strategy: tf.distribute.Strategy | None = None) -> None:
        if spec.num_bins == 1 or spec.num_bins < 0:
            raise ValueError(f"Expected num_bins 0 (no histogram) or >= 2. Received: {spec.num_bins}")
        self.spec = spec
        # Unique for the life of the process (unlike id()): traced functions are cached on it.
        self.serial = next(_SERIALS)
        self._replicas = _Replicas(strategy)
        make = self._replicas.variable
        self._num_batches = make(tf.constant(0, tf.int64))
        self._nonfinite = make(tf.constant(0, tf.int64))
        self._data_min = make(tf.constant(0.0, tf.float32))
        self._data_max = make(tf.constant(0.0, tf.float32))
        self._lo = make(tf.constant(0.0, tf.float32))
        self._hi = make(tf.constant(0.0, tf.float32))
        self._counts = make(tf.zeros([max(spec.num_bins, 1)], tf.float64))
        self._zeros = make(tf.constant(0.0, tf.float64))

    def _variables(self) -> tuple:
        return (self._num_batches, self._nonfinite, self._data_min, self._data_max, self._lo, self._hi,
                self._counts, self._zeros)

    def reset(self) -> None:
        """Forgets every observed batch (on every replica)."""
        self._replicas.reset(self._variables())

    def observe(self, x: tf.Tensor) -> tf.Operation | tf.Tensor:
        """Adds one batch (graph or eager); returns the update to depend on.

        The update is one traced function per spec, shared by every ``GraphStatistics`` (the
        variables are its arguments): a model with many quantizers traces it once.
        """
        flat = tf.reshape(tf.cast(x, tf.float32), [-1])
        variables = self._replicas.writable(self._variables())
        if self._replicas.strategy is not None:
            # Inline: a traced function takes sync-on-read variables as captures, not arguments,
            # and would reuse one quantizer's variables for another (measured on TF 2.21).
            return _update(self.spec, flat, *variables)
        return _update_function(self.spec)(flat, *variables)

    def read(self) -> GraphStatisticsValues:
        """The statistics so far, as numpy values (merged over every replica under a strategy)."""
        rows = self._replicas.rows(self._variables())
        num_bins = self.spec.num_bins
        values = [
            GraphStatisticsValues(
                num_batches=int(row[0]), nonfinite_batches=int(row[1]), data_min=float(row[2]),
                data_max=float(row[3]), hist_lo=float(row[4]), hist_hi=float(row[5]),
                counts=row[6 : 6 + num_bins].copy() if num_bins else None, zeros=float(row[-1]),
            )
            for row in rows
        ]
        return values[0] if len(values) == 1 else merge_values(values)


def merge_values(values: list[GraphStatisticsValues]) -> GraphStatisticsValues:
    """The statistics of the union of the batches behind each of ``values`` (one per replica).

    Counts add; min/max are the extremes over the replicas that saw data. Histograms (all with the
    same number of bins) are re-binned over the union of their ranges (``rebin_counts``) and
    summed.

    Raises:
        ValueError: for no values, or histograms with different numbers of bins.
    """
    if not values:
        raise ValueError("Expected statistics of at least one replica. Received: none")
    seen = [v for v in values if v.num_batches > 0]
    total = sum(v.num_batches for v in values)
    nonfinite = sum(v.nonfinite_batches for v in values)
    if not seen:
        return values[0]._replace(num_batches=0, nonfinite_batches=nonfinite)
    counts = None
    lo = min(v.hist_lo for v in seen)
    hi = max(v.hist_hi for v in seen)
    if seen[0].counts is not None:
        sizes = {v.counts.shape for v in seen}
        if len(sizes) != 1:
            raise ValueError(f"Expected histograms with one number of bins. Received: shapes {sorted(sizes)}")
        counts = np.zeros_like(seen[0].counts)
        for v in seen:
            counts += rebin_counts(tf.constant(v.counts, tf.float64), v.hist_lo, v.hist_hi, lo, hi).numpy()
    return GraphStatisticsValues(
        num_batches=total, nonfinite_batches=nonfinite, data_min=min(v.data_min for v in seen),
        data_max=max(v.data_max for v in seen), hist_lo=lo, hist_hi=hi, counts=counts,
        zeros=sum(v.zeros for v in seen),
    )


class _Replicas:
    """Where statistics variables live: plain variables, or one sync-on-read copy per replica of
    ``strategy`` (None, or a strategy with one replica: plain)."""

    def __init__(self, strategy: tf.distribute.Strategy | None) -> None:
        self.strategy = strategy if strategy is not None and strategy.num_replicas_in_sync > 1 else None

    def variable(self, initial: tf.Tensor) -> tf.Variable:
        with tf.init_scope():
            if self.strategy is None:
                return tf.Variable(initial, trainable=False)
            with self.strategy.scope():
                return tf.Variable(
                    initial, trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.NONE,
                )

    def _components(self, var: tf.Variable) -> list:
        return [var] if self.strategy is None else list(self.strategy.experimental_local_results(var))

    def reset(self, variables) -> None:
        for var in variables:
            for component in self._components(var):
                component.assign(tf.zeros_like(component))

    def writable(self, variables) -> list:
        """What an update may write to here: in replica context the replica's own copy (the
        sync-on-read variable resolves to it); outside it, the first local copy."""
        if self.strategy is None or not tf.distribute.in_cross_replica_context():
            return list(variables)
        return [self._components(v)[0] for v in variables]

    def rows(self, variables) -> np.ndarray:
        """``[replicas, values]`` float64: each replica's variables flattened, concatenated."""
        def pack():
            return tf.concat([tf.reshape(tf.cast(v, tf.float64), [-1]) for v in variables], 0)[None]

        if self.strategy is None:
            return pack().numpy()
        return self.strategy.gather(self.strategy.run(pack), axis=0).numpy()


class NonFiniteWatch:
    """Counts, in a TF variable, the batches in which a layer's output held NaN or Inf.

    Quantizers only see the tensors they quantize; inside a fused group (conv -> BN -> ReLU) an
    overflow to Inf can turn into NaN and then into 0 (ReLU) before any quantizer sees it. A
    watch on every layer's output during calibration names the first layer that went non-finite.
    Like ``GraphStatistics``, the variable is created eagerly and never saved with a model.
    """

    def __init__(self, strategy: tf.distribute.Strategy | None = None) -> None:
        # Unique for the life of the process (unlike id()): traced functions are cached on it.
        self.serial = next(_SERIALS)
        self._replicas = _Replicas(strategy)
        self._batches = self._replicas.variable(tf.constant(0, tf.int64))

    def reset(self) -> None:
        """Forgets every observed batch (on every replica)."""
        self._replicas.reset([self._batches])

    def watch(self, outputs):
        """Returns ``outputs`` unchanged, made to depend on counting whether they are all finite.

        Only floating tensors are checked; a structure of tensors (a layer's outputs) counts once.
        """
        flat = [t for t in tf.nest.flatten(outputs) if tf.is_tensor(t) and t.dtype.is_floating]
        if not flat:
            return outputs
        finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in flat]))
        (batches,) = self._replicas.writable([self._batches])
        update = batches.assign_add(tf.cast(tf.logical_not(finite), tf.int64))
        with tf.control_dependencies([update]):
            return tf.nest.map_structure(
                lambda t: tf.identity(t) if tf.is_tensor(t) else t, outputs
            )

    def read(self) -> int:
        """How many batches held NaN/Inf since the last ``reset`` (summed over replicas)."""
        return int(self._replicas.rows([self._batches]).sum())
