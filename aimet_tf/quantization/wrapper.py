"""QuantizationWrapper: one Keras layer plus its input, output and parameter quantizer slots.

A slot holding None means exact float. The wrapper never writes quantized values into the wrapped
layer's variables: it calls the layer inside a ``keras.StatelessScope`` that maps each quantized
variable to its quantize-dequantized value, so training still updates the float weights (the
straight-through estimator carries the gradient to them).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Mapping, Sequence

import keras

from aimet_tf.quantization.encodings_io import activation_name
from aimet_tf.quantization.quantizers import BiasQuantizer, Quantizer, Requantizer, _TracedState
from aimet_tf.quantization.registry import get_layer_spec

__all__ = ["LOAD_HINT", "QuantizationWrapper", "get_param_variable"]

LOAD_HINT = (
    "Saved by aimet_tf: run `import aimet_tf` before keras.models.load_model(...) so that Keras "
    "knows QuantizationWrapper and the quantizers."
)
"""Written into every saved QuantizationWrapper config; Keras shows it when aimet_tf is not imported."""
_LOAD_HINT_KEY = "aimet_tf_load_hint"


def get_param_variable(layer: keras.layers.Layer, path: str) -> keras.Variable:
    """Resolves a dotted attribute path such as "kernel" or "_query_dense.kernel" on ``layer``.

    Raises:
        AttributeError: naming the layer and the path when the attribute is missing or not a
            variable (e.g. a registry entry that does not fit the layer).
    """
    try:
        value = functools.reduce(getattr, path.split("."), layer)
    except AttributeError as exc:
        raise AttributeError(
            f"Layer {layer.name!r} ({type(layer).__name__}) has no parameter attribute {path!r}: "
            "check its registry entry (aimet_tf.register_layer params=...)."
        ) from exc
    if value is not None and not isinstance(value, keras.Variable):
        raise AttributeError(
            f"Expected {type(layer).__name__}.{path} to be a keras.Variable. Received: "
            f"{type(value).__name__}"
        )
    return value


class _Recording:
    """What ``QuantizationWrapper.recording`` collected: ``calls`` (quantized ``(args, kwargs)``
    per call) and ``internal`` (internal tensor name -> its quantized values, one per call)."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self.internal: dict[str, list] = {}


