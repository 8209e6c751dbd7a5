"""Per-layer compression: one layer of a model replaced by its decomposition, in a new model.

Each function takes a model, a layer name and a rank, and returns a new model where the layer is
a chain of thinner layers named ``<layer>_a``, ``<layer>_b`` (and ``<layer>_c``), built through the
graph layer's ``replace_with_chain``. The last layer of the chain keeps the original's bias,
activation and regularizers; the others have no bias and a linear activation.

* :func:`spatial_svd_layer`: Conv2D ``kh x kw`` -> ``kh x 1`` (rank r) -> ``1 x kw``. Strides,
  dilation and padding are split by axis (the first conv carries the height ones, the second
  the width ones), so the chain computes the same function at full rank.
* :func:`weight_svd_layer`: Dense, or a 1x1 Conv2D -> two of rank r (a stride stays on the first).
* :func:`tucker2_layer`: Conv2D -> 1x1 (r_in) -> ``kh x kw`` core (r_in -> r_out, the original
  strides, padding and dilation) -> 1x1.

:func:`rank_for_ratio` picks the largest rank (Tucker: ranks proportional to the channels) whose
MACs or parameters are at most ``ratio`` times the layer's own.
"""

from __future__ import annotations

import math
from typing import Callable

import keras
import numpy as np

from aimet_tf.compression import decompose
from aimet_tf.graph import ModelGraph, replace_with_chain

__all__ = [
    "COST_METRICS",
    "SCHEMES",
    "chain_cost",
    "compressible_layers",
    "layer_cost",
    "layer_io_shapes",
    "rank_for_ratio",
    "spatial_svd_layer",
    "tucker2_layer",
    "weight_svd_layer",
]

_L = keras.layers
SCHEMES = ("spatial_svd", "weight_svd", "tucker", "channel_pruning")
COST_METRICS = ("mac", "memory")
_KEEP = ("kernel_regularizer", "bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint")


def _layer(model: keras.Model, name: str) -> keras.layers.Layer:
    try:
        return model.get_layer(name)
    except ValueError as error:
        raise ValueError(f"Expected a layer of model {model.name!r}. Received: {name!r}") from error


def _check_conv2d(layer, scheme: str) -> None:
    if type(layer) is not _L.Conv2D:
        raise ValueError(f"{scheme} applies to Conv2D layers. Received: {type(layer).__name__} {layer.name!r}")
    if layer.groups != 1 or layer.data_format != "channels_last":
        raise ValueError(
            f"{scheme}: layer {layer.name!r} must be channels_last with groups=1. "
            f"Received: data_format={layer.data_format!r}, groups={layer.groups}"
        )


def _last_kwargs(layer) -> dict:
    """What the last layer of a chain inherits from the replaced one."""
    config = layer.get_config()
    kept = {k: config[k] for k in _KEEP if k in config}
    kept.update(use_bias=layer.use_bias, activation=config["activation"])
    return kept


def _assign(model: keras.Model, name: str, kernel: np.ndarray, bias: np.ndarray | None = None) -> None:
    layer = model.get_layer(name)
    layer.kernel.assign(kernel.reshape(layer.kernel.shape).astype(np.float32))
    if bias is not None:
        layer.bias.assign(bias)


def _bias(layer) -> np.ndarray | None:
    return layer.bias.numpy() if layer.use_bias else None


def spatial_svd_layer(model: keras.Model, name: str, rank: int) -> keras.Model:
    """``model`` with Conv2D ``name`` split into ``name_a`` (kh x 1, ``rank`` filters) and ``name_b`` (1 x kw).

    Raises:
        ValueError: for a layer that is not a channels_last Conv2D with groups=1, or a rank outside
            [1, min(c_in kh, kw c_out)].
    """
    layer = _layer(model, name)
    _check_conv2d(layer, "Spatial SVD")
    factors = decompose.spatial_svd(layer.kernel.numpy(), rank)
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
    first = _L.Conv2D(rank, (kh, 1), strides=(sh, 1), dilation_rate=(dh, 1), padding=layer.padding, use_bias=False, name=f"{name}_a")
    second = _L.Conv2D(layer.filters, (1, kw), strides=(1, sw), dilation_rate=(1, dw), padding=layer.padding, name=f"{name}_b", **_last_kwargs(layer))
    new = replace_with_chain(model, name, [first, second])
    _assign(new, first.name, factors.vertical)
    _assign(new, second.name, factors.horizontal, _bias(layer))
    return new


