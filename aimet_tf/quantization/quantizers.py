"""Quantizer: a Keras layer that owns one tensor's encoding (its min/max variables).

A quantizer is in one of three states:

* disabled (``enabled=False``): identity, exact float;
* calibrating (inside ``calibration(analyzer)``): identity, and every tensor that flows through is
  shown to a range analyzer;
* quantizing: quantize-dequantize with its encoding. Using an enabled quantizer that has no
  encoding yet raises, so an uncalibrated simulation never runs silently.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from aimet_tf.quantization import primitives
from aimet_tf.quantization.analyzers import (
    MinMaxAnalyzer,
    QuantScheme,
    RangeAnalyzer,
    make_analyzer,
    parse_quant_scheme,
)

__all__ = ["Quantizer"]


@keras.saving.register_keras_serializable(package="aimet_tf")
class Quantizer(keras.layers.Layer):
    """Simulates the quantization of one tensor.

    x_hat = scale * (clamp(round(x / scale) - offset, 0, steps) + offset), with scale/offset derived
    from the ``encoding_min``/``encoding_max`` variables (see ``primitives.nudge``).

    Args:
        bitwidth: 2..16.
        symmetric: symmetric grid (weights usually are).
        strict: strict symmetric / narrow range (TFLite int8 weights: [-127, 127]).
        unsigned_symmetric: a symmetric quantizer whose data is non-negative uses the unsigned grid.
        channel_axis: None for per-tensor, or the axis (or axes, flattened together) that carry one
            encoding each.
        quant_scheme: how ``compute_encodings`` picks the range ("tf", "tf_enhanced", "percentile",
            or a range-learning scheme, which also makes the range trainable).
        enabled: False makes the quantizer an identity.
        percentile: the percentile used by the "percentile" scheme.

    Example:
        >>> q = Quantizer(bitwidth=8)
        >>> q.set_encoding(primitives.compute_encoding(-1.0, 1.0, 8, symmetric=False))
        >>> y = q(tf.constant([0.3, 2.0]))
    """

    def __init__(
        self,
        bitwidth: int = 8,
        symmetric: bool = False,
        strict: bool = False,
        unsigned_symmetric: bool = True,
        channel_axis: int | Sequence[int] | None = None,
        quant_scheme: str | QuantScheme = QuantScheme.post_training_tf_enhanced,
        enabled: bool = True,
        percentile: float = 99.99,
        frozen: bool = False,
        initialized: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._bitwidth = primitives.validate_bitwidth(bitwidth)
        self.symmetric = bool(symmetric)
        self.strict = bool(strict) and bool(symmetric)
        self.unsigned_symmetric = bool(unsigned_symmetric)
        if channel_axis is not None and not isinstance(channel_axis, int):
            channel_axis = tuple(int(a) for a in channel_axis)
        self.channel_axis = channel_axis
        self._quant_scheme = parse_quant_scheme(quant_scheme)
        self.enabled = bool(enabled)
        self.percentile = float(percentile)
        self.frozen = bool(frozen)
        self._initialized = bool(initialized)
        self._analyzer: RangeAnalyzer | None = None
        self._axes: primitives.ChannelAxis = None
        self.encoding_min = None
        self.encoding_max = None

    # -- configuration -------------------------------------------------------------------------

    @property
    def bitwidth(self) -> int:
        return self._bitwidth

    @bitwidth.setter
    def bitwidth(self, value: int) -> None:
        value = primitives.validate_bitwidth(value)
        if value != self._bitwidth:
            # An encoding is only meaningful for the grid it was computed on.
            self._bitwidth = value
            self._initialized = False

    @property
    def quant_scheme(self) -> QuantScheme:
        return self._quant_scheme

    @quant_scheme.setter
    def quant_scheme(self, value: str | QuantScheme) -> None:
        self._quant_scheme = parse_quant_scheme(value)
        if self.built:
            trainable = self._quant_scheme.is_range_learning
            self.encoding_min.trainable = trainable
            self.encoding_max.trainable = trainable

    @property
    def range_learning(self) -> bool:
        return self._quant_scheme.is_range_learning

    @property
    def is_initialized(self) -> bool:
        return self._initialized

    @property
    def per_channel(self) -> bool:
        return self.channel_axis is not None

    def build(self, input_shape) -> None:
        shape = tuple(input_shape) if input_shape is not None else ()
        if self.channel_axis is None:
            var_shape: tuple[int, ...] = ()
        else:
            self._axes = primitives.normalize_channel_axis(self.channel_axis, len(shape))
            dims = [shape[a] for a in self._axes]
            if any(d is None for d in dims):
                raise ValueError(
                    f"Quantizer {self.name!r}: per-channel quantization needs a known size along "
                    f"channel_axis={self.channel_axis}. Received: input_shape={shape}"
                )
            var_shape = (int(math.prod(dims)),)
        trainable = self.range_learning
        self.encoding_min = self.add_weight(
            name="encoding_min", shape=var_shape, initializer="zeros", trainable=trainable
        )
        self.encoding_max = self.add_weight(
            name="encoding_max", shape=var_shape, initializer="zeros", trainable=trainable
        )
        self.built = True

    @property
    def num_channels(self) -> int | None:
        if not self.built or self.channel_axis is None:
            return None
        return int(self.encoding_min.shape[0])

    # -- encodings -----------------------------------------------------------------------------

    def get_encoding(self) -> primitives.Encoding | None:
        """The current encoding, or None if none was computed or set."""
        if not self._initialized:
            return None
        return primitives.Encoding(
            np.asarray(self.encoding_min.numpy()),
            np.asarray(self.encoding_max.numpy()),
            self._bitwidth,
            self.symmetric,
            self.strict,
        )

    def set_encoding(self, encoding: primitives.Encoding) -> None:
        """Sets min/max (and bitwidth/symmetry) from ``encoding``.

        Raises:
            ValueError: if the encoding's shape does not fit this quantizer (per-tensor vs number of
                channels).
        """
        if not self.built:
            raise RuntimeError(
                f"Quantizer {self.name!r} is not built yet; build it (or its model) before setting an "
                "encoding."
            )
        expected = tuple(self.encoding_min.shape)
        if tuple(encoding.min.shape) != expected:
            raise ValueError(
                f"Quantizer {self.name!r}: expected an encoding of shape {expected} "
                f"({'per-channel' if expected else 'per-tensor'}). Received: shape="
                f"{tuple(encoding.min.shape)}"
            )
        self.encoding_min.assign(encoding.min)
        self.encoding_max.assign(encoding.max)
        self._bitwidth = encoding.bitwidth
        self.symmetric = encoding.symmetric
        self.strict = encoding.strict
        self._initialized = True

    def encoding_from_range(self, min_val: np.ndarray, max_val: np.ndarray) -> primitives.Encoding:
        """AIMET's encoding for an observed range under this quantizer's settings."""
        return primitives.compute_encoding(
            min_val,
            max_val,
            self._bitwidth,
            self.symmetric,
            self.strict,
            self.unsigned_symmetric,
        )

    def make_analyzer(self) -> RangeAnalyzer:
        """A fresh analyzer for this quantizer's scheme and granularity."""
        kwargs = {}
        if self._quant_scheme.init_scheme is QuantScheme.post_training_percentile:
            kwargs["percentile"] = self.percentile
        return make_analyzer(self._quant_scheme, channel_axis=self._axes, **kwargs)

    def compute_range(self, analyzer: RangeAnalyzer) -> tuple[np.ndarray, np.ndarray]:
        return analyzer.compute_range(
            self._bitwidth, self.symmetric, self.strict, self.unsigned_symmetric
        )

    @contextlib.contextmanager
    def calibration(self, analyzer: RangeAnalyzer) -> Iterator[RangeAnalyzer]:
        """Within this context the quantizer is an identity that shows its input to ``analyzer``."""
        self._analyzer = analyzer
        try:
            yield analyzer
        finally:
            self._analyzer = None

    # -- forward -------------------------------------------------------------------------------

    def call(self, x):
        if not self.enabled:
            return x
        if self._analyzer is not None:
            return self._observe(x)
        if not self._initialized:
            raise RuntimeError(
                f"Quantizer {self.name!r} is enabled but has no encoding. Call "
                "QuantizationSimModel.compute_encodings(...) (or load_encodings_to_sim / "
                "set_encoding) first, or disable it with quantizer.enabled = False."
            )
        x = tf.convert_to_tensor(x)
        if x.dtype != tf.float32:
            raise TypeError(
                f"Quantizer {self.name!r}: expected a float32 tensor. Received: dtype={x.dtype.name}"
            )
        fn = primitives.quantize_dequantize if self.range_learning else primitives.fake_quantize
        return fn(
            x,
            self.encoding_min,
            self.encoding_max,
            self._bitwidth,
            self.strict,
            self._axes,
        )

    def _observe(self, x):
        analyzer = self._analyzer
        if getattr(analyzer, "supports_graph_histogram", False):
            token = self._observe_histogram_in_graph(x, analyzer)
        elif isinstance(analyzer, MinMaxAnalyzer) and analyzer.channel_axis is None:
            # Min/max of the batch carry all a per-tensor min-max analyzer needs: reduce in TF and
            # hand numpy two numbers (and the NaN/Inf count) instead of the whole tensor.
            def observe_min_max(bounds, num_nonfinite):
                if int(num_nonfinite) > 0:
                    raise ValueError(
                        f"Expected only finite values to calibrate on. Received: a batch with "
                        f"{int(num_nonfinite)} NaN/Inf values at quantizer {self.name!r}."
                    )
                analyzer.observe(bounds)
                return np.int32(0)

            x32 = tf.cast(x, tf.float32)
            bounds = tf.stack([tf.reduce_min(x32), tf.reduce_max(x32)])
            token = tf.numpy_function(
                observe_min_max, [bounds, _count_nonfinite(x32)], tf.int32, stateful=True
            )
        else:

            def observe(value):
                analyzer.observe(value)
                return np.int32(0)

            token = tf.numpy_function(observe, [x], tf.int32, stateful=True, name="observe")
        # The identity depends on the observation so that graph pruning cannot drop it.
        with tf.control_dependencies([token]):
            return tf.identity(x)

    @staticmethod
    def _observe_histogram_in_graph(x, analyzer):
        # The analyzer picks the bin range (numpy), TF bins the batch (fast, no copy out), the
        # analyzer merges the counts (numpy). See _HistogramAnalyzer.begin_batch.
        x32 = tf.cast(x, tf.float32)
        bin_range = tf.numpy_function(
            analyzer.begin_batch,
            [tf.reduce_min(x32), tf.reduce_max(x32), _count_nonfinite(x32)],
            tf.float32,
            stateful=True,
        )
        bin_range = tf.reshape(bin_range, [2])
        counts = tf.histogram_fixed_width(x32, bin_range, nbins=analyzer.num_bins, dtype=tf.int32)
        num_zeros = tf.reduce_sum(tf.cast(tf.equal(x32, 0.0), tf.int32))
        return tf.numpy_function(analyzer.end_batch, [counts, num_zeros], tf.int32, stateful=True)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            bitwidth=self._bitwidth,
            symmetric=self.symmetric,
            strict=self.strict,
            unsigned_symmetric=self.unsigned_symmetric,
            channel_axis=self.channel_axis,
            quant_scheme=self._quant_scheme.value,
            enabled=self.enabled,
            percentile=self.percentile,
            frozen=self.frozen,
            initialized=self._initialized,
        )
        return config

    def __repr__(self) -> str:
        granularity = "per-tensor" if self.channel_axis is None else f"per-channel(axis={self.channel_axis})"
        state = "disabled" if not self.enabled else ("ready" if self._initialized else "uncalibrated")
        sym = "strict-symmetric" if self.strict else ("symmetric" if self.symmetric else "asymmetric")
        return f"<Quantizer {self.name}: int{self._bitwidth} {sym} {granularity} {state}>"


def _count_nonfinite(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(x)), tf.int32))
