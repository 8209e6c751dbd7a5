"""Make a model, and its quantization simulation, match what TFLite's integer kernels compute.

Two steps, one before and one after the simulation is built:

* ``prepare_model_for_tflite(model)`` rewrites the float model: batch norms are folded into the
  layer before them (TFLite only ever sees the folded weight, so the simulation must quantize that
  one), separable convolutions become a depthwise plus a 1x1 convolution (TFLite has no
  separable op; the tensor between the two must carry its own quantizer), and a Conv/Dense
  activation TFLite cannot fuse (softmax, sigmoid, ...) becomes a layer of its own.
* ``prepare_sim_for_tflite(sim)`` adds to the simulation what the integer kernels do beyond
  fake quantization, as measured against LiteRT 2.3 here:

  - biases are int32 on the accumulator grid s_in * s_w (``BiasQuantizer``);
  - the int32 accumulator is requantized onto the output grid as the kernel does it: XNNPACK's
    float multiply with ties-to-even for int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED,
    TFLite's fixed-point multiply-and-shift (two roundings) for CONV_2D with int4 filters and
    TRANSPOSE_CONV (``Requantizer``);
  - AVERAGE_POOL_2D, MEAN, ADD and MUL round as their kernels do;
  - CONCATENATION gives its inputs its own output grid, and pooling / reshaping ops keep their
    input grid on their output: those tensors share one encoding ("tied");
  - SOFTMAX / LOGISTIC / TANH outputs have fixed int8 grids.

  Measured with these models, LiteRT's default kernels then reproduce the simulation bit for bit
  (tests/export). It is idempotent, and ``export_tflite`` runs it itself, so calling it yourself
  only matters if you want ``sim.model`` to predict the .tflite file before exporting.

Example:
    >>> model = prepare_model_for_tflite(model)
    >>> sim = QuantizationSimModel(model, config_file=TFLITE_CONFIG)
    >>> prepare_sim_for_tflite(sim)
    >>> sim.compute_encodings(calibration_images)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import weakref
from typing import Any

import keras
import numpy as np
from absl import logging

from aimet_tf.kernels.target import TFLITE_REFERENCE, DspTarget
from aimet_tf.ptq.batch_norm_fold import fold_all_batch_norms
from aimet_tf.graph import ModelGraph, as_functional, onnx_op_type, replace_with_subgraph
from aimet_tf.quantization.primitives import Encoding
from aimet_tf.quantization.quantizers import BiasQuantizer, Quantizer, Requantizer
from aimet_tf.layers import ClassToken
from aimet_tf.quantization.registry import get_layer_spec
from aimet_tf.quantization.resize_bilinear import bilinear_resize_flags, link_bilinear_resize
from aimet_tf.quantization.wrapper import QuantizationWrapper, get_param_variable

__all__ = [
    "KERNEL_TARGETS",
    "TFLITE_CONFIG",
    "kernel_target_of",
    "model_input_quantizers",
    "set_undelegated_layers",
    "TflitePreparation",
    "prepare_model_for_tflite",
    "prepare_sim_for_tflite",
    "separate_activations",
    "split_separable_convs",
]

TFLITE_CONFIG: str = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "quantization", "presets", "tflite.json"
)
"""Path of the hardware config that describes TFLite's int8 scheme (pass it as ``config_file``):
per-channel strict-symmetric weights for convolutions and Dense (as TFLite's own PTQ writes
them), per-tensor for transposed convolutions and MatMul, asymmetric 8-bit activations, fused
Conv/Dense/Add + ReLU/ReLU6."""

_L = keras.layers

# Ops whose TFLite kernels require the same quantization on input and output.
_SAME_SCALE_LAYERS: tuple[type, ...] = (
    _L.AveragePooling1D, _L.AveragePooling2D, _L.AveragePooling3D,
    _L.MaxPooling1D, _L.MaxPooling2D, _L.MaxPooling3D,
    _L.GlobalMaxPooling1D, _L.GlobalMaxPooling2D, _L.GlobalMaxPooling3D,
)
# Layers whose int32 accumulator gets a bias on the s_in * s_w grid.
_ACCUMULATOR_LAYERS: tuple[type, ...] = (
    _L.Conv1D, _L.Conv2D, _L.Conv3D, _L.DepthwiseConv1D, _L.DepthwiseConv2D, _L.Dense,
    _L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose,
)
_AVERAGE_POOLS = (_L.AveragePooling1D, _L.AveragePooling2D, _L.AveragePooling3D)
_GLOBAL_AVERAGE_POOLS = (
    _L.GlobalAveragePooling1D, _L.GlobalAveragePooling2D, _L.GlobalAveragePooling3D,
)
_TRANSPOSED = (_L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose)
_DEPTHWISE = (_L.DepthwiseConv1D, _L.DepthwiseConv2D)
# Activations TFLite fuses into the op before them (the fused op clamps after requantizing).
_FUSABLE_ACTIVATIONS = frozenset({"relu", "relu6"})

KERNEL_TARGETS = ("default", "builtin", "reference")
"""The kernel paths a simulation can reproduce: LiteRT's default op resolver (XNNPACK for the
ops it takes, the optimized builtin kernels for the rest), the optimized builtin kernels without
a delegate, and the reference kernels (``OpResolverType.BUILTIN_REF``; the same arithmetic as
`aimet_tf.kernels.TFLITE_REFERENCE`). A `DspTarget` names another integer target modelled by
`aimet_tf.kernels`."""

# How each kernel path's QUANTIZE rounds a float model input (primitives.INPUT_ROUNDINGS).
_INPUT_ROUNDING = {"default": "reciprocal_half_even", "builtin": "reciprocal_half_even",
                   "reference": "divide_half_away"}

# The kernel path each prepared sim reproduces (a sim without an entry was never prepared).
_PREPARED: "weakref.WeakKeyDictionary[Any, str | DspTarget]" = weakref.WeakKeyDictionary()


def _resolve_kernels(kernels: "str | DspTarget") -> "str | DspTarget":
    if isinstance(kernels, DspTarget):
        return kernels
    if kernels not in KERNEL_TARGETS:
        raise ValueError(
            f"Expected kernels in {KERNEL_TARGETS} or a aimet_tf.kernels.DspTarget. Received: "
            f"kernels={kernels!r}"
        )
    return kernels


def _dsp_target(kernels: "str | DspTarget") -> DspTarget | None:
    """The integer target whose arithmetic the "dsp_*" requantizer modes reproduce, if any."""
    if isinstance(kernels, DspTarget):
        return kernels
    return TFLITE_REFERENCE if kernels == "reference" else None


# For sims exported with the default resolver: the layers whose ops XNNPACK did not take (they run
# in LiteRT's optimized builtin kernels), read off the exported file.
_NOT_DELEGATED: "weakref.WeakKeyDictionary[Any, frozenset[str]]" = weakref.WeakKeyDictionary()


def set_undelegated_layers(sim, layer_names) -> None:
    """Records which layers' ops XNNPACK leaves to LiteRT's builtin kernels in the exported file
    (``export_tflite`` reads them off the file); the "default" preparation models those with the
    builtin kernels' arithmetic."""
    _NOT_DELEGATED[sim] = frozenset(layer_names)


