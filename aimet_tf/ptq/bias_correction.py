"""Empirical bias correction (Nagel et al., "Data-Free Quantization", 2019, appendix D).

Quantizing a layer's weights and inputs shifts the mean of its output: E[W_q x_q] != E[W x].
The shift is a per-output-channel constant, so the layer's bias can absorb it:

    b_c += E[y_fp32_c] - E[y_sim_c]

where y_fp32 = W x + b is the layer's pre-activation output in the FP32 model (on FP32
activations) and y_sim = W_q x_q + b the same layer in the simulation (quantized weights, the
simulation's own, already corrected, upstream activations, and the layer's input quantizer),
both averaged over calibration samples and every axis except the channel (last) axis. Layers
are corrected in graph order, so each sees the corrections of the layers before it. Layers of
nested Functional/Sequential models are corrected like the others: the pass reads the sim through
a one-level view that calls the sim's own layers (see ``_one_level_view``).

Example:
    >>> sim = QuantizationSimModel(model, default_param_bw=4, config_file="default")
    >>> sim.compute_encodings(calibration_images)
    >>> report = correct_bias(sim, calibration_images, num_batches=8)
    >>> print(report.summary())
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aimet_tf.graph import (
    ModelGraph,
    activation_kind,
    as_functional,
    clone_layer,
    has_nested_models,
    inline_nested_models,
    is_graph_model,
)
from aimet_tf.quantization import calibration_data
from aimet_tf.quantization.quantizers import Quantizer
from aimet_tf.quantization.sim import QuantizationSimModel
from aimet_tf.quantization.wrapper import QuantizationWrapper, get_param_variable

__all__ = ["BiasCorrectionRecord", "BiasCorrectionReport", "correct_bias"]

# What the bias absorbs: the mean error of the whole quantized prefix, or of the layer's weights.
_ERRORS = ("total", "weight")

_L = keras.layers
# Layers whose output is (linear op) + bias, then the optional built-in activation.
_CORRECTABLE = (
    _L.Conv1D, _L.Conv2D, _L.Conv3D,
    _L.DepthwiseConv1D, _L.DepthwiseConv2D,
    _L.SeparableConv1D, _L.SeparableConv2D,
    _L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose,
    _L.Dense,
)


@dataclasses.dataclass(frozen=True)
class BiasCorrectionRecord:
    """One corrected layer.

    Attributes:
        layer: layer name.
        channels: number of output channels.
        mean_abs_shift: mean over channels of |E[y_fp32] - E[y_sim]| (the bias change).
        max_abs_shift: max over channels of the same.
        relative_shift: mean_abs_shift / RMS of the FP32 output (how large the mean error was
            compared with the signal).
        rejected_channels: channels left uncorrected because the shift made their output after
            the following activation worse (``keep_only_improving``).
    """

    layer: str
    channels: int
    mean_abs_shift: float
    max_abs_shift: float
    relative_shift: float
    rejected_channels: int = 0


@dataclasses.dataclass
class BiasCorrectionReport:
    """What ``correct_bias`` changed.

    Attributes:
        corrected: one record per corrected layer, in graph order.
        skipped: (layer, reason) for each Conv/Dense-type layer left alone.
        num_samples: number of calibration samples used.
    """

    corrected: list[BiasCorrectionRecord] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    num_samples: int = 0

    def summary(self) -> str:
        """A human-readable table of the corrections and skips."""
        lines = [
            f"Bias correction on {self.num_samples} samples: {len(self.corrected)} layers "
            f"corrected, {len(self.skipped)} skipped"
        ]
        for r in self.corrected:
            lines.append(
                f"  {r.layer}: {r.channels} channels, mean |shift| {r.mean_abs_shift:.3g}, "
                f"max {r.max_abs_shift:.3g} ({100 * r.relative_shift:.2f}% of output RMS)"
            )
        for name, reason in self.skipped:
            lines.append(f"  {name}: skipped: {reason}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _input_tensor(g: ModelGraph, layer: keras.layers.Layer):
    """The symbolic (first) input of ``layer``'s call in the graph ``g``."""
    model = g.model
    nodes = g.nodes_of(layer)
    if not nodes:
        raise ValueError(
            f"Expected layer {layer.name!r} to be called in model {model.name!r}. Received: a layer "
            "of that name outside its graph. Pass the model the sim was built from (or float_model="
            "None)."
        )
    return g.keras_tensor(nodes[0].inputs[0])


