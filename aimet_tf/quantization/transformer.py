"""Quantized forward passes of attention and layer normalization, as an integer target runs them.

An integer target has no "MultiHeadAttention" kernel: it runs the layer as projections, batched
matrix products and a softmax, and every tensor between those ops sits on an int8 grid. TF's
TFLite converter writes Keras' ``MultiHeadAttention`` (dropout 0, inference) as

    FULLY_CONNECTED (query, key, value) -> BATCH_MATMUL (scores = K . Q)
    -> MUL (scores * 1/sqrt(key_dim)) -> SOFTMAX -> BATCH_MATMUL (probs . V)
    -> FULLY_CONNECTED (output projection)

with TRANSPOSE / RESHAPE (exact data movement) between them; measured on TF 2.21 with TFLite's own
PTQ. :func:`attention_forward` computes the same ops in that order and passes each intermediate
tensor through ``quantize(name, tensor)`` (``ATTENTION_TENSORS``), the wrapper's internal quantizer
of that name. AIMET's Keras ``MultiHeadAttention`` wrapper quantizes the same tensors.

LayerNormalization: targets with a layer-norm kernel (Qualcomm's HTP, what AIMET models) quantize
only its input, output and parameters. TFLite has none: the converter writes it as MEAN,
SQUARED_DIFFERENCE, RSQRT, MUL and ADD ops on int8 tensors, so the statistics themselves are
quantized. A config decomposes it with aimet_tf's ``"is_decomposed": "True"`` on the
``LayerNormalization`` op type (the ``tflite`` preset does); :func:`layer_norm_forward` then
computes, for an input ``x`` normalized over the layer's axes:

    mean = MEAN(x)                     centered = x - mean        squared = centered * centered
    variance = MEAN(squared)           variance_eps = variance + epsilon
    rstd = RSQRT(variance_eps)         normalized = centered * rstd
    scaled = normalized * gamma        output = scaled + beta

quantizing each named tensor (``LAYER_NORM_TENSORS``; the output gets the layer's output
quantizer). The centred form subtracts the mean once, on the int8 input grid, so the variance and
the normalized values are computed from one quantized tensor rather than from x and the mean
separately. With ``rms_scaling=True`` the output is ``x * rstd * gamma`` (Keras' definition,
which keeps the variance about the mean); ``center=False`` / ``scale=False`` drop the ``beta`` /
``gamma`` steps.

Both forwards are checked against the layers with every quantizer off
(``tests/quantization/test_transformer.py``).
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from aimet_tf.quantization import primitives

__all__ = [
    "ATTENTION_TENSORS",
    "ATTENTION_OP_TYPES",
    "LAYER_NORM_TENSORS",
    "LAYER_NORM_OP_TYPES",
    "attention_forward",
    "dense_forward",
    "layer_norm_forward",
    "RMS_NORM_OP_TYPES",
    "RMS_NORM_TENSORS",
    "rms_norm_forward",
]

Quantize = Callable[[str, Any], Any]

ATTENTION_OP_TYPES: dict[str, str] = {
    "query": "Gemm",
    "key": "Gemm",
    "value": "Gemm",
    "attention_scores": "MatMul",
    "scaled_scores": "Mul",
    "attention_probs": "Softmax",
    "attention_context": "MatMul",
}
"""Internal tensor of a quantized MultiHeadAttention -> the ONNX op type that produces it (the
config's rule for that op type decides whether the tensor is quantized)."""
ATTENTION_TENSORS: tuple[str, ...] = tuple(ATTENTION_OP_TYPES)

LAYER_NORM_OP_TYPES: dict[str, str] = {
    "mean": "ReduceMean",
    "centered": "Sub",
    "squared": "Mul",
    "variance": "ReduceMean",
    "variance_eps": "Add",
    "rstd": "Sqrt",  # ONNX writes 1/sqrt as Sqrt and Reciprocal; TFLite has one RSQRT op
    "normalized": "Mul",
    "scaled": "Mul",
}
"""Internal tensor of a decomposed LayerNormalization -> its ONNX op type."""
LAYER_NORM_TENSORS: tuple[str, ...] = tuple(LAYER_NORM_OP_TYPES)

RMS_NORM_OP_TYPES: dict[str, str] = {
    "squared": "Mul",
    "mean_square": "ReduceMean",
    "mean_square_eps": "Add",
    "rstd": "Sqrt",
    "normalized": "Mul",
}
"""Internal tensor of a decomposed RMSNormalization -> its ONNX op type (the output, x * rstd *
scale, gets the layer's output quantizer)."""
RMS_NORM_TENSORS: tuple[str, ...] = tuple(RMS_NORM_OP_TYPES)


def int8_constant(value: Any) -> Any:
    """A constant operand on a symmetric int8 grid whose top level is its largest magnitude.

    The epsilon of a norm, the 1/sqrt(key_dim) of attention and an unquantized norm beta are
    constants that int8 ADD / MUL ops read as int8 tensors. Putting them on an explicit grid
    (step max|c| / 127, zero point 0: a scalar is exact) makes the sim and the converter use the
    same integers; without it the converter picks a grid of its own, or leaves the op in float
    when it converts low-bit weights.
    """
    c = tf.convert_to_tensor(value, tf.float32)
    if c.shape.rank == 0:
        c = tf.reshape(c, (1,))  # a rank-0 fake-quant constant is dropped by the low-bit converter
    top = tf.maximum(tf.reduce_max(tf.abs(c)), tf.constant(1e-30, tf.float32))
    return tf.quantization.fake_quant_with_min_max_vars(c, -top, top, num_bits=8, narrow_range=True)


def _on_int8_grid(quantize: Any, reader: str, value: Any) -> Any:
    """``value`` on its int8 grid when the tensor ``reader`` (the int8 op reading it) is
    quantized; the float value otherwise (a plain ``quantize`` function: always)."""
    active = getattr(quantize, "active", None)
    if active is not None and not active(reader):
        return value
    return int8_constant(value)


def _leading_shape(x: Any) -> list[Any]:
    """The shape of ``x`` without its last axis: static sizes where known, batch as -1."""
    dims = list(x.shape[:-1])
    if all(d is not None for d in dims[1:]):
        return [-1, *dims[1:]]
    return list(ops.shape(x)[:-1])


def _rows_matmul(x: Any, kernel: Any, bias: Any, units: int) -> Any:
    """``x [..., K] . kernel [K, units] + bias`` as one matrix product on ``[rows, K]``.

    The TFLite converter writes this as RESHAPE -> FULLY_CONNECTED (bias fused) -> RESHAPE; the
    same product through ``einsum`` / ``tensordot`` leaves the bias as a separate ADD whose input
    has no quantization grid.
    """
    leading = _leading_shape(x)
    rows = ops.reshape(x, (-1, int(kernel.shape[0])))
    y = ops.matmul(rows, kernel)
    if bias is not None:
        y = ops.add(y, bias)
    return ops.reshape(y, (*leading, units))


def _project(dense: keras.layers.Layer, x: Any, contracted: int) -> Any:
    """An attention projection (EinsumDense) as a matrix product over its flattened axes.

    ``contracted`` is how many trailing axes of ``x`` the kernel's leading axes contract: 1 for the
    query / key / value projections (kernel [D, heads, head_dim]), 2 for the output projection
    (kernel [heads, head_dim, D]).
    """
    k_shape = [int(d) for d in dense.kernel.shape]
    inner = math.prod(k_shape[:contracted])
    out_shape = k_shape[contracted:]
    units = math.prod(out_shape)
    flat_kernel = ops.reshape(dense.kernel, (inner, units))
    bias = None if dense.bias is None else ops.reshape(dense.bias, (units,))
    if contracted > 1:
        x = ops.reshape(x, (*_leading_shape(x)[: 1 - contracted], inner))
    y = _rows_matmul(x, flat_kernel, bias, units)
    return ops.reshape(y, (*_leading_shape(y), *out_shape))


def _standard_projections(layer: keras.layers.Layer) -> bool:
    """Whether the layer's projections use the standard self-attention equations on [B, T, D]."""
    return (
        getattr(layer._query_dense, "equation", None) == "abc,cde->abde"
        and getattr(layer._key_dense, "equation", None) == "abc,cde->abde"
        and getattr(layer._value_dense, "equation", None) == "abc,cde->abde"
        and getattr(layer._output_dense, "equation", None) == "abcd,cde->abe"
    )


def _scale_of(quantize: Any, name: str) -> Any:
    """``quantize.scale(name)`` where the wrapper provides it, else None (float-then-round)."""
    scale = getattr(quantize, "scale", None)
    return scale(name) if scale is not None else None


def _round_ste(x: Any) -> Any:
    return x + tf.stop_gradient(tf.round(x) - x)


def _matmul(quantize: Any, name: str, equation: str, a: Any, a_name: str, b: Any, b_name: str) -> Any:
    """A product of two quantized tensors (BATCH_MATMUL), quantized as ``name``.

    Once the sim is prepared for LiteRT's kernels (``quantize.kernels``), the output level is
    computed as BATCH_MATMUL computes it (the same in the reference and the optimized kernels,
    measured on ai-edge-litert 2.3, ``benchmarks/transformer_op_gap.py``): the int32 sum of the
    zero-point-free operand levels, times M = s_a * s_b / s_out in TFLite's fixed point
    (``primitives.requantize_fixed_point``, ties away from zero). Float-then-round differs from
    it in about 0.26% of the elements. Gradient: that of the float product.
    """
    raw = ops.einsum(equation, a, b)
    if getattr(quantize, "kernels", None) is None:
        return quantize(name, raw)
    s_a, s_b, s_out = (quantize.scale(n) for n in (a_name, b_name, name))
    if s_a is None or s_b is None or s_out is None:
        return quantize(name, raw)
    acc = tf.einsum(equation, _round_ste(a / s_a), _round_ste(b / s_b))
    f64 = tf.float64
    multiplier = tf.cast(s_a, f64) * tf.cast(s_b, f64) / tf.cast(s_out, f64)
    level = primitives.requantize_fixed_point(acc, multiplier, ties_away=True)
    return quantize(name, raw + tf.stop_gradient(level * s_out - raw))


# Kernels whose int8 MEAN and MUL requantize in TFLite's fixed point (measured bit-exact with
# ``aimet_tf.kernels.requantize``); XNNPACK's (the default resolver's) use float32 multipliers.
_FIXED_POINT_KERNELS = ("reference", "builtin")


def _fixed_point_levels(kind: str, count: int, *args) -> np.ndarray:
    from aimet_tf.kernels import requantize as kernel_requantize

    if kind in ("softmax", "softmax_float_table"):
        q, s_x = args
        levels = kernel_requantize.softmax_levels(q, float(s_x), float_table=kind == "softmax_float_table")
        return levels.astype(np.float32)
    if kind == "mul":
        q_1, q_2, s_1, s_2, s_y = args
        levels = kernel_requantize.mul_levels(q_1, q_2, float(s_1), float(s_2), float(s_y))
    elif kind == "add":
        q_1, q_2, s_1, s_2, s_y = args
        levels = kernel_requantize.add_levels(q_1, q_2, float(s_1), float(s_2), float(s_y))
    elif kind == "sub":
        # TFLite's SUB is its ADD with the second operand's multiplier negated.
        q_1, q_2, s_1, s_2, s_y = args
        levels = kernel_requantize.add_levels(q_1, -np.asarray(q_2), float(s_1), float(s_2), float(s_y))
    else:
        total, s_x, s_y = args
        levels = kernel_requantize.mean_levels(total, count, float(s_x), float(s_y))
    return np.asarray(levels, np.float32)


def _requantized(quantize: Any, name: str, raw: Any, kind: str, operands: list[tuple[Any, Any]],
                 axes: list[int] | None = None, operand_names: list[str] | None = None) -> Any:
    """``raw`` (a MUL or SUB of two quantized operands, a MEAN or SOFTMAX of one) quantized as
    ``name``, with the output level computed as the kernels do once the sim is prepared for them:
    TFLite's fixed point for the reference and builtin kernels; under the default resolver,
    XNNPACK's ADD multipliers for an ADD or SUB, its float32 multiplier on the integer level
    product for a MUL and on the level sum for a MEAN; and
    LiteRT's optimized float-table SOFTMAX under both the builtin and default resolvers.
    ``operands`` are (tensor, grid step or None) pairs."""
    kernels = getattr(quantize, "kernels", None)
    if kind == "softmax" and kernels in ("default", "builtin"):
        kind = "softmax_float_table"  # LiteRT's optimized int8 SOFTMAX (XNNPACK does not take it)
    # Every kind is modelled for every resolver once the sim is prepared (kernels set).
    s_out = quantize.scale(name) if kernels is not None else None
    if s_out is None or any(step is None for _, step in operands):
        return quantize(name, raw)
    levels = [_round_ste(t / step) for t, step in operands]
    steps = [tf.cast(tf.reshape(step, ()), tf.float32) for _, step in operands]
    s_out = tf.cast(tf.reshape(s_out, ()), tf.float32)
    if kernels == "default" and kind in ("add", "sub"):
        # XNNPACK's ADD: ~21-bit integer multipliers (a SUB negates the second operand).
        second = levels[1] if kind == "add" else -levels[1]
        out = primitives.requantize_add([levels[0], second], steps, s_out)
        return quantize(name, raw + tf.stop_gradient(out * s_out - raw))
    if kernels == "default" and kind == "mul":
        # XNNPACK's MUL: the integer product of the levels times a float32 multiplier, ties to even.
        # (Float-then-round of the dequantized product misses it where the product sits near a tie.)
        out = primitives.requantize_float(levels[0] * levels[1], (steps[0] * steps[1]) / s_out)
        return quantize(name, raw + tf.stop_gradient(out * s_out - raw))
    if kernels == "default" and kind == "mean":
        # XNNPACK's MEAN: float32 multiplier on the int8 level sum (``primitives.requantize_mean``).
        minima = [quantize.minimum(n) for n in (operand_names or [None]) + [name]] if operand_names else None
        count = math.prod(int(operands[0][0].shape[a]) for a in axes)
        if not minima or any(m is None for m in minima):
            return quantize(name, raw)
        total = tf.reduce_sum(levels[0], axis=axes, keepdims=True)
        out = primitives.requantize_mean(total, float(count), steps[0], s_out,
                                         tf.reshape(minima[0], ()), tf.reshape(minima[1], ()))
        return quantize(name, raw + tf.stop_gradient(out * s_out - raw))
    if kind in ("mul", "add", "sub"):
        args, count = [levels[0], levels[1], steps[0], steps[1], s_out], 1
    elif kind in ("softmax", "softmax_float_table"):
        args, count = [levels[0], steps[0]], 1
    else:
        count = math.prod(int(operands[0][0].shape[a]) for a in axes)
        args = [tf.reduce_sum(levels[0], axis=axes, keepdims=True), steps[0], s_out]
    out = tf.numpy_function(lambda *v: _fixed_point_levels(kind, count, *v), args, tf.float32,
                            stateful=False, name=f"{kind}_fixed_point")
    out = tf.ensure_shape(out, raw.shape)
    return quantize(name, raw + tf.stop_gradient(out * s_out - raw))


def _rsqrt(quantize: Any, x: Any, input_name: str = "variance_eps") -> Any:
    """RSQRT quantized as ``rstd``; prepared for the reference or builtin kernels, the level is
    TFLite's integer RSQRT of the input level (``_rsqrt_levels``); for the default resolver,
    XNNPACK's, read off LiteRT as a table (float-then-round differs from it on ~0.2% of codes)."""
    raw = ops.rsqrt(x)
    kernels = getattr(quantize, "kernels", None)
    s_out = quantize.scale("rstd") if kernels is not None else None
    s_in = quantize.scale(input_name) if s_out is not None else None
    if s_out is None or s_in is None:
        return quantize("rstd", raw)
    s_in, s_out = tf.reshape(s_in, ()), tf.reshape(s_out, ())
    if kernels in _FIXED_POINT_KERNELS:
        level = tf.numpy_function(_rsqrt_levels, [tf.round(x / s_in), s_in, s_out], tf.float32,
                                  stateful=False, name="rsqrt_fixed_point")
    else:
        # XNNPACK's RSQRT: the table LiteRT computes for these grids (``aimet_tf.kernels.litert``).
        grids = [tf.reshape(quantize.minimum(n), ()) for n in (input_name, "rstd")]
        level = tf.numpy_function(
            lambda v, a, b, lo_in, lo_out: _table_levels("RSQRT", v, a, b, lo_in, lo_out, kernels),
            [tf.round(x / s_in), s_in, s_out, *grids], tf.float32, stateful=False, name="rsqrt_table")
    level = tf.ensure_shape(level, raw.shape)
    # A zero variance level gives rsqrt = inf: the straight-through base must stay finite.
    base = tf.where(tf.math.is_finite(raw), raw, tf.zeros_like(raw))
    return quantize("rstd", base + tf.stop_gradient(level * s_out - base))


def _table_levels(op: str, value, s_in, s_out, min_in, min_out, kernels: str) -> np.ndarray:
    """Zero-point-free output levels of an int8 elementwise op from LiteRT's own table."""
    from aimet_tf.kernels.litert import litert_table

    z_in = int(-128 - np.round(float(min_in) / float(s_in)))
    z_out = int(-128 - np.round(float(min_out) / float(s_out)))
    table = litert_table(op, float(s_in), z_in, float(s_out), z_out, kernels).astype(np.int64)
    codes = np.clip(np.asarray(value, np.int64) + z_in, -128, 127)
    return (table[codes + 128] - z_out).astype(np.float32)


def _rsqrt_levels(value: np.ndarray, s_in: np.ndarray, s_out: np.ndarray) -> np.ndarray:
    """TFLite's int8 RSQRT on zero-point-free input levels (an integer Newton-Raphson inverse
    square root, ``aimet_tf.kernels``): the zero-point-free output levels; 0 maps past the grid."""
    from aimet_tf.kernels import fixed_point as fp
    from aimet_tf.kernels import requantize as kernel_requantize

    v = np.asarray(value, np.int64)
    multiplier, shift = kernel_requantize.rsqrt_parameters(float(s_in), float(s_out))
    safe = np.maximum(v, 1)
    m_v, e_v = fp.inv_sqrt_quantized_multiplier_exp(safe)
    data = fp.multiply_by_quantized_multiplier(np.ones_like(safe), m_v, e_v + 20)
    levels = fp.multiply_by_quantized_multiplier(data, multiplier, shift - 20).astype(np.float64)
    return np.where(v <= 0, 1e9, levels).astype(np.float32)


def _fully_connected(quantize: Any, name: str, y: Any, input_name: str, weight_name: str) -> Any:
    """A projection's output (float, from quantized input, weight and int32-grid bias) quantized as
    ``name``, its level computed as FULLY_CONNECTED does once the sim is prepared: XNNPACK's
    float32 requantization (default), or LiteRT's reference / builtin arithmetic."""
    kernels = getattr(quantize, "kernels", None)
    steps = [_scale_of(quantize, n) for n in (input_name, weight_name, name)] if kernels else [None]
    if any(step is None for step in steps):
        return quantize(name, y)
    s_in, s_w, s_out = (tf.cast(tf.reshape(step, (-1,)), tf.float32) for step in steps)
    s_in, s_out = tf.reshape(s_in, ()), tf.reshape(s_out, ())
    acc = _round_ste(y / (s_in * s_w))
    if kernels == "default":
        level = primitives.requantize_float(acc, (s_in * s_w) / s_out)
    else:
        from aimet_tf.kernels import requantize as kernel_requantize

        level = tf.numpy_function(
            lambda a, x, w, o: np.asarray(kernel_requantize.fully_connected_levels(
                a, float(x), w, float(o), "fixed_point_dsp" if kernels == "builtin" else None), np.float32),
            [acc, s_in, s_w, s_out], tf.float32, stateful=False, name="fully_connected_levels")
        level = tf.ensure_shape(level, y.shape)
    return quantize(name, y + tf.stop_gradient(level * s_out - y))


def _constant_step(quantize: Any, reader: str, value: float) -> Any:
    """The grid step of a scalar ``int8_constant`` (its value is level 127), or None."""
    active = getattr(quantize, "active", None)
    if active is not None and not active(reader):
        return None
    return tf.constant(abs(float(value)) / 127.0, tf.float32)


# Keras' fill for masked attention scores before the softmax (keras.layers.Softmax).
_MASKED_SCORE = -1e9


def _score_mask(layer: keras.layers.Layer, scores: Any, mask: Any) -> Any:
    """The boolean mask broadcastable to the scores ``[B, heads, T, S]``, or None."""
    if mask is None:
        return None
    mask = ops.cast(mask, "bool")
    axis = -len(layer._attention_axes) * 2 - 1
    for _ in range(len(scores.shape) - len(mask.shape)):
        mask = ops.expand_dims(mask, axis=axis)
    return mask


def _masked_scores(scores: Any, mask: Any, quantize: Any) -> Any:
    """The softmax input: masked keys replaced by the lowest level of the scores' grid.

    An int8 target selects (SELECT_V2) between the quantized scores and a constant on their grid,
    so a masked key keeps the weight exp(lowest - max) rather than exactly 0: the simulation
    computes the same, and ``attention_forward`` then zeroes the masked probabilities (a second
    SELECT_V2, on the probabilities' grid) so that masked keys contribute nothing. While the
    scores are not quantized (calibration, quantizers off) the fill is Keras' -1e9.
    """
    if mask is None:
        return scores
    fill = tf.constant([_MASKED_SCORE], tf.float32)  # past any scores grid: clamps to its lowest level
    on_grid = getattr(quantize, "on_grid", None)
    if on_grid is not None:
        fill = on_grid("scaled_scores", fill)
    return ops.where(mask, scores, fill)


def dense_forward(layer: keras.layers.Layer, args: tuple, kwargs: dict, training: bool) -> Any:
    """A ``Dense`` on inputs of rank > 2 as one matrix product on ``[rows, features]``.

    The same numbers as the layer's call; the converter then fuses the bias into
    FULLY_CONNECTED instead of leaving an ADD with no quantization grid. Rank-2 inputs (and
    calls with a mask or LoRA) run the layer's own call (None).
    """
    del training
    x = args[0] if args else None
    if x is None or len(x.shape) <= 2 or kwargs.get("mask") is not None or getattr(layer, "lora_enabled", False):
        return None
    if getattr(layer, "quantization_mode", None):
        return None
    y = _rows_matmul(x, layer.kernel, layer.bias, int(layer.units))
    if layer.activation is not None:
        y = layer.activation(y)
    return y


def _bind_attention_call(layer: keras.layers.Layer, args: tuple, kwargs: dict) -> dict[str, Any]:
    signature = inspect.signature(type(layer).call)
    bound = signature.bind(layer, *args, **kwargs)
    bound.apply_defaults()
    values = dict(bound.arguments)
    values.pop("self", None)
    return values


def _refuse_unsupported_attention(layer: keras.layers.Layer) -> None:
    if getattr(layer, "_use_gate", False):
        raise NotImplementedError(
            f"Layer {layer.name!r} (MultiHeadAttention) uses a gate (use_gate=True): the quantized "
            "attention does not model the gated output. Expected use_gate=False."
        )


def attention_forward(
    layer: keras.layers.Layer, args: tuple, kwargs: dict, training: bool, quantize: Quantize | None = None
) -> Any:
    """Runs a ``MultiHeadAttention`` call op by op, quantizing its intermediate tensors.

    Args:
        layer: the ``keras.layers.MultiHeadAttention`` (its projection variables may be mapped to
            quantized values by the wrapper's ``StatelessScope``).
        args: the call's positional arguments ``(query, value[, key, ...])``.
        kwargs: its keyword arguments (``attention_mask``, ``use_causal_mask``,
            ``return_attention_scores``, Keras masks...), as ``MultiHeadAttention.call`` takes them.
        training: whether the call trains (attention dropout applies after the softmax
            quantizer, as Keras applies it to the probabilities).
        quantize: ``quantize(name, tensor)`` for the names in ``ATTENTION_TENSORS``; None when
            the sim does not decompose the layer (the layer's own call then runs).

    Returns:
        The attention output, and the (quantized) attention probabilities when the call asks
        for ``return_attention_scores``; None when ``quantize`` is None.

    Raises:
        NotImplementedError: for a gated attention layer (``use_gate=True``).
    """
    if quantize is None:
        return None
    _refuse_unsupported_attention(layer)
    call = _bind_attention_call(layer, args, kwargs)
    query, value = call["query"], call["value"]
    key = value if call["key"] is None else call["key"]
    # Keras masks travel on the tensors (e.g. from Embedding(mask_zero=True)) or as arguments.
    query_mask = call.get("query_mask")
    if query_mask is None:
        query_mask = keras.backend.get_keras_mask(query) if hasattr(keras.backend, "get_keras_mask") else None
    mask = layer._compute_attention_mask(
        query,
        value,
        query_mask=query_mask,
        value_mask=call.get("value_mask"),
        key_mask=call.get("key_mask"),
        attention_mask=call.get("attention_mask"),
        use_causal_mask=bool(call.get("use_causal_mask")),
    )
    standard = _standard_projections(layer)

    def project(dense, x, contracted, name, input_name):
        if not standard:
            return quantize(name, dense(x))
        y = _project(dense, x, contracted)
        return _fully_connected(quantize, name, y, input_name, f"param:{dense_paths[id(dense)]}.kernel")

    dense_paths = {id(layer._query_dense): "_query_dense", id(layer._key_dense): "_key_dense",
                   id(layer._value_dense): "_value_dense", id(layer._output_dense): "_output_dense"}
    q = project(layer._query_dense, query, 1, "query", "input:0")
    k = project(layer._key_dense, key, 1, "key", "input:1")
    v = project(layer._value_dense, value, 1, "value", "input:1")
    # [B, N, T, S]: the product first, then the 1/sqrt(key_dim) scale (the converter's order).
    scores = _matmul(quantize, "attention_scores", layer._dot_product_equation, k, "key", q, "query")
    scale = _on_int8_grid(quantize, "scaled_scores", layer._inverse_sqrt_key_dim)
    scaled = _requantized(
        quantize, "scaled_scores", ops.multiply(scores, scale), "mul",
        [(scores, _scale_of(quantize, "attention_scores")),
         (scale, _constant_step(quantize, "scaled_scores", layer._inverse_sqrt_key_dim))],
    )
    score_mask = _score_mask(layer, scaled, mask)
    masked = _masked_scores(scaled, score_mask, quantize)
    probs = _requantized(quantize, "attention_probs", layer._softmax(masked), "softmax",
                         [(masked, _scale_of(quantize, "scaled_scores"))])
    if score_mask is not None:
        probs = ops.where(score_mask, probs, tf.zeros((1,), probs.dtype))
    kept = probs
    if layer._dropout > 0.0:
        kept = layer._dropout_layer(probs, training=training)
    context = _matmul(quantize, "attention_context", layer._combine_equation, kept, "attention_probs", v, "value")
    output = project(layer._output_dense, context, 2, "output:0", "attention_context")
    if call.get("return_attention_scores"):
        return output, probs
    return output


def layer_norm_forward(
    layer: keras.layers.Layer, args: tuple, kwargs: dict, training: bool, quantize: Quantize | None = None
) -> Any:
    """Runs a ``LayerNormalization`` as the int8 ops a target without a norm kernel runs.

    Args:
        layer: the ``keras.layers.LayerNormalization`` (``gamma`` / ``beta`` may be mapped to
            quantized values by the wrapper).
        args: ``(inputs,)``.
        kwargs: unused keyword arguments of the call.
        training: unused (layer normalization has no training-time behaviour).
        quantize: ``quantize(name, tensor)`` for the names in ``LAYER_NORM_TENSORS``; None when
            the config does not decompose the layer (the layer's own call then runs).

    Returns:
        The normalized tensor (before the wrapper's output quantizer), or None when
        ``quantize`` is None.
    """
    del kwargs, training
    if quantize is None:
        return None
    x = args[0]
    compute_dtype = "float32"
    x = ops.cast(x, compute_dtype)
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    ndims = len(x.shape)
    axes = sorted(a % ndims for a in axes)

    def broadcast(v):
        # gamma / beta hold the normalized axes' shape; outside the last axis they need ones.
        if axes == [ndims - 1]:
            return ops.cast(v, compute_dtype)
        shape = [1] * ndims
        for a in axes:
            shape[a] = x.shape[a]
        return ops.reshape(ops.cast(v, compute_dtype), shape)

    scale = functools.partial(_scale_of, quantize)
    mean = _requantized(quantize, "mean", ops.mean(x, axis=axes, keepdims=True), "mean",
                        [(x, scale("input:0"))], axes, ["input:0"])
    centered = _requantized(quantize, "centered", ops.subtract(x, mean), "sub",
                            [(x, scale("input:0")), (mean, scale("mean"))])
    squared = _requantized(quantize, "squared", ops.multiply(centered, centered), "mul",
                           [(centered, scale("centered"))] * 2)
    variance = _requantized(quantize, "variance", ops.mean(squared, axis=axes, keepdims=True), "mean",
                            [(squared, scale("squared"))], axes, ["squared"])
    epsilon = _on_int8_grid(quantize, "variance_eps", layer.epsilon)
    variance_eps = quantize("variance_eps", ops.add(variance, epsilon))
    rstd = _rsqrt(quantize, variance_eps)
    source, source_name = (x, "input:0") if layer.rms_scaling else (centered, "centered")
    normalized = _requantized(quantize, "normalized", ops.multiply(source, rstd), "mul",
                              [(source, scale(source_name)), (rstd, scale("rstd"))])
    out = normalized
    if layer.gamma is not None:
        gamma = broadcast(layer.gamma)
        out = _requantized(quantize, "scaled", ops.multiply(out, gamma), "mul",
                           [(out, scale("normalized")), (gamma, scale("param:gamma"))])
    if layer.beta is not None and not layer.rms_scaling:
        # The ADD reads beta as int8 (``int8_constant``) next to the quantized scaled values,
        # after beta's parameter quantizer if the config quantizes biases: the converter keeps
        # the last grid, so sim and file agree.
        reader = "scaled" if layer.gamma is not None else "normalized"
        beta = broadcast(_on_int8_grid(quantize, reader, layer.beta))
        beta_step = None
        if getattr(quantize, "active", lambda n: True)(reader):
            beta_step = tf.maximum(tf.reduce_max(tf.abs(tf.cast(layer.beta, tf.float32))), 1e-30) / 127.0
        out = _requantized(quantize, "output:0", ops.add(out, beta), "add",
                           [(out, _scale_of(quantize, reader)), (beta, beta_step)])
    return ops.cast(out, layer.compute_dtype)


def rms_norm_forward(
    layer: keras.layers.Layer, args: tuple, kwargs: dict, training: bool, quantize: Quantize | None = None
) -> Any:
    """Runs a ``keras.layers.RMSNormalization`` as int8 ops: squared = x * x,
    mean_square = MEAN(squared), mean_square_eps = mean_square + epsilon,
    rstd = RSQRT(mean_square_eps), normalized = x * rstd, output = normalized * scale
    (``RMS_NORM_TENSORS``; the output gets the layer's output quantizer).

    Args and returns as :func:`layer_norm_forward` (``quantize`` None: the layer's own call).
    """
    del kwargs, training
    if quantize is None:
        return None
    x = ops.cast(args[0], "float32")
    ndims = len(x.shape)
    axes = sorted(a % ndims for a in ([layer.axis] if isinstance(layer.axis, int) else list(layer.axis)))
    scale = functools.partial(_scale_of, quantize)
    squared = _requantized(quantize, "squared", ops.multiply(x, x), "mul", [(x, scale("input:0"))] * 2)
    mean_square = _requantized(quantize, "mean_square", ops.mean(squared, axis=axes, keepdims=True), "mean",
                               [(squared, scale("squared"))], axes, ["squared"])
    epsilon = _on_int8_grid(quantize, "mean_square_eps", layer.epsilon)
    mean_square_eps = quantize("mean_square_eps", ops.add(mean_square, epsilon))
    rstd = _rsqrt(quantize, mean_square_eps, input_name="mean_square_eps")
    normalized = _requantized(quantize, "normalized", ops.multiply(x, rstd), "mul",
                              [(x, scale("input:0")), (rstd, scale("rstd"))])
    gamma = ops.cast(layer.scale, "float32")
    if axes != [ndims - 1]:
        shape = [1] * ndims
        for a in axes:
            shape[a] = x.shape[a]
        gamma = ops.reshape(gamma, shape)
    out = ops.multiply(normalized, gamma)
    return ops.cast(out, layer.compute_dtype)