def kernel_target_of(sim) -> "str | DspTarget | None":
    """The kernel path ``prepare_sim_for_tflite`` last prepared ``sim`` for (None: never)."""
    return _PREPARED.get(sim)


# ------------------------------------------------------------------------------------------------
# Model rewrites


class _SeparablePair:
    """Stands in for a SeparableConv layer during cloning: calling it applies both halves."""

    def __init__(self, depthwise: keras.layers.Layer, pointwise: keras.layers.Layer):
        self.depthwise = depthwise
        self.pointwise = pointwise


def _split_layer(layer) -> _SeparablePair:
    config = layer.get_config()
    one_d = isinstance(layer, _L.SeparableConv1D)
    depthwise_cls = _L.DepthwiseConv1D if one_d else _L.DepthwiseConv2D
    pointwise_cls = _L.Conv1D if one_d else _L.Conv2D
    depthwise = depthwise_cls(
        kernel_size=config["kernel_size"],
        strides=config["strides"],
        padding=config["padding"],
        depth_multiplier=config["depth_multiplier"],
        data_format=config["data_format"],
        dilation_rate=config["dilation_rate"],
        use_bias=False,
        name=f"{layer.name}_depthwise",
    )
    pointwise = pointwise_cls(
        filters=config["filters"],
        kernel_size=1,
        data_format=config["data_format"],
        activation=config["activation"],
        use_bias=config["use_bias"],
        name=f"{layer.name}_pointwise",
    )
    return _SeparablePair(depthwise, pointwise)


def split_separable_convs(model: keras.Model) -> keras.Model:
    """Returns a copy of ``model`` with each SeparableConv1D/2D split into two layers.

    ``name`` becomes ``name_depthwise`` (DepthwiseConv, no bias, the separable layer's depthwise
    kernel) followed by ``name_pointwise`` (1x1 Conv with the pointwise kernel, bias and
    activation); the output is the same up to float rounding. TFLite has no separable op, and the
    intermediate tensor needs a quantizer of its own to run in int8.

    Args:
        model: a Functional or built Sequential model; not modified.

    Returns:
        A new Functional model.
    """
    functional = as_functional(model, "TFLite preparation")
    originals: dict[int, keras.layers.Layer] = {}

    def clone(layer):
        if isinstance(layer, keras.Model):
            return split_separable_convs(layer)
        if isinstance(layer, (_L.SeparableConv1D, _L.SeparableConv2D)):
            pair = _split_layer(layer)
            originals[id(pair)] = layer
            return pair
        new = layer.__class__.from_config(layer.get_config())
        if layer.get_build_config():
            new.build_from_config(layer.get_build_config())
        new.set_weights(layer.get_weights())
        return new

    def call(layer, *args, **kwargs):
        if not isinstance(layer, _SeparablePair):
            return layer(*args, **kwargs)
        source = originals[id(layer)]
        hidden = layer.depthwise(args[0])
        out = layer.pointwise(hidden)
        layer.depthwise.kernel.assign(source.depthwise_kernel.numpy())
        layer.pointwise.kernel.assign(source.pointwise_kernel.numpy())
        if source.use_bias:
            layer.pointwise.bias.assign(source.bias.numpy())
        return out

    return keras.models.clone_model(functional, clone_function=clone, call_function=call)


