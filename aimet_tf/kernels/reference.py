"""The integer pipeline in numpy: the golden model the C++ ops are tested against.

Every op takes int8 activations (numpy int8 arrays, NHWC), int8 weights (int4 weights are
unpacked with `unpack_int4` first), int32 bias and int32 per-channel multipliers / shifts from
`fixed_point.quantize_multiplier`, and returns int8. Accumulation follows the target's
accumulator (see `DspTarget`): exact int64 sums reduced to int32 by wrapping (32) or
saturating (64).

Symbols: x = input, w = weights, b = bias, z_x / z_y = input / output zero points,
(m_c, e_c) = per-channel multiplier, MBQM = `multiply_by_quantized_multiplier`,
[lo, hi] = the fused activation clamp in the output's integer domain.
"""

from __future__ import annotations

import numpy as np

from aimet_tf.kernels import fixed_point as fp
from aimet_tf.kernels.target import DspTarget, resolve_target

__all__ = [
    "compute_padding",
    "pack_int4",
    "unpack_int4",
    "conv2d",
    "depthwise_conv2d",
    "fully_connected",
    "add",
    "sub",
    "mul",
    "batch_matmul",
    "rsqrt",
    "lookup",
    "average_pool2d",
    "max_pool2d",
    "requantize",
    "softmax",
    "softmax_float_table",
    "mean",
    "quantize",
    "dequantize",
]

INT8_MIN, INT8_MAX = -128, 127