def weight_svd_layer(model: keras.Model, name: str, rank: int) -> keras.Model:
    """``model`` with Dense (or 1x1 Conv2D) ``name`` split into ``name_a`` (``rank`` units) and ``name_b``.

    Raises:
        ValueError: for another layer type, a Dense kernel that is not 2-D, or a rank outside
            [1, min(in, out)].
    """
    layer = _layer(model, name)
    if type(layer) is _L.Dense:
        factors = decompose.weight_svd(layer.kernel.numpy(), rank)
        first = _L.Dense(rank, use_bias=False, name=f"{name}_a")
        second = _L.Dense(layer.units, name=f"{name}_b", **_last_kwargs(layer))
    elif type(layer) is _L.Conv2D and tuple(layer.kernel_size) == (1, 1):
        _check_conv2d(layer, "Weight SVD")
        factors = decompose.weight_svd(layer.kernel.numpy(), rank)
        first = _L.Conv2D(rank, 1, strides=layer.strides, padding=layer.padding, use_bias=False, name=f"{name}_a")
        second = _L.Conv2D(layer.filters, 1, name=f"{name}_b", **_last_kwargs(layer))
    else:
        raise ValueError(
            f"Weight SVD applies to Dense and 1x1 Conv2D layers. Received: {type(layer).__name__} {name!r}"
            + (f" with kernel_size={tuple(layer.kernel_size)}" if hasattr(layer, "kernel_size") else "")
        )
    new = replace_with_chain(model, name, [first, second])
    _assign(new, first.name, factors.first)
    _assign(new, second.name, factors.second, _bias(layer))
    return new


def tucker2_layer(model: keras.Model, name: str, rank_in: int, rank_out: int, iterations: int = 10) -> keras.Model:
    """``model`` with Conv2D ``name`` split into 1x1 ``name_a`` -> kxk ``name_b`` -> 1x1 ``name_c`` (Tucker-2).

    Raises:
        ValueError: for a layer that is not a channels_last Conv2D with groups=1, ranks out of range.
    """
    layer = _layer(model, name)
    _check_conv2d(layer, "Tucker-2")
    factors = decompose.tucker2(layer.kernel.numpy(), rank_in, rank_out, iterations)
    first = _L.Conv2D(rank_in, 1, use_bias=False, name=f"{name}_a")
    core = _L.Conv2D(
        rank_out, layer.kernel_size, strides=layer.strides, padding=layer.padding,
        dilation_rate=layer.dilation_rate, use_bias=False, name=f"{name}_b",
    )
    last = _L.Conv2D(layer.filters, 1, name=f"{name}_c", **_last_kwargs(layer))
    new = replace_with_chain(model, name, [first, core, last])
    _assign(new, first.name, factors.first)
    _assign(new, core.name, factors.core)
    _assign(new, last.name, factors.last, _bias(layer))
    return new


# -- cost ----------------------------------------------------------------------------------------


def layer_io_shapes(model: keras.Model, name: str) -> tuple[tuple, tuple]:
    """(input shape, output shape) of layer ``name``'s call, batch dimension first."""
    graph = ModelGraph(model, "compression cost")
    return graph.input_specs(name)[0][0], graph.output_specs(name)[0][0]


def _positions(shape: tuple) -> int:
    return int(math.prod(shape[1:-1])) if len(shape) > 2 else 1


def chain_cost(scheme: str, layer, in_shape: tuple, out_shape: tuple, ranks: tuple[int, ...], metric: str) -> int:
    """MACs per sample (``metric="mac"``) or weights (``"memory"``) of ``layer``'s chain at ``ranks``.

    ``ranks`` is ``(r,)`` for the SVDs, ``(r_in, r_out)`` for Tucker; ``ranks=()`` is the layer itself.
    """
    if metric not in COST_METRICS:
        raise ValueError(f"Expected cost_metric in {COST_METRICS}. Received: {metric!r}")
    c_in, c_out = int(in_shape[-1]), int(out_shape[-1])
    p_in, p_out = _positions(in_shape), _positions(out_shape)
    if isinstance(layer, _L.Dense):
        kh = kw = 1
    else:
        kh, kw = layer.kernel_size
    if not ranks:
        weights, macs = kh * kw * c_in * c_out, p_out * kh * kw * c_in * c_out
    elif scheme == "spatial_svd":
        (r,) = ranks
        p_mid = out_shape[1] * in_shape[2]  # the first conv keeps the width, strides the height
        weights, macs = r * (kh * c_in + kw * c_out), r * (p_mid * kh * c_in + p_out * kw * c_out)
    elif scheme == "weight_svd":
        (r,) = ranks
        weights, macs = r * (c_in + c_out), p_out * r * (c_in + c_out)
    elif scheme == "tucker":
        r_in, r_out = ranks
        weights = c_in * r_in + kh * kw * r_in * r_out + r_out * c_out
        macs = p_in * c_in * r_in + p_out * (kh * kw * r_in * r_out + r_out * c_out)
    else:
        raise ValueError(f"Expected scheme in ('spatial_svd', 'weight_svd', 'tucker'). Received: {scheme!r}")
    return int(macs if metric == "mac" else weights)


