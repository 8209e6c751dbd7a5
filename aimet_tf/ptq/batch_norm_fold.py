"""Batch-norm folding: merge an inference-mode BatchNormalization into the layer that feeds it.

For a linear layer y = W x + b followed by a batch norm with statistics (mu, var), scale gamma,
offset beta and epsilon eps, with sigma = sqrt(var + eps):

    BN(y) = gamma * (W x + b - mu) / sigma + beta = W' x + b',
    W' = W * gamma / sigma        (scaled along the layer's output-channel axis)
    b' = beta + (b - mu) * gamma / sigma

so the pair computes exactly what the single folded layer computes. A quantization simulation
must be built on the folded model: integer runtimes (TFLite) only ever see W', so the weight
quantizer has to quantize W', not W.

Example:
    >>> folded = fold_batch_norms(model)          # a new model; ``model`` is untouched
    >>> sim = QuantizationSimModel(folded, config_file="htp")
"""

from __future__ import annotations

import keras
import numpy as np
from absl import logging

from aimet_tf.quantization.graph import as_functional, clone_layer

__all__ = ["FOLDABLE_LAYERS", "fold_batch_norms", "find_foldable_pairs"]

_L = keras.layers

# Layer class -> output-channel axis of its (last) kernel. Depthwise kernels [k.., in, mult]
# carry one output channel per (in, mult) pair: axis None marks that layout.
FOLDABLE_LAYERS: dict[type, int | None] = {
    _L.Conv1D: -1,
    _L.Conv2D: -1,
    _L.Conv3D: -1,
    _L.Dense: -1,
    _L.SeparableConv1D: -1,
    _L.SeparableConv2D: -1,
    _L.DepthwiseConv1D: None,
    _L.DepthwiseConv2D: None,
    # Transposed conv kernels are [k.., out, in].
    _L.Conv1DTranspose: -2,
    _L.Conv2DTranspose: -2,
    _L.Conv3DTranspose: -2,
}


def _foldable_class(layer: keras.layers.Layer) -> type | None:
    for cls in type(layer).__mro__:
        if cls in FOLDABLE_LAYERS:
            return cls
    return None


def _is_linear(layer: keras.layers.Layer) -> bool:
    activation = getattr(layer, "activation", None)
    return activation is None or getattr(activation, "__name__", None) == "linear"


def _call_counts(functional: keras.Model) -> dict[int, int]:
    counts: dict[int, int] = {}
    for nodes in functional._nodes_by_depth.values():
        for node in nodes:
            if node.operation is not None:
                counts[id(node.operation)] = counts.get(id(node.operation), 0) + 1
    return counts


def find_foldable_pairs(model: keras.Model) -> list[tuple[str, str]]:
    """Lists the (layer, batch norm) name pairs of ``model``'s top level that can be folded.

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
    counts = _call_counts(functional)
    consumers: dict[int, list] = {}
    for nodes in functional._nodes_by_depth.values():
        for node in nodes:
            for tensor in node.input_tensors:
                producer = tensor._keras_history.operation
                if producer is not None:
                    consumers.setdefault(id(producer), []).append(node.operation)
    output_ops = {id(t._keras_history.operation) for t in functional.outputs}
    pairs = []
    for layer in functional.layers:
        if not isinstance(layer, _L.BatchNormalization) or counts.get(id(layer), 0) != 1:
            continue
        node = next(
            n for nodes in functional._nodes_by_depth.values() for n in nodes if n.operation is layer
        )
        if len(node.input_tensors) != 1:
            continue
        producer = node.input_tensors[0]._keras_history.operation
        rank = len(node.input_tensors[0].shape)
        if (
            producer is None
            or _foldable_class(producer) is None
            or counts.get(id(producer), 0) != 1
            or len(consumers.get(id(producer), [])) != 1
            or id(producer) in output_ops
            or not _is_linear(producer)
            or getattr(producer, "data_format", "channels_last") != "channels_last"
        ):
            continue
        axis = layer.axis if isinstance(layer.axis, int) else (
            layer.axis[0] if len(layer.axis) == 1 else None
        )
        if axis is None or axis % rank != rank - 1:
            continue
        pairs.append((producer.name, layer.name))
    return pairs


def _bn_scale_shift(bn: keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    """(gamma / sigma, beta - mu * gamma / sigma) in float64."""
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


def _copy_layer(layer: keras.layers.Layer, **config_overrides) -> keras.layers.Layer:
    return clone_layer(layer, config_overrides, copy_weights=False)


def _folded_layer(layer: keras.layers.Layer, bn: keras.layers.BatchNormalization) -> keras.layers.Layer:
    factor, shift = _bn_scale_shift(bn)
    axis = FOLDABLE_LAYERS[_foldable_class(layer)]
    new = _copy_layer(layer, use_bias=True)
    if isinstance(layer, (_L.SeparableConv1D, _L.SeparableConv2D)):
        new.depthwise_kernel.assign(layer.depthwise_kernel.numpy())
        kernel_name = "pointwise_kernel"
    else:
        kernel_name = "kernel"
    kernel = getattr(layer, kernel_name).numpy()
    getattr(new, kernel_name).assign(_scale_kernel(kernel, factor, axis).astype(np.float32))
    bias = layer.bias.numpy().astype(np.float64) if layer.use_bias else np.zeros_like(factor)
    new.bias.assign((bias * factor + shift).astype(np.float32))
    return new


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """Returns a copy of ``model`` with every foldable batch norm merged into its producer.

    W' = W * gamma / sigma and b' = beta + (b - mu) * gamma / sigma with sigma =
    sqrt(moving_variance + epsilon), applied along the producer's output-channel axis (the last
    kernel axis; (in, multiplier) for depthwise kernels; axis -2 for transposed convolutions).
    The folded layer gets a bias even if it had none. Batch norms that cannot be folded (see
    ``find_foldable_pairs``) stay in place. Nested Functional/Sequential models are folded
    inside; pairs across a nested model's boundary are left alone.

    Args:
        model: a Functional or built Sequential Keras model. It is not modified.

    Returns:
        A new Functional model computing the same function (in inference mode) with fewer layers.

    Raises:
        TypeError: for a subclassed model.

    Example:
        >>> folded = fold_batch_norms(model)
        >>> np.allclose(folded.predict(x), model.predict(x), rtol=1e-5, atol=1e-6)
        True
    """
    functional = as_functional(model, "batch-norm folding")
    pairs = find_foldable_pairs(functional)
    into = dict(pairs)
    folded_bns = {bn for _, bn in pairs}
    skipped: set[int] = set()

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.Model) and (
            isinstance(layer, keras.Sequential) or hasattr(layer, "_nodes_by_depth")
        ):
            return fold_batch_norms(layer)
        if layer.name in into:
            bn = functional.get_layer(into[layer.name])
            return _folded_layer(layer, bn)
        new = _copy_layer(layer)
        new.set_weights(layer.get_weights())
        if layer.name in folded_bns:
            skipped.add(id(new))
        return new

    def call(layer: keras.layers.Layer, *args, **kwargs):
        if id(layer) in skipped:
            # The batch norm now lives in its producer's weights: pass the tensor straight on.
            return args[0]
        return layer(*args, **kwargs)

    folded = keras.models.clone_model(functional, clone_function=clone, call_function=call)
    for layer_name, bn_name in pairs:
        logging.info("fold_batch_norms: folded %s into %s", bn_name, layer_name)
    return folded

