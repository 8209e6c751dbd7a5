"""Batch-norm folding: merge an inference-mode BatchNormalization into an adjacent linear layer.

A batch norm with statistics (mu, var), scale gamma, offset beta and epsilon eps is the per-channel
affine map BN(y) = a * y + c with a = gamma / sigma, c = beta - mu * a, sigma = sqrt(var + eps).

BN after a linear layer y = W x + b (REFERENCE section 3):

    W' = W * a        (scaled along the layer's output-channel axis)
    b' = beta + (b - mu) * a

BN before a linear layer, W (a x + c) + b, where valid (see below):

    W' = W * a        (scaled along the layer's input-channel axis)
    b' = b + sum over the kernel window and input channels of W * c

so the pair computes exactly what the single folded layer computes. Folding a batch norm that
precedes a convolution is only exact without zero padding (the padded zeros would otherwise have
to become c): it is done for "valid" convolutions and Dense layers, never across padding.

A quantization simulation must be built on the folded model: integer runtimes (TFLite) only ever
see W', so the weight quantizer has to quantize W', not W. A sim trained with its batch norms in
place (QAT) is folded afterwards with ``fold_all_batch_norms_to_scale``, which moves each batch
norm into the weights and its per-channel scale into the weight quantizer's grid, so the
simulated function does not change.

Example:
    >>> folded, pairs = fold_all_batch_norms(model)   # a new model; ``model`` is untouched
    >>> sim = QuantizationSimModel(folded, config_file="htp")
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
from absl import logging

from aimet_tf.graph import all_layers, as_functional, bn_folds_backward, clone_layer, is_graph_model, layer_graph
from aimet_tf.graph.catalogue import OUTPUT_CHANNEL_AXIS

__all__ = [
    "FOLDABLE_LAYERS",
    "FoldedPair",
    "find_foldable_pairs",
    "find_backward_foldable_pairs",
    "fold_all_batch_norms",
    "fold_batch_norms",
    "fold_all_batch_norms_to_scale",
]

_L = keras.layers

# Layer class -> output-channel axis of its (last) kernel: the graph catalogue's table.
FOLDABLE_LAYERS = OUTPUT_CHANNEL_AXIS


class FoldedPair(NamedTuple):
    """One folded batch norm: the layer it went into, and whether it sat "after" or "before" it."""

    layer: str
    batch_norm: str
    bn_position: str = "after"


def _foldable_class(layer: keras.layers.Layer) -> type | None:
    for cls in type(layer).__mro__:
        if cls in FOLDABLE_LAYERS:
            return cls
    return None


def _is_linear(layer: keras.layers.Layer) -> bool:
    activation = getattr(layer, "activation", None)
    return activation is None or getattr(activation, "__name__", None) == "linear"


def _single_consumer(g, name: str) -> str | None:
    """The only layer reading ``name``'s output, or None (several, none, or a model output)."""
    consumers = g.consumers[name]
    if len(consumers) != 1 or name in g.model_output_names or g.output_count[name] != 1:
        return None
    return consumers[0]


def _single_producer(g, name: str) -> str | None:
    """The producer of a layer called once on one tensor from inside the graph, else None."""
    producers = g.producers[name]
    return producers[0] if g.call_count[name] == 1 and len(producers) == 1 else None


def _channels_last_bn(bn: keras.layers.Layer) -> bool:
    axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
    rank = bn.input_spec.ndim  # set when the batch norm was built
    return axis is not None and rank is not None and axis % rank == rank - 1