def _single(inputs: list):
    """A one-input model takes a tensor, not a one-element list (Keras warns otherwise)."""
    return inputs[0] if len(inputs) == 1 else inputs


def _open_batch_spec(tensor) -> tf.TensorSpec:
    return tf.TensorSpec((None, *tensor.shape[1:]), tensor.dtype)


def _one_level_view(model: keras.Model) -> keras.Model:
    """A one-level Functional model calling ``model``'s own layers, nested models' layers included.

    ``inline_nested_models`` would copy the layers; here they are the same objects, so the view
    computes with the sim's variables and quantizers, and a bias assigned through it is the sim's.
    Each layer gets one more call node (as a layer shared with another model does); the sim's own
    graph is unchanged. A model without nested models is its own view.

    Raises:
        ValueError: when two layers at different nesting levels share a name (one graph level
            cannot hold both).
    """
    if not has_nested_models(model):
        return as_functional(model, "bias correction")
    names: dict[str, int] = {}

    def count(level: keras.Model, top: bool) -> None:
        for layer in level.layers:
            if is_graph_model(layer):
                count(layer, top=False)
            elif top or not isinstance(layer, keras.layers.InputLayer):
                names[layer.name] = names.get(layer.name, 0) + 1

    count(model, top=True)
    clashes = sorted(n for n, k in names.items() if k > 1)
    if clashes:
        raise ValueError(
            f"Expected unique layer names across model {model.name!r} and its nested models, for bias "
            f"correction to reach the nested layers. Received: {clashes} used more than once. Fix: rename "
            "them, or build the sim on aimet_tf.graph.inline_nested_models(model) (one graph level; a "
            "clashing nested layer becomes '<nested model>_<name>')."
        )

    def call(node, args, kwargs):
        op = node.operation
        if not is_graph_model(op):
            return op(*args, **kwargs)
        inner = ModelGraph(op, "bias correction")
        values = dict(zip(inner.input_names, keras.tree.flatten(args)))
        for inner_node in inner.nodes:
            inner_args, inner_kwargs = inner.call_arguments(inner_node.name, values)
            outputs = keras.tree.flatten(call(inner_node, inner_args, inner_kwargs))
            values.update(zip(inner_node.outputs, outputs))
        return _single([values[t] for t in inner.output_names])

    inputs, outputs = ModelGraph(model, "bias correction").rebuild(call)
    return keras.Model(inputs, outputs, name=model.name)