def _affine_of(layer: keras.layers.Layer, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(a, c) with layer(x) = a * x + c per channel (last axis) at inference, or None."""
    if isinstance(layer, _L.Rescaling):
        scale = np.broadcast_to(np.asarray(layer.scale, np.float64), (channels,))
        offset = np.broadcast_to(np.asarray(layer.offset, np.float64), (channels,))
        return scale, offset
    if isinstance(layer, _L.Normalization) and not layer.invert and layer.axis in ((-1,), (3,)):
        mean = np.asarray(layer.mean, np.float64).reshape(-1)
        var = np.asarray(layer.variance, np.float64).reshape(-1)
        if mean.size not in (1, channels):
            return None
        std = np.maximum(np.sqrt(var), keras.backend.epsilon())
        return np.broadcast_to(1.0 / std, (channels,)), np.broadcast_to(-mean / std, (channels,))
    if isinstance(layer, _L.BatchNormalization) and layer.axis in (-1, 3):
        mean = np.asarray(layer.moving_mean.numpy(), np.float64)
        a = np.asarray(layer.gamma.numpy(), np.float64) if layer.scale else np.ones_like(mean)
        a = a / np.sqrt(np.asarray(layer.moving_variance.numpy(), np.float64) + float(layer.epsilon))
        beta = np.asarray(layer.beta.numpy(), np.float64) if layer.center else np.zeros_like(mean)
        return a, beta - mean * a
    return None


def affine_layers_as_depthwise(model: keras.Model, batch_norms: bool = True) -> keras.Model:
    """Returns a copy of ``model`` where per-channel affine layers on images are 1x1 depthwise convs.

    ``Rescaling`` (x * scale + offset), ``Normalization`` ((x - mean) / std) and a
    ``BatchNormalization`` that nothing could fold into compute a * x + c per channel. TFLite would
    run them as MUL/ADD with float constants; as ``DepthwiseConv2D(1)`` with kernel a and bias c
    (same name) they run in int8 like any depthwise conv, each channel's weight exactly on its
    per-channel grid. Only rank-4 channels-last inputs are rewritten; ``batch_norms=False`` leaves
    batch norms alone.
    """
    kinds = (_L.Rescaling, _L.Normalization) + ((_L.BatchNormalization,) if batch_norms else ())
    g = ModelGraph(model, "TFLite preparation")
    builders = {}
    for node in g.nodes:
        layer = node.operation
        if not isinstance(layer, kinds) or len(node.inputs) != 1 or g.call_count(layer) != 1:
            continue
        (shape, dtype), = g.input_specs(node.name)
        if len(shape) != 4 or shape[-1] is None or not dtype.startswith("float"):
            continue
        affine = _affine_of(layer, int(shape[-1]))
        if affine is None:
            continue
        a, c = affine
        conv = _L.DepthwiseConv2D(1, use_bias=True, name=layer.name)
        conv.build(shape)
        conv.set_weights([a.reshape(1, 1, -1, 1).astype(np.float32), c.astype(np.float32)])
        builders[node.name] = lambda args, kwargs, conv=conv: conv(keras.tree.flatten(args)[0])
    return replace_with_subgraph(model, builders) if builders else model


def silu_as_sigmoid_times_input(model: keras.Model) -> keras.Model:
    """Returns a copy of ``model`` where each ``Activation("silu")`` is ``Multiply()([x, sigmoid(x)])``.

    TFLite has no int8 SiLU: it runs LOGISTIC, whose output sits on the fixed 1/256 grid, then MUL.
    As two layers the simulation quantizes the sigmoid output on that grid too, so it computes what
    the file computes. The Multiply keeps the layer's name; the sigmoid is ``"<name>_sigmoid"``.
    """
    def build(name):
        def silu(args, kwargs):
            x = keras.tree.flatten(args)[0]
            return _L.Multiply(name=name)([x, _L.Activation("sigmoid", name=f"{name}_sigmoid")(x)])

        return silu

    g = ModelGraph(model, "TFLite preparation")
    builders = {
        node.name: build(node.name)
        for node in g.nodes
        if isinstance(node.operation, _L.Activation)
        and getattr(node.operation.activation, "__name__", None) in ("silu", "swish")
    }
    return replace_with_subgraph(model, builders) if builders else model


_BINARY_MERGES = (_L.Add, _L.Multiply, _L.Maximum, _L.Minimum)


def binary_merges(model: keras.Model) -> keras.Model:
    """Returns a copy of ``model`` where an Add/Multiply/Maximum/Minimum of n > 2 inputs is a chain
    of n - 1 two-input layers, ((x0 + x1) + x2) + ..., as Keras computes it.

    The converter writes one two-input op per step, each with an int8 output: as layers, every
    partial result gets its own output quantizer in the simulation too (BERT's token + segment +
    position embedding sum). The last layer keeps the name; the partial ones are
    ``"<name>_partial_<k>"``.
    """
    def build(layer):
        def chain(args, kwargs):
            inputs = keras.tree.flatten(args)
            out = inputs[0]
            for k, x in enumerate(inputs[1:], start=1):
                last = k == len(inputs) - 1
                out = type(layer)(name=layer.name if last else f"{layer.name}_partial_{k}")([out, x])
            return out

        return chain

    g = ModelGraph(model, "TFLite preparation")
    builders = {
        node.name: build(node.operation)
        for node in g.nodes
        if isinstance(node.operation, _BINARY_MERGES) and len(node.inputs) > 2
    }
    return replace_with_subgraph(model, builders) if builders else model


def separate_activations(model: keras.Model) -> keras.Model:
    """Returns a copy of ``model`` where a Conv/Dense activation TFLite cannot fuse is a layer.

    TFLite fuses only ReLU / ReLU6 into CONV_2D / FULLY_CONNECTED; any other built-in
    ``activation=`` (softmax, sigmoid, tanh, ...) runs as an op of its own whose input must be
    quantized, which needs a quantizer the simulation can only place between two layers. A layer
    ``name`` with such an activation becomes ``name`` (linear) followed by
    ``Activation(..., name=f"{name}_activation")``.

    Args:
        model: a Functional or built Sequential model; not modified.

    Returns:
        A new Functional model computing the same function.
    """
    functional = as_functional(model, "TFLite preparation")
    activations: dict[int, Any] = {}

    def clone(layer):
        if isinstance(layer, keras.Model):
            return separate_activations(layer)
        config = layer.get_config()
        activation = getattr(layer, "activation", None)
        name = getattr(activation, "__name__", None)
        split = (
            isinstance(layer, _ACCUMULATOR_LAYERS + (_L.SeparableConv1D, _L.SeparableConv2D))
            and activation is not None
            and name not in ("linear",) + tuple(_FUSABLE_ACTIVATIONS)
        )
        if split:
            config["activation"] = "linear"
        new = layer.__class__.from_config(config)
        if layer.get_build_config():
            new.build_from_config(layer.get_build_config())
        new.set_weights(layer.get_weights())
        if split:
            activations[id(new)] = _L.Activation(activation, name=f"{layer.name}_activation")
        return new

    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        if id(layer) in activations:
            out = activations[id(layer)](out)
        return out

    return keras.models.clone_model(functional, clone_function=clone, call_function=call)


def prepare_model_for_tflite(model: keras.Model, fold_batch_norms: bool = True) -> keras.Model:
    """Folds batch norms, splits separable convolutions and unfusable activations.

    W' = W * gamma / sigma, b' = beta + (b - mu) * gamma / sigma for every foldable
    (layer, BatchNormalization) pair (``aimet_tf.ptq.fold_all_batch_norms``), then
    ``affine_layers_as_depthwise`` (Rescaling, Normalization and unfoldable batch norms on images become
    1x1 depthwise convs), ``split_separable_convs``, ``separate_activations``,
    ``silu_as_sigmoid_times_input`` and ``binary_merges``. The model computes the same function
    up to float rounding; build the simulation on the result.

    Args:
        model: a Functional or built Sequential Keras model; not modified.
        fold_batch_norms: False keeps the batch norms, for QAT with batch norms in place: the
            ``tflite`` config keeps Conv+BN(+ReLU) free of quantizers inside, and
            ``fold_all_batch_norms_to_scale(sim)`` folds them into the weight grids after
            training, before ``export_tflite``.

    Returns:
        A new Functional model ready for ``QuantizationSimModel(..., config_file=TFLITE_CONFIG)``.
    """
    if fold_batch_norms:
        model = fold_all_batch_norms(model)[1]
    # Kept batch norms (QAT with batch norms in place) train; only the others become convs.
    model = affine_layers_as_depthwise(model, batch_norms=fold_batch_norms)
    return binary_merges(silu_as_sigmoid_times_input(separate_activations(split_separable_convs(model))))


# ------------------------------------------------------------------------------------------------
# Simulation graph


@dataclasses.dataclass(frozen=True)
class _Source:
    """Where a wrapper input comes from: an output of a wrapper, or a model input (wrapper None)."""

    wrapper: QuantizationWrapper | None
    index: int = 0


class _SimGraph:
    """Sources and consumers of every wrapper of a sim, across nested models."""

    def __init__(self, model: keras.Model):
        self.order: list[QuantizationWrapper] = []
        self.sources: dict[int, list[_Source | None]] = {}
        self.consumers: dict[int, list[tuple[QuantizationWrapper, int]]] = {}
        self.model_outputs: set[int] = set()
        outputs = self._visit(model, [_Source(None, k) for k in range(len(model.inputs))])
        for src in outputs:
            if src is not None and src.wrapper is not None:
                self.model_outputs.add(id(src.wrapper))

    def _visit(self, model: keras.Model, outer: list[_Source | None]) -> list[_Source | None]:
        g = ModelGraph(model, "TFLite preparation")
        produced: dict[str, _Source | None] = dict(zip(g.input_names, outer))
        for node in g.nodes:
            op = node.operation
            srcs = [produced.get(t) for t in node.inputs]
            if isinstance(op, keras.Model):
                outs = self._visit(op, srcs)
            elif isinstance(op, QuantizationWrapper):
                self.order.append(op)
                self.sources[id(op)] = srcs
                for i, src in enumerate(srcs):
                    if src is not None and src.wrapper is not None:
                        self.consumers.setdefault(id(src.wrapper), []).append((op, i))
                outs = [_Source(op, k) for k in range(len(node.outputs))]
            else:
                outs = [None] * len(node.outputs)
            for t, src in zip(node.outputs, outs):
                produced[t] = src
        return [produced.get(t) for t in g.output_names]


# A slot holding a quantizer: (wrapper, "input" | "output", index).
_Slot = tuple[QuantizationWrapper, str, int]


def _slot_get(slot: _Slot):
    wrapper, kind, index = slot
    slots = wrapper.input_quantizers if kind == "input" else wrapper.output_quantizers
    return slots[index] if index < len(slots) else None


def _active(q: Any) -> bool:
    return isinstance(q, Quantizer) and q.enabled


def _is_same_scale(wrapper: QuantizationWrapper) -> bool:
    layer = wrapper.layer
    if isinstance(layer, _SAME_SCALE_LAYERS) or bilinear_resize_flags(layer) is not None:
        return True
    try:
        return get_layer_spec(layer).passthrough
    except NotImplementedError:
        return False


def _grid_slot_of_source(graph: _SimGraph, src: _Source | None) -> _Slot | None:
    """The slot whose quantizer defines the grid of the tensor ``src`` (None: no grid)."""
    seen = 0
    while src is not None and src.wrapper is not None and seen < 10_000:
        seen += 1
        slot = (src.wrapper, "output", src.index)
        if _active(_slot_get(slot)):
            return slot
        if not _is_same_scale(src.wrapper):
            return None
        wrapper = src.wrapper
        if wrapper.input_quantizers and _active(wrapper.input_quantizers[0]):
            return (wrapper, "input", 0)
        sources = graph.sources.get(id(wrapper), [])
        src = sources[0] if sources else None
    return None


def _grid_slot_of_input(graph: _SimGraph, wrapper: QuantizationWrapper, index: int) -> _Slot | None:
    if index < len(wrapper.input_quantizers) and _active(wrapper.input_quantizers[index]):
        return (wrapper, "input", index)
    sources = graph.sources.get(id(wrapper), [])
    return _grid_slot_of_source(graph, sources[index] if index < len(sources) else None)


def _output_grid_quantizer(graph: _SimGraph, wrapper: QuantizationWrapper) -> Quantizer | None:
    """The grid a layer's output lands on: its own output quantizer, or that of a fused ReLU."""
    current = wrapper
    for _ in range(3):
        q = current.output_quantizers[0] if current.output_quantizers else None
        if _active(q):
            return q
        consumers = graph.consumers.get(id(current), [])
        if len(consumers) != 1 or id(current) in graph.model_outputs:
            return None
        nxt, index = consumers[0]
        if index < len(nxt.input_quantizers) and nxt.input_quantizers[index] is not None:
            return None
        if not _is_fusable_activation(nxt.layer):
            return None
        current = nxt
    return None


def _is_fusable_activation(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, _L.ReLU):
        return float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0 and (
            layer.max_value is None or float(layer.max_value) == 6.0
        )
    if isinstance(layer, _L.Activation):
        return getattr(layer.activation, "__name__", None) in _FUSABLE_ACTIVATIONS
    return False


# ------------------------------------------------------------------------------------------------
# Simulation preparation


@dataclasses.dataclass
class TflitePreparation:
    """What ``prepare_sim_for_tflite`` changed in the simulation.

    Attributes:
        kernels: the kernel path the simulation now reproduces (``KERNEL_TARGETS`` or a
            `DspTarget`).
        bias_quantizers: layers whose bias is now rounded to int32 on s_in * s_w.
        requantizers: layers whose output is now requantized as their TFLite kernel does it.
        tied: groups of tensor slots ("layer/input:i" or "layer/output:i") whose quantizers now
            share one encoding (``Quantizer.tie_to``) because TFLite gives them one grid.
        fixed_grids: layers whose output quantizer now holds (frozen) the fixed int8 grid of
            TFLite's SOFTMAX / LOGISTIC (scale 1/256, zero point -128) or TANH (1/128, 0).
    """

    kernels: "str | DspTarget" = "default"
    bias_quantizers: list[str] = dataclasses.field(default_factory=list)
    requantizers: list[str] = dataclasses.field(default_factory=list)
    tied: list[tuple[str, ...]] = dataclasses.field(default_factory=list)
    fixed_grids: list[str] = dataclasses.field(default_factory=list)


def _slot_name(slot: _Slot) -> str:
    wrapper, kind, index = slot
    return f"{wrapper.name}/{kind}:{index}"


def _tie_grids(graph: _SimGraph) -> list[tuple[str, ...]]:
    """Ties the quantizers of the slots TFLite gives one grid (union-find on slots)."""
    parent: dict[tuple[int, str, int], tuple[int, str, int]] = {}
    slots: dict[tuple[int, str, int], _Slot] = {}

    def key(slot: _Slot):
        k = (id(slot[0]), slot[1], slot[2])
        slots[k] = slot
        parent.setdefault(k, k)
        return k

    def find(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    def union(a: _Slot, b: _Slot):
        ra, rb = find(key(a)), find(key(b))
        if ra != rb:
            parent[rb] = ra

    position = {id(w): i for i, w in enumerate(graph.order)}
    concat_outputs: set[tuple[int, str, int]] = set()
    for wrapper in graph.order:
        out_slot = (wrapper, "output", 0)
        if isinstance(wrapper.layer, _L.Concatenate):
            if not _active(_slot_get(out_slot)):
                continue
            concat_outputs.add(key(out_slot))
            for i in range(len(graph.sources.get(id(wrapper), []))):
                if i < len(wrapper.input_quantizers) and _active(wrapper.input_quantizers[i]):
                    union(out_slot, (wrapper, "input", i))
                src_slot = _grid_slot_of_source(graph, graph.sources[id(wrapper)][i])
                if src_slot is not None:
                    union(out_slot, src_slot)
        elif _is_same_scale(wrapper) and _active(_slot_get(out_slot)):
            in_slot = _grid_slot_of_input(graph, wrapper, 0)
            if in_slot is not None:
                union(in_slot, out_slot)

    groups: dict[tuple[int, str, int], list[tuple[int, str, int]]] = {}
    for k in parent:
        groups.setdefault(find(k), []).append(k)
    tied = []
    for members in groups.values():
        if len(members) < 2:
            continue
        # The grid of the most downstream concatenation wins (TFLite propagates it upstream);
        # without one, the most upstream tensor's grid (pooling keeps its input's grid).
        concats = [k for k in members if k in concat_outputs]
        if concats:
            leader_key = max(concats, key=lambda k: position[k[0]])
        else:
            leader_key = min(members, key=lambda k: (position[k[0]], k[1] == "output"))
        leader = _slot_get(slots[leader_key])
        leader.tie_to(None)
        for k in members:
            follower = _slot_get(slots[k])
            if follower is not leader:
                follower.tie_to(leader)
        tied.append(tuple(sorted(_slot_name(slots[k]) for k in members)))
    return tied


# TFLite's int8 kernels for these functions produce a fixed output grid (min, max).
_FIXED_OUTPUT_RANGES = {
    "softmax": (0.0, 255.0 / 256.0),
    "sigmoid": (0.0, 255.0 / 256.0),
    "tanh": (-1.0, 127.0 / 128.0),
}


def _fixed_output_range(layer: keras.layers.Layer) -> tuple[float, float] | None:
    if isinstance(layer, _L.Softmax):
        return _FIXED_OUTPUT_RANGES["softmax"]
    if isinstance(layer, _L.Activation):
        return _FIXED_OUTPUT_RANGES.get(getattr(layer.activation, "__name__", None))
    return None


def _fix_grid(q: Any, bounds: tuple[float, float] | None) -> bool:
    if bounds is None or not _active(q) or q.bitwidth != 8 or q.per_channel:
        return False
    q.tie_to(None)
    q.set_encoding(Encoding(np.float32(bounds[0]), np.float32(bounds[1]), 8, False, False))
    q.frozen = True
    return True


def _fix_output_grids(graph: _SimGraph) -> list[str]:
    """Sets and freezes the fixed int8 output grids of Softmax / sigmoid / tanh layers, and of
    the softmax probabilities inside an attention layer (its internal ``attention_probs``)."""
    fixed = []
    for wrapper in graph.order:
        q = wrapper.output_quantizers[0] if wrapper.output_quantizers else None
        if _fix_grid(q, _fixed_output_range(wrapper.layer)):
            fixed.append(wrapper.name)
        if isinstance(wrapper.layer, _L.MultiHeadAttention):
            probs = wrapper.internal_quantizers.get("attention_probs")
            if _fix_grid(probs, _FIXED_OUTPUT_RANGES["softmax"]):
                fixed.append(f"{wrapper.name}/attention_probs")
    return fixed


# An attention layer's projections: (sub-layer, where its input grid comes from: the layer's
# input slot, or an internal tensor).
_ATTENTION_PROJECTIONS = (
    ("_query_dense", 0), ("_key_dense", 1), ("_value_dense", 1), ("_output_dense", "attention_context"),
)


def _link_attention_biases(graph: _SimGraph, wrapper: QuantizationWrapper) -> bool:
    """Puts the int32 grid s_in * s_w on an attention layer's projection biases.

    TFLite's FULLY_CONNECTED adds its bias as int32 levels of the input step times the weight
    step; the query projection reads the layer's first input, key and value the second (the
    first again in self-attention called as ``mha(x, x)``), the output projection the internal
    context tensor.
    """
    params = wrapper.param_quantizers_by_path()
    linked = False
    for sub, source in _ATTENTION_PROJECTIONS:
        weight_q = params.get(f"{sub}.kernel")
        path = f"{sub}.bias"
        if not _active(weight_q) or path not in params or get_param_variable(wrapper.layer, path) is None:
            continue
        if isinstance(source, str):
            input_q = wrapper.internal_quantizers.get(source)
        else:
            n_inputs = len(graph.sources.get(id(wrapper), []))
            slot = _grid_slot_of_input(graph, wrapper, min(source, n_inputs - 1))
            input_q = _slot_get(slot) if slot is not None else None
        if not _active(input_q):
            continue
        bias_q = params[path]
        if not isinstance(bias_q, BiasQuantizer):
            bias_q = BiasQuantizer(name=f"{wrapper.name}_{sub.lstrip('_')}_bias_int32")
            bias_q.build(tuple(get_param_variable(wrapper.layer, path).shape))
            wrapper.replace_quantizer("param", path, bias_q)
        bias_q.link(input_q, weight_q)
        bias_q.snapshot()
        linked = True
    return linked


def _weight_quantizer(wrapper: QuantizationWrapper) -> tuple[str, Quantizer] | None:
    spec = get_layer_spec(wrapper.layer)
    weights = [p for p, s in spec.params.items() if s.role == "weight"]
    if len(weights) != 1:
        return None
    q = wrapper.param_quantizers_by_path().get(weights[0])
    return (weights[0], q) if _active(q) else None


def _own_activation(layer: keras.layers.Layer) -> str | None:
    """The activation a conv / dense layer applies itself, if its TFLite kernel fuses it
    ("linear", "relu", "relu6"); None for any other (the requantization is then not modelled)."""
    activation = getattr(getattr(layer, "activation", None), "__name__", "linear")
    return activation if activation in ("linear", "relu", "relu6") else None


def has_int8_constants(sim) -> bool:
    """Whether the sim reads constant operands on int8 grids (attention scale, norm epsilon and
    beta: ``quantization.transformer.int8_constant``).

    The converter's int4-packing mode (``_experimental_low_bit_qat``) takes every fake-quantized
    constant for a weight to pack: it leaves those ADD / MUL ops in float, or fails on a
    transpose (measured, TF 2.21). Such sims store 4-bit weights as int8 holding the 4-bit grid
    (``export_tflite``), so their 4-bit CONV_2D runs XNNPACK's int8 path.
    """
    return any(
        isinstance(w.layer, (_L.MultiHeadAttention, _L.LayerNormalization, _L.RMSNormalization))
        and w.internal_names
        for w in sim.wrappers()
    )


def _requantization_mode(wrapper: QuantizationWrapper, weight_q: Quantizer, int4_packed: bool = True) -> str | None:
    """How the layer's TFLite kernel requantizes under LiteRT's default op resolver.

    Measured on LiteRT 2.3: XNNPACK runs int8 CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED
    (int8 and int4 filters) with float requantization; CONV_2D with int4 filters runs in TFLite's
    optimized kernel (fixed point, ties up); TRANSPOSE_CONV in its reference-style kernel (fixed
    point, ties away from zero). None: no model (not an accumulator layer, or an activation
    inside the layer that TFLite would not fuse).
    """
    layer = wrapper.layer
    if _own_activation(layer) is None:
        return None
    if isinstance(layer, _TRANSPOSED):
        return "fixed_point_ties_away"
    if isinstance(layer, (_L.Conv1D, _L.Conv2D, _L.Conv3D)) and not isinstance(layer, _DEPTHWISE):
        return "fixed_point" if weight_q.bitwidth == 4 and int4_packed else "float"
    return "float"


def _builtin_mode(wrapper: QuantizationWrapper) -> str | None:
    """How LiteRT's optimized builtin kernels (no delegate) requantize a conv / dense layer."""
    layer = wrapper.layer
    if _own_activation(layer) is None:
        return None
    if isinstance(layer, _TRANSPOSED):
        return "fixed_point_ties_away"
    return "fixed_point"


def _ensure_requantizer(wrapper: QuantizationWrapper, channels: int) -> Requantizer:
    if wrapper.requantizer is None:
        requantizer = Requantizer(channels, name=f"{wrapper.name}_requantizer")
        requantizer.build()
        wrapper.set_requantizer(requantizer)
    return wrapper.requantizer


def _output_channels(layer: keras.layers.Layer) -> int:
    kernel = layer.kernel
    if isinstance(layer, _TRANSPOSED):
        return int(kernel.shape[-2])
    if isinstance(layer, _DEPTHWISE):
        return int(kernel.shape[-2] * kernel.shape[-1])
    return int(kernel.shape[-1])


def _input_quantizers_by_input(graph: _SimGraph) -> dict[int, list[Quantizer]]:
    found: dict[int, list[Quantizer]] = {}
    for wrapper in graph.order:
        for i, src in enumerate(graph.sources.get(id(wrapper), [])):
            if src is not None and src.wrapper is None and i < len(wrapper.input_quantizers):
                q = wrapper.input_quantizers[i]
                if _active(q) and not q.per_channel:
                    found.setdefault(src.index, []).append(q)
    return found


def model_input_quantizers(sim) -> dict[int, list[Quantizer]]:
    """The per-tensor input quantizers that read each model input directly, by input index
    (what the .tflite file's QUANTIZE op of that input does)."""
    return _input_quantizers_by_input(_SimGraph(sim.model))


def _dsp_accumulator_mode(layer: keras.layers.Layer) -> str | None:
    if _own_activation(layer) is None:
        return None
    return "dsp_fully_connected" if isinstance(layer, _L.Dense) else "dsp_conv"


def _link_softmax(graph: _SimGraph, wrapper: QuantizationWrapper, target: DspTarget | None) -> bool:
    """Gives a Softmax layer on TFLite's fixed output grid the integer softmax that runs it: the
    target's reference kernel, or (no target: the "default" and "builtin" op resolvers) LiteRT's
    optimized float-table kernel, which both run (XNNPACK does not take int8 SOFTMAX)."""
    layer = wrapper.layer
    is_softmax = isinstance(layer, _L.Softmax) or (
        isinstance(layer, _L.Activation) and getattr(layer.activation, "__name__", None) == "softmax"
    )
    if not is_softmax:
        return False
    output_q = wrapper.output_quantizers[0] if wrapper.output_quantizers else None
    in_slot = _grid_slot_of_input(graph, wrapper, 0)
    axis = getattr(layer, "axis", -1)
    last_axis = axis in (-1, len(wrapper.input.shape) - 1) if isinstance(axis, int) else False
    if in_slot is None or not _active(output_q) or not output_q.frozen or not last_axis:
        if wrapper.requantizer is not None and wrapper.requantizer.mode in ("dsp_softmax", "softmax"):
            wrapper.requantizer.enabled = False
        return False
    requantizer = _ensure_requantizer(wrapper, int(wrapper.output.shape[-1]))
    requantizer.mode = "softmax" if target is None else "dsp_softmax"
    requantizer.target = target
    requantizer.enabled = True
    requantizer.link(_slot_get(in_slot), None, output_q)
    requantizer.snapshot()
    return True


def prepare_sim_for_tflite(sim, kernels: "str | DspTarget | None" = None) -> TflitePreparation:
    """Makes ``sim.model`` compute what the exported TFLite integer model computes.

    In place and idempotent. The sim records the step in ``sim.preparations["tflite"]``, so
    a pass that rebuilds it (``fold_all_batch_norms_to_scale``) prepares the new sim for the same
    kernels:

    0. Softmax / sigmoid / tanh outputs get TFLite's fixed int8 grids (frozen encodings).
    1. Ties (``Quantizer.tie_to``): a Concatenate's input quantizers, and the output quantizers
       that define its inputs' grids (through data-movement layers), use the Concatenate's
       output encoding; an AveragePooling / MaxPooling / GlobalMaxPooling / Reshape-like layer's
       output quantizer uses its input grid's encoding. TFLite's kernels require these tensors
       to share one scale/zero point; the converter propagates the grid instead of
       requantizing.
    2. Every Conv / DepthwiseConv / Dense / ConvTranspose with a bias, a weight quantizer and a
       quantized input gets a ``BiasQuantizer``: b_hat = s_b * round(b / s_b), s_b = s_in * s_w.
    3. Those layers also get a ``Requantizer`` that rounds the accumulator onto the output grid
       the way their kernel under LiteRT's default op resolver does (XNNPACK float multiply for
       int8 conv / depthwise / dense, fixed point for int4 conv and transposed conv), and
       AveragePooling layers one that rounds window means as AVERAGE_POOL_2D does (ties away
       from zero on the raw int8 value), GlobalAveragePooling layers one that computes MEAN as
       XNNPACK does (integer sum, float32 multiplier, ties to even), two-input Add layers
       one that recomputes ADD with XNNPACK's 21-bit integer multipliers, and two-input
       Multiply layers one that recomputes MUL from the integer product of the operand levels
       (XNNPACK: float32 multiplier, ties to even; builtin / reference: TFLite's fixed point).

    Ties and derived scales are links, so they follow later calibration or range learning; each
    tied group is calibrated by its leader (the Concatenate output, or the pooling input). The
    linked quantizers copy the values they use into their own variables whenever the model's
    config is taken, so ``sim.model.save(...)`` reloads to the same numbers (without links).

    Which kernels: LiteRT's kernel paths round differently (measured on ai-edge-litert 2.3; see
    ``KERNEL_TARGETS``), so the simulation reproduces one of them bit for bit:

    * "default" (what an app gets): a float model input is quantized as x * (1 / s) with ties
      to even; the requantizers above use XNNPACK's arithmetic.
    * "reference" or a `DspTarget`: the input as round(x / s) with ties away from zero; conv,
      depthwise, dense, Add, mean and softmax with the integer arithmetic of the target
      (`aimet_tf.kernels`, which is bit-exact with LiteRT's BUILTIN_REF kernels for
      ``TFLITE_REFERENCE``).
    * "builtin": LiteRT's optimized kernels without a delegate (the input as "default").

    Args:
        sim: a ``QuantizationSimModel``.
        kernels: one of ``KERNEL_TARGETS`` or a `DspTarget`; None keeps what the sim was last
            prepared for ("default" the first time).

    Returns:
        A ``TflitePreparation`` listing the changes.

    Raises:
        ValueError: for an unknown ``kernels``.
    """
    kernels = _resolve_kernels(_PREPARED.get(sim, "default") if kernels is None else kernels)
    target = _dsp_target(kernels)
    undelegated = _NOT_DELEGATED.get(sim, frozenset()) if kernels == "default" else frozenset()
    graph = _SimGraph(sim.model)
    int8_constants = has_int8_constants(sim)
    report = TflitePreparation(kernels=kernels)
    report.fixed_grids = _fix_output_grids(graph)
    report.tied = _tie_grids(graph)
    graph = _SimGraph(sim.model)
    rounding = "divide_half_away" if target is not None else _INPUT_ROUNDING[kernels]
    for quantizers in _input_quantizers_by_input(graph).values():
        for q in quantizers:
            q.rounding = rounding
    for wrapper in graph.order:
        layer = wrapper.layer
        if wrapper.internal_names and isinstance(layer, (_L.MultiHeadAttention, _L.LayerNormalization, _L.RMSNormalization)):
            # Decomposed layers reproduce the kernels' arithmetic op by op (transformer.py).
            wrapper.internal_kernels = kernels if isinstance(kernels, str) else "reference"
            wrapper.input_grids = {}
            for index in range(len(graph.sources.get(id(wrapper), []))):
                in_slot = _grid_slot_of_input(graph, wrapper, index)
                if in_slot is not None:
                    wrapper.input_grids[index] = _slot_get(in_slot)
            if 1 not in wrapper.input_grids and 0 in wrapper.input_grids:
                wrapper.input_grids[1] = wrapper.input_grids[0]  # mha(x) / key and value = query
        if isinstance(layer, ClassToken):
            # CONCATENATION takes one grid: the converter writes the token on the output grid
            # directly, so a separate token grid would round it twice in the simulation.
            output_q = wrapper.output_quantizers[0] if wrapper.output_quantizers else None
            token_q = wrapper.param_quantizers_by_path().get("token")
            if _active(output_q) and _active(token_q):
                token_q.enabled = False
                report.fixed_grids.append(f"{wrapper.name}/token")
            continue
        if isinstance(layer, _L.MultiHeadAttention):
            if _link_attention_biases(graph, wrapper):
                report.bias_quantizers.append(wrapper.name)
            continue
        if _link_softmax(graph, wrapper, target):
            report.requantizers.append(wrapper.name)
            continue
        if bilinear_resize_flags(layer) is not None:
            # RESIZE_BILINEAR on its input's grid: XNNPACK's or the builtin kernels' fixed point.
            in_slot = _grid_slot_of_input(graph, wrapper, 0)
            xnnpack = kernels == "default" and wrapper.name not in undelegated
            if link_bilinear_resize(wrapper, _slot_get(in_slot) if in_slot else None,
                                    "xnnpack" if xnnpack else "tflite"):
                report.requantizers.append(wrapper.name)
            continue
        if isinstance(layer, _AVERAGE_POOLS):
            output_q = wrapper.output_quantizers[0] if wrapper.output_quantizers else None
            if _active(output_q):
                requantizer = _ensure_requantizer(wrapper, int(wrapper.output.shape[-1]))
                requantizer.mode = "average_pool"
                requantizer.enabled = True
                requantizer.link(None, None, output_q)
                requantizer.snapshot()
                report.requantizers.append(wrapper.name)
            continue
        operand_params = get_layer_spec(layer).operand_params
        if isinstance(layer, (_L.Add, _L.Multiply)) or (operand_params and onnx_op_type(layer) == "Add"):
            output_q = _output_grid_quantizer(graph, wrapper)
            operand_slots = [_grid_slot_of_input(graph, wrapper, i)
                             for i in range(len(graph.sources.get(id(wrapper), [])))]
            operands = [_slot_get(slot) if slot is not None else None for slot in operand_slots]
            # A parameter operand (PositionEmbedding's table: input + table is one ADD) on its own grid.
            by_path = wrapper.param_quantizers_by_path()
            operands += [by_path.get(path) for path in operand_params]
            if _active(output_q) and len(operands) == 2 and all(_active(q) for q in operands):
                requantizer = _ensure_requantizer(wrapper, int(wrapper.output.shape[-1]))
                builtin = kernels == "builtin" or wrapper.name in undelegated
                kind = "mul" if isinstance(layer, _L.Multiply) else "add"
                requantizer.mode = f"dsp_{kind}" if builtin or target is not None else kind
                requantizer.target = target
                requantizer.enabled = True
                requantizer.link_operands(operands, output_q)
                requantizer.snapshot()
                report.requantizers.append(wrapper.name)
            continue
        if isinstance(layer, _GLOBAL_AVERAGE_POOLS):
            output_q = wrapper.output_quantizers[0] if wrapper.output_quantizers else None
            in_slot = _grid_slot_of_input(graph, wrapper, 0)
            spatial = tuple(wrapper.input.shape[1:-1])
            if _active(output_q) and in_slot is not None and None not in spatial:
                requantizer = _ensure_requantizer(wrapper, int(wrapper.output.shape[-1]))
                builtin = kernels == "builtin" or wrapper.name in undelegated
                requantizer.mode = "dsp_mean" if builtin or target is not None else "mean"
                requantizer.target = target
                requantizer.count = int(np.prod(spatial))
                requantizer.enabled = True
                requantizer.link(_slot_get(in_slot), None, output_q)
                requantizer.snapshot()
                report.requantizers.append(wrapper.name)
            continue
        if not isinstance(layer, _ACCUMULATOR_LAYERS):
            continue
        found = _weight_quantizer(wrapper)
        in_slot = _grid_slot_of_input(graph, wrapper, 0)
        if found is None or in_slot is None:
            continue
        _, weight_q = found
        input_q = _slot_get(in_slot)
        if "bias" in wrapper.param_names and get_param_variable(layer, "bias") is not None:
            bias_q = wrapper.param_quantizers_by_path()["bias"]
            if not isinstance(bias_q, BiasQuantizer):
                if isinstance(bias_q, Quantizer):
                    logging.info(
                        "prepare_sim_for_tflite: %s: bias fake-quant replaced by the int32 grid "
                        "s_in * s_w that TFLite uses", wrapper.name,
                    )
                bias_q = BiasQuantizer(name=f"{wrapper.name}_bias_int32")
                bias_q.build(tuple(get_param_variable(layer, "bias").shape))
                wrapper.replace_quantizer("param", "bias", bias_q)
            bias_q.link(input_q, weight_q)
            bias_q.snapshot()
            report.bias_quantizers.append(wrapper.name)
        output_q = _output_grid_quantizer(graph, wrapper)
        if kernels == "builtin" or wrapper.name in undelegated:
            mode = _builtin_mode(wrapper)
        elif target is None:
            mode = _requantization_mode(wrapper, weight_q, not int8_constants)
        else:
            mode = _dsp_accumulator_mode(layer)
        if mode is not None and output_q is not None:
            requantizer = _ensure_requantizer(wrapper, _output_channels(layer))
            requantizer.mode = mode
            requantizer.target = target
            requantizer.activation_cap = 6.0 if _own_activation(layer) == "relu6" else None
            requantizer.enabled = True
            requantizer.link(input_q, weight_q, output_q)
            requantizer.snapshot()
            report.requantizers.append(wrapper.name)
        elif wrapper.requantizer is not None:
            wrapper.requantizer.enabled = False
    _PREPARED[sim] = kernels
    # A pass that rebuilds the sim (fold_all_batch_norms_to_scale) prepares the new one the same way.
    sim.preparations["tflite"] = functools.partial(prepare_sim_for_tflite, kernels=kernels)
    logging.info(
        "prepare_sim_for_tflite (%s kernels): %d int32 biases, %d requantizers, %d tied grids, "
        "%d fixed grids", getattr(kernels, "name", kernels), len(report.bias_quantizers),
        len(report.requantizers), len(report.tied), len(report.fixed_grids),
    )
    return report