def find_foldable_pairs(model: keras.Model) -> list[tuple[str, str]]:
    """Lists the (layer, batch norm) name pairs of ``model``'s top level whose batch norm comes
    after the layer and can be folded into it.

    A pair folds when the batch norm's only input is the output of a foldable layer (see
    ``FOLDABLE_LAYERS``) with no activation and channels-last data, that output goes nowhere
    else and is not a model output, both layers are called once, and the batch norm
    normalises the last (channel) axis.

    Args:
        model: a Functional or built Sequential model.

    Returns:
        (layer name, batch norm name) pairs in graph order.
    """
    functional = as_functional(model, "batch-norm folding")
    g = layer_graph(functional, "batch-norm folding")
    pairs = []
    for layer in functional.layers:
        if not isinstance(layer, _L.BatchNormalization):
            continue
        source = _single_producer(g, layer.name)
        if source is None:
            continue
        producer = g.operations[source]
        if (
            _foldable_class(producer) is None
            or g.call_count[source] != 1
            or _single_consumer(g, source) != layer.name
            or not _is_linear(producer)
            or getattr(producer, "data_format", "channels_last") != "channels_last"
            or not _channels_last_bn(layer)
        ):
            continue
        pairs.append((producer.name, layer.name))
    return pairs


def find_backward_foldable_pairs(model: keras.Model) -> list[tuple[str, str]]:
    """Lists the (batch norm, layer) name pairs of ``model``'s top level whose batch norm comes
    before the layer and can be folded into it.

    The batch norm (called once, channels-last) must feed only that layer, which is a Conv1D/2D/3D
    or DepthwiseConv1D/2D that reads no padding ("valid", or 1x1 kernels) with ``groups=1``, or a
    Dense layer, called once;
    a batch norm that is already folded into its producer is not listed.
    """
    functional = as_functional(model, "batch-norm folding")
    g = layer_graph(functional, "batch-norm folding")
    forward = {bn for _, bn in find_foldable_pairs(functional)}
    pairs = []
    for layer in functional.layers:
        if (
            not isinstance(layer, _L.BatchNormalization)
            or layer.name in forward
            or _single_producer(g, layer.name) is None
        ):
            continue
        name = _single_consumer(g, layer.name)
        consumer = g.operations[name] if name is not None else None
        if (
            consumer is None
            or not bn_folds_backward(consumer)
            or g.call_count[name] != 1
            or not _reads_no_padding(consumer)
            or getattr(consumer, "groups", 1) != 1
            or getattr(consumer, "data_format", "channels_last") != "channels_last"
            or not _channels_last_bn(layer)
        ):
            continue
        pairs.append((layer.name, consumer.name))
    return pairs


def _reads_no_padding(layer: keras.layers.Layer) -> bool:
    """True if the layer never reads padded zeros: "valid" padding, or 1x1 kernels (where "same"
    adds no padding), or no padding at all (Dense)."""
    padding = getattr(layer, "padding", "valid")
    return padding == "valid" or (padding == "same" and all(k == 1 for k in layer.kernel_size))


