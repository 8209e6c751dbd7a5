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
import dataclasses
import enum
import math
import threading
from typing import Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from aimet_tf.graph.model_graph import all_layers
from aimet_tf.kernels import requantize as kernel_requantize
from aimet_tf.kernels.target import DspTarget, resolve_target
from aimet_tf.quantization import encodings_io, primitives
from aimet_tf.quantization.analyzers import (
    QuantScheme,
    RangeAnalyzer,
    make_analyzer,
    parse_quant_scheme,
)
from aimet_tf.quantization.graph_statistics import GraphStatistics

_OBSERVE_LOCK = threading.Lock()

__all__ = ["Quantizer", "BiasQuantizer", "Requantizer", "REQUANTIZATION_MODES", "traced_state"]

# Python state of the quantizer layers that a traced function bakes in (tf.function and Keras'
# predict/train functions). ``traced_state`` fingerprints these values, so that owners of traced
# functions (QuantizationSimModel) trace again when they differ from the traced ones, and only then.
# Encodings live in variables and are read by the graph: recomputing them needs no new trace.
_TRACED_STATE = (
    "enabled", "_initialized", "_bitwidth", "symmetric", "strict", "_tie", "_links",
    "_quant_scheme", "_frozen", "_analyzer", "_statistics", "_mode", "_axes", "count",
    "_rounding", "_target",
)
_MISSING = object()


class _Same:
    """Holds an object and equals only a ``_Same`` of that very object. Holding it keeps the
    object alive, so a fingerprint can never match a new object that reuses a freed id()."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def _traced_value(value) -> object:
    """A comparable stand-in for one traced attribute: the value itself for immutable scalars,
    element-wise for tuples and ``_Links``, the identity for any other object (an analyzer, a
    linked quantizer), which is what a trace holds on to."""
    if value is None or isinstance(value, (bool, int, float, str, enum.Enum, np.generic)):
        return value
    if isinstance(value, tuple):
        return tuple(_traced_value(v) for v in value)
    frozen = dataclasses.is_dataclass(value) and value.__dataclass_params__.frozen
    if isinstance(value, _Links) or frozen:
        # Frozen dataclasses (a kernel target) compare by value: an equal new one needs no trace.
        fields = tuple(_traced_value(getattr(value, f.name)) for f in dataclasses.fields(value))
        return (type(value), fields)
    return _Same(value)


class _TracedState:
    """Mixin marking a layer whose ``_traced_attributes`` are baked into traces."""

    _traced_attributes: tuple[str, ...] = _TRACED_STATE

    def traced_key(self) -> tuple:
        """The current values of this layer's traced attributes (see ``_traced_value``)."""
        values = self.__dict__
        return tuple(
            _traced_value(values[name])
            for name in self._traced_attributes
            if values.get(name, _MISSING) is not _MISSING
        )


def traced_state(model: keras.Model) -> tuple:
    """A fingerprint of the traced Python state of every quantizer layer inside ``model``: it
    differs from an earlier one exactly when one of them has another traced value (or was
    replaced). Calibrating and recalibrating leave it unchanged: the calibration context is
    entered and left, and the new encodings go into variables."""
    return tuple(
        (_Same(layer), layer.traced_key())
        for layer in all_layers(model)
        if isinstance(layer, _TracedState)
    )


@dataclasses.dataclass
class _Links:
    """Quantizers another quantizer reads its grid or scales from.

    Held in a plain object, outside Keras' attribute tracking: the linked quantizers belong to
    other wrappers and must not be saved twice.
    """

    input: "Quantizer | None" = None
    weight: "Quantizer | None" = None
    output: "Quantizer | None" = None
    operands: tuple = ()


def _tensor_scheme(value: str | QuantScheme) -> QuantScheme:
    """``parse_quant_scheme``, refusing schemes that only a sim can resolve per tensor kind."""
    scheme = parse_quant_scheme(value)
    if scheme.is_per_tensor_kind:
        raise ValueError(
            f"Expected one quantizer's scheme. Received: quant_scheme={scheme.value!r}, which picks a "
            f"scheme per tensor kind. Fix: use {scheme.for_parameters.value!r} for a parameter "
            f"quantizer or {scheme.for_activations.value!r} for an activation quantizer."
        )
    return scheme


_TIGHT_SCHEMES = (QuantScheme.post_training_mse, QuantScheme.post_training_output_mse)


class _Switchable:
    """AIMET's on/off methods over a quantizer layer's ``enabled`` flag."""

    enabled: bool

    def enable(self) -> None:
        """Turns the quantizer on (AIMET's ``enable()``)."""
        self.enabled = True

    def disable(self) -> None:
        """Turns the quantizer off: it passes its tensor through unchanged (AIMET's ``disable()``)."""
        self.enabled = False

    def is_enabled(self) -> bool:
        """Whether the quantizer is on (AIMET's ``is_enabled()``)."""
        return bool(self.enabled)