def layer_cost(model: keras.Model, name: str, metric: str = "mac") -> int:
    """MACs per sample or weights of a Conv2D/Dense layer (its kernel only)."""
    layer = _layer(model, name)
    in_shape, out_shape = layer_io_shapes(model, name)
    return chain_cost("", layer, in_shape, out_shape, (), metric)


def _largest(candidates: list, cost: Callable[[object], int], budget: float):
    fitting = [c for c in candidates if cost(c) <= budget]
    return fitting[-1] if fitting else candidates[0]


def rank_for_ratio(
    model: keras.Model, name: str, scheme: str, ratio: float, metric: str = "mac", multiplicity: int = 1
) -> tuple[int, ...]:
    """The ranks at which ``scheme`` keeps at most ``ratio`` of layer ``name``'s cost (at least rank 1).

    With ``multiplicity`` m > 1 (AIMET's), only ranks that are multiples of m (or the full rank)
    are candidates, e.g. to match a target's channel granularity.

    Raises:
        ValueError: for a ratio outside (0, 1], an unknown scheme or metric.
    """
    if not isinstance(ratio, (int, float, np.floating)) or isinstance(ratio, bool) or not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"Expected a compression ratio in (0, 1]. Received: {ratio!r}")
    layer = _layer(model, name)
    in_shape, out_shape = layer_io_shapes(model, name)
    budget = float(ratio) * chain_cost(scheme, layer, in_shape, out_shape, (), metric)
    c_in, c_out = int(in_shape[-1]), int(out_shape[-1])
    if scheme == "spatial_svd":
        top = decompose.spatial_svd_max_rank(tuple(layer.kernel.shape))
        ranks = [(r,) for r in range(1, top + 1)]
    elif scheme == "weight_svd":
        ranks = [(r,) for r in range(1, min(c_in, c_out) + 1)]
    elif scheme == "tucker":
        ranks = sorted({(max(1, round(f * c_in)), max(1, round(f * c_out))) for f in np.linspace(0.0, 1.0, 201)})
    else:
        raise ValueError(f"Expected scheme in ('spatial_svd', 'weight_svd', 'tucker'). Received: {scheme!r}")
    if isinstance(multiplicity, bool) or not isinstance(multiplicity, int) or multiplicity < 1:
        raise ValueError(f"Expected multiplicity >= 1. Received: {multiplicity!r}")
    if multiplicity > 1:
        ranks = [r for r in ranks if all(v % multiplicity == 0 for v in r)] + [ranks[-1]]
    return _largest(ranks, lambda r: chain_cost(scheme, layer, in_shape, out_shape, r, metric), budget)


def compressible_layers(model: keras.Model, scheme: str) -> list[str]:
    """Top-level layers ``scheme`` can compress, in model order (each called once).

    For channel pruning: Conv2D layers whose input channels come from one producer whose channels
    reach nothing else (``channel_pruning.producer_of`` says why others cannot).
    """
    from aimet_tf.compression.channel_pruning import producer_of
    graph = ModelGraph(model, "finding compressible layers")
    names = []
    for node in graph.nodes:
        layer = node.operation
        if not isinstance(layer, _L.Layer) or graph.call_count(layer) != 1:
            continue
        conv = type(layer) is _L.Conv2D and layer.groups == 1 and layer.data_format == "channels_last"
        if scheme in ("spatial_svd", "tucker"):
            ok = conv and tuple(layer.kernel_size) != (1, 1)
        elif scheme == "weight_svd":
            ok = (type(layer) is _L.Dense and len(layer.kernel.shape) == 2) or (conv and tuple(layer.kernel_size) == (1, 1))
        elif scheme == "channel_pruning":
            ok = conv and _prunable(model, layer.name, producer_of)
        else:
            raise ValueError(f"Expected scheme in {SCHEMES}. Received: {scheme!r}")
        if ok:
            names.append(layer.name)
    return names


def _prunable(model: keras.Model, name: str, producer_of) -> bool:
    try:
        producer_of(model, name)
    except ValueError:
        return False
    return True
