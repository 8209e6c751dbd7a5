"""Validated Python wrappers of the C++ TF ops (`aimet_tf/kernels/cc/dsp_kernels.cc`).

Each function has the signature and the arithmetic of its numpy twin in
`aimet_tf.kernels.reference` (the formulas are documented there) and returns an int8 (or
float32) `tf.Tensor`. Arguments are checked here, in Python, before the op runs: wrong dtypes,
ranks, channel counts or parameter ranges raise `ValueError` naming the argument. The ops
check again with OP_REQUIRES (raising `tf.errors.InvalidArgumentError`) for what only shows at
run time inside a `tf.function`.

Works eagerly and inside `tf.function` (so in Keras layers); the library is built on first use
(see `aimet_tf.kernels.build`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from aimet_tf.kernels.build import load_ops
from aimet_tf.kernels.target import DspTarget, resolve_target

__all__ = [
    "conv2d",
    "depthwise_conv2d",
    "fully_connected",
    "add",
    "sub",
    "mul",
    "batch_matmul",
    "average_pool2d",
    "max_pool2d",
    "requantize",
    "quantize",
    "dequantize",
    "softmax",
    "mean",
]


def _tensor(name: str, value, dtype: tf.DType, rank: int | None = None) -> tf.Tensor:
    if isinstance(value, np.ndarray) and value.dtype != dtype.as_numpy_dtype:
        raise ValueError(f"Expected {name} of dtype {dtype.name}. Received: {name}.dtype={value.dtype}")
    if isinstance(value, (tf.Tensor, tf.Variable)) and value.dtype != dtype:
        raise ValueError(f"Expected {name} of dtype {dtype.name}. Received: {name}.dtype={value.dtype.name}")
    t = tf.convert_to_tensor(value, dtype=dtype)
    if rank is not None and t.shape.rank is not None and t.shape.rank != rank:
        raise ValueError(f"Expected {name} of rank {rank}. Received: {name}.shape={t.shape}")
    return t


def _zero_point(name: str, value: int) -> int:
    value = int(value)
    if not -128 <= value <= 127:
        raise ValueError(f"Expected {name} in [-128, 127]. Received: {name}={value}")
    return value


def _activation(lo: int, hi: int) -> tuple[int, int]:
    lo, hi = int(lo), int(hi)
    if not -128 <= lo <= hi <= 127:
        raise ValueError(f"Expected -128 <= activation_min <= activation_max <= 127. Received: {lo}, {hi}")
    return lo, hi


def _pair(name: str, value) -> list[int]:
    values = [int(v) for v in (value if isinstance(value, (list, tuple)) else (value, value))]
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"Expected {name} as two positive ints. Received: {name}={value!r}")
    return values


def _padding(padding: str) -> str:
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"Expected padding 'SAME' or 'VALID'. Received: padding={padding!r}")
    return padding


def _requant_vectors(multiplier, shift, channels: int, target: DspTarget) -> tuple[tf.Tensor, tf.Tensor]:
    m = np.atleast_1d(np.asarray(multiplier, dtype=np.int64))
    e = np.atleast_1d(np.asarray(shift, dtype=np.int64))
    if m.ndim != 1 or m.shape != e.shape or m.size not in (1, channels):
        raise ValueError(
            f"Expected multiplier and shift of length 1 or {channels} (output channels). "
            f"Received: multiplier shape {m.shape}, shift shape {e.shape}"
        )
    max_shift = 30 if target.rounding == "single" else 31
    if m.min() < 0 or m.max() > 2**31 - 1 or e.min() < -31 or e.max() > max_shift:
        raise ValueError(
            f"Expected multipliers in [0, 2^31) and shifts in [-31, {max_shift}]. "
            f"Received: multiplier range [{m.min()}, {m.max()}], shift range [{e.min()}, {e.max()}]"
        )
    return tf.constant(m.astype(np.int32)), tf.constant(e.astype(np.int32))


def _bias(bias, channels: int) -> tf.Tensor:
    if bias is None:
        return tf.zeros([0], tf.int32)
    b = _tensor("bias", bias, tf.int32, 1)
    if b.shape[0] is not None and b.shape[0] not in (0, channels):
        raise ValueError(f"Expected bias of shape [{channels}] (output channels). Received: bias.shape={b.shape}")
    return b


def _weights(name: str, weights, weight_bits: int, filter_shape: Sequence[int] | None, rank: int):
    """Returns (tensor, logical shape) for int8 weights or packed int4 bytes + filter_shape."""
    if weight_bits == 8:
        w = _tensor(name, weights, tf.int8, rank)
        if not w.shape.is_fully_defined():
            raise ValueError(f"Expected {name} with a static shape. Received: {name}.shape={w.shape}")
        return w, list(w.shape)
    if weight_bits != 4:
        raise ValueError(f"Expected weight_bits 8 or 4. Received: weight_bits={weight_bits}")
    if filter_shape is None or len(filter_shape) != rank or min(filter_shape) < 1:
        raise ValueError(
            f"Packed int4 {name} need filter_shape, the logical shape of rank {rank}. Received: filter_shape={filter_shape}"
        )
    w = _tensor(name, weights, tf.int8, 1)
    count = int(np.prod(filter_shape))
    if w.shape[0] is not None and w.shape[0] != (count + 1) // 2:
        raise ValueError(
            f"Expected {(count + 1) // 2} packed int4 bytes for filter_shape {list(filter_shape)}. Received: {w.shape[0]}"
        )
    return w, [int(d) for d in filter_shape]


def _check_window(name: str, in_size, window: int, stride: int, dilation: int, padding: str) -> None:
    if in_size is None or padding == "SAME":
        return
    if (window - 1) * dilation + 1 > in_size:
        raise ValueError(
            f"{name}: window {(window - 1) * dilation + 1} exceeds the input size {in_size} with VALID padding."
        )


def _conv(kind: str, x, filters, bias, multiplier, shift, *, input_zero_point, output_zero_point, strides, dilations,
          padding, activation_min, activation_max, weight_bits, filter_shape, target) -> tf.Tensor:
    target = resolve_target(target)
    x = _tensor("x", x, tf.int8, 4)
    w, fshape = _weights("filters", filters, weight_bits, filter_shape, 4)
    strides, dilations, padding = _pair("strides", strides), _pair("dilations", dilations), _padding(padding)
    channels = x.shape[3]
    if kind == "depthwise":
        out_c = fshape[3]
        if fshape[0] != 1 or (channels is not None and out_c % channels):
            raise ValueError(
                f"Expected depthwise filters [1, KH, KW, C * M] with C = {channels}. Received filter shape {fshape}"
            )
    else:
        out_c = fshape[0]
        if channels is not None and (channels % fshape[3] or out_c % (channels // fshape[3])):
            raise ValueError(
                f"Input channels {channels} do not match the filters' input channels {fshape[3]} "
                f"(groups = C / {fshape[3]} must divide the {out_c} output channels)."
            )
    for axis in (0, 1):
        _check_window(kind, x.shape[1 + axis], fshape[1 + axis], strides[axis], dilations[axis], padding)
    m, e = _requant_vectors(multiplier, shift, out_c, target)
    lo, hi = _activation(activation_min, activation_max)
    op = load_ops().aimet_dsp_depthwise_conv2d if kind == "depthwise" else load_ops().aimet_dsp_conv2d
    return op(x, w, _bias(bias, out_c), m, e, strides=strides, dilations=dilations, padding=padding,
              input_zero_point=_zero_point("input_zero_point", input_zero_point),
              output_zero_point=_zero_point("output_zero_point", output_zero_point),
              activation_min=lo, activation_max=hi, weight_bits=weight_bits,
              filter_shape=fshape if weight_bits == 4 else [], rounding=target.rounding,
              accumulator_bits=target.accumulator_bits)


def conv2d(x, filters, bias, multiplier, shift, *, input_zero_point: int, output_zero_point: int,
           strides=(1, 1), dilations=(1, 1), padding: str = "SAME", activation_min: int = -128,
           activation_max: int = 127, weight_bits: int = 8, filter_shape: Sequence[int] | None = None,
           target: DspTarget | str | None = None) -> tf.Tensor:
    """Int8 convolution in C++ (see `reference.conv2d` for the arithmetic).

    Args:
        x: int8 [N, H, W, C].
        filters: int8 [O, KH, KW, C / groups]; or, with weight_bits=4, the packed int4 bytes
            (`reference.pack_int4`) as a 1-D int8 array and `filter_shape` = [O, KH, KW, C / groups].
        bias: int32 [O] or None.
        multiplier, shift: per-channel [O] or per-tensor requantization (`quantize_multiplier`).
        Others: as `reference.conv2d`.

    Returns:
        int8 tf.Tensor [N, OH, OW, O].

    Raises:
        ValueError: for mismatched dtypes, shapes or out-of-range parameters.
    """
    return _conv("conv", x, filters, bias, multiplier, shift, input_zero_point=input_zero_point,
                 output_zero_point=output_zero_point, strides=strides, dilations=dilations, padding=padding,
                 activation_min=activation_min, activation_max=activation_max, weight_bits=weight_bits,
                 filter_shape=filter_shape, target=target)


def depthwise_conv2d(x, filters, bias, multiplier, shift, *, input_zero_point: int, output_zero_point: int,
                     strides=(1, 1), dilations=(1, 1), padding: str = "SAME", activation_min: int = -128,
                     activation_max: int = 127, weight_bits: int = 8, filter_shape: Sequence[int] | None = None,
                     target: DspTarget | str | None = None) -> tf.Tensor:
    """Int8 depthwise convolution in C++ (see `reference.depthwise_conv2d`); filters [1, KH, KW, C * M]."""
    return _conv("depthwise", x, filters, bias, multiplier, shift, input_zero_point=input_zero_point,
                 output_zero_point=output_zero_point, strides=strides, dilations=dilations, padding=padding,
                 activation_min=activation_min, activation_max=activation_max, weight_bits=weight_bits,
                 filter_shape=filter_shape, target=target)


def fully_connected(x, weights, bias, multiplier, shift, *, input_zero_point: int, output_zero_point: int,
                    weight_zero_point: int = 0, activation_min: int = -128, activation_max: int = 127,
                    weight_bits: int = 8, filter_shape: Sequence[int] | None = None, effective_scale=None,
                    target: DspTarget | str | None = None) -> tf.Tensor:
    """Int8 fully connected layer in C++ (see `reference.fully_connected`); weights [O, D] -> [B, O].

    `effective_scale` (float64 s_x * s_w / s_y, per tensor or [O]) is required when the target's
    `fully_connected_requantize` is "float64".
    """
    target = resolve_target(target)
    x = _tensor("x", x, tf.int8)
    w, wshape = _weights("weights", weights, weight_bits, filter_shape, 2)
    if x.shape.is_fully_defined() and x.shape.num_elements() % wshape[1]:
        raise ValueError(f"Input shape {x.shape} does not flatten to rows of the weights' depth {wshape[1]}.")
    m, e = _requant_vectors(multiplier, shift, wshape[0], target)
    lo, hi = _activation(activation_min, activation_max)
    if target.fully_connected_requantize == "float64":
        if effective_scale is None:
            raise ValueError("The 'float64' fully connected requantization needs effective_scale (s_x * s_w / s_y).")
        scales = np.atleast_1d(np.asarray(effective_scale, dtype=np.float64))
        if scales.ndim != 1 or scales.size not in (1, wshape[0]) or not np.all(np.isfinite(scales)) or np.any(scales < 0):
            raise ValueError(
                f"Expected effective_scale of 1 or {wshape[0]} finite values >= 0. Received shape {scales.shape}"
            )
    else:
        scales = np.zeros([0], np.float64)
    return load_ops().aimet_dsp_fully_connected(
        x, w, _bias(bias, wshape[0]), m, e, tf.constant(scales), requantize=target.fully_connected_requantize,
        input_zero_point=_zero_point("input_zero_point", input_zero_point),
        output_zero_point=_zero_point("output_zero_point", output_zero_point),
        weight_zero_point=_zero_point("weight_zero_point", weight_zero_point), activation_min=lo,
        activation_max=hi, weight_bits=weight_bits, filter_shape=wshape if weight_bits == 4 else [],
        rounding=target.rounding, accumulator_bits=target.accumulator_bits)


def _scalar_requant(name: str, multiplier: int, shift: int, lo: int, hi: int) -> tuple[int, int]:
    multiplier, shift = int(multiplier), int(shift)
    if not 0 <= multiplier < 2**31 or not lo <= shift <= hi:
        raise ValueError(
            f"Expected {name} multiplier in [0, 2^31) and shift in [{lo}, {hi}]. Received: {multiplier}, {shift}"
        )
    return multiplier, shift


def _broadcastable(name: str, x1: tf.Tensor, x2: tf.Tensor) -> None:
    if x1.shape.rank is not None and x2.shape.rank is not None:
        try:
            tf.broadcast_static_shape(x1.shape, x2.shape)
        except ValueError as exc:
            raise ValueError(f"{name} inputs do not broadcast: x1.shape={x1.shape}, x2.shape={x2.shape}") from exc


def _add_or_sub(name: str, x1, x2, input1_zero_point, input2_zero_point, output_zero_point, input1_multiplier,
                input1_shift, input2_multiplier, input2_shift, output_multiplier, output_shift, activation_min,
                activation_max, target) -> tf.Tensor:
    target = resolve_target(target)
    x1, x2 = _tensor("x1", x1, tf.int8), _tensor("x2", x2, tf.int8)
    _broadcastable(name, x1, x2)
    m1, s1 = _scalar_requant("input1", input1_multiplier, input1_shift, -31, 0)
    m2, s2 = _scalar_requant("input2", input2_multiplier, input2_shift, -31, 0)
    mo, so = _scalar_requant("output", output_multiplier, output_shift, -31, 0)
    lo, hi = _activation(activation_min, activation_max)
    return load_ops().aimet_dsp_add(
        x1, x2, input1_zero_point=_zero_point("input1_zero_point", input1_zero_point),
        input2_zero_point=_zero_point("input2_zero_point", input2_zero_point),
        output_zero_point=_zero_point("output_zero_point", output_zero_point), input1_multiplier=m1,
        input1_shift=s1, input2_multiplier=m2, input2_shift=s2, output_multiplier=mo, output_shift=so,
        left_shift=target.add_left_shift, subtract=name == "Sub", activation_min=lo, activation_max=hi,
        rounding=target.rounding)


def add(x1, x2, *, input1_zero_point: int, input2_zero_point: int, output_zero_point: int, input1_multiplier: int,
        input1_shift: int, input2_multiplier: int, input2_shift: int, output_multiplier: int, output_shift: int,
        activation_min: int = -128, activation_max: int = 127, target: DspTarget | str | None = None) -> tf.Tensor:
    """Int8 Add with rescaling in C++ (see `reference.add`); numpy broadcasting."""
    return _add_or_sub("Add", x1, x2, input1_zero_point, input2_zero_point, output_zero_point, input1_multiplier,
                       input1_shift, input2_multiplier, input2_shift, output_multiplier, output_shift, activation_min,
                       activation_max, target)


def sub(x1, x2, *, input1_zero_point: int, input2_zero_point: int, output_zero_point: int, input1_multiplier: int,
        input1_shift: int, input2_multiplier: int, input2_shift: int, output_multiplier: int, output_shift: int,
        activation_min: int = -128, activation_max: int = 127, target: DspTarget | str | None = None) -> tf.Tensor:
    """Int8 Sub with rescaling in C++ (see `reference.sub`); numpy broadcasting."""
    return _add_or_sub("Sub", x1, x2, input1_zero_point, input2_zero_point, output_zero_point, input1_multiplier,
                       input1_shift, input2_multiplier, input2_shift, output_multiplier, output_shift, activation_min,
                       activation_max, target)


def mul(x1, x2, *, input1_zero_point: int, input2_zero_point: int, output_zero_point: int, multiplier: int,
        shift: int, activation_min: int = -128, activation_max: int = 127,
        target: DspTarget | str | None = None) -> tf.Tensor:
    """Int8 Mul in C++ (see `reference.mul`); numpy broadcasting."""
    target = resolve_target(target)
    x1, x2 = _tensor("x1", x1, tf.int8), _tensor("x2", x2, tf.int8)
    _broadcastable("Mul", x1, x2)
    m, e = _scalar_requant("mul", multiplier, shift, -31, 30 if target.rounding == "single" else 31)
    lo, hi = _activation(activation_min, activation_max)
    return load_ops().aimet_dsp_mul(
        x1, x2, input1_zero_point=_zero_point("input1_zero_point", input1_zero_point),
        input2_zero_point=_zero_point("input2_zero_point", input2_zero_point),
        output_zero_point=_zero_point("output_zero_point", output_zero_point), multiplier=m, shift=e,
        activation_min=lo, activation_max=hi, rounding=target.rounding)


def batch_matmul(lhs, rhs, *, lhs_zero_point: int, rhs_zero_point: int, output_zero_point: int, multiplier: int,
                 shift: int, adj_x: bool = False, adj_y: bool = False,
                 target: DspTarget | str | None = None) -> tf.Tensor:
    """Int8 batched matrix product in C++ (see `reference.batch_matmul`).

    The adjoint flags and the broadcasting of leading axes are data movement done here with TF
    ops; the C++ op multiplies [B, M, K] by [B, K, N].
    """
    target = resolve_target(target)
    lhs, rhs = _tensor("lhs", lhs, tf.int8), _tensor("rhs", rhs, tf.int8)
    for name, t in (("lhs", lhs), ("rhs", rhs)):
        if t.shape.rank is not None and t.shape.rank < 2:
            raise ValueError(f"Expected {name} of rank >= 2. Received: {name}.shape={t.shape}")
    if adj_x:
        lhs = tf.linalg.matrix_transpose(lhs)
    if adj_y:
        rhs = tf.linalg.matrix_transpose(rhs)
    if lhs.shape[-1] is not None and rhs.shape[-2] is not None and lhs.shape[-1] != rhs.shape[-2]:
        raise ValueError(f"Expected matching inner dimensions. Received: {lhs.shape} @ {rhs.shape}")
    m, e = _scalar_requant("batch_matmul", multiplier, shift, -31, 30 if target.rounding == "single" else 31)
    batch = tf.broadcast_dynamic_shape(tf.shape(lhs)[:-2], tf.shape(rhs)[:-2])
    lhs = tf.broadcast_to(lhs, tf.concat([batch, tf.shape(lhs)[-2:]], 0))
    rhs = tf.broadcast_to(rhs, tf.concat([batch, tf.shape(rhs)[-2:]], 0))
    out = load_ops().aimet_dsp_batch_mat_mul(
        tf.reshape(lhs, tf.concat([[-1], tf.shape(lhs)[-2:]], 0)),
        tf.reshape(rhs, tf.concat([[-1], tf.shape(rhs)[-2:]], 0)),
        lhs_zero_point=_zero_point("lhs_zero_point", lhs_zero_point),
        rhs_zero_point=_zero_point("rhs_zero_point", rhs_zero_point),
        output_zero_point=_zero_point("output_zero_point", output_zero_point), multiplier=m, shift=e,
        accumulator_bits=target.accumulator_bits, rounding=target.rounding)
    return tf.reshape(out, tf.concat([batch, tf.shape(lhs)[-2:-1], tf.shape(rhs)[-1:]], 0))


def _pool(kind: str, x, ksize, strides, padding, activation_min, activation_max) -> tf.Tensor:
    x = _tensor("x", x, tf.int8, 4)
    ksize, strides, padding = _pair("ksize", ksize), _pair("strides", strides), _padding(padding)
    for axis in (0, 1):
        _check_window(kind, x.shape[1 + axis], ksize[axis], strides[axis], 1, padding)
    lo, hi = _activation(activation_min, activation_max)
    op = load_ops().aimet_dsp_max_pool2d if kind == "max_pool2d" else load_ops().aimet_dsp_average_pool2d
    return op(x, ksize=ksize, strides=strides, padding=padding, activation_min=lo, activation_max=hi)


def average_pool2d(x, *, ksize, strides, padding: str = "VALID", activation_min: int = -128,
                   activation_max: int = 127) -> tf.Tensor:
    """Int8 average pooling in C++ (see `reference.average_pool2d`)."""
    return _pool("average_pool2d", x, ksize, strides, padding, activation_min, activation_max)


def max_pool2d(x, *, ksize, strides, padding: str = "VALID", activation_min: int = -128,
               activation_max: int = 127) -> tf.Tensor:
    """Int8 max pooling in C++ (see `reference.max_pool2d`)."""
    return _pool("max_pool2d", x, ksize, strides, padding, activation_min, activation_max)


def requantize(x, *, input_zero_point: int, output_zero_point: int, multiplier: int, shift: int,
               target: DspTarget | str | None = None) -> tf.Tensor:
    """Int8 -> int8 rescaling in C++ (see `reference.requantize`)."""
    target = resolve_target(target)
    m, e = _scalar_requant("requantize", multiplier, shift, -31, 30 if target.rounding == "single" else 31)
    return load_ops().aimet_dsp_requantize(
        _tensor("x", x, tf.int8), input_zero_point=_zero_point("input_zero_point", input_zero_point),
        output_zero_point=_zero_point("output_zero_point", output_zero_point), multiplier=m, shift=e,
        rounding=target.rounding)


def quantize(x, *, scale: float, zero_point: int) -> tf.Tensor:
    """Float32 -> int8 in C++ (see `reference.quantize`)."""
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"Expected a positive finite scale. Received: scale={scale}")
    return load_ops().aimet_dsp_quantize(_tensor("x", x, tf.float32), scale=float(scale),
                                         zero_point=_zero_point("zero_point", zero_point))


def dequantize(x, *, scale: float, zero_point: int) -> tf.Tensor:
    """Int8 -> float32 in C++ (see `reference.dequantize`)."""
    return load_ops().aimet_dsp_dequantize(_tensor("x", x, tf.int8), scale=float(scale),
                                           zero_point=_zero_point("zero_point", zero_point))


def softmax(x, *, input_multiplier: int, input_left_shift: int, diff_min: int,
            target: DspTarget | str | None = None) -> tf.Tensor:
    """Int8 softmax in C++ (see `reference.softmax`); output scale 1/256, zero point -128."""
    target = resolve_target(target)
    m, e = _scalar_requant("softmax input", input_multiplier, input_left_shift, 0, 31)
    if int(diff_min) > 0:
        raise ValueError(f"Expected diff_min <= 0. Received: diff_min={diff_min}")
    return load_ops().aimet_dsp_softmax(_tensor("x", x, tf.int8), input_multiplier=m, input_left_shift=e,
                                        diff_min=int(diff_min), rounding=target.rounding)


def mean(x, *, axes: Sequence[int], keep_dims: bool, input_zero_point: int, output_zero_point: int, multiplier: int,
         shift: int, target: DspTarget | str | None = None) -> tf.Tensor:
    """Int8 mean over axes in C++ (see `reference.mean`)."""
    target = resolve_target(target)
    x = _tensor("x", x, tf.int8)
    axes = [int(a) for a in axes]
    if x.shape.rank is not None and any(not -x.shape.rank <= a < x.shape.rank for a in axes):
        raise ValueError(f"Mean axes {axes} out of range for rank {x.shape.rank}.")
    m, e = _scalar_requant("mean", multiplier, shift, -31, 31)
    return load_ops().aimet_dsp_mean(
        x, axes=axes, keep_dims=bool(keep_dims), input_zero_point=_zero_point("input_zero_point", input_zero_point),
        output_zero_point=_zero_point("output_zero_point", output_zero_point), multiplier=m, shift=e,
        rounding=target.rounding)