def _linear_copy(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A copy of ``layer`` without its built-in activation (pre-activation output)."""
    overrides = {"activation": "linear"} if "activation" in layer.get_config() else {}
    return clone_layer(layer, overrides)


class _ChannelMean:
    """Running per-channel mean (and mean square) over every axis but the last."""

    def __init__(self):
        self.total = None
        self.square = None
        self.count = 0

    def add(self, y) -> None:
        y = np.asarray(y, np.float64)
        flat = y.reshape(-1, y.shape[-1])
        s, q = flat.sum(axis=0), (flat * flat).sum(axis=0)
        self.total = s if self.total is None else self.total + s
        self.square = q if self.square is None else self.square + q
        self.count += flat.shape[0]

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    @property
    def rms(self) -> float:
        return float(np.sqrt(np.mean(self.square / self.count)))


def _check_finite_shift(name: str, reference: np.ndarray, observed: np.ndarray) -> None:
    """Raises naming the layer when a mean output (hence the bias shift) holds NaN/Inf."""
    for what, mean in (("FP32 reference", reference), ("simulation", observed)):
        bad = int(np.count_nonzero(~np.isfinite(mean)))
        if bad:
            raise ValueError(
                f"Expected finite mean outputs of layer {name!r} for bias correction. Received: "
                f"NaN/Inf in {bad} of {mean.size} channels of the {what} mean. Fix: check the "
                f"weights of {name!r} and of the layers before it, and the data range. No bias "
                "was changed."
            )


def _snapshot_biases(targets: list[QuantizationWrapper]) -> list:
    """(bias variable, value, bias quantizer, encoding) of every target, to undo a failed pass."""
    saved = []
    for wrapper in targets:
        bias_q = wrapper.param_quantizers_by_path().get("bias")
        encoding = bias_q.get_encoding() if isinstance(bias_q, Quantizer) else None
        saved.append((wrapper.layer.bias, np.array(wrapper.layer.bias.numpy()), bias_q, encoding))
    return saved


def _restore_biases(saved: list) -> None:
    for bias, value, bias_q, encoding in saved:
        bias.assign(value)
        if encoding is not None:
            bias_q.set_encoding(encoding)


def _check_ready(sim: QuantizationSimModel) -> None:
    missing = sim.uncalibrated_quantizers()
    if missing:
        raise RuntimeError(
            f"Bias correction needs a calibrated sim: {len(missing)} enabled quantizers have no "
            f"encoding (e.g. {missing[0]!r}). Call sim.compute_encodings(...) first."
        )


def _reference_means(float_model, float_layers, targets, batches, references) -> None:
    """Adds every target's FP32 pre-activation output (on FP32 inputs) to its running mean."""
    float_graph = ModelGraph(float_model, "bias correction")
    probe_inputs = [_input_tensor(float_graph, float_layers[w.name]) for w in targets]
    probe = keras.Model(_single(float_model.inputs), probe_inputs)
    float_linear = [_linear_copy(float_layers[w.name]) for w in targets]
    # One trace per function: the batch dimension is left open for the last, smaller batch.
    signature = [tf.nest.map_structure(_open_batch_spec, _single(float_model.inputs))]
    run_probe = tf.function(
        lambda x: probe(x, training=False), input_signature=signature, autograph=False
    )
    for batch in batches:
        outputs = tf.nest.flatten(run_probe(batch))
        for layer, ref, x in zip(float_linear, references, outputs):
            ref.add(layer(x))


def _input_function(g: ModelGraph, layer: keras.layers.Layer):
    """A traced function from the model inputs to ``layer``'s input tensor."""
    model = g.model
    prefix = keras.Model(_single(model.inputs), _input_tensor(g, layer))
    return tf.function(
        lambda x: prefix(x, training=False),
        input_signature=[tf.nest.map_structure(_open_batch_spec, _single(model.inputs))],
        autograph=False,
    )


# Activations that mix channels: a per-channel decision about them would not be per channel.
_CROSS_CHANNEL = ("softmax", "log_softmax")


def _following_activation(wrapper: QuantizationWrapper, consumers: dict, model: keras.Model):
    """The float channel-wise nonlinearity applied to the layer's output before anything else
    reads it: its built-in activation, else an activation layer that is its only consumer; None if
    linear or cross-channel (softmax)."""
    activation = getattr(wrapper.layer, "activation", None)
    name = getattr(activation, "__name__", "linear")
    if activation is not None and name != "linear":
        return None if name in _CROSS_CHANNEL else activation
    readers = consumers.get(wrapper.name, [])
    if len(readers) == 1:
        reader = model.get_layer(readers[0])
        layer = reader.layer if isinstance(reader, QuantizationWrapper) else reader
        if activation_kind(layer) == "channelwise":
            return lambda y: layer(y)
    return None


def _channel_sse(a, b) -> np.ndarray:
    """Per-channel (last axis) sum of squared differences, float64."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return (d * d).reshape(-1, d.shape[-1]).sum(axis=0)


def _correct_layers(
    sim_model: keras.Model,
    float_model: keras.Model,
    float_layers: dict,
    targets: list[QuantizationWrapper],
    batches: list,
    report: BiasCorrectionReport,
    error: str,
    keep_only_improving: bool,
    verbose: int,
) -> None:
    """Corrects each target's bias in graph order and records it in ``report`` (see correct_bias).

    ``sim_model`` is the sim's one-level view (``_one_level_view``), ``float_model`` one level too.
    """
    # FP32 side: one pass gives every target's reference mean (the float model never changes).
    references = [_ChannelMean() for _ in targets]
    if error == "total":
        _reference_means(float_model, float_layers, targets, batches, references)

    # Simulation side, layer by layer: each prefix runs through the corrected layers before it.
    sim_graph = ModelGraph(sim_model, "bias correction")
    float_graph = ModelGraph(float_model, "bias correction") if error == "total" else None
    consumers = sim_graph.layer_edges()[1]
    progress = keras.utils.Progbar(len(targets), verbose=verbose, unit_name="layer")
    for i, (wrapper, ref) in enumerate(zip(targets, references)):
        sim_input = _input_function(sim_graph, wrapper)
        float_copy = _linear_copy(wrapper.layer)
        quantized = _linear_copy(wrapper.layer)
        for path, q in wrapper.param_quantizers_by_path().items():
            if q is not None and q.enabled:
                source = get_param_variable(wrapper.layer, path)
                get_param_variable(quantized, path).assign(q(source.value))
        in_q = wrapper.input_quantizers[0] if wrapper.input_quantizers else None

        def sim_output(batch):
            x = sim_input(batch)
            if in_q is not None and in_q.enabled:
                x = in_q(x)
            return x, quantized(x)

        observed = _ChannelMean()
        for batch in batches:
            x, y = sim_output(batch)
            observed.add(y)
            if error == "weight":
                ref.add(float_copy(x))
        _check_finite_shift(wrapper.name, ref.mean, observed.mean)
        shift = ref.mean - observed.mean
        activation = _following_activation(wrapper, consumers, sim_model)
        rejected = 0
        if keep_only_improving and activation is not None:
            # Removing the mean always lowers the pre-activation error; after a nonlinearity it
            # can raise it. Keep the shift only on channels whose activated output gets closer to
            # the reference.
            if error == "total":
                float_input = _input_function(float_graph, float_layers[wrapper.name])
                float_linear = _linear_copy(float_layers[wrapper.name])
            without, with_shift = 0.0, 0.0
            shift32 = tf.constant(shift, tf.float32)
            for batch in batches:
                x, y = sim_output(batch)
                target = float_copy(x) if error == "weight" else float_linear(float_input(batch))
                target = activation(target)
                without = without + _channel_sse(activation(y), target)
                with_shift = with_shift + _channel_sse(activation(y + shift32), target)
            worse = np.asarray(with_shift) >= np.asarray(without)
            rejected = int(np.sum(worse))
            shift = np.where(worse, 0.0, shift)
        bias = wrapper.layer.bias
        bias.assign((np.asarray(bias.numpy(), np.float64) + shift).astype(np.float32))
        bias_q = wrapper.param_quantizers_by_path().get("bias")
        if bias_q is not None and bias_q.enabled and not bias_q.frozen:
            analyzer = bias_q.make_analyzer()
            analyzer.observe(np.asarray(bias.numpy()))
            bias_q.set_encoding(bias_q.encoding_from_range(*bias_q.compute_range(analyzer)))
        report.corrected.append(
            BiasCorrectionRecord(
                layer=wrapper.name,
                channels=int(shift.size),
                mean_abs_shift=float(np.mean(np.abs(shift))),
                max_abs_shift=float(np.max(np.abs(shift))),
                relative_shift=float(np.mean(np.abs(shift)) / max(ref.rms, 1e-12)),
                rejected_channels=rejected,
            )
        )
        progress.update(i + 1)


def correct_bias(
    sim: QuantizationSimModel,
    data: Any,
    *,
    float_model: keras.Model | None = None,
    num_batches: int | None = None,
    batch_size: int = 32,
    error: str = "total",
    keep_only_improving: bool = True,
    verbose: int = 1,
) -> BiasCorrectionReport:
    """Shifts each layer's bias in ``sim`` by the mean error its quantization causes.

    For every Conv / Depthwise / Separable / Transposed conv / Dense layer with a bias, nested
    models' layers included, in graph order: b_c += mean(y_fp32_c) - mean(y_sim_c), means over
    the calibration samples and all non-channel axes, y the layer's output before its built-in
    activation and output quantizer (see the module docstring). The sim's float bias variables
    change in place; its weights and activation encodings do not (the shift is small against
    the activation ranges; recompute them with ``sim.compute_encodings`` if wanted). An
    enabled, unfrozen bias quantizer gets its encoding recomputed from the new bias.

    Removing the mean always lowers a layer's pre-activation error, but after a nonlinearity
    (ReLU) it can raise it where quantization noise is as large as the signal: on the bundled
    Fashion-MNIST CNN at W4A8 per-tensor without CLE, the unguarded correction once took
    accuracy from 87.0% down to 74.8%. With ``keep_only_improving`` (default) a channel's shift
    is kept only if the layer's output after its activation (built-in, or an activation layer
    that is its only reader) moves closer to the reference on the calibration data
    (``benchmarks/bench_cle.py`` measures both).

    Args:
        sim: a calibrated ``QuantizationSimModel`` (``compute_encodings`` done).
        data: calibration inputs, read by ``aimet_tf.quantization.calibration_data``: an array,
            a dict by input name or an (x, y) tuple cut into ``batch_size`` batches, or a list /
            tf.data.Dataset / iterable of batches (labels are dropped; a list is always a list
            of batches). Every pass reuses the same batches.
        float_model: the FP32 reference with the same layer names (nested models are inlined
            in a copy); default ``sim.float_model()`` taken before any change.
        num_batches: use at most this many batches (None: all).
        batch_size: batch size when ``data`` is an array.
        error: "total" (AIMET's empirical correction): the reference is the FP32 model on FP32
            inputs, so the bias also absorbs the mean error arriving from upstream layers;
            "weight": the reference is the layer's float weights on the sim's own input,
            b += E[W x_q] - E[W_q x_q], the weight quantization's mean error alone.
        keep_only_improving: keep a channel's shift only if it brings the activated output
            strictly closer to the reference (ties, e.g. a channel the ReLU always zeroes, stay
            uncorrected; costs one more pass per layer followed by a channel-wise activation).
        verbose: 1 shows a progress bar over layers, 0 is silent.

    Returns:
        A ``BiasCorrectionReport`` listing corrected layers and the skipped ones (no bias, or
        channels_first) with the reason.

    Raises:
        RuntimeError: if the sim is not calibrated.
        TypeError / ValueError: for unusable data (NaN/Inf included), a float model missing a
            sim layer, a layer whose mean output is NaN/Inf (named), or a layer name used both
            in a nested model and elsewhere; every bias is then left as it was.

    Example:
        >>> report = correct_bias(sim, x_calibration, num_batches=16)
    """
    if not isinstance(sim, QuantizationSimModel):
        raise TypeError(
            f"Expected a QuantizationSimModel. Received: {type(sim).__name__}. Build one with "
            "QuantizationSimModel(model, ...) and call compute_encodings first."
        )
    if error not in _ERRORS:
        raise ValueError(f"Expected error in {_ERRORS}. Received: error={error!r}")
    _check_ready(sim)
    batches = [
        calibration_data.as_model_input(batch)
        for batch in calibration_data.iterate_batches(
            data, calibration_data.model_inputs(sim.model), batch_size, num_batches,
            purpose="bias correction data",
        )
    ]
    if float_model is None:
        float_model = sim.float_model()
    float_model = as_functional(float_model, "bias correction")
    if has_nested_models(float_model):
        float_model = inline_nested_models(float_model)  # a copy; unique names stay as they are
    sim_model = _one_level_view(sim.model)
    report = BiasCorrectionReport(
        num_samples=sum(int(tf.nest.flatten(b)[0].shape[0]) for b in batches)
    )

    float_layers = {l.name: l for l in float_model.layers}
    targets: list[QuantizationWrapper] = []
    for layer in sim_model.layers:
        if not isinstance(layer, QuantizationWrapper) or not isinstance(layer.layer, _CORRECTABLE):
            continue
        inner = layer.layer
        if not inner.use_bias:
            report.skipped.append(
                (layer.name, "no bias (use_bias=False): fold a BatchNormalization into it or "
                 "rebuild the layer with use_bias=True")
            )
            continue
        if getattr(inner, "data_format", "channels_last") != "channels_last":
            report.skipped.append((layer.name, f"data_format={inner.data_format!r}"))
            continue
        if layer.name not in float_layers:
            raise ValueError(
                f"The float model has no layer {layer.name!r}. Expected the model the sim was "
                "built from (same layer names). Pass float_model=None to use sim.float_model()."
            )
        targets.append(layer)
    if not targets:
        logging.warning("correct_bias: no layer to correct")
        return report

    saved = _snapshot_biases(targets)
    try:
        _correct_layers(sim_model, float_model, float_layers, targets, batches, report, error,
                        keep_only_improving, verbose)
    except BaseException:
        _restore_biases(saved)
        raise
    logging.info(
        "correct_bias: %d layers corrected, %d skipped, %d samples",
        len(report.corrected),
        len(report.skipped),
        report.num_samples,
    )
    return report