@keras.saving.register_keras_serializable(package="aimet_tf")
class Quantizer(_Switchable, _TracedState, keras.layers.Layer):
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
            "mse", or a range-learning scheme, which also makes the range trainable). Not a
            per-tensor-kind scheme such as "auto": the sim resolves those for each quantizer.
        enabled: False makes the quantizer an identity.
        percentile: the percentile used by the "percentile" scheme.
        rounding: how values are rounded onto a per-tensor grid (``primitives.INPUT_ROUNDINGS``):
            "fake_quant" (TF's op, ties up) everywhere but on a model input that a runtime's
            QUANTIZE kernel rounds its own way (``prepare_sim_for_tflite`` sets it).

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
        percentile: float = 100.0,
        frozen: bool = False,
        initialized: bool = False,
        rounding: str = "fake_quant",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._bitwidth = primitives.validate_bitwidth(bitwidth)
        self.rounding = rounding
        self.symmetric = bool(symmetric)
        self.strict = bool(strict) and bool(symmetric)
        self.unsigned_symmetric = bool(unsigned_symmetric)
        if channel_axis is not None and not isinstance(channel_axis, int):
            channel_axis = tuple(int(a) for a in channel_axis)
        self.channel_axis = channel_axis
        self._quant_scheme = _tensor_scheme(quant_scheme)
        self.enabled = bool(enabled)
        self.percentile = float(percentile)
        self._frozen = bool(frozen)
        self._initialized = bool(initialized)
        self._analyzer: RangeAnalyzer | None = None
        self._statistics: GraphStatistics | None = None
        self._tie = _Links()
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
    def rounding(self) -> str:
        return self._rounding

    @rounding.setter
    def rounding(self, value: str) -> None:
        if value not in primitives.INPUT_ROUNDINGS:
            raise ValueError(
                f"Expected rounding in {primitives.INPUT_ROUNDINGS}. Received: rounding={value!r}"
            )
        self._rounding = value

    @property
    def quant_scheme(self) -> QuantScheme:
        return self._quant_scheme

    @quant_scheme.setter
    def quant_scheme(self, value: str | QuantScheme) -> None:
        self._quant_scheme = _tensor_scheme(value)
        self._sync_trainable()

    @property
    def range_learning(self) -> bool:
        return self._quant_scheme.is_range_learning

    @property
    def tight(self) -> bool:
        """Whether encodings use tight symmetric grids (``primitives.compute_encoding``'s ``tight``):
        symmetric quantizers under aimet_tf's own weight schemes (``mse``, ``output_mse`` and the
        schemes built on them). AIMET's schemes keep AIMET's (-absmax, absmax) grids."""
        return self.symmetric and self._quant_scheme.init_scheme in _TIGHT_SCHEMES

    @property
    def frozen(self) -> bool:
        """A frozen encoding is neither recomputed by compute_encodings nor trained by range learning."""
        return self._frozen

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self._frozen = bool(value)
        self._sync_trainable()

    def _sync_trainable(self) -> None:
        # Only range learning trains min/max, and never a frozen encoding.
        if self.built and self.encoding_min is not None:
            trainable = self.range_learning and not self._frozen
            self.encoding_min.trainable = trainable
            self.encoding_max.trainable = trainable

    @property
    def is_initialized(self) -> bool:
        return self._grid()._initialized

    # -- AIMET's quantizer attributes ------------------------------------------------------------

    @property
    def is_symmetric(self) -> bool:
        """AIMET's name for ``symmetric``."""
        return self.symmetric

    @property
    def use_symmetric_encodings(self) -> bool:
        """AIMET's name for ``symmetric`` (read-only here: the sim's config sets it)."""
        return self.symmetric

    @property
    def use_strict_symmetric(self) -> bool:
        """AIMET's name for ``strict`` (narrow range, e.g. int8 [-127, 127])."""
        return self.strict

    @property
    def use_unsigned_symmetric(self) -> bool:
        """AIMET's name for ``unsigned_symmetric``."""
        return self.unsigned_symmetric

    @property
    def round_mode(self) -> str:
        """AIMET's rounding mode: always "nearest" (how values are rounded onto the grid is
        ``rounding``: TF's fake-quant op rounds ties up)."""
        return "nearest"

    def is_encoding_valid(self) -> bool:
        """AIMET's name for ``is_initialized``: whether the quantizer has an encoding."""
        return self.is_initialized

    @property
    def encoding(self) -> "encodings_io.TfEncoding | list[encodings_io.TfEncoding] | None":
        """The encoding in AIMET's shape: a ``TfEncoding`` (min, max, delta, offset, bw), a list of
        them (one per channel) for a per-channel quantizer, or None without an encoding.

        Setting it takes the same shape; the quantizer keeps its symmetry and strictness, takes
        the records' bitwidth, and refuses records whose delta/offset contradict their min/max
        (``encodings_io.from_tf_encodings``). The records returned are copies: change the
        quantizer by assigning ``encoding``.
        """
        enc = self.get_encoding()
        if enc is None:
            return None
        records = encodings_io.to_tf_encodings(enc)
        return records if self.per_channel else records[0]

    @encoding.setter
    def encoding(self, value: "encodings_io.TfEncoding | Sequence[encodings_io.TfEncoding]") -> None:
        if isinstance(value, encodings_io.TfEncoding):
            if self.per_channel:
                raise ValueError(
                    f"Quantizer {self.name!r} is per-channel: expected a list of TfEncoding, one per "
                    f"channel ({self.num_channels}). Received: one TfEncoding"
                )
            records = [value]
        elif isinstance(value, (list, tuple)):
            records = list(value)
        else:
            raise TypeError(
                f"Quantizer {self.name!r}: expected a TfEncoding or a list of them. Received: "
                f"{type(value).__name__}"
            )
        self.set_encoding(
            encodings_io.from_tf_encodings(records, self.per_channel, self.symmetric, self.strict, self.name)
        )

    # -- tied grids ------------------------------------------------------------------------------

    def tie_to(self, leader: "Quantizer | None") -> None:
        """Makes this quantizer use ``leader``'s encoding (None unties).

        Integer runtimes give some tensors one shared grid (TFLite: a concatenation's inputs and
        output, pooling's input and output). A tied quantizer quantizes with the leader's
        range variables, reports the leader's encoding, and copies them into its own variables
        whenever its config is taken (so a saved model reloads with the shared grid). Its own
        calibration, if any, is ignored while tied.

        Raises:
            ValueError: if ``leader`` is per-channel or has other channel axes than this one.
        """
        if leader is self:
            leader = None
        if leader is not None and leader.channel_axis != self.channel_axis:
            raise ValueError(
                f"Quantizer {self.name!r} can only be tied to a quantizer of the same granularity. "
                f"Received: channel_axis={leader.channel_axis!r}, expected {self.channel_axis!r}"
            )
        self._tie = _Links(input=leader)

    # A method, not a property: Keras' saving walks attributes and would save the leader here.
    def leader(self) -> "Quantizer | None":
        """The quantizer this one is tied to, or None."""
        return self._tie.input

    def _grid(self) -> "Quantizer":
        """The quantizer whose encoding this one uses (itself unless tied)."""
        grid, hops = self, 0
        while grid._tie.input is not None and hops < 64:
            grid, hops = grid._tie.input, hops + 1
        return grid

    def _sync_from_leader(self) -> None:
        grid = self._grid()
        if grid is not self and grid.built and self.built and grid._initialized:
            self.encoding_min.assign(grid.encoding_min)
            self.encoding_max.assign(grid.encoding_max)
            self._bitwidth = grid._bitwidth
            self.symmetric = grid.symmetric
            self.strict = grid.strict
            self._initialized = True

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
        trainable = self.range_learning and not self._frozen
        # Range learning may push a range off zero (e.g. a ReLU output's min above 0), which no
        # encoding can express, or collapse it to zero width (scale 0: NaN): the optimizer
        # projects back to min <= 0 < _MIN_LEARNED_MAX <= max after every step.
        self.encoding_min = self.add_weight(
            name="encoding_min", shape=var_shape, initializer="zeros", trainable=trainable,
            constraint=_non_positive,
        )
        self.encoding_max = self.add_weight(
            name="encoding_max", shape=var_shape, initializer="zeros", trainable=trainable,
            constraint=_non_negative,
        )
        self.built = True

    @property
    def is_active(self) -> bool:
        """Whether the quantizer currently quantizes (enabled, has an encoding, not calibrating)."""
        return self.enabled and self.is_initialized and self._analyzer is None

    def scale_tensor(self) -> tf.Tensor:
        """The grid step as a TF tensor read from the range variables (scalar or [C])."""
        grid = self._grid()
        return primitives.scale_tf(grid.encoding_min, grid.encoding_max, grid._bitwidth, grid.strict)

    @property
    def num_channels(self) -> int | None:
        if not self.built or self.channel_axis is None:
            return None
        return int(self.encoding_min.shape[0])

    # -- encodings -----------------------------------------------------------------------------

    def get_encoding(self) -> primitives.Encoding | None:
        """The current encoding (the leader's when tied), or None if none was computed or set."""
        if self._tie.input is not None:
            return self._grid().get_encoding()
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
            tight=self.tight,
        )

    def min_max_encoding(self, values: np.ndarray) -> primitives.Encoding:
        """The encoding of the min/max grid of ``values`` (no search) under this quantizer's
        settings: bitwidth, symmetry, granularity and tightness."""
        analyzer = make_analyzer(QuantScheme.post_training_tf, channel_axis=self._axes)
        analyzer.observe(values)
        lo, hi = analyzer.compute_range(self._bitwidth, symmetric=False, unsigned_symmetric=False)  # the raw range
        return self.encoding_from_range(lo, hi)

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
    def calibration(
        self, analyzer: RangeAnalyzer, statistics: GraphStatistics | None = None
    ) -> Iterator[RangeAnalyzer]:
        """Within this context the quantizer is an identity that shows its input to ``analyzer``.

        With ``statistics`` (matching ``analyzer.graph_statistics_spec``) the tensor's statistics
        are gathered by TF ops into those variables; hand them over afterwards with
        ``analyzer.absorb_graph_statistics(statistics.read())``. Otherwise every batch goes to
        ``analyzer.observe`` through ``tf.numpy_function``.
        """
        if statistics is not None and statistics.spec != analyzer.graph_statistics_spec:
            raise ValueError(
                f"Quantizer {self.name!r}: the graph statistics gather {statistics.spec}, the analyzer "
                f"needs {analyzer.graph_statistics_spec}."
            )
        self._analyzer = analyzer
        self._statistics = statistics
        try:
            yield analyzer
        finally:
            self._analyzer = None
            self._statistics = None

    # -- forward -------------------------------------------------------------------------------

    def call(self, x):
        if not self.enabled:
            return x
        if self._analyzer is not None:
            return self._observe(x)
        grid = self._grid()
        if not grid._initialized:
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
        fn = primitives.quantize_dequantize if grid.range_learning else primitives.fake_quantize
        y = fn(
            x,
            grid.encoding_min,
            grid.encoding_max,
            grid._bitwidth,
            grid.strict,
            self._axes,
        )
        if self._rounding != "fake_quant" and self._axes is None:
            # The kernel's rounding in the forward pass, the fake-quant op's gradient.
            exact = primitives.quantize_input_like_kernel(
                x, grid.encoding_min, grid.encoding_max, grid._bitwidth, grid.strict, self._rounding
            )
            y = y + tf.stop_gradient(exact - y)
        return y

    def quantize_only(self, x):
        """``x`` on this quantizer's grid, without observing it while calibrating: ``x`` itself
        when the quantizer does not quantize now (disabled, calibrating, or no encoding yet).
        For constants that an int8 op must read on the grid of a tensor it selects between
        (an attention mask's fill value)."""
        grid = self._grid()
        if not self.enabled or self._analyzer is not None or not grid._initialized:
            return x
        return primitives.fake_quantize(
            tf.convert_to_tensor(x, tf.float32), grid.encoding_min, grid.encoding_max, grid._bitwidth,
            grid.strict, self._axes,
        )

    def _observe(self, x):
        if self._statistics is not None:
            token = self._statistics.observe(x)
        else:
            # The analyzer is looked up when the graph runs, so a traced function can be reused.
            # Replicas of a MirroredStrategy run their steps in threads: one observation at a time.
            def observe(value):
                with _OBSERVE_LOCK:
                    self._analyzer.observe(value)
                return np.int32(0)

            token = tf.numpy_function(observe, [x], tf.int32, stateful=True, name="observe")
        # The identity depends on the observation so that graph pruning cannot drop it.
        with tf.control_dependencies([token]):
            return tf.identity(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def load_own_variables(self, store) -> None:
        """Loads min/max (``model.load_weights``, ``keras.models.load_model``) and marks the
        quantizer initialized when they hold a range: a weights file carries the calibrated
        ranges but not the Python flag, and an unset range is all zeros (a real one never is:
        max > min)."""
        super().load_own_variables(store)
        if self.built and self.encoding_min is not None:
            width = np.asarray(self.encoding_max.numpy()) - np.asarray(self.encoding_min.numpy())
            self._initialized = bool(width.size) and bool(np.all(width > 0))

    def get_config(self) -> dict:
        # A tied quantizer stores its leader's encoding (a reloaded model has no links).
        self._sync_from_leader()
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
            rounding=self._rounding,
        )
        return config

    def __repr__(self) -> str:
        granularity = "per-tensor" if self.channel_axis is None else f"per-channel(axis={self.channel_axis})"
        state = "disabled" if not self.enabled else ("ready" if self.is_initialized else "uncalibrated")
        if self._tie.input is not None:
            state += f", tied to {self._grid().name}"
        sym = "strict-symmetric" if self.strict else ("symmetric" if self.symmetric else "asymmetric")
        return f"<Quantizer {self.name}: int{self._bitwidth} {sym} {granularity} {state}>"


