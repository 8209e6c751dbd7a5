"""Weight ranges chosen by the error they cause in the layer's output, on calibration inputs.

For a linear layer y = W x (a conv is one on input patches), quantizing W to W + dW changes the
output by dW x, so the output error of output channel c over the inputs X is

    e_c = dW_c^T H dW_c,    H = sum over inputs x of x x^T     (x: a Dense input row or a conv patch).

``output_mse`` evaluates e_c for a set of candidate grids per channel and keeps, per channel (per
tensor: in total), the candidate with the lowest e. The candidates are the min/max grid, the
``tf_enhanced`` grid and min/max shrunk by f = 0.975, 0.95, ..., 0.3 (symmetric weights; also the tight
grids of ``compute_encoding``, which this scheme uses, shrunk the same way), so the
chosen grid's output error on these inputs is never above that of min/max or of tf_enhanced.
Plain weight MSE (``mse``) is the special case H = identity; it ignores that weights multiplying
large inputs matter more, which is why it can lose to min/max in accuracy.

Supported: Dense (any input rank, last axis contracted), Conv2D and DepthwiseConv2D (channels_last,
any strides/dilation/padding). H uses at most ``MAX_ROWS`` rows (input rows or patches, sampled
evenly). Other layers, and quantizers the sim cannot reach with inputs, fall back to ``mse``.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from aimet_tf.quantization.analyzers import MseAnalyzer, SqnrAnalyzer, tight_symmetric_candidates
from aimet_tf.quantization.primitives import num_steps, quantize_dequantize_rows

__all__ = ["SEARCH_SAMPLES", "MAX_ROWS", "SHRINK_FACTORS", "supports", "input_moment", "choose_range"]

SEARCH_SAMPLES = 256  # calibration samples whose layer inputs build H
MAX_ROWS = 16384  # rows (input rows / patches) of X used for H
SHRINK_FACTORS = tuple(np.round(np.arange(1.0, 0.2999, -0.025), 4))


def supports(layer: keras.layers.Layer) -> bool:
    """Whether ``layer``'s kernel output error can be written as dW^T H dW here."""
    # Subclasses count only when they keep the base class's computation (e.g. a loader's subclass
    # that only reads older configs).
    if isinstance(layer, keras.layers.Dense) and type(layer).call is keras.layers.Dense.call:
        return True
    for base in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D):
        if isinstance(layer, base) and type(layer).call is base.call:
            return layer.data_format == "channels_last" and getattr(layer, "groups", 1) == 1
    return False


def _rows_of(x: np.ndarray, limit: int) -> np.ndarray:
    if len(x) <= limit:
        return x
    return x[np.linspace(0, len(x) - 1, limit).astype(np.int64)]


def _patches(layer, x: np.ndarray) -> np.ndarray:
    """[P, kh * kw, C] input patches of a channels_last 2-D conv, in the kernel's (kh, kw, c) order."""
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    patches = tf.image.extract_patches(
        tf.constant(x, tf.float32), sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1], rates=[1, dh, dw, 1],
        padding=layer.padding.upper(),
    ).numpy()
    return patches.reshape(-1, kh * kw, x.shape[-1])


@dataclasses.dataclass
class InputMoment:
    """H of one layer: [D, D] shared by every output channel, or [C_in, K, K] for a depthwise conv."""

    matrix: np.ndarray
    depthwise: bool


def input_moment(layer: keras.layers.Layer, x: np.ndarray) -> InputMoment:
    """H = X^T X of ``layer``'s calibration inputs ``x`` (float32 array, batch first)."""
    x = np.asarray(x, np.float32)
    if isinstance(layer, keras.layers.Dense):
        rows = _rows_of(x.reshape(-1, x.shape[-1]), MAX_ROWS).astype(np.float64)
        return InputMoment(rows.T @ rows, depthwise=False)
    patches = _rows_of(_patches(layer, x), MAX_ROWS).astype(np.float64)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return InputMoment(np.einsum("pkc,plc->ckl", patches, patches), depthwise=True)
    flat = patches.reshape(len(patches), -1)
    return InputMoment(flat.T @ flat, depthwise=False)


def _output_errors(delta: np.ndarray, moment: InputMoment, kernel_shape: tuple[int, ...]) -> np.ndarray:
    """e_c for kernel errors ``delta`` given as [C, D] rows in the quantizer's channel order."""
    delta = delta.astype(np.float64)
    if moment.depthwise:
        kh, kw, cin, mult = kernel_shape
        # Channel c * mult + m of the depthwise kernel reads input channel c.
        d = delta.reshape(cin, mult, kh * kw)
        return np.einsum("cmk,ckl,cml->cm", d, moment.matrix, d).reshape(-1)
    return np.einsum("cd,de,ce->c", delta, moment.matrix, delta)


def choose_range(
    kernel: np.ndarray,
    moment: InputMoment,
    bitwidth: int,
    symmetric: bool,
    strict: bool,
    per_channel: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The (min, max) per output channel (per tensor: shape ()) with the lowest output error.

    ``kernel`` is the layer's kernel in Keras layout; its output channels are its last axis (Conv2D,
    Dense) or its last two axes flattened (DepthwiseConv2D), the quantizer's channel order.
    """
    kernel = np.asarray(kernel, np.float32)
    if moment.depthwise:
        rows = np.moveaxis(kernel.reshape(kernel.shape[0] * kernel.shape[1], -1), 0, 1)  # [cin*mult, kh*kw]
    else:
        rows = np.moveaxis(kernel.reshape(-1, kernel.shape[-1]), 1, 0)  # [cout, D]
    num_channels = rows.shape[0]
    channel_axis = (2, 3) if moment.depthwise else kernel.ndim - 1
    mn, mx = rows.min(axis=1), rows.max(axis=1)
    if not per_channel:
        mn, mx = np.full(num_channels, mn.min()), np.full(num_channels, mx.max())
    unsigned = False
    candidates = []
    if symmetric:
        absmax = np.maximum(np.abs(mn), np.abs(mx))
        candidates += [(-f * absmax, f * absmax) for f in SHRINK_FACTORS]
        steps = num_steps(bitwidth, strict)
        candidates += list(zip(*tight_symmetric_candidates(mn, mx, steps, np.asarray(SHRINK_FACTORS)[:, None])))
    else:
        candidates.append((mn, mx))
    for analyzer in (SqnrAnalyzer(channel_axis if per_channel else None), MseAnalyzer(channel_axis if per_channel else None)):
        analyzer.observe(kernel)
        lo, hi = analyzer.compute_range(bitwidth, symmetric, strict, unsigned_symmetric=False)
        candidates.append((np.broadcast_to(lo, (num_channels,)), np.broadcast_to(hi, (num_channels,))))
    best_err = np.full(num_channels, np.inf)
    best_lo, best_hi = np.zeros(num_channels), np.zeros(num_channels)
    for lo, hi in candidates:
        delta = quantize_dequantize_rows(rows, lo, hi, bitwidth, symmetric, strict, unsigned, tight=True) - rows
        err = _output_errors(delta, moment, kernel.shape)
        if not per_channel:
            err = np.full(num_channels, err.sum())
        better = err < best_err  # first candidate (min/max) wins ties
        best_err = np.where(better, err, best_err)
        best_lo = np.where(better, lo, best_lo)
        best_hi = np.where(better, hi, best_hi)
    if not per_channel:
        return np.asarray(best_lo[0], np.float32), np.asarray(best_hi[0], np.float32)
    return best_lo.astype(np.float32), best_hi.astype(np.float32)