def _bn_scale_shift(bn: keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    """(a, c) = (gamma / sigma, beta - mu * gamma / sigma) in float64."""
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    var = np.asarray(bn.moving_variance.numpy(), np.float64)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros_like(mean)
    factor = gamma / np.sqrt(var + float(bn.epsilon))
    return factor, beta - mean * factor


def _scale_kernel(kernel: np.ndarray, factor: np.ndarray, axis: int | None) -> np.ndarray:
    kernel = np.asarray(kernel, np.float64)
    if axis is None:
        # Depthwise [k.., in, mult]: output channel c = i * mult + m.
        return kernel * factor.reshape(kernel.shape[-2], kernel.shape[-1])
    shape = [1] * kernel.ndim
    shape[axis] = kernel.shape[axis]
    return kernel * factor.reshape(shape)


def _input_shift(kernel: np.ndarray, shift: np.ndarray, depthwise: bool) -> np.ndarray:
    """What a constant input c (per input channel) adds to each output: sum of W * c over the
    window and the input channels."""
    window = np.asarray(kernel, np.float64).reshape(-1, *kernel.shape[-2:]).sum(axis=0)  # [in, out|mult]
    if depthwise:
        return (window * shift[:, None]).reshape(-1)
    return shift @ window


def _folded_layer(
    layer: keras.layers.Layer,
    after: keras.layers.BatchNormalization | None = None,
    before: keras.layers.BatchNormalization | None = None,
) -> keras.layers.Layer:
    new = clone_layer(layer, {"use_bias": True}, copy_weights=False)
    if isinstance(layer, (_L.SeparableConv1D, _L.SeparableConv2D)):
        new.depthwise_kernel.assign(layer.depthwise_kernel.numpy())
        kernel_name = "pointwise_kernel"
    else:
        kernel_name = "kernel"
    kernel = np.asarray(getattr(layer, kernel_name).numpy(), np.float64)
    bias = layer.bias.numpy().astype(np.float64) if layer.use_bias else np.zeros(int(new.bias.shape[0]))
    if before is not None:
        scale_in, shift_in = _bn_scale_shift(before)
        depthwise = isinstance(layer, (_L.DepthwiseConv1D, _L.DepthwiseConv2D))
        bias = bias + _input_shift(kernel, shift_in, depthwise)
        kernel = _scale_kernel(kernel, scale_in, -2)
    if after is not None:
        factor, shift = _bn_scale_shift(after)
        kernel = _scale_kernel(kernel, factor, FOLDABLE_LAYERS[_foldable_class(layer)])
        bias = bias * factor + shift
    getattr(new, kernel_name).assign(kernel.astype(np.float32))
    new.bias.assign(bias.astype(np.float32))
    return new


def _fold(model: keras.Model, prefix: str = "", backward: bool = True) -> tuple[keras.Model, list[FoldedPair]]:
    functional = as_functional(model, "batch-norm folding")
    after = {layer: bn for layer, bn in find_foldable_pairs(functional)}
    before = {layer: bn for bn, layer in find_backward_foldable_pairs(functional)} if backward else {}
    folded_bns = set(after.values()) | set(before.values())
    pairs = [FoldedPair(prefix + name, prefix + bn, "before") for name, bn in before.items()]
    pairs += [FoldedPair(prefix + name, prefix + bn, "after") for name, bn in after.items()]
    skipped: set[int] = set()

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if is_graph_model(layer):
            inner, inner_pairs = _fold(layer, prefix + layer.name + "/", backward)
            pairs.extend(inner_pairs)
            return inner
        if layer.name in after or layer.name in before:
            return _folded_layer(
                layer,
                after=functional.get_layer(after[layer.name]) if layer.name in after else None,
                before=functional.get_layer(before[layer.name]) if layer.name in before else None,
            )
        new = clone_layer(layer, copy_weights=False)
        new.set_weights(layer.get_weights())
        if layer.name in folded_bns:
            skipped.add(id(new))
        return new

    def call(layer: keras.layers.Layer, *args, **kwargs):
        if id(layer) in skipped:
            # The batch norm now lives in a neighbour's weights: pass the tensor straight on.
            return args[0]
        return layer(*args, **kwargs)

    folded = keras.models.clone_model(functional, clone_function=clone, call_function=call)
    return folded, pairs


def fold_all_batch_norms(model: keras.Model) -> tuple[keras.Model, list[FoldedPair]]:
    """Folds every foldable batch norm of ``model`` into its neighbouring linear layer.

    Batch norms after a Conv/Depthwise/Separable/Transposed conv or Dense layer (see
    ``find_foldable_pairs``) fold into its output channels; the remaining ones that precede a
    "valid" Conv/Depthwise conv or a Dense layer (``find_backward_foldable_pairs``) fold into its
    input channels. The folded layer gets a bias even if it had none. Batch norms that cannot fold
    stay in place. Nested Functional/Sequential models are folded inside (their pairs are named
    "nested/layer"); pairs across a nested model's boundary are left alone.

    Args:
        model: a Functional or built Sequential Keras model. It is not modified.

    Returns:
        (new Functional model computing the same function in inference mode, folded pairs as
        ``FoldedPair(layer, batch_norm, bn_position)`` in the order they were found).

    Raises:
        TypeError: for a subclassed model.

    Example:
        >>> folded, pairs = fold_all_batch_norms(model)
        >>> pairs[0]
        FoldedPair(layer='conv1', batch_norm='bn1', bn_position='after')
    """
    folded, pairs = _fold(model)
    for pair in pairs:
        logging.info("fold_all_batch_norms: folded %s (%s it) into %s", pair.batch_norm, pair.bn_position, pair.layer)
    return folded, pairs


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """``fold_all_batch_norms(model)`` without the list of pairs: the folded copy of ``model``.

    Example:
        >>> folded = fold_batch_norms(model)
        >>> np.allclose(folded.predict(x), model.predict(x), rtol=1e-5, atol=1e-6)
        True
    """
    return fold_all_batch_norms(model)[0]


# ----------------------------------------------------------------------------------------------
# Folding into a quantization simulation


def _scaled_encoding(enc, factor: np.ndarray):
    """The encoding of a per-channel grid multiplied channel-wise by ``factor``, or None when the
    scaled grid is not again a grid of the same kind (per-tensor, zero factors, unsigned grids
    flipped by a negative factor)."""
    from aimet_tf.quantization.primitives import Encoding

    if not enc.per_channel or enc.min.shape != factor.shape or np.any(factor == 0):
        return None
    magnitude = np.abs(factor)
    if enc.symmetric:
        if np.any((enc.min == 0) & (factor < 0)):
            return None
        # Signed symmetric grids [-2^(b-1), 2^(b-1) - 1] * s keep their shape under |factor|; a
        # negative factor mirrors them, which only matters for a weight on the lowest code.
        mn, mx = enc.min * magnitude, enc.max * magnitude
    else:
        mn = np.where(factor > 0, enc.min * magnitude, -enc.max * magnitude)
        mx = np.where(factor > 0, enc.max * magnitude, -enc.min * magnitude)
    return Encoding(mn.astype(np.float32), mx.astype(np.float32), enc.bitwidth, enc.symmetric, enc.strict)


def fold_all_batch_norms_to_scale(sim) -> list[FoldedPair]:
    """Folds the batch norms of a (trained) sim into the preceding layers and their quantizer grids.

    For every (layer, batch norm) pair of ``find_foldable_pairs`` (batch norms after the layer), the
    layer's weights become W' = W * a, its bias beta + (b - mu) * a (a = gamma / sigma per output
    channel, from the batch norm's moving statistics: run ``reestimate_bn_stats`` first after QAT),
    and its per-channel weight grid is scaled by |a| channel-wise, so quantize(W') equals
    quantize(W) * a and the sim computes what it computed with the batch norm in place (to float
    rounding; with a negative a only a weight on the lowest signed code could differ). Every other
    quantizer keeps its encoding, bitwidth, enabled and frozen state; the batch norm's output
    quantizer becomes the folded layer's; a quantized bias gets an encoding computed from its new
    values. A per-tensor weight grid cannot absorb per-channel factors: its encoding is
    recomputed from W' (logged as a warning). If the config put a quantizer between the layer and
    its batch norm (no Conv+BN supergroup), that quantizer has no place in the folded model and
    the function changes there (logged as a warning). Batch norms before a layer stay in place.

    The sim is changed in place: ``sim.model`` is a new ``keras.Model`` afterwards (compile it
    again before training further); a sim prepared with ``prepare_sim_for_tflite`` is prepared
    again. This is the step that makes a QAT model with batch norms exportable to TFLite, whose
    kernels only see folded weights.

    Returns:
        The folded pairs (batch norms before a layer are not folded here).
    """
    from aimet_tf.quantization import encodings_io
    from aimet_tf.quantization.sim import QuantizationSimModel

    float_model = sim.float_model()
    folded, pairs = _fold(float_model, backward=False)
    if not pairs:
        return []
    # Sim tensor names use the bare layer names, also inside nested models.
    layers = {layer.name: layer for layer in all_layers(float_model)}
    after = {p.layer.rpartition("/")[2]: layers[p.batch_norm.rpartition("/")[2]] for p in pairs}
    factors = {name: _bn_scale_shift(bn)[0] for name, bn in after.items()}
    new = QuantizationSimModel(
        folded,
        quant_scheme=sim.quant_scheme,
        default_output_bw=sim.default_output_bw,
        default_param_bw=sim.default_param_bw,
        config_file=sim.config,
        percentile=sim.percentile,
    )
    if _prepared_for_tflite(sim):
        from aimet_tf.export.prepare import prepare_sim_for_tflite

        prepare_sim_for_tflite(new)
    # Tensor names move from the batch norm's output to the folded layer's.
    renamed = {}
    for layer_name, bn in after.items():
        for i in range(4):
            renamed[encodings_io.activation_name(layer_name, "output", i)] = encodings_io.activation_name(
                bn.name, "output", i
            )
    old_act = dict(sim.activation_quantizers())
    for layer_name in after:
        inside = old_act.get(encodings_io.activation_name(layer_name, "output", 0))
        if inside is not None and inside.enabled:
            logging.warning(
                "fold_all_batch_norms_to_scale: %s quantized its output before the batch norm (no "
                "Conv+BN supergroup in the config); that quantizer is gone after folding, so the "
                "folded sim differs from the trained one there.", layer_name,
            )
    for name, q in new.activation_quantizers():
        old = old_act.get(renamed.get(name, name))
        if old is not None:
            _copy_quantizer_state(old, q, old.get_encoding())
    old_params = {n: q for n, q, _ in sim.param_quantizers()}
    for name, q, var in new.param_quantizers():
        layer_name, _, path = name.rpartition("/")
        old = old_params.get(name)
        if layer_name not in factors:
            if old is not None:
                _copy_quantizer_state(old, q, old.get_encoding())
            continue
        # A folded layer: the kernel grid scales with the batch norm; the bias (new, or now
        # beta + (b - mu) * a) gets an encoding computed from its new values.
        enc = old.get_encoding() if old is not None else None
        if path.split(":")[0] in ("kernel", "pointwise_kernel") and enc is not None:
            scaled = _scaled_encoding(enc, factors[layer_name].astype(np.float64))
            if scaled is None:
                scaled = _encoding_of(old, var)
                logging.warning(
                    "fold_all_batch_norms_to_scale: %s has a %s grid that cannot absorb the batch norm's "
                    "per-channel scale; its encoding was recomputed from the folded weights.",
                    name, "per-channel" if enc.per_channel else "per-tensor",
                )
            _copy_quantizer_state(old, q, scaled)
        elif old is not None:
            _copy_quantizer_state(old, q, _encoding_of(old, var) if old.is_initialized else None)
        elif q.enabled:
            q.set_encoding(_encoding_of(q, var))
    sim.adopt(new)
    for pair in pairs:
        logging.info("fold_all_batch_norms_to_scale: folded %s into %s", pair.batch_norm, pair.layer)
    return pairs


def _prepared_for_tflite(sim) -> bool:
    """Whether ``prepare_sim_for_tflite`` ran on the sim (it adds requantizers and bias grids)."""
    from aimet_tf.quantization.quantizers import BiasQuantizer

    return any(
        w.requantizer is not None or any(isinstance(q, BiasQuantizer) for q in w.param_quantizers.values())
        for w in sim.wrappers()
    )


def _encoding_of(quantizer, variable):
    """The quantizer's encoding for the variable's current values (its own scheme and grid)."""
    analyzer = quantizer.make_analyzer()
    analyzer.observe(np.asarray(variable.numpy()))
    return quantizer.encoding_from_range(*quantizer.compute_range(analyzer))


def _copy_quantizer_state(old, new, encoding) -> None:
    new.quant_scheme = old.quant_scheme
    new.unsigned_symmetric = old.unsigned_symmetric
    new.percentile = old.percentile
    if encoding is not None:
        new.set_encoding(encoding)
    new.enabled = old.enabled
    new.frozen = old.frozen
