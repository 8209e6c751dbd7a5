"""QuantizationSimModel: a simulated-quantization copy of a Keras model (AIMET's API).

Example:
    >>> sim = QuantizationSimModel(model, quant_scheme="tf_enhanced", default_param_bw=8,
    ...                            default_output_bw=8, config_file="htp")
    >>> sim.compute_encodings(calibration_images)           # or (callback, args) as in AIMET
    >>> sim.model.evaluate(x_test, y_test)                  # a plain keras.Model
    >>> sim.export("out", "model")                          # AIMET encodings + the float .keras
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aimet_tf import distribute, files
from aimet_tf.graph import ModelGraph, all_layers, check_prepared, tensor_name
from aimet_tf.quantization import config as hw_config
from aimet_tf.quantization import aimet_names, calibration_data, encodings_io, graph
from aimet_tf.quantization import output_mse
from aimet_tf.quantization.primitives import Encoding
from aimet_tf.quantization.analyzers import QuantScheme, parse_quant_scheme, validate_percentile
from aimet_tf.quantization.graph_statistics import GraphStatistics, NonFiniteWatch
from aimet_tf.quantization.quantizers import Quantizer, traced_state
from aimet_tf.quantization.registry import get_layer_spec
from aimet_tf.quantization.wrapper import QuantizationWrapper, get_param_variable

__all__ = ["QuantizationSimModel"]


_HALF_DTYPES = ("float16", "bfloat16")


def _check_dtype_policies(model: keras.Model) -> None:
    """Raises unless the global dtype policy and every layer of ``model`` compute in float32.

    The quantizers simulate float32 grids (TF's fake-quant ops take float32 only) and the layers
    they wrap are cloned with their own policies: a half-precision policy would calibrate and then
    fail, or silently round twice, in ``predict``.
    """
    policy = keras.config.dtype_policy()
    if policy.compute_dtype in _HALF_DTYPES:
        raise ValueError(
            "Expected the float32 dtype policy for a quantization simulation. Received: global "
            f"policy={policy.name!r}. Fix: keras.config.set_dtype_policy('float32') before building "
            "the sim."
        )
    for layer in all_layers(model, include_self=True):
        layer_policy = getattr(layer, "dtype_policy", None)
        if layer_policy is not None and layer_policy.compute_dtype in _HALF_DTYPES:
            raise ValueError(
                "Expected float32 layers in a quantization simulation. Received: layer "
                f"{layer.name!r} with dtype_policy={layer_policy.name!r}. Fix: rebuild the model "
                "under keras.config.set_dtype_policy('float32') and copy the weights "
                "(new_model.set_weights(model.get_weights()))."
            )


class QuantizationSimModel:
    """Simulates integer inference of a Keras model by wrapping each layer with quantizers.

    Args:
        model: a Functional or Sequential Keras model (nested models allowed). It is not modified.
        quant_scheme: "auto" (the default: weights ``output_mse``, activations ``tf_enhanced``;
            chosen over the benchmark set, see BENCHMARKS.md "Default range scheme"), AIMET's
            "tf" (min/max), "tf_enhanced" (SQNR search) or "percentile", "mse", "output_mse", or a
            range-learning scheme (``QuantScheme``). AIMET's own default is "tf_enhanced".
        rounding_mode: "nearest" (the only mode TF's kernels implement).
        default_output_bw: bitwidth of activation quantizers.
        default_param_bw: bitwidth of parameter quantizers.
        in_place: AIMET's flag; only False is supported (the original model is never modified).
        config_file: hardware config: None or "default" (exactly AIMET's default_config.json),
            another preset ("default_fused", "default_per_channel", "htp", "tflite"; see
            ``aimet_tf.quantization.config.PRESETS``), a JSON path, or a parsed dict.
        default_data_type: "int" (float simulation is not supported).
        percentile: percentile for the "percentile" scheme, a number in [90, 100]; 100 (AIMET's
            default) keeps the exact min and max. ``set_percentile_value`` changes it later.

    Raises:
        ValueError: for invalid arguments; a config that gives the model no quantizer at all
            (e.g. ``config_file={}``); ``supported_kernels`` in the config that exclude
            ``(default_output_bw, default_param_bw)`` (``HardwareConfigError``).

    Raises:
        ValueError: for a half-precision dtype policy (``mixed_float16``, ``bfloat16``...),
            global or on a layer: the simulation computes in float32 only.

    Attributes:
        model: the simulated ``keras.Model``; use it for predict/evaluate/fit.
        preparations: steps that changed this sim for a target after it was built, by name
            (``prepare_sim_for_tflite`` records itself as "tflite"). A pass that rebuilds the sim
            (``fold_all_batch_norms_to_scale``) runs each on the new sim, so it needs no import of
            the module that defined the step.
    """

    def __init__(
        self,
        model: keras.Model,
        quant_scheme: str | QuantScheme = QuantScheme.post_training_auto,
        rounding_mode: str = "nearest",
        default_output_bw: int = 8,
        default_param_bw: int = 8,
        in_place: bool = False,
        config_file: Any = None,
        default_data_type: str = "int",
        percentile: float = 100.0,
    ):
        if in_place:
            raise ValueError(
                "Expected in_place=False: aimet_tf never modifies the original model; use sim.model."
            )
        if rounding_mode != "nearest":
            raise ValueError(f"Expected rounding_mode='nearest'. Received: rounding_mode={rounding_mode!r}")
        if default_data_type != "int":
            raise ValueError(
                f"Expected default_data_type='int'. Received: default_data_type={default_data_type!r}"
            )
        from aimet_tf.quantization.primitives import validate_bitwidth

        _check_dtype_policies(model)
        self.quant_scheme = parse_quant_scheme(quant_scheme)
        self.default_output_bw = validate_bitwidth(default_output_bw)
        self.default_param_bw = validate_bitwidth(default_param_bw)
        self.percentile = validate_percentile(percentile)
        self.config = hw_config.load_config(config_file)
        self._original = model
        self.model = self._build(model, is_top=True)
        self.preparations: dict[str, Callable[[QuantizationSimModel], Any]] = {}
        self._check_against_config(config_file)
        # Calibration state kept across compute_encodings calls (see _calibration_step).
        self._graph_stats: dict[tuple, GraphStatistics] = {}
        self._calibration_steps: dict[tuple, Callable] = {}
        self._watches: dict[int, NonFiniteWatch] = {}
        _retrace_on_quantizer_changes(self.model)
        self.model.build(self.model.input_shape) if not self.model.built else None

    # -- construction --------------------------------------------------------------------------

    def _check_against_config(self, config_file: Any) -> None:
        """Raises when the config quantizes nothing in this model, or its supported kernels
        exclude the sim's bitwidths (both are almost surely mistakes that would pass silently)."""
        op_types = [hw_config.onnx_op_type(w.layer) for w in self.wrappers()]
        self.config.check_bitwidths(self.default_output_bw, self.default_param_bw, op_types)
        if not self.activation_quantizers() and not self.param_quantizers():
            shown = repr(config_file)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise ValueError(
                "The config quantizes nothing in this model: the simulation would have 0 "
                "quantizers and compute exactly the float model. Expected a config that enables "
                "some quantizers (e.g. config_file=None for AIMET's default, 'htp' or 'tflite'). "
                f"Received: config_file={shown} on model {self._original.name!r} "
                f"({len(self.wrappers())} layers). To compare against float, run the original "
                "model, or sim.quantizers_disabled()."
            )

    def _activation_quantizer(self, name: str, rule: hw_config.OpRule) -> Quantizer:
        return Quantizer(
            bitwidth=self.default_output_bw,
            symmetric=rule.symmetric,
            strict=False,
            unsigned_symmetric=self.config.unsigned_symmetric,
            quant_scheme=self.quant_scheme.for_activations,
            percentile=self.percentile,
            name=name,
        )

    def _build(self, model: keras.Model, is_top: bool) -> keras.Model:
        g = check_prepared(model, "the quantization simulation")
        functional = g.model
        producers, consumers = g.layer_edges()
        fused_heads: set[str] = set()
        for group in graph.find_supergroups(functional, self.config):
            fused_heads.update(group[:-1])
        output_layers = {g.producer(t).operation.name for t in g.output_names if g.producer(t) is not None}
        input_layer_names = {l.name for l in functional.layers if isinstance(l, keras.layers.InputLayer)}

        def clone(layer: keras.layers.Layer):
            if isinstance(layer, keras.Model):
                return self._build(layer, is_top=False)
            return self._wrap(
                layer,
                model_graph=g,
                producers=producers.get(layer.name, []),
                fused=layer.name in fused_heads,
                is_model_output=is_top and layer.name in output_layers,
                model_inputs=input_layer_names if is_top else set(),
            )

        return keras.models.clone_model(functional, clone_function=clone)

    def _wrap(self, layer, model_graph: ModelGraph, producers, fused, is_model_output, model_inputs) -> QuantizationWrapper:
        spec = get_layer_spec(layer)
        op_type = hw_config.onnx_op_type(layer)
        rule = self.config.op_rule(op_type)
        new_layer = graph.clone_layer(layer)
        name = layer.name

        input_quantizers: list[Quantizer | None] = []
        (node,) = model_graph.nodes_of(layer)
        for i, (_, dtype) in enumerate(model_graph.input_specs(node.name)):
            producer = producers[i] if i < len(producers) else None
            from_model_input = producer in model_inputs
            wanted = (from_model_input and self.config.model_input_quantized) or rule.input_quantized
            is_float = dtype in ("float32", "float16", "bfloat16", "float64")
            input_quantizers.append(
                self._activation_quantizer(f"{name}_input_{i}", rule) if wanted and is_float else None
            )

        output_quantizers: list[Quantizer | None] = []
        quantize_output = rule.output_quantized and spec.quantize_output and not spec.passthrough
        if fused:
            quantize_output = False
        if is_model_output and self.config.model_output_quantized:
            # A model output is consumed by no fused successor: it always gets its own grid.
            quantize_output = True
        for i, (_, dtype) in enumerate(model_graph.output_specs(node.name)):
            is_float = dtype in ("float32", "float16", "bfloat16", "float64")
            output_quantizers.append(
                self._activation_quantizer(f"{name}_output_{i}", rule)
                if quantize_output and is_float
                else None
            )

        param_quantizers: dict[str, Quantizer | None] = {}
        for path, pspec in spec.params.items():
            var = get_param_variable(new_layer, path)
            if var is None:
                continue
            prule = rule.params.get(pspec.role)
            if prule is None or not prule.quantized:
                param_quantizers[path] = None
                continue
            param_quantizers[path] = Quantizer(
                bitwidth=self.default_param_bw,
                symmetric=prule.symmetric,
                strict=self.config.strict_symmetric and prule.symmetric,
                unsigned_symmetric=False,
                channel_axis=pspec.channel_axes if prule.per_channel and pspec.channel_axes is not None else None,
                quant_scheme=self.quant_scheme.for_parameters,
                percentile=self.percentile,
                name=f"{name}_{path.replace('.', '_').lstrip('_')}_quantizer",
            )
        # Tensors inside the layer (an LSTM's gates, attention scores) are activations of their
        # own op type (the layer's when the registry names none), when the layer is decomposed.
        decomposed = spec.decomposed if rule.decomposed is None else rule.decomposed
        internal_quantizers: dict[str, Quantizer | None] = {}
        for t in spec.internal if decomposed else ():
            op_rule = self.config.op_rule(spec.internal_op_types[t]) if t in spec.internal_op_types else rule
            internal_quantizers[t] = (
                self._activation_quantizer(f"{name}_{t}", op_rule) if op_rule.output_quantized else None
            )
        return QuantizationWrapper(new_layer, input_quantizers, output_quantizers, param_quantizers,
                                   internal_quantizers=internal_quantizers, name=name)

    # -- introspection -------------------------------------------------------------------------

    def wrappers(self) -> list[QuantizationWrapper]:
        """Every wrapper of the sim, nested models included, in graph order."""
        out: list[QuantizationWrapper] = []

        def visit(model: keras.Model):
            for layer in model.layers:
                if isinstance(layer, QuantizationWrapper):
                    out.append(layer)
                elif isinstance(layer, keras.Model):
                    visit(layer)

        visit(self.model)
        return out

    def quant_wrappers(self) -> Iterator[QuantizationWrapper]:
        """AIMET's generator over the sim's wrappers (``wrappers()``, in graph order)."""
        yield from self.wrappers()

    def get_quant_wrapper_for_layer_name(self, layer_name: str) -> QuantizationWrapper:
        """The wrapper of the original model's layer ``layer_name`` (AIMET's lookup).

        Args:
            layer_name: a layer name of the model the sim was built from (a wrapper has its
                layer's name; nested models' layers included).

        Returns:
            The ``QuantizationWrapper``.

        Raises:
            TypeError: if ``layer_name`` is not a string.
            KeyError: if no wrapper has that name; the message lists the closest names.
        """
        if not isinstance(layer_name, str):
            raise TypeError(f"Expected a layer name (str). Received: {type(layer_name).__name__}")
        by_name = {w.name: w for w in self.wrappers()}
        if layer_name in by_name:
            return by_name[layer_name]
        close = difflib.get_close_matches(layer_name, list(by_name), n=5)
        raise KeyError(
            f"The sim has no wrapper for a layer named {layer_name!r}. "
            + (f"Closest names: {close}." if close else f"Layer names are e.g. {list(by_name)[:5]}.")
        )

    def set_percentile_value(self, percentile_value: float) -> None:
        """Sets the percentile the "percentile" range scheme keeps (AIMET's method), for every
        quantizer of the sim; the next ``compute_encodings`` uses it.

        Args:
            percentile_value: a number in [90, 100]; 100 keeps the exact min and max.

        Raises:
            ValueError: for a non-number or a value outside [90, 100].
        """
        self.percentile = validate_percentile(percentile_value)
        for w in self.wrappers():
            for q in w.quantizers():
                if isinstance(q, Quantizer):
                    q.percentile = self.percentile

    def activation_quantizers(self) -> list[tuple[str, Quantizer]]:
        """(tensor name, quantizer) for every input/output quantizer slot that holds one."""
        return [(name, q) for w in self.wrappers() for name, q in w.activation_slots() if q is not None]

    def param_quantizers(self) -> list[tuple[str, Quantizer, keras.Variable]]:
        """(param name, quantizer, variable) for every parameter quantizer slot that holds one.

        Derived quantizers (``BiasQuantizer``: int32 bias grid s_in * s_w) have no calibrated
        encoding of their own and are not listed (a wrapper's ``param_quantizers`` list, AIMET's
        attribute, holds every slot).
        """
        out = []
        for w in self.wrappers():
            for path, q in w.param_quantizers_by_path().items():
                if isinstance(q, Quantizer):
                    var = get_param_variable(w.layer, path)
                    out.append((encodings_io.param_name(w.name, path), q, var))
        return out

    def uncalibrated_quantizers(self) -> list[str]:
        """Names of the enabled activation and parameter quantizers that have no encoding yet."""
        missing = [n for n, q in self.activation_quantizers() if q.enabled and not q.is_initialized]
        missing += [n for n, q, _ in self.param_quantizers() if q.enabled and not q.is_initialized]
        return missing

    def non_finite_tensors(self) -> list[str]:
        """Names of the float parameters and enabled encodings that hold NaN or Inf."""
        bad = []
        for w in self.wrappers():
            for var in w.layer.weights:
                if var.dtype in ("float16", "float32", "float64", "bfloat16") and not np.all(
                    np.isfinite(var.numpy())
                ):
                    bad.append(f"{w.name}/{var.name}")
        quantizers = [(n, q) for n, q in self.activation_quantizers()]
        quantizers += [(n, q) for n, q, _ in self.param_quantizers()]
        for name, q in quantizers:
            # The variables, not get_encoding(): an Encoding cannot even hold NaN/Inf.
            grid = q._grid()
            if q.enabled and q.is_initialized and not (
                np.all(np.isfinite(grid.encoding_min.numpy()))
                and np.all(np.isfinite(grid.encoding_max.numpy()))
            ):
                bad.append(f"encoding of {name}")
        return bad

    def _check_finite_state(self) -> None:
        """Raises when ``non_finite_tensors`` lists anything: such a sim would export garbage."""
        bad = self.non_finite_tensors()
        if bad:
            raise ValueError(
                "Expected finite parameters and encodings to export. Received: NaN/Inf in "
                f"{len(bad)} tensors: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. Fix: "
                "find the pass that produced them (e.g. bias correction or training on bad data) "
                "and rerun it from the float model."
            )

    def quantizer_table(self) -> str:
        """A human-readable table of every quantizer and its state."""
        rows = [f"{'tensor':48s} {'quantizer'}"]
        for name, q in self.activation_quantizers():
            rows.append(f"{name:48s} {q!r}")
        for name, q, _ in self.param_quantizers():
            rows.append(f"{name:48s} {q!r}")
        return "\n".join(rows)

    # -- calibration ---------------------------------------------------------------------------

    def compute_encodings(
        self,
        forward_pass_callback: Callable[[keras.Model, Any], Any] | Any = None,
        forward_pass_callback_args: Any = None,
        *,
        batch_size: int = 128,
    ) -> None:
        """Computes every enabled, unfrozen quantizer's encoding.

        Activation quantizers observe the tensors of a float forward pass (quantization off while
        calibrating); parameter quantizers are computed from the current weights.

        Args:
            forward_pass_callback: AIMET style: ``callback(sim.model, forward_pass_callback_args)``
                that runs the model on calibration data (also as ``(fn, args)`` or a
                ``CallbackFunc``). Alternatively the data itself, read by
                ``aimet_tf.quantization.calibration_data``: an array, a dict by input name, an
                ``(x, y)`` tuple, or a list / tf.data.Dataset / iterable of batches (a list is
                always a list of batches).
            forward_pass_callback_args: passed to the callback.
            batch_size: batch size when data is given as arrays.

        Raises:
            ValueError: empty data, NaN/Inf in the data, a layer whose output held NaN/Inf (the
                first in graph order is named, e.g. a conv that overflowed float32), or
                quantizers that saw no data. On error no encoding changes.
        """
        act = [(n, q) for n, q in self.activation_quantizers() if q.enabled and not q.frozen]
        analyzers = {id(q): q.make_analyzer() for _, q in act}
        _check_multi_worker_analyzers(self.model, [(n, analyzers[id(q)]) for n, q in act])
        # The observed forward pass is the float one: activation quantizers observe and pass
        # through, every other quantizer (bias grids and requantizers too) is off for its duration.
        others = [q for w in self.wrappers() for q in w.quantizers() if q.enabled and id(q) not in analyzers]
        statistics = {id(q): self._graph_statistics(q, analyzers[id(q)]) for _, q in act}
        watches = self._finite_watches()
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(_disabled(others))
                stack.enter_context(_watching(watches))
                for _, q in act:
                    stack.enter_context(q.calibration(analyzers[id(q)], statistics[id(q)]))
                callback = _forward_pass(forward_pass_callback, forward_pass_callback_args)
                if callback is not None:
                    callback.func(self.model, callback.args)
                else:
                    self._run_calibration_data(forward_pass_callback, batch_size)
        except tf.errors.OpError as exc:
            raise ValueError(f"compute_encodings failed while observing tensors: {exc.message}") from exc
        failed = []
        for name, q in act:
            if statistics[id(q)] is None:
                continue
            values = statistics[id(q)].read()
            if values.nonfinite_batches:
                failed.append(f"{name} ({values.nonfinite_batches} batch(es))")
            else:
                analyzers[id(q)].absorb_graph_statistics(values)
        _raise_on_nonfinite(failed, watches)
        unseen = [n for n, q in act if analyzers[id(q)].num_batches == 0]
        if unseen:
            raise ValueError(
                "These quantizers saw no data during compute_encodings: "
                f"{', '.join(unseen[:10])}{' ...' if len(unseen) > 10 else ''}. The forward pass "
                "must run sim.model on calibration data (every branch of the model)."
            )
        searched, search_batches = ({}, []) if callback is not None else self._output_mse_ranges(
            forward_pass_callback, batch_size)
        new = []
        for _, q in act:
            new.append((q, q.encoding_from_range(*q.compute_range(analyzers[id(q)]))))
        for _, q, var in self.param_quantizers():
            if q.enabled and not q.frozen:
                if id(q) in searched:
                    new.append((q, q.encoding_from_range(*searched[id(q)])))
                    continue
                analyzer = q.make_analyzer()
                analyzer.observe(np.asarray(var.numpy()))
                new.append((q, q.encoding_from_range(*q.compute_range(analyzer))))
        for q, enc in new:
            q.set_encoding(enc)
        if search_batches:
            self._keep_output_mse_or_min_max(search_batches)
        logging.info("compute_encodings: %d encodings computed", len(new))

    def _keep_output_mse_or_min_max(self, batches: list) -> None:
        """Model-level check of the ``output_mse`` parameter grids, which each minimise one layer's
        output error (or, where the search cannot reach a layer, its weight MSE): if the whole
        model's output error against float on the search inputs is lower with every one of those
        parameters on its min/max grid instead (tight, see ``compute_encoding``), the min/max grids
        are kept. Clipping many layers a little can add up to more end-to-end error than the
        per-layer errors suggest (measured on MLTK's mobilenetv2_kws at W4)."""
        targets = [
            (q, var) for _, q, var in self.param_quantizers()
            if q.enabled and not q.frozen and q.quant_scheme.init_scheme is QuantScheme.post_training_output_mse
        ]
        searched_encodings = [(q, q.get_encoding()) for q, _ in targets]
        min_max = [(q, q.min_max_encoding(np.asarray(var.numpy()))) for q, var in targets]
        float_outputs = []
        with self.quantizers_disabled():
            for batch in batches:
                float_outputs.append(_flat_outputs(self.model(calibration_data.as_model_input(batch), training=False)))

        def error() -> float:
            total = 0.0
            for batch, reference in zip(batches, float_outputs):
                out = _flat_outputs(self.model(calibration_data.as_model_input(batch), training=False))
                total += sum(float(np.sum((o - r) ** 2, dtype=np.float64)) for o, r in zip(out, reference))
            return total

        searched_error = error()
        for q, enc in min_max:
            q.set_encoding(enc)
        min_max_error = error()
        keep_min_max = min_max_error < searched_error
        if not keep_min_max:
            for q, enc in searched_encodings:
                q.set_encoding(enc)
        self.output_mse_choice = "min_max" if keep_min_max else "output_mse"
        logging.info(
            "output_mse: model output squared error on %d calibration inputs %.6g with the per-layer "
            "searched kernel grids, %.6g with min/max grids; keeping %s for %d kernels",
            sum(len(b[0]) for b in batches), searched_error, min_max_error, self.output_mse_choice, len(targets),
        )

    def _output_mse_ranges(self, data: Any, batch_size: int) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], list]:
        """(min, max) of each ``output_mse`` kernel quantizer the sim can feed with layer inputs,
        by id of the quantizer (see ``output_mse``; the others fall back to their analyzer), and
        the calibration batches the search read."""
        targets = []
        top_level = {id(layer) for layer in self.model.layers}
        for w in self.wrappers():
            q = w.param_quantizers_by_path().get("kernel")
            if (
                isinstance(q, Quantizer) and q.enabled and not q.frozen
                and q.quant_scheme.init_scheme is QuantScheme.post_training_output_mse
                and id(w) in top_level and output_mse.supports(w.layer)
            ):
                targets.append((w, q))
        if not any(
            q.enabled and not q.frozen and q.quant_scheme.init_scheme is QuantScheme.post_training_output_mse
            for _, q, _ in self.param_quantizers()
        ):
            return {}, []
        inputs = calibration_data.model_inputs(self.model)
        batches, count = [], 0
        for batch in calibration_data.iterate_batches(
                data, inputs, batch_size, strategy=_search_strategy(self.model, data)):
            batches.append(batch)
            count += len(batch[0])
            if count >= output_mse.SEARCH_SAMPLES:
                break
        if not targets:
            return {}, batches
        model_inputs = self.model.inputs[0] if len(self.model.inputs) == 1 else self.model.inputs
        probe = keras.Model(model_inputs, [w.input for w, _ in targets])
        layer_inputs: list[list[np.ndarray]] = [[] for _ in targets]
        with self.quantizers_disabled():
            for batch in batches:
                outs = probe(calibration_data.as_model_input(batch), training=False)
                outs = outs if isinstance(outs, (list, tuple)) else [outs]
                for i, out in enumerate(outs):
                    layer_inputs[i].append(np.asarray(out))
        ranges = {}
        for (w, q), xs in zip(targets, layer_inputs):
            x = np.concatenate(xs)[: output_mse.SEARCH_SAMPLES]
            moment = output_mse.input_moment(w.layer, x)
            ranges[id(q)] = output_mse.choose_range(
                w.layer.kernel.numpy(), moment, q.bitwidth, q.symmetric, q.strict, q.per_channel
            )
        return ranges, batches

    def _graph_statistics(self, quantizer: Quantizer, analyzer) -> GraphStatistics | None:
        """The quantizer's in-graph statistics variables for this analyzer, reset; reused across
        calls so that the traced calibration step stays valid. None: the analyzer takes batches."""
        spec = analyzer.graph_statistics_spec
        if spec is None:
            return None
        # One set per (quantizer, spec): alternating schemes reuse their variables and traces.
        stats = self._graph_stats.get((id(quantizer), spec))
        if stats is None:
            stats = GraphStatistics(spec, distribute.replica_strategy(self.model))
            self._graph_stats[(id(quantizer), spec)] = stats
        stats.reset()
        return stats

    def _finite_watches(self) -> list[tuple[QuantizationWrapper, NonFiniteWatch]]:
        """A reset non-finite watch per wrapper, in graph order; reused across calls so that the
        traced calibration step stays valid."""
        out = []
        for wrapper in self.wrappers():
            watch = self._watches.get(id(wrapper))
            if watch is None:
                watch = self._watches[id(wrapper)] = NonFiniteWatch(distribute.replica_strategy(self.model))
            watch.reset()
            out.append((wrapper, watch))
        return out

    def _calibration_step(self, specs, strategy: tf.distribute.Strategy | None = None) -> Callable:
        # Everything the trace depends on: which quantizers observe, and into which variables (the
        # others are all disabled during calibration), the input signature and the strategy.
        key = (repr(specs), id(strategy)) + tuple(
            (name, -1 if q._statistics is None else q._statistics.serial)
            for name, q in self.activation_quantizers()
            if q._analyzer is not None
        ) + tuple(w._finite_watch.serial for w in self.wrappers() if w._finite_watch is not None)
        step = self._calibration_steps.get(key)
        if step is None:
            if strategy is None:
                # One trace for every batch size (the last batch is usually smaller).
                step = tf.function(
                    lambda x: self.model(x, training=False), input_signature=[specs], autograph=False
                )
            else:
                # Per-replica inputs have no input signature: traces are shared where shapes allow.
                step = tf.function(
                    lambda x: strategy.run(lambda v: self.model(v, training=False), args=(x,)),
                    autograph=False, reduce_retracing=True,
                )
            self._calibration_steps[key] = step
        return step

    def _run_calibration_data(self, data: Any, batch_size: int) -> None:
        """Runs the traced calibration step on every batch of ``data`` (``calibration_data`` rules)."""
        inputs = calibration_data.model_inputs(self.model)
        specs = [tf.TensorSpec(spec.shape, spec.dtype) for spec in inputs]
        strategy = distribute.replica_strategy(self.model)
        step = self._calibration_step(specs[0] if len(specs) == 1 else specs, strategy)
        if strategy is None:
            for batch in calibration_data.iterate_batches(data, inputs, batch_size):
                step(calibration_data.as_model_input(batch))
            return
        for values in calibration_data.iterate_replica_batches(data, inputs, strategy, batch_size):
            step(values)

    # -- encodings I/O -------------------------------------------------------------------------

    def get_encodings_dict(self, version: str = "0.6.1", *, activation_names: str = "aimet_keras") -> dict:
        """The AIMET encodings of this sim as a JSON-ready dict (version "0.6.1" or "1.0.0").

        Args:
            version: "0.6.1" or "1.0.0".
            activation_names: "aimet_keras" (default): activations are keyed as AIMET Keras keys
                them, by the tf.keras 2 tensor name (``"conv2d/BiasAdd:0"``, a model input
                ``"input_1:0"``; ``aimet_names``), an input quantizer by the tensor it reads, so
                AIMET's tooling finds them. One entry stands for every quantizer on a tensor
                (the producer's output quantizer and the readers' input quantizers). A tensor
                keeps aimet_tf's names (``"<layer>/output:0"``, ``"<layer>/input:0"``) for each
                of its quantizers, with one warning listing them, when the table of measured
                names does not cover its layer, when its quantizers disagree (different
                encodings, or some disabled), and for tensors inside a layer (an LSTM's gates) or
                crossing a nested model's boundary. "aimet_tf": aimet_tf's names throughout.
                Parameter names (``"conv2d/kernel:0"``) are AIMET Keras's in both.

        The header's ``activation_bitwidth`` / ``param_bitwidth`` are the bitwidth every
        exported encoding of that kind has (e.g. 4 after loading 4-bit parameter encodings into
        an 8-bit sim); when they differ (mixed precision) it is the sim's default, and each
        entry's own ``bitwidth`` tells its grid.

        Raises:
            ValueError: for an unknown version or ``activation_names``.
        """
        if activation_names not in _ACTIVATION_NAMINGS:
            raise ValueError(
                f"Expected activation_names in {_ACTIVATION_NAMINGS}. Received: activation_names={activation_names!r}"
            )
        acts = {n: q.get_encoding() for n, q in self.activation_quantizers() if q.enabled and q.is_initialized}
        exported = acts
        if activation_names == "aimet_keras":
            enabled = {n for n, q in self.activation_quantizers() if q.enabled}
            exported = _aimet_keras_keys(acts, enabled, _activation_tensors(self.model))
        params = {n: q for n, q, _ in self.param_quantizers() if q.enabled and q.is_initialized}
        param_encs = {n: q.get_encoding() for n, q in params.items()}
        return encodings_io.to_dict(
            exported,
            param_encs,
            version=version,
            quantizer_args={
                "activation_bitwidth": _shared_bitwidth(acts.values(), self.default_output_bw),
                "param_bitwidth": _shared_bitwidth(param_encs.values(), self.default_param_bw),
                "quant_scheme": self.quant_scheme.value,
                "dtype": "int",
                "per_channel_quantization": any(q.per_channel for q in params.values()),
            },
        )

    def export(
        self,
        path: str | os.PathLike,
        filename_prefix: str,
        custom_objects: Mapping[str, Any] | None = None,
        convert_to_pb: bool = True,
        *,
        encoding_version: str = "0.6.1",
        activation_names: str = "aimet_keras",
    ) -> dict:
        """Writes ``{prefix}.encodings`` (AIMET JSON) and ``{prefix}.keras`` (the float model).

        The two files are written as one unit (``aimet_tf.files.write_bundle``) together with
        ``{prefix}.manifest.json``, the sha256 of each: a reader sees the previous export or
        this one, never a mix, even if the process is killed at any point. Leftovers of killed
        exports are cleaned up. ``load_encodings_to_sim`` checks the pair against the manifest.
        Files get the mode a plain open() gives (the umask applies).

        Args:
            path: target folder (created if missing).
            filename_prefix: a bare, non-empty file name (no '/', '..' or leading '.').
            custom_objects: AIMET's argument: the custom classes / functions the model needs to be
                loaded (name -> object). AIMET uses them to reload the model for its .pb
                conversion; here the written .keras file is loaded back once under them
                (``keras.saving.custom_object_scope``) before the export is committed, so a model
                that cannot be read back with them is refused and nothing is written.
            convert_to_pb: AIMET's flag for a TF1 frozen graph (.pb). aimet_tf writes no .pb:
                with True (AIMET's default) a warning says that the .keras file is written
                instead; False writes the same files without it.
            encoding_version: "0.6.1" or "1.0.0".
            activation_names: "aimet_keras" (AIMET Keras's tensor names, the default) or
                "aimet_tf" (see ``get_encodings_dict``).

        Returns:
            {"encodings": path, "model": path, "manifest": path}.

        Raises:
            RuntimeError: if an enabled quantizer has no encoding (compute_encodings first).
            TypeError: for a ``custom_objects`` that is not a mapping of names, or a non-bool
                ``convert_to_pb``.
            ValueError: if a parameter or an encoding holds NaN/Inf (nothing is written), for a
                prefix that is not a plain file name, an unknown version or naming, or a model
                that does not load back under ``custom_objects``.
        """
        files.check_file_name(filename_prefix, "filename_prefix")
        custom_objects = _checked_custom_objects(custom_objects)
        if not isinstance(convert_to_pb, (bool, np.bool_)):
            raise TypeError(f"Expected convert_to_pb to be a bool. Received: {convert_to_pb!r}")
        self._check_finite_state()
        missing = self.uncalibrated_quantizers()
        if missing:
            raise RuntimeError(
                f"Cannot export: {len(missing)} enabled quantizers have no encoding (e.g. "
                f"{missing[0]!r}). Call sim.compute_encodings(...) first."
            )
        if convert_to_pb:
            warnings.warn(
                "export(convert_to_pb=True, AIMET's default): aimet_tf writes no .pb (TF1 frozen "
                f"graph); the float model is written as {filename_prefix}.keras instead (load it "
                "with keras.models.load_model). Pass convert_to_pb=False to skip this warning.",
                UserWarning,
                stacklevel=2,
            )
        encodings = self.get_encodings_dict(encoding_version, activation_names=activation_names)
        float_model = self.float_model()

        def write_model(target: str) -> None:
            float_model.save(target)
            if custom_objects is not None:
                _check_loads(target, custom_objects)

        written = files.write_bundle(
            path,
            filename_prefix,
            {
                ".encodings": lambda target: encodings_io.write_json(encodings, target),
                ".keras": write_model,
            },
        )
        return {"encodings": written[".encodings"], "model": written[".keras"], "manifest": written["manifest"]}

    def float_model(self) -> keras.Model:
        """The model without quantizers, with the sim's current (possibly trained) float weights."""

        def unwrap(layer):
            if isinstance(layer, QuantizationWrapper):
                return graph.clone_layer(layer.layer)
            if isinstance(layer, keras.Model):
                return keras.models.clone_model(layer, clone_function=unwrap)
            return graph.clone_layer(layer)

        return keras.models.clone_model(self.model, clone_function=unwrap)

    def load_encodings_to_sim(self, encoding_file_path: str | os.PathLike | dict, strict: bool = True) -> None:
        """Loads AIMET encodings (0.6.1 or 1.0.0), ours or AIMET Keras's, into the sim's quantizers.

        Args:
            encoding_file_path: a JSON file path or the parsed dict (AIMET's keyword).
            strict: if True, every enabled quantizer must have an encoding in the file; if False
                (AIMET's non-strict behaviour), quantizers without one are disabled and listed in
                one warning.

        Names. aimet_tf's own names (``"conv1/output:0"``, ``"conv1/input:0"``) match directly.
        An AIMET Keras tensor name (what ``get_encodings_dict`` writes by default, and AIMET
        writes) sets every quantizer on that tensor, as in AIMET: the producer's output quantizer
        and the input quantizers of the layers reading it; a model input's name (``"input_1:0"``)
        the input quantizers reading that input. A name that is neither (an op the table of
        measured names does not know) is matched by its layer, the part before the first '/'
        (``encodings_io.layer_of_activation``), standing for that layer's one output tensor.
        Parameter names (``"conv2d/kernel:0"``) are the same in both.

        Float entries (``[{"bitwidth": 16, "dtype": "float"}]``, 1.0.0 ``"dtype": "FLOAT"``) say
        the target keeps the tensor in float: its quantizer is disabled (the sim computes it in
        float32, not float16) and one warning names those tensors.

        Each quantizer takes the file's bitwidth and symmetry (as in AIMET), so 4-bit parameter
        encodings make 4-bit quantizers and the next export's header says so. The encodings of
        a ``sim.export`` are first checked, with the .keras file beside them, against the
        export's manifest (an interrupted export is finished first).

        Raises:
            ValueError: names that match no quantizer of the sim (or a layer without an output
                quantizer, or one with several), two names for one quantizer, shapes/bitwidths
                that do not fit, or (strict) missing encodings, listing what the sim has;
                ``EncodingsFormatError`` for a malformed file or a scale/offset that contradicts
                min/max; ``aimet_tf.files.BundleError`` for export files that do not match their
                manifest. Nothing changes in the sim on error.
        """
        acts, params = encodings_io.from_dict(encodings_io.read_json(encoding_file_path), allow_float=True)
        targets = dict(self.activation_quantizers())
        tensors = _activation_tensors(self.model)
        by_name = {t.aimet_name: t.slots for t in tensors if t.aimet_name is not None and t.slots}
        inputs = [l.name for l in self.model.layers if isinstance(l, keras.layers.InputLayer)]
        acts = _by_sim_names(acts, targets, by_name, _tensors_by_layer(tensors), inputs)
        targets.update({n: q for n, q, _ in self.param_quantizers()})
        self._apply_encodings({**acts, **params}, targets, strict=strict, freeze=False)

    def set_and_freeze_param_encodings(self, encoding_path: str | os.PathLike | dict) -> None:
        """Loads parameter encodings (e.g. AdaRound's output) and freezes those quantizers.

        Args:
            encoding_path: a JSON file path or the parsed dict (AIMET's keyword): a full
                encodings file, or only its ``param_encodings`` mapping (what AdaRound writes).
                A float entry disables its quantizer, with a warning (as ``load_encodings_to_sim``).

        Raises:
            ValueError: unknown parameter names or encodings that do not fit, malformed files,
                or export files that do not match their manifest (as ``load_encodings_to_sim``).
        """
        data = encodings_io.read_json(encoding_path)
        if "param_encodings" not in data:
            data = {"version": "0.6.1", "param_encodings": data, "activation_encodings": {}}
        _, params = encodings_io.from_dict(data, allow_float=True)
        targets = {n: q for n, q, _ in self.param_quantizers()}
        self._apply_encodings(params, targets, strict=False, freeze=True, disable_missing=False)

    def _apply_encodings(self, encs, targets, strict, freeze, disable_missing=True) -> None:
        unknown = sorted(set(encs) - set(targets))
        if unknown:
            raise ValueError(
                f"Encodings name {len(unknown)} tensors this sim does not have, e.g. {unknown[:5]}. "
                f"Expected names of this sim: {_listing(targets)}. Were the encodings exported "
                "from the same model?"
            )
        missing = sorted(n for n, q in targets.items() if q.enabled and n not in encs)
        if strict and missing:
            raise ValueError(
                f"Encodings are missing for {len(missing)} enabled quantizers, e.g. {missing[:5]}. "
                "Pass strict=False to disable those quantizers instead."
            )
        floats = sorted(n for n, enc in encs.items() if isinstance(enc, encodings_io.FloatEncoding))
        for name, enc in encs.items():
            if name in floats:
                continue
            q = targets[name]
            expected = tuple(q.encoding_min.shape)
            if tuple(enc.min.shape) != expected:
                raise ValueError(
                    f"Encoding for {name!r} has shape {tuple(enc.min.shape)}; the quantizer expects "
                    f"{expected} ({'per-channel' if expected else 'per-tensor'})."
                )
        for name, enc in encs.items():
            q = targets[name]
            if name in floats:
                q.enabled = False
                continue
            q.set_encoding(enc)
            q.enabled = True
            if freeze:
                q.frozen = True
        if floats:
            logging.warning(
                "Encodings keep %d tensors in float (dtype float); their quantizers are disabled, "
                "so the sim computes them in float32: %s", len(floats), ", ".join(floats),
            )
        if disable_missing:
            for name in missing:
                targets[name].enabled = False
            if missing:
                logging.warning(
                    "strict=False: %d enabled quantizers have no encoding in the file and are "
                    "disabled: %s", len(missing), ", ".join(missing),
                )

    def adopt(self, other: "QuantizationSimModel") -> None:
        """Takes over ``other``'s model and quantizers: the public way for a pass that must rebuild the
        sim's graph (such as folding batch norms into quantizer scales) to change this sim in place.
        ``other`` must be built from the same original model."""
        self.model = other.model  # already hooked by other's constructor
        self._original = other._original
        self.config = other.config
        self.preparations = dict(other.preparations)
        self._graph_stats = {}
        self._calibration_steps = {}
        self._watches = {}

    # -- convenience ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def quantizers_disabled(self) -> Iterator[None]:
        """Temporarily disables every quantizer (the sim then computes exact float)."""
        with _disabled([q for w in self.wrappers() for q in w.quantizers()]):
            yield


def _checked_custom_objects(custom_objects: Any) -> dict[str, Any] | None:
    """``export``'s ``custom_objects`` as a dict (None stays None).

    Raises:
        TypeError: for anything but a mapping of non-empty string names.
    """
    if custom_objects is None:
        return None
    if not isinstance(custom_objects, Mapping) or not all(
        isinstance(name, str) and name for name in custom_objects
    ):
        raise TypeError(
            "Expected custom_objects to be a dict of name -> class or function (as for "
            f"keras.models.load_model). Received: {custom_objects!r}"
        )
    return dict(custom_objects)


def _check_loads(model_path: str, custom_objects: dict[str, Any]) -> None:
    """Raises unless the .keras file at ``model_path`` loads under ``custom_objects``.

    Raises:
        ValueError: naming the file and the loader's error.
    """
    try:
        with keras.saving.custom_object_scope(custom_objects):
            keras.models.load_model(model_path, compile=False)
    except Exception as exc:  # Keras raises TypeError/ValueError/... for an unknown class
        raise ValueError(
            f"The exported model does not load back with custom_objects={sorted(custom_objects)}: "
            f"{type(exc).__name__}: {exc}. Expected custom_objects to name every custom class "
            "and function the model uses. Nothing was written."
        ) from exc


def _flat_outputs(outputs: Any) -> list[np.ndarray]:
    """A model call's outputs as a list of arrays (one or several outputs, any nesting)."""
    return [np.asarray(o) for o in tf.nest.flatten(outputs)]


def _listing(names: Iterable[str], limit: int = 30) -> str:
    """``names`` sorted and comma-separated, cut after ``limit`` with the total count."""
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


_ACTIVATION_NAMINGS = ("aimet_keras", "aimet_tf")
_COUNTED_NAME = re.compile(r"keras_tensor(_\d+)?")


@dataclasses.dataclass(frozen=True)
class _ActivationTensor:
    """One tensor between layers and the quantizer slots on it.

    Attributes:
        layer: the layer producing it (an InputLayer for a model input).
        aimet_name: AIMET Keras's name of it (``aimet_names``), None when there is none here
            (the table does not cover the layer, the tensor crosses a nested model's boundary,
            or a model input has Keras 3's per-session name); ``unnamed_because`` says which.
        slots: the sim's activation names of the quantizers on it, the producer's output
            quantizer first, then the readers' input quantizers in graph order.
    """

    layer: str
    aimet_name: str | None
    slots: tuple[str, ...]
    unnamed_because: str = ""


def _activation_tensors(model: keras.Model, top: bool = True) -> list[_ActivationTensor]:
    """Every tensor of the sim model (nested models included) that a layer or input produces.

    Model inputs are named only at the top level (AIMET Keras names the sim's own inputs); a
    nested model's inputs and outputs have no AIMET name, so quantizers reading them keep
    aimet_tf's names. Neither has an input that Keras 3 named ``keras_tensor_<n>`` (a
    Sequential model's): that name is counted per session, so two builds of one model differ.
    """
    g = ModelGraph(model)
    inputs = {tensor_name(l.name): l.name for l in model.layers if isinstance(l, keras.layers.InputLayer)}
    producer: dict[str, str] = dict(inputs)
    names: dict[str, str | None] = {}
    why: dict[str, str] = {}
    for t, name in inputs.items():
        names[t] = aimet_names.model_input_name(name) if top and not _COUNTED_NAME.fullmatch(name) else None
        if not top:
            why[t] = f"{name!r} is an input of nested model {model.name!r}"
        elif names[t] is None:
            why[t] = (f"model input {name!r} has Keras 3's per-session name (name the keras.Input "
                      "to get AIMET's '<input>:0')")
    slots: dict[str, list[str]] = {t: [] for t in inputs}
    nested: list[_ActivationTensor] = []
    for node in g.nodes:
        op = node.operation
        for i, t in enumerate(node.outputs):
            producer[t] = op.name
            names[t] = None
            slots[t] = []
            kind = "a nested model" if isinstance(op, keras.Model) else "not a quantized layer"
            why[t] = f"{op.name!r} is {kind}"
            if isinstance(op, QuantizationWrapper):
                shapes = [shape for shape, _ in g.input_specs(node.name)]
                names[t] = aimet_names.output_name(op.layer, i, shapes, num_outputs=len(node.outputs))
                why[t] = (f"the measured tf.keras 2 table has no name for {type(op.layer).__name__} "
                          f"{op.name!r} with these arguments and inputs")
                if op.output_quantizers[i] is not None:
                    slots[t].append(encodings_io.activation_name(op.name, "output", i))
        if isinstance(op, keras.Model):
            nested += _activation_tensors(op, top=False)
        elif isinstance(op, QuantizationWrapper):
            for i, t in enumerate(node.inputs):
                if op.input_quantizers[i] is not None:
                    slots[t].append(encodings_io.activation_name(op.name, "input", i))
    own = [_ActivationTensor(producer[t], names[t], tuple(slots[t]), why.get(t, "")) for t in slots]
    return own + nested


def _tensors_by_layer(tensors: list[_ActivationTensor]) -> dict[str, list[tuple[str, ...]]]:
    """Layer name -> the slot groups of its output tensors that hold quantizers."""
    by_layer: dict[str, list[tuple[str, ...]]] = {}
    for t in tensors:
        groups = by_layer.setdefault(t.layer, [])
        if t.slots:
            groups.append(t.slots)
    return by_layer


def _aimet_keras_keys(
    acts: dict[str, Encoding], enabled: set[str], tensors: list[_ActivationTensor]
) -> dict[str, Encoding]:
    """Re-keys activation encodings by AIMET Keras tensor name where that is lossless.

    Args:
        acts: the exported encodings under the sim's names (enabled, calibrated quantizers).
        enabled: names of every enabled activation quantizer.
        tensors: ``_activation_tensors`` of the sim.

    Returns:
        The encodings in the sim's order: one entry under the AIMET name for each tensor whose
        quantizers are all exported with one encoding; the others under the sim's names, listed
        (with the reason) in one warning.
    """
    renamed: dict[str, str] = {}
    kept: dict[str, list[str]] = {}
    for t in tensors:
        present = [n for n in t.slots if n in acts]
        if not present:
            continue
        if t.aimet_name is None:
            reason = f"no AIMET Keras name: {t.unnamed_because}"
        elif len(present) < len(t.slots):
            off = [n for n in t.slots if n not in acts]
            why = "disabled" if any(n not in enabled for n in off) else "not calibrated"
            reason = f"{t.aimet_name!r} also has quantizers {off} ({why}), which AIMET would set too"
        elif any(not encodings_io.same_encoding(acts[present[0]], acts[n]) for n in present[1:]):
            reason = f"{t.aimet_name!r} has quantizers with different encodings"
        else:
            renamed.update({n: t.aimet_name for n in present})
            continue
        kept.setdefault(reason, []).extend(present)
    out: dict[str, Encoding] = {}
    for name, enc in acts.items():
        key = renamed.get(name, name)
        out.setdefault(key, enc)
    listed = {n for names in kept.values() for n in names}
    unlisted = [n for n in acts if n not in renamed and n not in listed]  # tensors inside layers
    if unlisted:
        kept.setdefault("a tensor inside a layer, which AIMET Keras does not name", []).extend(unlisted)
    if kept:
        warnings.warn(
            "Encodings: %d activation entries keep aimet_tf's names ('<layer>/output:<i>', "
            "'<layer>/input:<i>'), which AIMET's tooling does not match: %s. Pass "
            "activation_names='aimet_tf' to use aimet_tf's names throughout."
            % (sum(len(v) for v in kept.values()), "; ".join(f"{r}: {', '.join(n)}" for r, n in kept.items())),
            UserWarning,
            stacklevel=3,
        )
    return out


def _by_sim_names(
    encs: dict,
    targets: dict,
    by_name: dict[str, tuple[str, ...]],
    by_layer: dict[str, list[tuple[str, ...]]],
    model_inputs: list[str],
) -> dict:
    """Renames a file's activation encodings to the sim's tensor names.

    A name the sim has is kept. An AIMET Keras tensor name of the sim (``by_name``) stands for
    every quantizer on that tensor. Any other name names a layer
    (``encodings_io.layer_of_activation``) and stands for the quantizers on that layer's one
    output tensor that has any (``by_layer``, from ``_tensors_by_layer``). A model-input name
    (``"<input>:0"``, no '/') of no layer of a single-input sim names that input, with a
    warning: input layer names are not stable (tf.keras 2 ``input_1``, Keras 3 ``input_layer``,
    a Keras 3 Sequential ``keras_tensor_<n>`` counted per session).

    Raises:
        ValueError: listing every name that matches nothing, a layer with no (or several)
            quantized output tensors, and every pair of names that land on the same quantizer.
    """
    renamed: dict[str, Any] = {}
    source_of: dict[str, str] = {}
    problems: list[str] = []
    for name, enc in encs.items():
        if name in targets:
            sim_names: tuple[str, ...] = (name,)
        elif name in by_name:
            sim_names = by_name[name]
        else:
            try:
                layer = encodings_io.layer_of_activation(name)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if layer not in by_layer and "/" not in name and len(model_inputs) == 1:
                logging.warning("Encodings: model input %r is taken as this sim's only input %r.",
                                name, model_inputs[0])
                layer = model_inputs[0]
            if layer not in by_layer:
                problems.append(f"{name!r}: no layer {layer!r} in this sim")
                continue
            groups = by_layer[layer]
            if not groups:
                problems.append(f"{name!r}: layer {layer!r} has no output quantizer and no reader "
                                "quantizes its output (not quantized here, e.g. fused by a supergroup)")
                continue
            if len(groups) > 1:
                problems.append(f"{name!r}: layer {layer!r} has {len(groups)} quantized outputs "
                                f"({'; '.join(', '.join(g) for g in groups)}); name one of them")
                continue
            sim_names = groups[0]
        for sim_name in sim_names:
            if sim_name in source_of:
                problems.append(f"{source_of[sim_name]!r} and {name!r} both set {sim_name!r}")
                continue
            source_of[sim_name] = name
            renamed[sim_name] = enc
    if problems:
        raise ValueError(
            f"Expected activation names of this sim or AIMET Keras names of its layers "
            f"('<layer>/<op>:0', a model input '<input>:0'). Received {len(problems)} that do not "
            f"match: {'; '.join(problems[:10])}{' ...' if len(problems) > 10 else ''}. This sim's "
            f"activation tensors: {_listing(targets)}."
        )
    return renamed


def _shared_bitwidth(encodings: Iterable, default: int) -> int:
    """The one bitwidth all ``encodings`` have, else (none, or several) ``default``."""
    bitwidths = {enc.bitwidth for enc in encodings}
    return bitwidths.pop() if len(bitwidths) == 1 else default


def _retrace_on_quantizer_changes(model: keras.Model) -> None:
    """Makes ``model``'s predict/evaluate/fit trace again when its quantizers' state changed.

    Keras caches the traced step functions; a quantizer flag set after tracing (``q.enabled =
    False``, a new bitwidth, freezing) would otherwise be ignored silently by the next
    ``predict``. Each ``make_*_function`` of this model instance is wrapped to force a new trace
    when ``traced_state(model)`` differs from what it was at the last trace.
    """
    seen: dict[str, tuple] = {}
    for name in ("make_predict_function", "make_test_function", "make_train_function"):
        original = getattr(model, name)

        def make(force: bool = False, _original=original, _name=name):
            state = traced_state(model)
            if seen.get(_name) != state:
                force = True
            seen[_name] = state
            return _original(force=force)

        object.__setattr__(model, name, make)


@contextlib.contextmanager
def _disabled(quantizers: list[Quantizer]) -> Iterator[None]:
    states = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    try:
        yield
    finally:
        for q, state in zip(quantizers, states):
            q.enabled = state




def _search_strategy(model: keras.Model, data: Any) -> tf.distribute.Strategy | None:
    """The strategy whose per-replica batches the parameter search reads as plain batches.

    The search runs in Python on each worker and must choose the same grids on every worker (the
    parameters are mirrored): that holds for arrays and undistributed data sets, which every
    worker reads whole, not for a distributed data set's per-worker shards."""
    strategy = distribute.replica_strategy(model)
    if strategy is not None and distribute.num_workers(strategy) > 1 and calibration_data.is_distributed_data(data):
        raise ValueError(
            "Expected calibration data that every worker reads whole (arrays or a tf.data.Dataset "
            "before experimental_distribute_dataset) for the output_mse parameter search under a "
            f"{distribute.num_workers(strategy)}-worker strategy. Received: a distributed data set, "
            "whose shards differ per worker and would give each worker its own parameter grids."
        )
    return strategy


def _check_multi_worker_analyzers(model: keras.Model, analyzers: list) -> None:
    """Across worker processes only in-graph statistics are gathered: an analyzer that takes whole
    batches in Python (per-channel activation ranges, the MSE search) would see one worker's
    share of the data."""
    strategy = distribute.replica_strategy(model)
    if distribute.num_workers(strategy) <= 1:
        return
    python_side = [name for name, a in analyzers if a.graph_statistics_spec is None]
    if python_side:
        raise ValueError(
            "Expected activation quantizers whose statistics are gathered in the graph under a "
            f"{distribute.num_workers(strategy)}-worker strategy (per-tensor tf, tf_enhanced or "
            f"percentile). Received: {len(python_side)} that observe whole batches in Python "
            f"({', '.join(python_side[:5])}{' ...' if len(python_side) > 5 else ''}), which would see "
            "this worker's share of the data only. Calibrate them on one worker, or use a per-tensor "
            "histogram scheme."
        )


def _forward_pass(callback: Any, callback_args: Any) -> calibration_data.ForwardPassCallback | None:
    """AIMET's forward pass from compute_encodings' arguments, or None when they are data."""
    if callback is None:
        raise ValueError("Expected a forward_pass_callback or calibration data. Received: None")
    if callable(callback) and not isinstance(callback, tf.data.Dataset):
        return calibration_data.ForwardPassCallback(callback, callback_args)
    found = calibration_data.as_forward_pass_callback(callback)
    if found is not None and callback_args is not None:
        raise ValueError(
            "Expected the callback's arguments once: in (fn, args) or as forward_pass_callback_args. "
            f"Received: both (forward_pass_callback_args={type(callback_args).__name__})."
        )
    if found is None and callback_args is not None:
        raise ValueError(
            "Expected forward_pass_callback_args only with a callback. Received: calibration data "
            f"({type(callback).__name__}) and forward_pass_callback_args="
            f"{type(callback_args).__name__}."
        )
    return found


@contextlib.contextmanager
def _watching(watches: list[tuple[QuantizationWrapper, NonFiniteWatch]]) -> Iterator[None]:
    """Within this context every wrapper counts its non-finite outputs into its watch."""
    for wrapper, watch in watches:
        wrapper._finite_watch = watch
    try:
        yield
    finally:
        for wrapper, _ in watches:
            wrapper._finite_watch = None


def _raise_on_nonfinite(
    tensors: list[str], watches: list[tuple[QuantizationWrapper, NonFiniteWatch]]
) -> None:
    """Raises if calibration saw NaN/Inf: in quantized tensors (``tensors``, in graph order, with
    their batch counts) or in any layer's output, naming the first such layer in graph order (an
    overflow inside a fused group reaches no quantizer: ReLU turns NaN into a number)."""
    layers = [(wrapper.name, count) for wrapper, watch in watches if (count := watch.read())]
    if not tensors and not layers:
        return
    found = []
    if tensors:
        found.append(
            f"NaN/Inf in these tensors, in graph order: {', '.join(tensors[:10])}"
            f"{' ...' if len(tensors) > 10 else ''}"
        )
    if layers:
        name, count = layers[0]
        later = ", ".join(n for n, _ in layers[1:6]) + (" ..." if len(layers) > 6 else "")
        found.append(
            f"the first layer whose output held NaN/Inf is {name!r} ({count} batch(es))"
            f"{f', later {later}' if later else ''}"
        )
    raise ValueError(
        f"Expected only finite values to calibrate on. Received: {'; '.join(found)}. Fix: check "
        "the inputs and their range (float32 overflows above 3.4e38), or the weights of the "
        "first layer listed."
    )