@keras.saving.register_keras_serializable(package="aimet_tf")
class QuantizationWrapper(_TracedState, keras.layers.Layer):
    """Wraps ``layer`` with quantizers.

    Args:
        layer: the Keras layer (built, or buildable from its build config when reloaded).
        input_quantizers: one slot per input tensor (None = float).
        output_quantizers: one slot per output tensor (None = float).
        param_quantizers: parameter attribute path -> Quantizer or None, in the layer's
            parameter order (its registry entry's: kernel, then bias...).
        requantizer: optional model of the integer kernel's requantization, applied to the
            layer's raw output before the output quantizers (None = float output).
        internal_quantizers: tensor name -> Quantizer or None for the tensors computed inside
            the layer that its registry entry lists (``LayerSpec.internal``, e.g. an LSTM's
            gates); the layer's registered forward applies them.

    While ``compute_encodings`` runs, ``_finite_watch`` counts the batches whose layer output held
    NaN/Inf (None otherwise).

    AIMET's ``QcQuantizeWrapper`` attributes: ``input_quantizers``, ``output_quantizers`` and
    ``param_quantizers`` are lists, one slot per tensor in order (an empty slot, a tensor that is
    not quantized, holds None); ``_layer_to_wrap`` is ``layer``.
    """

    # A non-finite watch (``graph_statistics.NonFiniteWatch``) set during calibration is traced in.
    _traced_attributes = ("_finite_watch",)

    def __init__(
        self,
        layer: keras.layers.Layer,
        input_quantizers: Sequence[Quantizer | None] = (),
        output_quantizers: Sequence[Quantizer | None] = (),
        param_quantizers: Mapping[str, Quantizer | None] | None = None,
        requantizer: Requantizer | None = None,
        internal_quantizers: Mapping[str, Quantizer | None] | None = None,
        call_options: Mapping[str, object] | None = None,
        internal_kernels: str | None = None,
        **kwargs,
    ):
        kwargs.setdefault("name", layer.name)
        super().__init__(**kwargs)
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(f"Expected a keras.layers.Layer to wrap. Received: {type(layer).__name__}")
        self.layer = layer
        self.input_quantizers = list(input_quantizers)
        self.output_quantizers = list(output_quantizers)
        params = dict(param_quantizers or {})
        self.param_names = list(params)
        # Lists (not dicts) keep the saved variable order independent of dict handling.
        self.param_quantizer_list = [params[name] for name in self.param_names]
        self.requantizer = requantizer
        internal = dict(internal_quantizers or {})
        self.internal_names = list(internal)
        self.internal_quantizer_list = [internal[name] for name in self.internal_names]
        self._finite_watch = None
        self._recording: _Recording | None = None
        # Non-tensor keyword arguments of the wrapped call (use_causal_mask=True...): kept here,
        # because Keras refuses a call whose **kwargs mix tensors and plain values.
        self.call_options = dict(call_options or {})
        # Kernels whose arithmetic a decomposed layer's forward reproduces (None: float, then
        # rounding onto each grid); ``prepare_sim_for_tflite`` sets it.
        self.internal_kernels: str | None = internal_kernels
        # Input index -> the quantizer that defines that input's grid (set with internal_kernels).
        self.input_grids: dict[int, Quantizer] = {}
        if layer.built:
            self._build_quantizers(None)

    @property
    def param_quantizers(self) -> list[Quantizer | BiasQuantizer | None]:
        """AIMET's list of parameter slots, in ``param_names`` order (kernel, then bias...); None
        for a parameter that is not quantized. A copy: change a slot with ``replace_quantizer``."""
        return list(self.param_quantizer_list)

    def param_quantizers_by_path(self) -> dict[str, Quantizer | BiasQuantizer | None]:
        """The parameter slots by attribute path ("kernel", "bias", "_query_dense.kernel"...), in
        ``param_names`` order; None for a parameter that is not quantized."""
        return dict(zip(self.param_names, self.param_quantizer_list))

    @property
    def _layer_to_wrap(self) -> keras.layers.Layer:
        """AIMET's name for the wrapped layer (``layer``)."""
        return self.layer

    @property
    def internal_quantizers(self) -> dict[str, Quantizer | None]:
        return dict(zip(self.internal_names, self.internal_quantizer_list))

    def activation_slots(self) -> list[tuple[str, Quantizer | None]]:
        """(tensor name, slot occupant) of every activation slot: inputs, internal tensors, outputs.

        The sim's names (``"<layer>/input:0"``, ``"<layer>/forget_gate:0"``,
        ``"<layer>/output:0"``); encodings files key activations by AIMET Keras's tensor names
        instead unless written with ``activation_names="aimet_tf"`` (``QuantizationSimModel.get_encodings_dict``).
        """
        slots = [(activation_name(self.name, "input", i), q) for i, q in enumerate(self.input_quantizers)]
        slots += [(activation_name(self.name, n, 0), q) for n, q in zip(self.internal_names, self.internal_quantizer_list)]
        slots += [(activation_name(self.name, "output", i), q) for i, q in enumerate(self.output_quantizers)]
        return slots

    def quantizers(self) -> list[Quantizer]:
        """All quantizers of this wrapper (inputs, internal, outputs, params, requantizer), skipping empty slots."""
        return [q for q in self._slot_occupants() if q is not None]

    def replace_quantizer(self, kind: str, key: int | str, quantizer) -> None:
        """Puts ``quantizer`` into a slot of a built wrapper (Keras tracking kept consistent).

        Args:
            kind: "input", "output", "internal" or "param".
            key: slot index for inputs/outputs, parameter path for params, tensor name for
                internal tensors.
            quantizer: the new occupant, e.g. a ``BiasQuantizer`` for a bias slot.

        Raises:
            KeyError: if the slot does not exist.
        """
        named = {
            "param": ("parameter slot", self.param_names, self.param_quantizer_list),
            "internal": ("internal tensor", self.internal_names, self.internal_quantizer_list),
        }
        if kind in named:
            what, names, slots = named[kind]
            if key not in names:
                raise KeyError(f"Wrapper {self.name!r} has no {what} {key!r}. Expected one of {names}.")
            index = names.index(key)
        elif kind in ("input", "output"):
            slots = self.input_quantizers if kind == "input" else self.output_quantizers
            index = int(key)
            if not 0 <= index < len(slots):
                raise KeyError(f"Wrapper {self.name!r} has no {kind} slot {key!r}.")
        else:
            raise KeyError(f"Expected kind 'input', 'output', 'internal' or 'param'. Received: kind={kind!r}")
        old = slots[index]
        # Item assignment on a tracked list bypasses Keras' tracker: update it by hand so that
        # saving and weight listing see the new occupant (and forget an orphaned old one).
        with self._unlocked_tracker():
            slots[index] = quantizer
            if old is not None and all(q is not old for q in self._slot_occupants()):
                self._tracker.untrack(old)
            if quantizer is not None:
                self._tracker.track(quantizer)

    def set_requantizer(self, requantizer: Requantizer | None) -> None:
        """Sets the requantizer slot of a built wrapper (Keras tracking kept consistent)."""
        with self._unlocked_tracker():
            self.requantizer = requantizer

    def _slot_occupants(self) -> list:
        return [*self.input_quantizers, *self.internal_quantizer_list, *self.output_quantizers,
                *self.param_quantizer_list, self.requantizer]

    @contextlib.contextmanager
    def _unlocked_tracker(self) -> Iterator[None]:
        # Keras locks a built layer's tracker; adding a quantizer afterwards needs it open.
        tracker = self._tracker
        was_locked = tracker.locked
        tracker.unlock()
        try:
            yield
        finally:
            if was_locked:
                tracker.lock()

    # -- building ------------------------------------------------------------------------------

    def _build_quantizers(self, input_shape) -> None:
        for q in [*self.input_quantizers, *self.internal_quantizer_list, *self.output_quantizers]:
            if q is not None and not q.built:
                q.build(())
        for name, q in zip(self.param_names, self.param_quantizer_list):
            if q is not None and not q.built:
                var = get_param_variable(self.layer, name)
                if var is None:
                    raise ValueError(
                        f"Layer {self.layer.name!r} has no variable at {name!r} (e.g. use_bias=False) "
                        "but a quantizer was given for it."
                    )
                q.build(tuple(var.shape))
        if self.requantizer is not None and not self.requantizer.built:
            self.requantizer.build(None)
        self.built = True

    def build(self, input_shape=None) -> None:
        if not self.layer.built:
            self.layer.build(input_shape)
        self._build_quantizers(input_shape)

    def get_build_config(self):
        return self.layer.get_build_config()

    def build_from_config(self, config) -> None:
        if config and not self.layer.built:
            self.layer.build_from_config(config)
        self._build_quantizers(None)

    # -- forward -------------------------------------------------------------------------------

    def _quantize_inputs(self, args):
        if not any(q is not None for q in self.input_quantizers):
            return args
        first = args[0]
        if isinstance(first, (list, tuple)):
            # Merge layers (Add, Concatenate...) take one list argument.
            quantized = [
                q(t) if q is not None else t for q, t in zip(self.input_quantizers, first)
            ]
            return (type(first)(quantized), *args[1:])
        out = list(args)
        for i, q in enumerate(self.input_quantizers):
            if q is not None and i < len(out):
                out[i] = q(out[i])
        return tuple(out)

    @contextlib.contextmanager
    def recording(self) -> Iterator["_Recording"]:
        """Records what the calls made inside the block see: each call's arguments after the
        input quantizers (``calls``, a list of ``(args, kwargs)``) and each internal tensor after
        its quantizer (``internal[name]``, a list with one entry per call), e.g. a
        MultiHeadAttention's attention context. For eager calls (a traced call records symbolic
        tensors).

        Example:
            >>> with wrapper.recording() as record:
            ...     wrapper(query, value)
            >>> context = record.internal["attention_context"][0]
        """
        if self._recording is not None:
            raise RuntimeError(f"Layer {self.name!r} is already recording. Expected one recording() block at a time.")
        record = _Recording()
        self._recording = record
        try:
            yield record
        finally:
            self._recording = None

    def __call__(self, *args, **kwargs):
        options = {k: v for k, v in kwargs.items() if k not in _KERAS_CALL_KEYS and _is_option(v)}
        if options:
            self.call_options.update(options)
            kwargs = {k: v for k, v in kwargs.items() if k not in options}
        return super().__call__(*args, **kwargs)

    def call(self, *args, **kwargs):
        kwargs = {**self.call_options, **kwargs}
        args = self._quantize_inputs(args)
        if self._recording is not None:
            self._recording.calls.append((args, dict(kwargs)))
        mapping = []
        for name, q in zip(self.param_names, self.param_quantizer_list):
            if q is not None and q.enabled and q._analyzer is None:
                var = get_param_variable(self.layer, name)
                mapping.append((var, q(var.value)))
        if mapping:
            with keras.StatelessScope(state_mapping=mapping) as scope:
                outputs = self._call_layer(args, kwargs)
            mapped = {id(v) for v, _ in mapping}
            # State updates inside a stateless scope are only recorded (e.g. BatchNormalization's
            # moving statistics in training): apply them for real.
            for var in self.layer.variables:
                if id(var) in mapped:
                    continue
                new_value = scope.get_current_value(var)
                if new_value is not None:
                    var.assign(new_value)
        else:
            outputs = self._call_layer(args, kwargs)
        if self._finite_watch is not None:
            outputs = self._finite_watch.watch(outputs)
        if self.requantizer is not None and not isinstance(outputs, (list, tuple)):
            # The requantizer may recompute from the (quantized) inputs: a merge layer's list
            # argument, or a single layer's input.
            operands = (list(args[0]) if isinstance(args[0], (list, tuple)) else [args[0]]) if args else None
            if operands is not None:
                # A parameter that is the op's second operand (PositionEmbedding's table), quantized.
                quantized = {id(var): value for var, value in mapping}
                for path in get_layer_spec(self.layer).operand_params:
                    var = get_param_variable(self.layer, path)
                    operands.append(quantized.get(id(var), var.value))
            outputs = self.requantizer(outputs, operands=operands)
        return self._quantize_outputs(outputs)

    def _call_layer(self, args, kwargs):
        # The layer's registered forward (e.g. BatchNormalization's fused training pass) if it
        # applies to this call, else the layer's own call.
        try:
            spec = get_layer_spec(self.layer)
        except NotImplementedError:
            spec = None
        if spec is not None and spec.forward is not None:
            training = kwargs.get("training")
            if training is None:
                # Resolved by Keras from the outer call (model.fit passes training=True).
                training = self._get_call_context().training
            extra = {}
            if spec.internal:
                # No internal slots at all: the sim does not decompose this layer.
                extra["quantize"] = _InternalQuantize(self) if self.internal_names else None
            outputs = spec.forward(self.layer, args, kwargs, training, **extra)
            if outputs is not None:
                return outputs
        return self.layer(*args, **kwargs)

    def _quantize_internal(self, name: str, tensor):
        q = self.internal_quantizers.get(name)
        out = q(tensor) if q is not None else tensor
        if self._recording is not None:
            self._recording.internal.setdefault(name, []).append(out)
        return out

    def _quantize_outputs(self, outputs):
        if not any(q is not None for q in self.output_quantizers):
            return outputs
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(
                q(t) if q is not None else t for q, t in zip(self.output_quantizers, outputs)
            )
        q = self.output_quantizers[0]
        return q(outputs) if q is not None else outputs

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        return self.layer.compute_output_spec(*args, **kwargs)

    # -- serialization -------------------------------------------------------------------------

    def get_config(self) -> dict:
        # First key of the saved config: Keras prints the config of a class it cannot find, so a
        # process that loads a saved sim without importing aimet_tf is told what to do.
        config = {_LOAD_HINT_KEY: LOAD_HINT, **super().get_config()}
        config.update(
            layer=keras.saving.serialize_keras_object(self.layer),
            input_quantizers=[_serialize(q) for q in self.input_quantizers],
            output_quantizers=[_serialize(q) for q in self.output_quantizers],
            # A list of pairs: the order of the parameters is the layer's (and the saved slots').
            param_quantizers=[[n, _serialize(q)] for n, q in self.param_quantizers_by_path().items()],
            requantizer=_serialize(self.requantizer),
            # A list of pairs: the order of the internal tensors is the forward's.
            internal_quantizers=[[n, _serialize(q)] for n, q in self.internal_quantizers.items()],
            call_options=dict(self.call_options),
            internal_kernels=self.internal_kernels,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop(_LOAD_HINT_KEY, None)  # absent in sims saved before it was added
        layer = keras.saving.deserialize_keras_object(config.pop("layer"))
        inputs = [_deserialize(c) for c in config.pop("input_quantizers")]
        outputs = [_deserialize(c) for c in config.pop("output_quantizers")]
        saved_params = config.pop("param_quantizers")
        # Sims saved before the list of pairs stored a mapping (its slots were in sorted order).
        pairs = saved_params.items() if isinstance(saved_params, dict) else saved_params
        params = {n: _deserialize(c) for n, c in pairs}
        requantizer = _deserialize(config.pop("requantizer", None))
        internal = {n: _deserialize(c) for n, c in config.pop("internal_quantizers", [])}
        return cls(layer, inputs, outputs, params, requantizer, internal_quantizers=internal, **config)

    def __repr__(self) -> str:
        count = len(self.quantizers())
        return f"<QuantizationWrapper {self.name}: {type(self.layer).__name__}, {count} quantizers>"


class _InternalQuantize:
    """``quantize(name, tensor)`` for a registered forward: the wrapper's internal quantizer of
    that name (identity for an empty slot); ``active(name)`` says whether it quantizes."""

    def __init__(self, wrapper: QuantizationWrapper):
        self._wrapper = wrapper

    def __call__(self, name: str, tensor):
        if name.startswith("output:"):
            return tensor  # the wrapper's output quantizer applies after the forward
        return self._wrapper._quantize_internal(name, tensor)

    def active(self, name: str) -> bool:
        q = self._wrapper.internal_quantizers.get(name)
        return q is not None and q.enabled

    @property
    def kernels(self) -> str | None:
        """The LiteRT kernels whose integer arithmetic the forward reproduces (set by
        ``prepare_sim_for_tflite``), or None for float-then-round."""
        return self._wrapper.internal_kernels

    def _quantizer(self, name: str):
        w = self._wrapper
        if name.startswith("input:"):
            return w.input_grids.get(int(name[len("input:"):]))
        if name.startswith("param:"):
            return w.param_quantizers_by_path().get(name[len("param:"):])
        if name.startswith("output:"):
            index = int(name[len("output:"):])
            return w.output_quantizers[index] if index < len(w.output_quantizers) else None
        return w.internal_quantizers.get(name)

    def minimum(self, name: str):
        """The encoding minimum of a tensor's grid (names as ``scale``) while it quantizes, else None."""
        q = self._quantizer(name)
        return q._grid().encoding_min if isinstance(q, Quantizer) and q.is_active else None

    def scale(self, name: str):
        """The grid step of a tensor while its quantizer quantizes, else None: an internal tensor
        by name, ``"input:<i>"`` for the grid of the layer's i-th input (recorded by
        ``prepare_sim_for_tflite``), ``"param:<path>"`` for a parameter."""
        q = self._quantizer(name)
        return q.scale_tensor() if isinstance(q, Quantizer) and q.is_active else None

    def on_grid(self, name: str, value):
        """``value`` on the grid of the internal tensor ``name`` (unchanged while that quantizer
        does not quantize; never observed by calibration)."""
        q = self._wrapper.internal_quantizers.get(name)
        return value if q is None else q.quantize_only(value)


# Keyword arguments Keras itself handles in Layer.__call__.
_KERAS_CALL_KEYS = frozenset({"training", "mask"})


def _is_option(value) -> bool:
    """A plain value (bool, number, string, None) rather than a tensor or a structure of them."""
    return value is None or isinstance(value, (bool, int, float, str))


def _serialize(q: Quantizer | None):
    return None if q is None else keras.saving.serialize_keras_object(q)


def _deserialize(config) -> Quantizer | None:
    return None if config is None else keras.saving.deserialize_keras_object(config)