def compute_padding(in_size: int, filter_size: int, stride: int, dilation: int, padding: str) -> tuple[int, int]:
    """Output size and leading padding of one spatial axis, as TFLite computes them.

    f' = (f - 1) * d + 1; SAME: out = ceil(in / s); VALID: out = ceil((in - f' + 1) / s);
    pad_before = max(0, floor(((out - 1) * s + f' - in) / 2)).

    Args:
        in_size: input length.
        filter_size: filter (window) length.
        stride: stride.
        dilation: dilation.
        padding: "SAME" or "VALID".

    Returns:
        (out_size, pad_before).

    Raises:
        ValueError: for an unknown padding or non-positive sizes.
    """
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"Expected padding 'SAME' or 'VALID'. Received: padding={padding!r}")
    if min(in_size, filter_size, stride, dilation) < 1:
        raise ValueError(
            "Expected positive sizes. Received: "
            f"in_size={in_size}, filter_size={filter_size}, stride={stride}, dilation={dilation}"
        )
    effective = (filter_size - 1) * dilation + 1
    out = (in_size + stride - 1) // stride if padding == "SAME" else (in_size - effective + stride) // stride
    if out < 1:
        raise ValueError(
            f"Window {effective} (filter {filter_size}, dilation {dilation}) is larger than the input {in_size} "
            "with VALID padding: the output would be empty."
        )
    return out, max(0, ((out - 1) * stride + effective - in_size) // 2)


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Packs int4 values (int8 in [-8, 7]) two per byte, as TFLite stores int4 tensors.

    Element 2i goes to the low nibble of byte i, element 2i + 1 to the high nibble (flattened
    row-major order); an odd count leaves the last high nibble 0.

    Raises:
        ValueError: for values outside [-8, 7].
    """
    flat = np.asarray(values).astype(np.int64).ravel()
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError(f"Expected int4 values in [-8, 7]. Received: min={flat.min()}, max={flat.max()}")
    if flat.size % 2:
        flat = np.concatenate([flat, [0]])
    nibbles = flat & 0xF
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).view(np.int8)


def unpack_int4(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `pack_int4`: sign-extends each nibble into an int8 array of `shape`.

    Raises:
        ValueError: if the buffer does not hold ceil(prod(shape) / 2) bytes.
    """
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.asarray(packed).view(np.uint8).ravel()
    if raw.size != (count + 1) // 2:
        raise ValueError(
            f"Expected {(count + 1) // 2} bytes of packed int4 for shape {tuple(shape)}. Received: {raw.size} bytes"
        )
    nibbles = np.empty(raw.size * 2, dtype=np.int64)
    nibbles[0::2] = raw & 0xF
    nibbles[1::2] = raw >> 4
    nibbles = np.where(nibbles >= 8, nibbles - 16, nibbles)
    return nibbles[:count].astype(np.int8).reshape(shape)


def _accumulate(acc: np.ndarray, bias: np.ndarray | None, target: DspTarget) -> np.ndarray:
    """acc + b reduced to int32 by the target's accumulator (exact int64 sums in, int32 out)."""
    if bias is not None and np.size(bias):
        acc = acc + np.asarray(bias, dtype=np.int64)
    return fp.wrap_int32(acc) if target.accumulator_bits == 32 else fp.saturate_int32(acc)


def _requantize_and_clamp(acc, multiplier, shift, output_zero_point: int, lo: int, hi: int, target: DspTarget) -> np.ndarray:
    # + z_y is an int32 addition: it wraps (TFLite's int32 arithmetic) for absurd multipliers.
    y = fp.wrap_int32(fp.multiply_by_quantized_multiplier(acc, multiplier, shift, target) + output_zero_point)
    return np.clip(y, lo, hi).astype(np.int8)


def _check_int8(name: str, array: np.ndarray, rank: int | None = None) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.int8:
        raise ValueError(f"Expected {name} of dtype int8. Received: {name}.dtype={array.dtype}")
    if rank is not None and array.ndim != rank:
        raise ValueError(f"Expected {name} of rank {rank}. Received: {name}.shape={array.shape}")
    return array


def _pair(value) -> tuple[int, int]:
    """An int or an (h, w) pair as (h, w)."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    h, w = value
    return int(h), int(w)


def _windows(x: np.ndarray, kh: int, kw: int, strides, dilations, padding: str, pad_value: int):
    """Sliding windows [N, OH, OW, KH, KW, C] of x padded with pad_value (TFLite's padding)."""
    strides, dilations = _pair(strides), _pair(dilations)
    _, h, w, _ = x.shape
    oh, pt = compute_padding(h, kh, strides[0], dilations[0], padding)
    ow, pl = compute_padding(w, kw, strides[1], dilations[1], padding)
    need_h = (oh - 1) * strides[0] + (kh - 1) * dilations[0] + 1
    need_w = (ow - 1) * strides[1] + (kw - 1) * dilations[1] + 1
    pb, pr = max(0, need_h - h - pt), max(0, need_w - w - pl)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=pad_value)
    eh, ew = (kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (eh, ew), axis=(1, 2))  # [N, H', W', C, eh, ew]
    win = win[:, : (oh - 1) * strides[0] + 1 : strides[0], : (ow - 1) * strides[1] + 1 : strides[1]]
    win = win[..., :: dilations[0], :: dilations[1]]  # [N, OH, OW, C, KH, KW]
    return np.moveaxis(win, 3, -1), (pt, pl)


def conv2d(x, filters, bias, multiplier, shift, *, input_zero_point: int, output_zero_point: int,
           strides=(1, 1), dilations=(1, 1), padding: str = "SAME", activation_min: int = INT8_MIN,
           activation_max: int = INT8_MAX, target: DspTarget | str | None = None) -> np.ndarray:
    """Int8 2-D convolution with per-channel requantization (TFLite CONV_2D, int8).

    acc[n,y,x,o] = sum over in-image taps (ky,kx,c) of w[o,ky,kx,c] * (x[n, y*s_h + ky*d_h - p_t,
    x*s_w + kx*d_w - p_l, g*C_g + c] - z_x) + b[o]  (group g = o // (O / groups));
    y = clamp(MBQM(acc, m_o, e_o) + z_y, lo, hi). Taps outside the image contribute 0.

    Args:
        x: int8 [N, H, W, C].
        filters: int8 [O, KH, KW, C / groups].
        bias: int32 [O] or None.
        multiplier, shift: int32 [O] (or scalars) from `quantize_multiplier`.
        input_zero_point, output_zero_point: zero points.
        strides, dilations: (h, w).
        padding: "SAME" or "VALID".
        activation_min, activation_max: the fused clamp.
        target: the arithmetic (`DspTarget`).

    Returns:
        int8 [N, OH, OW, O].
    """
    target = resolve_target(target)
    x = _check_int8("x", x, 4)
    filters = _check_int8("filters", filters, 4)
    o, kh, kw, cg = filters.shape
    if x.shape[3] % cg or o % (x.shape[3] // cg):
        raise ValueError(f"Input channels {x.shape[3]} do not match filter channels {cg} (groups must divide both).")
    groups = x.shape[3] // cg
    win, _ = _windows(x.astype(np.int64) - input_zero_point, kh, kw, strides, dilations, padding, 0)
    per_group = o // groups
    w = filters.astype(np.int64)
    outs = []
    for g in range(groups):
        wg = w[g * per_group : (g + 1) * per_group]
        outs.append(np.einsum("nyxhwc,ohwc->nyxo", win[..., g * cg : (g + 1) * cg], wg, optimize=True))
    acc = _accumulate(np.concatenate(outs, axis=-1), bias, target)
    return _requantize_and_clamp(acc, multiplier, shift, output_zero_point, activation_min, activation_max, target)


def depthwise_conv2d(x, filters, bias, multiplier, shift, *, input_zero_point: int, output_zero_point: int,
                     strides=(1, 1), dilations=(1, 1), padding: str = "SAME", activation_min: int = INT8_MIN,
                     activation_max: int = INT8_MAX, target: DspTarget | str | None = None) -> np.ndarray:
    """Int8 depthwise convolution (TFLite DEPTHWISE_CONV_2D, int8).

    Output channel o = c * M + k (M = depth multiplier) reads input channel c:
    acc[n,y,x,o] = sum over in-image taps of w[0,ky,kx,o] * (x[n, ., ., c] - z_x) + b[o];
    y = clamp(MBQM(acc, m_o, e_o) + z_y, lo, hi).

    Args:
        x: int8 [N, H, W, C].
        filters: int8 [1, KH, KW, C * M].
        Others as `conv2d`.

    Returns:
        int8 [N, OH, OW, C * M].
    """
    target = resolve_target(target)
    x = _check_int8("x", x, 4)
    filters = _check_int8("filters", filters, 4)
    _, kh, kw, o = filters.shape
    c = x.shape[3]
    if filters.shape[0] != 1 or o % c:
        raise ValueError(f"Expected filters [1, KH, KW, C * M] with C = {c}. Received: filters.shape={filters.shape}")
    win, _ = _windows(x.astype(np.int64) - input_zero_point, kh, kw, strides, dilations, padding, 0)
    win = np.repeat(win, o // c, axis=-1)  # channel c -> outputs c*M .. c*M + M - 1
    acc = np.einsum("nyxhwo,hwo->nyxo", win, filters[0].astype(np.int64), optimize=True)
    acc = _accumulate(acc, bias, target)
    return _requantize_and_clamp(acc, multiplier, shift, output_zero_point, activation_min, activation_max, target)


def fully_connected(x, weights, bias, multiplier, shift, *, input_zero_point: int, output_zero_point: int,
                    weight_zero_point: int = 0, activation_min: int = INT8_MIN, activation_max: int = INT8_MAX,
                    effective_scale=None, target: DspTarget | str | None = None) -> np.ndarray:
    """Int8 fully connected layer (TFLite FULLY_CONNECTED, int8).

    x is flattened to [B, D] (D = weights' second axis);
    acc[b,o] = sum_d (w[o,d] - z_w) * (x[b,d] - z_x) + b[o]; then
    y = clamp(MBQM(acc, m_o, e_o) + z_y, lo, hi) (target.fully_connected_requantize = "fixed_point"), or
    y = clamp(round(double(acc) * M_o) + z_y, lo, hi) with M_o = effective_scale[o] = s_x s_w[o] / s_y in
    double precision and round() ties away from zero ("float64", LiteRT's reference kernel).

    Args:
        x: int8 [..., D] (any shape whose size is a multiple of D).
        weights: int8 [O, D].
        weight_zero_point: z_w (0 for symmetric weights).
        effective_scale: float64 M_o, per tensor or [O]; required by the "float64" requantization.
        Others as `conv2d`; multiplier / shift may be per-tensor scalars or per-channel [O].

    Returns:
        int8 [B, O].
    """
    target = resolve_target(target)
    x = _check_int8("x", x)
    weights = _check_int8("weights", weights, 2)
    o, d = weights.shape
    if x.size % d:
        raise ValueError(f"Input size {x.size} (shape {x.shape}) is not a multiple of the weights' depth {d}.")
    xs = x.reshape(-1, d).astype(np.int64) - input_zero_point
    acc = xs @ (weights.astype(np.int64) - weight_zero_point).T
    acc = _accumulate(acc, bias, target)
    if target.fully_connected_requantize == "fixed_point":
        return _requantize_and_clamp(acc, multiplier, shift, output_zero_point, activation_min, activation_max, target)
    if effective_scale is None:
        raise ValueError("The 'float64' fully connected requantization needs effective_scale (s_x * s_w / s_y).")
    scaled = np.clip(fp.round_half_away(acc.astype(np.float64) * np.asarray(effective_scale, np.float64)),
                     fp.INT32_MIN, fp.INT32_MAX).astype(np.int64)
    return np.clip(fp.wrap_int32(scaled + output_zero_point), activation_min, activation_max).astype(np.int8)


def add(x1, x2, *, input1_zero_point: int, input2_zero_point: int, output_zero_point: int,
        input1_multiplier: int, input1_shift: int, input2_multiplier: int, input2_shift: int,
        output_multiplier: int, output_shift: int, activation_min: int = INT8_MIN,
        activation_max: int = INT8_MAX, target: DspTarget | str | None = None) -> np.ndarray:
    """Int8 elementwise Add with rescaling to a common scale (TFLite ADD, int8), broadcasting.

    With L = target.add_left_shift and MBQM< the smaller-than-one multiply:
    a_i = MBQM<((x_i - z_i) * 2^L, m_i, e_i) (rescale each input to scale 2 max(s_1, s_2) / 2^L);
    y = clamp(MBQM<(a_1 + a_2, m_y, e_y) + z_y, lo, hi).

    Returns:
        int8 array of the broadcast shape.
    """
    target = resolve_target(target)
    a1, a2 = _rescaled_operands(x1, x2, input1_zero_point, input2_zero_point, input1_multiplier, input1_shift,
                                input2_multiplier, input2_shift, target)
    raw = fp.multiply_by_quantized_multiplier_smaller_than_one(fp.wrap_int32(a1 + a2), output_multiplier, output_shift, target)
    return np.clip(fp.wrap_int32(raw + output_zero_point), activation_min, activation_max).astype(np.int8)


def _rescaled_operands(x1, x2, z1: int, z2: int, m1: int, e1: int, m2: int, e2: int, target: DspTarget):
    """ADD / SUB operands on the common scale: a_i = MBQM<((x_i - z_i) * 2^L, m_i, e_i)."""
    x1, x2 = _check_int8("x1", x1), _check_int8("x2", x2)
    shifted1 = (x1.astype(np.int64) - z1) << target.add_left_shift
    shifted2 = (x2.astype(np.int64) - z2) << target.add_left_shift
    return (fp.multiply_by_quantized_multiplier_smaller_than_one(shifted1, m1, e1, target),
            fp.multiply_by_quantized_multiplier_smaller_than_one(shifted2, m2, e2, target))


def sub(x1, x2, *, input1_zero_point: int, input2_zero_point: int, output_zero_point: int,
        input1_multiplier: int, input1_shift: int, input2_multiplier: int, input2_shift: int,
        output_multiplier: int, output_shift: int, activation_min: int = INT8_MIN,
        activation_max: int = INT8_MAX, target: DspTarget | str | None = None) -> np.ndarray:
    """Int8 elementwise Sub (TFLite SUB, int8), broadcasting: `add` with the operands subtracted.

    a_i as in `add` (same multipliers, `requantize.add_parameters`, left shift L = 20);
    y = clamp(MBQM<(a_1 - a_2, m_y, e_y) + z_y, lo, hi) (a_1 - a_2 wraps like int32).

    Returns:
        int8 array of the broadcast shape.
    """
    target = resolve_target(target)
    a1, a2 = _rescaled_operands(x1, x2, input1_zero_point, input2_zero_point, input1_multiplier, input1_shift,
                                input2_multiplier, input2_shift, target)
    raw = fp.multiply_by_quantized_multiplier_smaller_than_one(fp.wrap_int32(a1 - a2), output_multiplier, output_shift, target)
    return np.clip(fp.wrap_int32(raw + output_zero_point), activation_min, activation_max).astype(np.int8)


def mul(x1, x2, *, input1_zero_point: int, input2_zero_point: int, output_zero_point: int, multiplier: int,
        shift: int, activation_min: int = INT8_MIN, activation_max: int = INT8_MAX,
        target: DspTarget | str | None = None) -> np.ndarray:
    """Int8 elementwise Mul (TFLite MUL, int8), broadcasting.

    y = clamp(MBQM((x_1 - z_1) * (x_2 - z_2), m, e) + z_y, lo, hi), (m, e) from
    `requantize.mul_parameters` (TFLite's Prepare).

    Returns:
        int8 array of the broadcast shape.
    """
    target = resolve_target(target)
    x1, x2 = _check_int8("x1", x1), _check_int8("x2", x2)
    product = (x1.astype(np.int64) - input1_zero_point) * (x2.astype(np.int64) - input2_zero_point)
    y = fp.multiply_by_quantized_multiplier(product, multiplier, shift, target)
    return np.clip(fp.wrap_int32(y + output_zero_point), activation_min, activation_max).astype(np.int8)


def batch_matmul(lhs, rhs, *, lhs_zero_point: int, rhs_zero_point: int, output_zero_point: int, multiplier: int,
                 shift: int, adj_x: bool = False, adj_y: bool = False,
                 target: DspTarget | str | None = None) -> np.ndarray:
    """Int8 batched matrix product (TFLite BATCH_MATMUL, int8; leading axes broadcast).

    With A = lhs (transposed over its last two axes if adj_x) and B = rhs (likewise if adj_y):
    acc[..., i, j] = sum_k (A[..., i, k] - z_l) * (B[..., k, j] - z_r) (the target's accumulator);
    y = clamp(MBQM(acc, m, e) + z_y, -128, 127), (m, e) of double(s_l) * double(s_r) / double(s_y).

    Returns:
        int8 [..., rows of A, columns of B].
    """
    target = resolve_target(target)
    lhs, rhs = _check_int8("lhs", lhs), _check_int8("rhs", rhs)
    if lhs.ndim < 2 or rhs.ndim < 2:
        raise ValueError(f"Expected lhs and rhs of rank >= 2. Received: shapes {lhs.shape} and {rhs.shape}")
    a = lhs.astype(np.int64) - lhs_zero_point
    b = rhs.astype(np.int64) - rhs_zero_point
    if adj_x:
        a = np.swapaxes(a, -1, -2)
    if adj_y:
        b = np.swapaxes(b, -1, -2)
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"Expected matching inner dimensions. Received: {a.shape} @ {b.shape} "
                         f"(adj_x={adj_x}, adj_y={adj_y})")
    acc = _accumulate(np.matmul(a, b), None, target)
    return _requantize_and_clamp(acc, multiplier, shift, output_zero_point, INT8_MIN, INT8_MAX, target)


def rsqrt(x, *, input_zero_point: int, output_zero_point: int, multiplier: int, shift: int,
          target: DspTarget | str | None = None) -> np.ndarray:
    """Int8 reciprocal square root (TFLite RSQRT reference kernel, int8), elementwise.

    v = x - z_x (v < 0 is an error, as in TFLite); v = 0 gives 127; otherwise
    (m_v, e_v) = `fixed_point.inv_sqrt_quantized_multiplier_exp`(v),
    d = MBQM(1, m_v, e_v + 20), y = clamp(MBQM(d, m, e - 20) + z_y, -128, 127) with (m, e) of
    1 / (sqrt(s_x) s_y) (`requantize.rsqrt_parameters`).

    Raises:
        ValueError: for inputs below the zero point (negative values).
    """
    target = resolve_target(target)
    x = _check_int8("x", x)
    value = x.astype(np.int64) - input_zero_point
    if np.any(value < 0):
        raise ValueError(f"Rsqrt is only defined for non-negative values: {int(np.count_nonzero(value < 0))} inputs "
                         f"are below the zero point {input_zero_point}.")
    m_v, e_v = fp.inv_sqrt_quantized_multiplier_exp(value)
    kshift = 20
    data = fp.multiply_by_quantized_multiplier(np.ones_like(value), m_v, e_v + kshift, target)
    y = fp.wrap_int32(fp.multiply_by_quantized_multiplier(data, multiplier, shift - kshift, target) + output_zero_point)
    return np.where(value == 0, INT8_MAX, np.clip(y, INT8_MIN, INT8_MAX)).astype(np.int8)


def lookup(x, table) -> np.ndarray:
    """Int8 table lookup (TFLite's int8 LUT kernels, e.g. GELU): y = table[x + 128].

    Args:
        x: int8 array.
        table: int8 [256], the output for each input code -128 .. 127 (see
            `requantize.lookup_table`).
    """
    x = _check_int8("x", x)
    table = _check_int8("table", table, 1)
    if table.size != 256:
        raise ValueError(f"Expected a table of 256 entries. Received: table.shape={table.shape}")
    return table[x.astype(np.int64) + 128]


def _pool_windows(x, ksize, strides, padding):
    """Windows [N, OH, OW, KH, KW, C] and a validity mask of the in-image taps."""
    x = np.asarray(x)
    ksize = _pair(ksize)
    valid = np.ones((1,) + x.shape[1:3] + (1,), dtype=bool)
    win, _ = _windows(x.astype(np.int64), ksize[0], ksize[1], strides, (1, 1), padding, 0)
    mask, _ = _windows(valid, ksize[0], ksize[1], strides, (1, 1), padding, False)
    return win, mask


def average_pool2d(x, *, ksize, strides, padding: str = "VALID", activation_min: int = INT8_MIN,
                   activation_max: int = INT8_MAX) -> np.ndarray:
    """Int8 average pooling (TFLite AVERAGE_POOL_2D, int8; input and output share a scale).

    Over the n in-image taps of each window (padding is not counted):
    s = sum x; y = clamp((s + n/2) / n if s > 0 else (s - n/2) / n, lo, hi) with C division
    (truncation), i.e. the mean rounded half away from zero.

    Returns:
        int8 [N, OH, OW, C].
    """
    x = _check_int8("x", x, 4)
    win, mask = _pool_windows(x, ksize, strides, padding)
    total = np.where(mask, win, 0).sum(axis=(3, 4))
    count = mask.sum(axis=(3, 4)).astype(np.int64)
    num = np.where(total > 0, total + count // 2, total - count // 2)
    mean = np.sign(num) * (np.abs(num) // count)  # C division truncates towards zero
    return np.clip(mean, activation_min, activation_max).astype(np.int8)


def max_pool2d(x, *, ksize, strides, padding: str = "VALID", activation_min: int = INT8_MIN,
               activation_max: int = INT8_MAX) -> np.ndarray:
    """Int8 max pooling (TFLite MAX_POOL_2D): y = clamp(max over in-image taps, lo, hi)."""
    x = _check_int8("x", x, 4)
    win, mask = _pool_windows(x, ksize, strides, padding)
    return np.clip(np.where(mask, win, INT8_MIN).max(axis=(3, 4)), activation_min, activation_max).astype(np.int8)


def requantize(x, *, input_zero_point: int, output_zero_point: int, multiplier: int, shift: int,
               target: DspTarget | str | None = None) -> np.ndarray:
    """Int8 -> int8 change of scale (TFLite QUANTIZE on an int8 input).

    y = clamp(MBQM(x - z_x, m, e) + z_y, -128, 127), (m, e) = quantize_multiplier(s_x / s_y).
    """
    target = resolve_target(target)
    x = _check_int8("x", x)
    y = fp.multiply_by_quantized_multiplier(x.astype(np.int64) - input_zero_point, multiplier, shift, target)
    return np.clip(fp.wrap_int32(y + output_zero_point), INT8_MIN, INT8_MAX).astype(np.int8)


def softmax(x, *, input_multiplier: int, input_left_shift: int, diff_min: int,
            target: DspTarget | str | None = None) -> np.ndarray:
    """Int8 softmax over the last axis (TFLite SOFTMAX reference kernel; output scale 1/256, zp -128).

    Per row with maximum x_max and d = x - x_max (taps with d < diff_min count as exp = 0):
    d' = MBQM>(d, m, l) in Q5.26 (m, l from beta * s_x * 2^26), e = exp(d') in Q0.31,
    S = sum RDPOT(e, 12) in Q12.19, (r, k) = 1/S in Q0.31 and its extra exponent,
    y = clamp(RDPOT(SRDHM(r, e), k + 23) - 128, -128, 127).

    Returns:
        int8, same shape as x.
    """
    target = resolve_target(target)
    x = _check_int8("x", x)
    xs = x.astype(np.int64)
    diff = xs - xs.max(axis=-1, keepdims=True)
    keep = diff >= diff_min
    # d takes at most 256 values (-255 .. 0): evaluate exp(d') once per value, then index.
    codes = np.arange(-255, 1, dtype=np.int64)
    exp_table = fp.exp_on_negative_values(
        fp.multiply_by_quantized_multiplier_greater_than_one(codes, input_multiplier, input_left_shift, target), 5)
    exps = exp_table[np.where(keep, diff, 0) + 255]
    sum_of_exps = fp.wrap_int32(np.where(keep, fp.rounding_divide_by_pot(exp_table, 12)[diff + 255], 0)
                                .sum(axis=-1, keepdims=True))
    reciprocal, bits_over_unit = fp.get_reciprocal(sum_of_exps, 12)
    exponent = bits_over_unit + 31 - 8
    if np.any((exponent < 0) | (exponent > 31)):
        raise ValueError("Softmax sum of exponentials out of range (exponent outside [0, 31]).")
    out = fp.rounding_divide_by_pot(fp.saturating_rounding_doubling_high_mul(reciprocal, exps), exponent) - 128
    return np.where(keep, np.clip(out, INT8_MIN, INT8_MAX), INT8_MIN).astype(np.int8)


def softmax_float_table(x, *, input_scale: float, beta: float = 1.0, output_scale: float = 1.0 / 256,
                        output_zero_point: int = -128) -> np.ndarray:
    """Int8 softmax over the last axis as LiteRT's optimized kernel computes it (float table).

    This is what the "builtin" op resolver runs, and the "default" one too: XNNPACK does not take
    int8 SOFTMAX. Measured bit-exact on ai-edge-litert 2.3 for x86-64 (``tests/kernels``); the
    reference kernel (`softmax`) differs from it by one step on ~0.001-0.01% of elements.
    All arithmetic is float32:
    t[255 - v] = expf(-s_x * beta * v) for v = 0..255; per row with maximum x_max,
    e_j = t[255 - x_max + x_j] (= exp(-s_x * beta * (x_max - x_j))), S = e_0 + e_1 + ... summed in
    order, y_j = clamp(round_half_away(e_j * (1 / (S * s_out))) + z_y, -128, 127).

    Args:
        x: int8 input; its zero point cancels in x_max - x_j.
        input_scale: s_x.
        beta: the op's beta.
        output_scale: s_out (TFLite fixes it at 1/256).
        output_zero_point: z_y (TFLite fixes it at -128).

    Returns:
        int8, same shape as x.
    """
    x = _check_int8("x", x).astype(np.int64)
    scale = np.float32(-np.float32(input_scale) * np.float32(beta))
    codes = np.arange(256, dtype=np.float32)
    table = np.empty(256, np.float32)
    # expf is correctly rounded for these arguments: exp in float64, rounded once to float32.
    table[255 - np.arange(256)] = np.exp((scale * codes).astype(np.float64)).astype(np.float32)
    exps = table[255 - x.max(axis=-1, keepdims=True) + x]
    total = np.cumsum(exps, axis=-1, dtype=np.float32)[..., -1:]  # sequential, as the kernel's loop
    inverse = np.float32(1.0) / (total * np.float32(output_scale))
    prob = (exps * inverse).astype(np.float64)
    levels = np.sign(prob) * np.floor(np.abs(prob) + 0.5) + output_zero_point
    return np.clip(levels, INT8_MIN, INT8_MAX).astype(np.int8)


def mean(x, *, axes, keep_dims: bool, input_zero_point: int, output_zero_point: int, multiplier: int, shift: int,
         target: DspTarget | str | None = None) -> np.ndarray:
    """Int8 mean over axes (TFLite MEAN reference kernel, int8).

    With n reduced elements, k = min(floor(log2 n), 32, 31 + e): m' = floor(m * 2^k / n), e' = e - k;
    y = clamp(MBQM(sum x - z_x * n, m', e') + z_y, -128, 127), (m, e) = quantize_multiplier(s_x / s_y).
    """
    target = resolve_target(target)
    x = _check_int8("x", x)
    axes = tuple(sorted({a % x.ndim for a in axes}))
    n = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    total = x.astype(np.int64).sum(axis=axes, keepdims=keep_dims)
    m, e = _fold_count_into_multiplier(multiplier, shift, n)
    y = fp.multiply_by_quantized_multiplier(fp.wrap_int32(total - input_zero_point * n), m, e, target)
    return np.clip(fp.wrap_int32(y + output_zero_point), INT8_MIN, INT8_MAX).astype(np.int8)


def _fold_count_into_multiplier(multiplier: int, shift: int, count: int) -> tuple[int, int]:
    """(m, e) of M -> (m', e') of M / count, keeping the mantissa within int32 (TFLite's Mean)."""
    k = min(count.bit_length() - 1, 32, 31 + shift)
    return (multiplier << k) // count, shift - k


def quantize(x, *, scale: float, zero_point: int) -> np.ndarray:
    """Float32 -> int8 (TFLite QUANTIZE): y = clamp(round(x / s) + z, -128, 127).

    x / s is a float32 division, round() rounds ties away from zero.
    """
    q = fp.round_half_away(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


def dequantize(x, *, scale: float, zero_point: int) -> np.ndarray:
    """Int8 -> float32 (TFLite DEQUANTIZE): y = float32(double(s) * (x - z))."""
    return (np.float64(np.float32(scale)) * (np.asarray(x, dtype=np.int64) - zero_point)).astype(np.float32)
