"""Batch-norm folding: merge an inference-mode BatchNormalization into an adjacent linear layer.

A batch norm with statistics (mu, var), scale gamma, offset beta and epsilon eps is the per-channel
affine map BN(y) = a * y + c with a = gamma / sigma, c = beta - mu * a, sigma = sqrt(var + eps).

BN after a linear layer y = W x + b (REFERENCE section 3):

    W' = W * a        (scaled along the layer's output-channel axis)
    b' = beta + (b - mu) * a

BN before a linear layer, W (a x + c) + b, where valid (see below):

    W' = W * a        (scaled along the layer's input-channel axis)
    b' = b + sum over the kernel window and input channels of W * c

so the pair computes exactly what the single folded layer computes. A separable conv applies a
depthwise kernel D, then a pointwise one P: P (D (a x + c)) + b = P (D_a x) + (b + P D c), with
a on D's input channels. Folding a batch norm that precedes a convolution is only exact where
the constant c adds the same amount to every output pixel:

* never across zero padding (the padded zeros would otherwise have to become c): it is done for
  "valid" (or 1x1) convolutions, depthwise and separable convolutions, and Dense layers;
* for a transposed convolution (kernel [k.., out, in], a on axis -1) only with kernel_size 1 and
  strides 1: otherwise its output pixels receive c through different sets of kernel taps (fewer
  at the borders; one tap per stride phase, a different one for each phase, even when strides
  equal the kernel size), so no bias can stand for it.

A batch norm that does not fold stays in place, and the pass logs why.

A quantization simulation must be built on the folded model: integer runtimes (TFLite) only ever
see W', so the weight quantizer has to quantize W', not W. A sim trained with its batch norms in
place (QAT) is folded afterwards with ``fold_all_batch_norms_to_scale``, which moves each batch
norm into the weights and its per-channel scale into the weight quantizer's grid, so the
simulated function does not change.

Example:
    >>> pairs, folded = fold_all_batch_norms(model)   # a new model; ``model`` is untouched
    >>> sim = QuantizationSimModel(folded, config_file="htp")
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
from absl import logging

from aimet_tf.graph import (
    all_layers,
    as_functional,
    bn_folds_backward,
    check_prepared,
    clone_layer,
    is_graph_model,
    layer_graph,
)
from aimet_tf.graph.catalogue import OUTPUT_CHANNEL_AXIS, input_channel_axis

__all__ = [
    "FOLDABLE_LAYERS",
    "FoldedPair",
    "find_foldable_pairs",
    "find_backward_foldable_pairs",
    "fold_all_batch_norms",
    "fold_batch_norms",
    "fold_given_batch_norms",
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


def _channels_last_layer(layer: keras.layers.Layer) -> bool:
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _after_refusal(g, bn: keras.layers.BatchNormalization) -> str | None:
    """Why ``bn`` cannot fold into the layer before it, or None when it can."""
    source = _single_producer(g, bn.name)
    if source is None:
        return "it is not called once on one tensor from inside the graph"
    producer = g.operations[source]
    if _foldable_class(producer) is None:
        return f"its input comes from {source!r} ({type(producer).__name__}), which has no kernel to fold into"
    if g.call_count[source] != 1 or _single_consumer(g, source) != bn.name:
        return f"{source!r} is called more than once, or its output goes elsewhere too"
    if not _is_linear(producer):
        return f"{source!r} applies its activation before the batch norm"
    if not _channels_last_layer(producer) or not _channels_last_bn(bn):
        return f"{source!r} and the batch norm are not both channels-last"
    return None


def _before_refusal(g, bn: keras.layers.BatchNormalization) -> str | None:
    """Why ``bn`` cannot fold into the layer after it, or None when it can."""
    if _single_producer(g, bn.name) is None:
        return "it is not called once on one tensor from inside the graph"
    name = _single_consumer(g, bn.name)
    if name is None:
        return "its output goes to several layers or is a model output"
    consumer = g.operations[name]
    if not bn_folds_backward(consumer):
        return f"it feeds {name!r} ({type(consumer).__name__}), which has no kernel to fold into"
    if g.call_count[name] != 1:
        return f"{name!r} is called {g.call_count[name]} times"
    inexact = _inexact_for_shifted_input(consumer)
    if inexact is not None:
        return f"{name!r} {inexact}"
    if getattr(consumer, "groups", 1) != 1:
        return f"{name!r} is a grouped convolution (groups={consumer.groups})"
    if not _channels_last_layer(consumer) or not _channels_last_bn(bn):
        return f"{name!r} and the batch norm are not both channels-last"
    return None


def _inexact_for_shifted_input(layer: keras.layers.Layer) -> str | None:
    """Why a per-channel constant added to ``layer``'s input does not add one constant per
    output channel to its output (so the shift c of a batch norm before it cannot become part
    of its bias), or None when it does.

    A convolution that reads no padding sees c at every tap of every window. A zero-padded one
    sees 0 at the padded taps, so border pixels would need a different bias. A transposed
    convolution scatters each input pixel through its kernel: with strides s the output pixels
    of different phases (position mod s) receive different taps, and with a kernel wider than
    1 the border pixels receive fewer taps ("valid" or "same" alike), so c adds a
    position-dependent amount unless the kernel is 1 and the strides are 1 along every axis.
    Even strides == kernel_size gives every output pixel a single tap, but a different one per
    phase.
    """
    if isinstance(layer, (_L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose)):
        if all(k == 1 for k in layer.kernel_size) and all(s == 1 for s in layer.strides):
            return None
        return (
            f"is a transposed convolution with kernel_size={tuple(layer.kernel_size)} and "
            f"strides={tuple(layer.strides)}: its output pixels receive a constant input through "
            "different kernel taps (by border and stride phase), so the batch norm's shift is no "
            "per-channel bias; only kernel_size 1 with strides 1 folds"
        )
    if _reads_no_padding(layer):
        return None
    return (
        f"zero-pads its input (padding={layer.padding!r}, kernel_size={tuple(layer.kernel_size)}): "
        "the padded zeros would have to become the batch norm's shift"
    )


class _FoldPlan(NamedTuple):
    after: dict[str, str]  # layer -> the batch norm after it
    before: dict[str, str]  # layer -> the batch norm before it
    kept: dict[str, str]  # batch norm that stays -> why


_ONLY_AFTER = "fold_all_batch_norms_to_scale folds only batch norms after a layer"


def _plan(functional: keras.Model, backward: bool = True) -> _FoldPlan:
    """Which batch norms of ``functional``'s top level fold after / before which layer, and why
    the others stay (``backward=False``: none folds before a layer)."""
    g = layer_graph(functional, "batch-norm folding")
    plan = _FoldPlan({}, {}, {})
    for bn in functional.layers:
        if not isinstance(bn, _L.BatchNormalization):
            continue
        not_after = _after_refusal(g, bn)
        if not_after is None:
            plan.after[g.producers[bn.name][0]] = bn.name
            continue
        not_before = _before_refusal(g, bn) if backward else _ONLY_AFTER
        if not_before is None:
            plan.before[g.consumers[bn.name][0]] = bn.name
        else:
            plan.kept[bn.name] = f"not foldable after its input: {not_after}; nor before its consumer: {not_before}"
    return plan


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
    plan = _plan(as_functional(model, "batch-norm folding"), backward=False)
    return list(plan.after.items())


def find_backward_foldable_pairs(model: keras.Model) -> list[tuple[str, str]]:
    """Lists the (batch norm, layer) name pairs of ``model``'s top level whose batch norm comes
    before the layer and can be folded into it.

    The batch norm (called once, channels-last, not already folded into its producer) must feed
    only that layer, which is called once, channels-last, not grouped, and one of:

    * a Conv1D/2D/3D, DepthwiseConv1D/2D or SeparableConv1D/2D that reads no padding ("valid",
      or 1x1 kernels with "same"): a zero-padded window would read 0 where the batch norm's
      shift c belongs;
    * a Conv1D/2D/3DTranspose with kernel_size 1 and strides 1 (any other transposed conv gives
      its output pixels different sets of kernel taps, so c adds a position-dependent amount);
    * a Dense layer.

    ``fold_all_batch_norms`` logs why each batch norm it keeps did not fold.

    Returns:
        (batch norm name, layer name) pairs in graph order.
    """
    plan = _plan(as_functional(model, "batch-norm folding"))
    return [(bn, layer) for layer, bn in plan.before.items()]


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


def _input_shift(
    kernel: np.ndarray, shift: np.ndarray, depthwise: bool = False, input_axis: int = -2
) -> np.ndarray:
    """What a constant input c (per input channel) adds to each output: sum of W * c over the
    window and the input channels (for depthwise kernels [k.., in, mult], over the window only,
    one value per output channel i * mult + m)."""
    window = np.asarray(kernel, np.float64).reshape(-1, *kernel.shape[-2:]).sum(axis=0)  # [in, out|mult]
    if depthwise:
        return (window * shift[:, None]).reshape(-1)
    return shift @ (window if input_axis == -2 else window.T)


def _folded_layer(
    layer: keras.layers.Layer,
    after: keras.layers.BatchNormalization | None = None,
    before: keras.layers.BatchNormalization | None = None,
) -> keras.layers.Layer:
    """``layer`` with the batch norm ``after`` it and/or ``before`` it in its kernel and bias.

    Before: W (a x + c) + b = (W * a) x + (b + W c), a on the kernel's input-channel axis (a
    separable conv's depthwise kernel; a transposed conv's axis -1). For a separable conv,
    P (D (a x + c)) + b = P (D_a x) + (b + P (D c)): the depthwise part of c goes on through the
    pointwise kernel. After: as in the module docstring.
    """
    new = clone_layer(layer, {"use_bias": True}, copy_weights=False)
    separable = isinstance(layer, (_L.SeparableConv1D, _L.SeparableConv2D))
    kernel_name = "pointwise_kernel" if separable else "kernel"
    kernel = np.asarray(getattr(layer, kernel_name).numpy(), np.float64)
    bias = layer.bias.numpy().astype(np.float64) if layer.use_bias else np.zeros(int(new.bias.shape[0]))
    depthwise_kernel = np.asarray(layer.depthwise_kernel.numpy(), np.float64) if separable else None
    if before is not None:
        scale_in, shift_in = _bn_scale_shift(before)
        axis = input_channel_axis(layer)
        if separable:
            bias = bias + _input_shift(kernel, _input_shift(depthwise_kernel, shift_in, depthwise=True))
            depthwise_kernel = _scale_kernel(depthwise_kernel, scale_in, axis)
        else:
            depthwise = isinstance(layer, (_L.DepthwiseConv1D, _L.DepthwiseConv2D))
            bias = bias + _input_shift(kernel, shift_in, depthwise, axis)
            kernel = _scale_kernel(kernel, scale_in, axis)
    if after is not None:
        factor, shift = _bn_scale_shift(after)
        kernel = _scale_kernel(kernel, factor, FOLDABLE_LAYERS[_foldable_class(layer)])
        bias = bias * factor + shift
    if separable:
        new.depthwise_kernel.assign(depthwise_kernel.astype(np.float32))
    getattr(new, kernel_name).assign(kernel.astype(np.float32))
    new.bias.assign(bias.astype(np.float32))
    return new


def _fold(
    model: keras.Model, prefix: str = "", backward: bool = True, only: _FoldPlan | None = None
) -> tuple[keras.Model, list[FoldedPair], dict[str, str]]:
    """(folded model, folded pairs, kept batch norm -> why), names prefixed "nested/" inside.
    ``only``: fold exactly these top-level pairs (checked foldable by the caller), nothing nested."""
    functional = as_functional(model, "batch-norm folding")
    plan = _plan(functional, backward) if only is None else only
    after, before = plan.after, plan.before
    folded_bns = set(after.values()) | set(before.values())
    pairs = [FoldedPair(prefix + name, prefix + bn, "before") for name, bn in before.items()]
    pairs += [FoldedPair(prefix + name, prefix + bn, "after") for name, bn in after.items()]
    kept = {prefix + bn: why for bn, why in plan.kept.items()}
    skipped: set[int] = set()

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if is_graph_model(layer) and only is None:
            inner, inner_pairs, inner_kept = _fold(layer, prefix + layer.name + "/", backward)
            pairs.extend(inner_pairs)
            kept.update(inner_kept)
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
    return folded, pairs, kept


def _log_folds(purpose: str, pairs: list[FoldedPair], kept: dict[str, str]) -> None:
    for pair in pairs:
        logging.info("%s: folded %s (%s it) into %s", purpose, pair.batch_norm, pair.bn_position, pair.layer)
    for bn, why in kept.items():
        logging.info("%s: kept %s: %s", purpose, bn, why)


def fold_all_batch_norms(model: keras.Model) -> tuple[list[FoldedPair], keras.Model]:
    """Folds every foldable batch norm of ``model`` into its neighbouring linear layer.

    Batch norms after a Conv/Depthwise/Separable/Transposed conv or Dense layer (see
    ``find_foldable_pairs``) fold into its output channels; the remaining ones that precede a
    Conv/Depthwise/Separable conv reading no padding, a 1x1 stride-1 transposed conv or a Dense
    layer (``find_backward_foldable_pairs``) fold into its input channels. The folded layer gets a
    bias even if it had none. Batch norms that cannot fold stay in place, and the reason for each
    is logged (absl INFO: "fold_all_batch_norms: kept bn: ..."). Nested Functional/Sequential
    models are folded inside (their pairs are named "nested/layer"); pairs across a nested
    model's boundary are left alone.

    Args:
        model: a Functional or built Sequential Keras model. It is not modified.

    Returns:
        (folded pairs as ``FoldedPair(layer, batch_norm, bn_position)`` in the order they were
        found, new Functional model computing the same function in inference mode): AIMET's
        order, so ``_, model = fold_all_batch_norms(model)`` works as in AIMET.

    Raises:
        TypeError: for a subclassed model.
        ValueError: for a model that needs ``aimet_tf.graph.prepare_model`` first (``keras.ops``
            nodes such as ``x + y``, Lambda or custom composite layers, at any nesting level),
            naming each node.

    Example:
        >>> pairs, folded = fold_all_batch_norms(model)
        >>> pairs[0]
        FoldedPair(layer='conv1', batch_norm='bn1', bn_position='after')
    """
    # Shared layers stay unfolded (see _after_refusal); ops nodes and the like need prepare_model.
    check_prepared(model, "batch-norm folding", allow_shared_layers=True)
    folded, pairs, kept = _fold(model)
    _log_folds("fold_all_batch_norms", pairs, kept)
    return pairs, folded


def _layer_name(item, what: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, keras.layers.Layer):
        return item.name
    raise TypeError(f"Expected {what} as a Keras layer or a layer name. Received: {item!r} (type {type(item).__name__})")


def fold_given_batch_norms(model: keras.Model, layer_pairs) -> keras.Model:
    """Folds exactly the given batch norms (AIMET's ``fold_given_batch_norms``) and returns the new model.

    Args:
        model: a Functional or built Sequential model. It is not modified (AIMET edits its model
            in place; aimet_tf returns the folded copy, so use the return value).
        layer_pairs: ``(layer, batch_norm)`` pairs for a batch norm after its layer and
            ``(batch_norm, layer)`` for one before it, as layers of ``model``'s top level or
            their names.

    Returns:
        The new model, with those batch norms folded and every other layer unchanged.

    Raises:
        ValueError: for a pair that is not two neighbouring layers of ``model`` where the batch
            norm can fold (naming the pair and why), or a batch norm given twice.
        TypeError: for a pair that is not two layers / names.
    """
    check_prepared(model, "batch-norm folding", allow_shared_layers=True)
    functional = as_functional(model, "batch-norm folding")
    plan = _plan(functional)
    wanted = _FoldPlan({}, {}, {})
    seen: set[str] = set()
    for pair in layer_pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"Expected each pair as (layer, batch_norm) or (batch_norm, layer). Received: {pair!r}")
        first, second = (_layer_name(item, "each pair member") for item in pair)
        for name in (first, second):
            if name not in _names(functional):
                raise ValueError(f"Pair {pair!r}: model {functional.name!r} has no top-level layer {name!r}.")
        bn_first = isinstance(functional.get_layer(first), _L.BatchNormalization)
        bn, layer = (first, second) if bn_first else (second, first)
        if bn in seen:
            raise ValueError(f"Batch norm {bn!r} is given twice in layer_pairs.")
        seen.add(bn)
        if bn_first and plan.before.get(layer) == bn:
            wanted.before[layer] = bn
        elif not bn_first and plan.after.get(layer) == bn:
            wanted.after[layer] = bn
        else:
            after_of = {b: l for l, b in plan.after.items()}
            before_of = {b: l for l, b in plan.before.items()}
            if bn in plan.kept:
                why = f"{bn!r} is {plan.kept[bn]}"
            elif bn in after_of:
                why = f"{bn!r} folds after its input layer {after_of[bn]!r}, not with {layer!r}"
            elif bn in before_of:
                why = f"{bn!r} folds before its consumer {before_of[bn]!r}, not with {layer!r}"
            else:
                why = f"{bn!r} is not a BatchNormalization layer"
            order = "(batch_norm, layer)" if bn_first else "(layer, batch_norm)"
            raise ValueError(f"Cannot fold pair {pair!r} as {order}: {why}.")
    folded, pairs, _ = _fold(model, only=wanted)
    _log_folds("fold_given_batch_norms", pairs, {})
    return folded


def _names(model: keras.Model) -> set[str]:
    return {layer.name for layer in model.layers}


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """``fold_all_batch_norms(model)`` without the list of pairs: the folded copy of ``model``.

    Example:
        >>> folded = fold_batch_norms(model)
        >>> np.allclose(folded.predict(x), model.predict(x), rtol=1e-5, atol=1e-6)
        True
    """
    return fold_all_batch_norms(model)[1]


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
    the function changes there (logged as a warning). Batch norms before a layer stay in place:
    their scale would fall on the layer's input channels, which a per-output-channel weight grid
    cannot absorb, and the quantizer on the layer's input would have no place left.

    The sim is changed in place: ``sim.model`` is a new ``keras.Model`` afterwards (compile it
    again before training further); each of ``sim.preparations`` (a sim prepared with
    ``prepare_sim_for_tflite`` holds that one, with its kernel target) runs on the new sim. This
    is the step that makes a QAT model with batch norms exportable to TFLite, whose kernels only
    see folded weights. Batch norms it keeps are logged with the reason, as in
    ``fold_all_batch_norms``.

    Returns:
        The folded pairs (batch norms before a layer are not folded here).
    """
    from aimet_tf.quantization import encodings_io
    from aimet_tf.quantization.sim import QuantizationSimModel

    float_model = sim.float_model()
    folded, pairs, kept = _fold(float_model, backward=False)
    if not pairs:
        _log_folds("fold_all_batch_norms_to_scale", pairs, kept)
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
    # The steps that prepared the sim for a target (prepare_sim_for_tflite) prepare the new one too.
    for prepare in sim.preparations.values():
        prepare(new)
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
    _log_folds("fold_all_batch_norms_to_scale", pairs, kept)
    return pairs


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