_MIN_LEARNED_MAX = 1e-6


def _non_positive(value):
    return keras.ops.minimum(value, 0.0)


def _non_negative(value):
    return keras.ops.maximum(value, _MIN_LEARNED_MAX)



def _linked_scale(quantizer: Quantizer | None) -> tf.Tensor | None:
    if quantizer is None or not quantizer.is_active:
        return None
    return tf.stop_gradient(quantizer.scale_tensor())


@keras.saving.register_keras_serializable(package="aimet_tf")
class BiasQuantizer(_Switchable, _TracedState, keras.layers.Layer):
    """Rounds a conv/dense bias onto its layer's int32 accumulator grid, as TFLite stores it.

    b_hat = s_b * round_half_away(b / s_b) with s_b = s_in * s_w (per output channel for
    per-channel weights), where s_in is the step of the layer's input grid and s_w the step of its
    weight quantizer (``primitives.quantize_bias``). The scale is derived, never calibrated: it is
    read from the linked quantizers on every call, so it follows recalibration and range
    learning. ``snapshot()`` stores it in the ``scale`` variable, which is what an unlinked
    quantizer (e.g. one reloaded from a .keras file) uses.

    It is an identity while disabled, and while a linked quantizer does not quantize (disabled,
    uncalibrated or calibrating), because the accumulator grid then does not exist.

    Args:
        enabled: False makes it an identity.
        initialized: whether ``scale`` holds a snapshot (set by ``snapshot``; kept in the config).
    """

    # The wrapper skips parameter quantizers that are calibrating; a bias quantizer never is.
    _analyzer = None

    def __init__(self, enabled: bool = True, initialized: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.enabled = bool(enabled)
        self._initialized = bool(initialized)
        self._links = _Links()
        self.scale = None

    def build(self, input_shape) -> None:
        shape = tuple(input_shape) if input_shape is not None else ()
        self.scale = self.add_weight(name="scale", shape=shape, initializer="zeros", trainable=False)
        self.built = True

    def link(self, input_quantizer: Quantizer, weight_quantizer: Quantizer) -> None:
        """Derives the bias scale from these two quantizers from now on."""
        self._links = _Links(input_quantizer, weight_quantizer)

    def linked(self) -> tuple[Quantizer | None, Quantizer | None]:
        """(input quantizer, weight quantizer) the scale is derived from."""
        return self._links.input, self._links.weight

    @property
    def is_linked(self) -> bool:
        return self._links.input is not None and self._links.weight is not None

    def current_scale(self) -> tf.Tensor | None:
        """s_in * s_w from the linked quantizers, the snapshot when unlinked, or None (no grid)."""
        if self.is_linked:
            s_in = _linked_scale(self._links.input)
            s_w = _linked_scale(self._links.weight)
            if s_in is None or s_w is None:
                return None
            return s_in * s_w
        return tf.convert_to_tensor(self.scale) if self._initialized else None

    def snapshot(self) -> None:
        """Stores the current derived scale in the ``scale`` variable."""
        scale = self.current_scale()
        if scale is not None:
            self.scale.assign(tf.broadcast_to(scale, self.scale.shape))
            self._initialized = True

    def call(self, bias):
        if not self.enabled:
            return bias
        scale = self.current_scale()
        if scale is None:
            return bias
        return primitives.quantize_bias(bias, scale)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        # Refresh the snapshot so that a saved model reloads with the current derived scale.
        if self.built and self.is_linked:
            self.snapshot()
        config = super().get_config()
        config.update(enabled=self.enabled, initialized=self._initialized)
        return config

    def __repr__(self) -> str:
        state = "linked" if self.is_linked else ("snapshot" if self._initialized else "unset")
        return f"<BiasQuantizer {self.name}: int32, scale = s_in * s_w ({state})>"


REQUANTIZATION_MODES = (
    "float", "fixed_point", "fixed_point_ties_away", "average_pool", "mean", "add", "mul",
    "dsp_conv", "dsp_fully_connected", "dsp_add", "dsp_mean", "dsp_softmax", "dsp_mul", "softmax",
)

# Which linked quantizers each mode reads.
_MODE_LINKS = {
    "float": ("input", "weight", "output"),
    "fixed_point": ("input", "weight", "output"),
    "fixed_point_ties_away": ("input", "weight", "output"),
    "mean": ("input", "output"),
    "average_pool": ("output",),
    "add": ("operands", "output"),
    "mul": ("operands", "output"),
    "dsp_conv": ("input", "weight", "output"),
    "dsp_fully_connected": ("input", "weight", "output"),
    "dsp_mean": ("input", "output"),
    "dsp_add": ("operands", "output"),
    "dsp_softmax": ("input", "output"),
    "dsp_mul": ("operands", "output"),
    "softmax": ("input", "output"),
}


def _dsp_levels(mode: str, target: DspTarget, count: int, *args) -> np.ndarray:
    """numpy side of the "dsp_*" modes: the `aimet_tf.kernels.requantize` arithmetic."""
    if mode == "dsp_add":
        q_1, q_2, s_1, s_2, s_y = args
        levels = kernel_requantize.add_levels(q_1, q_2, s_1, s_2, s_y, target)
    elif mode == "dsp_mul":
        q_1, q_2, s_1, s_2, s_y = args
        levels = kernel_requantize.mul_levels(q_1, q_2, s_1, s_2, s_y, target)
    elif mode in ("dsp_softmax", "softmax"):
        q, s_x = args
        levels = kernel_requantize.softmax_levels(q, s_x, 1.0, target, float_table=mode == "softmax")
    else:
        acc, s_x, s_w, s_y = args
        if mode == "dsp_conv":
            levels = kernel_requantize.conv_levels(acc, s_x, s_w, s_y, target)
        elif mode == "dsp_fully_connected":
            levels = kernel_requantize.fully_connected_levels(acc, s_x, s_w, s_y, target)
        else:
            levels = kernel_requantize.mean_levels(acc, count, s_x, s_y, target)
    return np.asarray(levels, dtype=np.float32)


def _round_ste(x: tf.Tensor) -> tf.Tensor:
    return x + tf.stop_gradient(tf.round(x) - x)


@keras.saving.register_keras_serializable(package="aimet_tf")
class Requantizer(_TracedState, keras.layers.Layer):
    """Models how an integer kernel computes its output level, applied before the output quantizer.

    The layer's raw float output y is computed from quantized inputs (and weights and an
    int32-grid bias), so the integers the kernel works with can be recovered exactly, e.g. the
    accumulator acc = round(y / (s_in * s_w)). The output level is then computed the way the
    kernel computes it and y' = level * s_out; the output quantizer after it only clamps (and a
    fused ReLU clamps as the kernel's activation range does). Modes (``REQUANTIZATION_MODES``):

    * "float": XNNPACK's requantization of int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED,
      level = round_half_even(float32(acc) * float32(float32(s_in * s_w) / s_out));
    * "fixed_point" / "fixed_point_ties_away": TFLite's int32 multiplier for
      M = double(s_in) * double(s_w) / double(s_out) and its two roundings
      (``primitives.requantize_fixed_point``): CONV_2D with int4 filters / TRANSPOSE_CONV;
    * "mean": XNNPACK's MEAN over ``count`` elements: acc = round(y * count / s_in),
      level = round_half_even(float32(acc) * float32(s_in / float32(s_out * count)));
    * "average_pool": AVERAGE_POOL_2D on one shared grid, ties away from zero on the raw int8
      value (``primitives.round_average_pool``);
    * "add": XNNPACK's ADD recomputed from the wrapper's (quantized) operands with ~21-bit
      integer multipliers (``primitives.requantize_add``);
    * "mul": XNNPACK's MUL of the wrapper's two (quantized) operands: the integer product of
      their zero-point-free levels, level = round_half_even(float32(q_1 * q_2) *
      float32(float32(s_1 * s_2) / s_out)). Exact ties are common (M = 2^-8 when a tensor is
      multiplied by a sigmoid gate on its 1/256 grid onto its own grid), and the float product
      of the dequantized operands would round them by float noise.
    * "dsp_conv" / "dsp_fully_connected" / "dsp_mean" / "dsp_add" / "dsp_mul" / "dsp_softmax":
      the integer arithmetic of a `DspTarget` (``target``; LiteRT's BUILTIN_REF kernels by
      default), exactly as `aimet_tf.kernels` computes it (``kernels.requantize``), run as a
      numpy function on the recovered integers (accumulator, operand levels, level sums,
      softmax input levels).
    * "softmax": int8 SOFTMAX as LiteRT's optimized kernel computes it (a float32 exp table;
      `kernels.reference.softmax_float_table`): what its "builtin" and "default" op resolvers run
      (XNNPACK does not take int8 SOFTMAX).

    Scales are read from the linked quantizers on every call (so they follow recalibration and
    range learning); ``snapshot()`` stores them in variables, which an unlinked requantizer (a
    reloaded model) uses. Identity while disabled or while a linked quantizer does not quantize.

    Args:
        channels: number of output channels (last axis) of the layer.
        mode: one of ``REQUANTIZATION_MODES``.
        count: number of elements averaged (modes "mean", "dsp_mean").
        target: the `DspTarget` (or its field dict, or a preset name) of the "dsp_*" modes.
        activation_cap: 6.0 when the layer itself applies ReLU6 (its kernel clamps the level at
            round(6 / s_out)); None otherwise.
        enabled: False makes it an identity.
        initialized: whether the snapshot variables hold values.
    """

    def __init__(
        self,
        channels: int,
        mode: str = "float",
        count: int = 1,
        enabled: bool = True,
        initialized: bool = False,
        target: DspTarget | dict | str | None = None,
        activation_cap: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.count = int(count)
        self.mode = mode
        self.target = target
        self.activation_cap = None if activation_cap is None else float(activation_cap)
        self.enabled = bool(enabled)
        self._initialized = bool(initialized)
        self._links = _Links()
        self.input_scale = self.weight_scale = self.output_scale = None
        self.operand_scales = self.grid_minimum = self.input_minimum = None

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in REQUANTIZATION_MODES:
            raise ValueError(
                f"Expected a requantization mode in {REQUANTIZATION_MODES}. Received: mode={value!r}"
            )
        self._mode = value

    @property
    def target(self) -> DspTarget:
        """The integer target of the "dsp_*" modes."""
        return self._target

    @target.setter
    def target(self, value: DspTarget | dict | str | None) -> None:
        if isinstance(value, dict):
            value = DspTarget(**value)
        self._target = resolve_target(value)

    def build(self, input_shape=None) -> None:
        def snapshot_variable(name, shape):
            return self.add_weight(name=name, shape=shape, initializer="zeros", trainable=False)

        self.input_scale = snapshot_variable("input_scale", ())
        self.weight_scale = snapshot_variable("weight_scale", (self.channels,))
        self.output_scale = snapshot_variable("output_scale", ())
        self.operand_scales = snapshot_variable("operand_scales", (2,))
        self.grid_minimum = snapshot_variable("grid_minimum", ())
        self.input_minimum = snapshot_variable("input_minimum", ())
        self.built = True

    # -- links -----------------------------------------------------------------------------------

    def link(
        self,
        input_quantizer: Quantizer | None,
        weight_quantizer: Quantizer | None,
        output_quantizer: Quantizer,
    ) -> None:
        """Derives the scales from these quantizers from now on (None where the mode needs none)."""
        self._links = _Links(input_quantizer, weight_quantizer, output_quantizer)

    def link_operands(self, operand_quantizers: "list[Quantizer]", output_quantizer: Quantizer) -> None:
        """Mode "add": the grids of the Add's two operands and of its output."""
        self._links = _Links(output=output_quantizer, operands=tuple(operand_quantizers))

    def linked(self) -> _Links:
        """The linked quantizers (a method: Keras' saving walks attributes and properties)."""
        return self._links

    @property
    def is_linked(self) -> bool:
        for role in _MODE_LINKS[self._mode]:
            value = getattr(self._links, role)
            if value is None or (role == "operands" and len(value) != 2):
                return False
        return True

    def _linked_scales(self) -> dict | None:
        out = {}
        for role in _MODE_LINKS[self._mode]:
            if role == "operands":
                scales = [_linked_scale(q) for q in self._links.operands]
                if any(s is None for s in scales):
                    return None
                out[role] = scales
                continue
            scale = _linked_scale(getattr(self._links, role))
            if scale is None:
                return None
            out[role] = scale
        if self._mode in ("average_pool", "mean"):
            grid = self._links.output._grid()
            out["minimum"] = tf.stop_gradient(tf.convert_to_tensor(grid.encoding_min))
        if self._mode == "mean":
            grid = self._links.input._grid()
            out["input_minimum"] = tf.stop_gradient(tf.convert_to_tensor(grid.encoding_min))
        return out

    def _scales(self) -> dict | None:
        if self.is_linked:
            return self._linked_scales()
        if not self._initialized:
            return None
        return {
            "input": tf.convert_to_tensor(self.input_scale),
            "weight": tf.convert_to_tensor(self.weight_scale),
            "output": tf.convert_to_tensor(self.output_scale),
            "operands": [self.operand_scales[0], self.operand_scales[1]],
            "minimum": tf.convert_to_tensor(self.grid_minimum),
            "input_minimum": tf.convert_to_tensor(self.input_minimum),
        }

    def snapshot(self) -> None:
        """Stores the scales read from the links in the snapshot variables."""
        scales = self._linked_scales() if self.is_linked else None
        if scales is None:
            return
        if "input" in scales:
            self.input_scale.assign(scales["input"])
        if "weight" in scales:
            self.weight_scale.assign(tf.broadcast_to(scales["weight"], (self.channels,)))
        if "operands" in scales:
            self.operand_scales.assign(tf.stack(scales["operands"]))
        if "minimum" in scales:
            self.grid_minimum.assign(scales["minimum"])
        if "input_minimum" in scales:
            self.input_minimum.assign(scales["input_minimum"])
        self.output_scale.assign(scales["output"])
        self._initialized = True

    # -- forward ---------------------------------------------------------------------------------

    def call(self, x, operands=None):
        if not self.enabled:
            return x
        scales = self._scales()
        if scales is None:
            return x
        s_out = scales["output"]
        mode = self._mode
        if mode.startswith("dsp_") or mode == "softmax":
            return self._dsp_call(x, operands, scales)
        if mode == "add":
            if operands is None or len(operands) != 2:
                return x
            levels = [_round_ste(t / s) for t, s in zip(operands, scales["operands"])]
            return primitives.requantize_add(levels, scales["operands"], s_out) * s_out
        if mode == "mul":
            if operands is None or len(operands) != 2:
                return x
            s_1, s_2 = scales["operands"]
            product = _round_ste(operands[0] / s_1) * _round_ste(operands[1] / s_2)
            return primitives.requantize_float(product, (s_1 * s_2) / s_out) * s_out
        if mode == "average_pool":
            minimum = scales["minimum"]
            levels = primitives.round_average_pool((x - minimum) / s_out, 8)
            return levels * s_out + minimum
        if mode == "mean":
            s_in, count = scales["input"], float(self.count)
            acc = _round_ste(x * count / s_in)  # sum of (level - zero point) over the window
            return primitives.requantize_mean(acc, count, s_in, s_out, scales["input_minimum"], scales["minimum"]) * s_out
        s_in, s_w = scales["input"], scales["weight"]
        acc = _round_ste(x / (s_in * s_w))
        if mode == "float":
            level = primitives.requantize_float(acc, (s_in * s_w) / s_out)
        else:
            multiplier = (tf.cast(s_in, tf.float64) * tf.cast(s_w, tf.float64)
                          / tf.cast(s_out, tf.float64))
            level = primitives.requantize_fixed_point(
                acc, multiplier, ties_away=mode == "fixed_point_ties_away"
            )
        return self._cap(x, level, s_out) * s_out

    def _cap(self, x, level, s_out):
        """A ReLU6 fused into the layer: the kernel clamps its level at q6 = round(6 / s_out) (ties
        away), computed from the full accumulator; the layer's output ``x`` is already clamped at
        6, so where it sits at the cap the accumulator is unknown and the level is q6."""
        if self.activation_cap is None:
            return level
        cap_level = primitives.round_half_away_from_zero(tf.cast(self.activation_cap, tf.float32) / s_out)
        capped = tf.minimum(level, cap_level)
        return tf.where(x >= self.activation_cap, cap_level + (level - tf.stop_gradient(level)), capped)

    def _dsp_call(self, x, operands, scales):
        """The "dsp_*" modes: integers recovered in TF, requantized by the target in numpy."""
        mode, s_out = self._mode, scales["output"]
        if mode in ("dsp_add", "dsp_mul"):
            if operands is None or len(operands) != 2:
                return x
            s_1, s_2 = scales["operands"]
            args = [_round_ste(operands[0] / s_1), _round_ste(operands[1] / s_2), s_1, s_2, s_out]
            exact = (operands[0] + operands[1] if mode == "dsp_add" else x) / s_out
        elif mode in ("dsp_softmax", "softmax"):
            if not operands:
                return x
            s_in = scales["input"]
            # The wrapper passes the (quantized) softmax input as the only operand.
            args = [_round_ste(operands[0] / s_in), s_in]
            exact = x / s_out
        elif mode == "dsp_mean":
            s_in = scales["input"]
            args = [_round_ste(x * float(self.count) / s_in), s_in, tf.constant(1.0), s_out]
            exact = x / s_out
        else:
            s_in, s_w = scales["input"], scales["weight"]
            args = [_round_ste(x / (s_in * s_w)), s_in, s_w, s_out]
            exact = x / s_out
        target, count = self._target, self.count
        levels = tf.numpy_function(
            lambda *values: _dsp_levels(mode, target, count, *values),
            [tf.cast(a, tf.float32) for a in args], tf.float32, stateful=False, name=mode,
        )
        levels = tf.ensure_shape(levels, exact.shape)
        levels = exact + tf.stop_gradient(levels - exact)
        if mode in ("dsp_conv", "dsp_fully_connected"):
            levels = self._cap(x, levels, s_out)
        return levels * s_out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        # Refresh the snapshot so that a saved model reloads with the current derived scales.
        if self.built and self.is_linked:
            self.snapshot()
        config = super().get_config()
        config.update(
            channels=self.channels,
            mode=self._mode,
            count=self.count,
            enabled=self.enabled,
            initialized=self._initialized,
            target=dataclasses.asdict(self._target),
            activation_cap=self.activation_cap,
        )
        return config

    def __repr__(self) -> str:
        state = "linked" if self.is_linked else ("snapshot" if self._initialized else "unset")
        return f"<Requantizer {self.name}: {self._mode} requantization ({state})>"
