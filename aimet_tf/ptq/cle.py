"""Cross-layer equalization (CLE) and high-bias folding (Nagel et al., "Data-Free Quantization", 2019).

A ReLU commutes with a positive per-channel scale: relu(x / s) = relu(x) / s. So dividing output
channel i of a layer by s_i and multiplying input channel i of the next layer by s_i leaves the
function unchanged, while moving weight range from one layer to the other. Per-tensor weight
quantization suffers when the channel ranges of a tensor differ a lot; CLE picks s to make the
per-channel ranges of consecutive layers equal:

    pair   (W1 -> W2):        r1_i = max|W1[..., i]|  (output channel i of layer 1)
                              r2_i = max|W2[..., i, :]| (input channel i of layer 2)
                              s_i = sqrt(r1_i / r2_i)
                              W1[..., i] /= s_i, b1_i /= s_i, W2[..., i, :] *= s_i
                              => both ranges become sqrt(r1_i r2_i).
    triple (W1 -> depthwise W2 -> W3):
                              S12 = r1 / cbrt(r1 r2 r3),  S23 = cbrt(r1 r2 r3) / r3
                              W1 /= S12, W2 *= S12 / S23, b2 /= S23, W3 *= S23
                              => all three ranges become cbrt(r1 r2 r3).

Dead channels (range below float32 eps times the tensor's largest, e.g. weights L2-decayed to
1e-30, common in trained MobileNets) need care: a dead producer channel outputs the constant
relu(bias), and the formulas would divide that bias by a tiny s, blowing a constant up to 1e10
in the activation; so a channel with a dead range is never divided by s < 1. Where the consumer is
dead on a channel, the producer's channel is unused and is shrunk instead (s = sqrt(r_k /
r_k+1) >> 1), so that unused weights (MLTK's VWW MobileNet has depthwise channels of range 13
between two dead layers) stop setting the per-tensor range. Sets that share a layer (a chain
conv -> conv -> conv) are re-balanced in sweeps until no scale moves by more than a tolerance.

High-bias folding then moves the part of a layer's bias that a following ReLU never clips into
the next layer. With the folded batch norm's gamma and beta (scaled like the layer's channel),

    c = max(0, beta - 3|gamma|)  with a ReLU between (beta if only linear ops are between)
    b1 -= c,  b2 += sum_spatial,in W2 . c

This is exact for every pre-activation y >= c (under the batch norm's Gaussian model, 99.87% of
values), and shrinks the activation range that has to be quantized.

ReLU6 is not scale-equivariant (its clip at 6 would have to move to 6 / s_i per channel), so
like AIMET we replace ReLU6 by ReLU, but only where a ReLU6 sits between two equalized layers,
and the report says so: the equalized model equals the original exactly only where those
pre-activations stay below 6.

Example:
    >>> new_model, report = equalize_model_with_report(model)
    >>> print(report.summary())
    >>> sim = QuantizationSimModel(new_model, config_file="default")
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import keras
import numpy as np
from absl import logging

from aimet_tf.ptq import batch_norm_fold
from aimet_tf import graph as graph_lib

__all__ = [
    "EqualizationReport",
    "EqualizedSet",
    "HighBiasFoldRecord",
    "ScaledSet",
    "SkippedCandidate",
    "cross_layer_scales",
    "equalize_model",
    "equalize_model_with_report",
    "high_bias_fold_in_place",
    "replace_relu6_with_relu",
    "scale_cls_set_in_place",
    "scale_model_in_place",
]

_L = keras.layers
_CONV_TYPES = (_L.Conv1D, _L.Conv2D, _L.Conv3D)
_DEPTHWISE_TYPES = (_L.DepthwiseConv1D, _L.DepthwiseConv2D)
_POOL_TYPES = (
    _L.MaxPooling1D, _L.MaxPooling2D, _L.MaxPooling3D,
    _L.AveragePooling1D, _L.AveragePooling2D, _L.AveragePooling3D,
    _L.GlobalMaxPooling1D, _L.GlobalMaxPooling2D, _L.GlobalMaxPooling3D,
    _L.GlobalAveragePooling1D, _L.GlobalAveragePooling2D, _L.GlobalAveragePooling3D,
)
_PAD_TYPES = (_L.ZeroPadding1D, _L.ZeroPadding2D, _L.ZeroPadding3D)
_CROP_TYPES = (_L.Cropping1D, _L.Cropping2D, _L.Cropping3D)
# Identities at inference.
_IDENTITY_TYPES = (
    _L.Dropout, _L.SpatialDropout1D, _L.SpatialDropout2D, _L.SpatialDropout3D,
    _L.GaussianDropout, _L.GaussianNoise, _L.AlphaDropout, _L.Identity,
)

# Ranges below this fraction of the tensor's largest channel range count as zero.
_DEAD_CHANNEL = float(np.finfo(np.float32).eps)

# Kinds of the layers allowed between two equalized layers.
_RELU, _RELU6, _LINEAR, _PAD = "relu", "relu6", "linear", "pad"

# Catalogue op types that only re-lay a tensor out in row-major order (Flatten / Reshape layers and
# prepared ``keras.ops.reshape`` nodes): channels are followed through them by
# graph.map_reshape_channels.
_RESHAPE_OPS = ("Flatten", "Reshape")


# -- report ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EqualizedSet:
    """Layers scaled together: a pair (W1, W2) or a depthwise triple (W1, depthwise, W3).

    Attributes:
        layers: the 2 or 3 layer names, in data-flow order.
        between: for each consecutive pair of members, the names of the layers between them
            (activations, padding, pooling, dropout).
        scale_range: (min, max) over live channels and links of the total factor s each
            link's producer channel was divided by (1.0 where nothing moved).
        dead_channels: channels with a numerically dead range in some member after scaling
            (left alone, or shrunk when unused; see ``cross_layer_scales``).
    """

    layers: tuple[str, ...]
    between: tuple[tuple[str, ...], ...]
    scale_range: tuple[float, float]
    dead_channels: int = 0

    @property
    def kind(self) -> str:
        return "pair" if len(self.layers) == 2 else "triple"


@dataclasses.dataclass(frozen=True)
class SkippedCandidate:
    """A Conv/Depthwise/Dense layer whose output channels could not be equalized, and why."""

    layer: str
    reason: str


@dataclasses.dataclass(frozen=True)
class HighBiasFoldRecord:
    """One producer -> consumer link considered for high-bias folding.

    Attributes:
        producer: layer whose bias gave up c.
        consumer: layer whose bias absorbed W2 . c.
        folded: whether anything was moved.
        channels: number of channels with c > 0.
        absorbed_max: max over channels of c (in the producer's output units after CLE).
        exact: True when the move is exact for every input (only linear ops between); False
            when it relies on the pre-activation staying >= c before a ReLU.
        reason: why nothing was moved (empty when folded).
    """

    producer: str
    consumer: str
    folded: bool
    channels: int = 0
    absorbed_max: float = 0.0
    exact: bool = False
    reason: str = ""


@dataclasses.dataclass
class EqualizationReport:
    """What ``equalize_model`` did.

    Attributes:
        folded_batch_norms: ``FoldedPair``s (layer, batch norm, position) folded before equalization.
        unfolded_batch_norms: batch norms left in the model (they block equalization across them).
        relu6_replaced: ReLU6 activations replaced by ReLU (layer names; a Conv/Dense name means
            its built-in activation).
        equalized: every pair/triple scaled.
        skipped: every candidate layer not equalized as a producer, with the reason.
        high_bias_folds: every link considered for high-bias folding.
        sweeps: number of scaling sweeps over all sets.
        converged: whether the last sweep moved no scale by more than the tolerance.
        flattened_models: nested models whose layers were inlined into one graph first.
    """

    flattened_models: list[str] = dataclasses.field(default_factory=list)
    folded_batch_norms: list[batch_norm_fold.FoldedPair] = dataclasses.field(default_factory=list)
    unfolded_batch_norms: list[str] = dataclasses.field(default_factory=list)
    relu6_replaced: list[str] = dataclasses.field(default_factory=list)
    equalized: list[EqualizedSet] = dataclasses.field(default_factory=list)
    skipped: list[SkippedCandidate] = dataclasses.field(default_factory=list)
    high_bias_folds: list[HighBiasFoldRecord] = dataclasses.field(default_factory=list)
    sweeps: int = 0
    converged: bool = True

    @property
    def num_pairs(self) -> int:
        return sum(1 for s in self.equalized if s.kind == "pair")

    @property
    def num_triples(self) -> int:
        return sum(1 for s in self.equalized if s.kind == "triple")

    def summary(self) -> str:
        """A human-readable account of every fold, replacement, scaling and skip."""
        folds = [r for r in self.high_bias_folds if r.folded]
        lines = [f"Nested models flattened: {', '.join(self.flattened_models)}"] if self.flattened_models else []
        lines += [
            f"Batch norms folded: {len(self.folded_batch_norms)}; left unfolded: "
            f"{len(self.unfolded_batch_norms)}"
            + (f" ({', '.join(self.unfolded_batch_norms)})" if self.unfolded_batch_norms else ""),
            f"ReLU6 replaced by ReLU: {len(self.relu6_replaced)}"
            + (f" ({', '.join(self.relu6_replaced)})" if self.relu6_replaced else ""),
            f"Equalized: {self.num_pairs} pairs, {self.num_triples} triples "
            f"({self.sweeps} sweeps, {'converged' if self.converged else 'NOT converged'})",
        ]
        for s in self.equalized:
            lines.append(
                f"  {s.kind:6s} {' -> '.join(s.layers)}  (scales {s.scale_range[0]:.3g}.."
                f"{s.scale_range[1]:.3g}"
                + (f"; {s.dead_channels} dead channels" if s.dead_channels else "")
                + ")"
            )
        lines.append(f"Skipped candidates: {len(self.skipped)}")
        for c in self.skipped:
            lines.append(f"  {c.layer}: {c.reason}")
        lines.append(
            f"High-bias fold: {len(folds)} of {len(self.high_bias_folds)} links moved bias"
        )
        for r in self.high_bias_folds:
            if r.folded:
                how = "exact" if r.exact else "exact where pre-activation >= c"
                lines.append(
                    f"  {r.producer} -> {r.consumer}: {r.channels} channels, max c "
                    f"{r.absorbed_max:.3g} ({how})"
                )
            else:
                lines.append(f"  {r.producer} -> {r.consumer}: not folded: {r.reason}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# -- pure maths ----------------------------------------------------------------------------------


def cross_layer_scales(ranges: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-channel CLE scales for a pair or a depthwise triple.

    Pair (r1, r2): s = sqrt(r1 / r2). Triple (r1, r2, r3): S12 = r1 / cbrt(r1 r2 r3) and
    S23 = cbrt(r1 r2 r3) / r3. Layer k's output channel i is divided by the k-th scale and
    layer k+1's input channel i multiplied by it.

    A channel is dead in a layer when its range is below float32 eps times that array's
    maximum (e.g. weights L2-decayed to 1e-30). A channel with a dead (or zero) range gets
    scale 1, except that a link whose consumer is dead on the channel (so the producer's
    channel is unused) gets max(1, sqrt(r_k / r_k+1)): such channels are shrunk, never grown.

    Args:
        ranges: 2 or 3 arrays of per-channel absolute maxima, all of length C.

    Returns:
        One scale array per link (1 for a pair, 2 for a triple), float64.

    Raises:
        ValueError: for a number of ranges other than 2 or 3, or mismatched lengths.

    Example:
        >>> cross_layer_scales([np.array([4.0]), np.array([1.0])])
        [array([2.])]
    """
    ranges = [np.asarray(r, np.float64).reshape(-1) for r in ranges]
    if len(ranges) not in (2, 3):
        raise ValueError(f"Expected 2 or 3 range arrays (a pair or a triple). Received: {len(ranges)}")
    if len({r.shape for r in ranges}) != 1:
        raise ValueError(
            f"Expected ranges of one length. Received: lengths {[r.size for r in ranges]}"
        )
    dead = [r <= _DEAD_CHANNEL * (r.max() if r.size else 0.0) for r in ranges]
    positive = np.all([r > 0 for r in ranges], axis=0)
    normal = positive & ~np.any(dead, axis=0)
    safe = [np.where(normal, r, 1.0) for r in ranges]
    if len(ranges) == 2:
        scales = [np.where(normal, np.sqrt(safe[0] / safe[1]), 1.0)]
    else:
        geo = np.cbrt(safe[0] * safe[1] * safe[2])
        scales = [np.where(normal, safe[0] / geo, 1.0), np.where(normal, geo / safe[2], 1.0)]
    # A channel with a dead member is never scaled up (a dead producer outputs the constant
    # relu(bias), which s < 1 would inflate). Where the next layer is dead on it, the producer's
    # channel is unused: s = sqrt(r_k / r_k+1) >> 1 shrinks it (and its bias) out of the range.
    for k in range(len(scales)):
        unused = ~normal & dead[k + 1] & (ranges[k + 1] > 0)
        ratio = np.sqrt(ranges[k] / np.where(unused, ranges[k + 1], 1.0))
        scales[k] = np.where(unused, np.maximum(1.0, ratio), scales[k])
    return scales


# -- layer views ---------------------------------------------------------------------------------


def _channels(layer) -> int:
    """Output channels of an equalizable layer (depthwise: one per input channel, multiplier 1)."""
    return int(layer.kernel.shape[-2] if _is_depthwise(layer) else layer.kernel.shape[-1])


def _is_depthwise(layer) -> bool:
    return isinstance(layer, _DEPTHWISE_TYPES)


def _is_equalizable_type(layer) -> bool:
    return isinstance(layer, (*_CONV_TYPES, *_DEPTHWISE_TYPES, _L.Dense))


def _layer_problem(layer) -> str | None:
    """Why an equalizable-type layer's channels cannot be scaled, or None."""
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"data_format={layer.data_format!r} (channels_last expected)"
    if isinstance(layer, _CONV_TYPES) and getattr(layer, "groups", 1) != 1:
        return f"grouped convolution (groups={layer.groups})"
    if _is_depthwise(layer) and layer.depth_multiplier != 1:
        return f"depthwise with depth_multiplier={layer.depth_multiplier} (1 expected)"
    if isinstance(layer, _L.Dense) and len(layer.kernel.shape) != 2:
        return "Dense kernel is not 2-D"
    return None


def _activation_name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _activation_kind(name: str) -> str | None:
    return {"linear": _LINEAR, "relu": _RELU, "relu6": _RELU6, "leaky_relu": _RELU}.get(name)


def _between_kind(layer) -> tuple[str | None, str]:
    """(kind, description) of a layer between two equalizable layers; kind None = blocks."""
    if isinstance(layer, _L.ReLU):
        if float(layer.threshold) != 0.0:
            return None, f"ReLU with threshold={float(layer.threshold)}"
        if layer.max_value is None:
            return _RELU, "ReLU"
        if float(layer.max_value) == 6.0 and float(layer.negative_slope) == 0.0:
            return _RELU6, "ReLU6"
        return None, (
            f"ReLU with max_value={float(layer.max_value)}, negative_slope="
            f"{float(layer.negative_slope)} (only a plain ReLU6 can be replaced by ReLU)"
        )
    if isinstance(layer, _L.LeakyReLU):
        return _RELU, "LeakyReLU"
    if isinstance(layer, _L.Activation):
        name = _activation_name(layer.activation)
        kind = _activation_kind(name)
        if kind is None:
            return None, f"activation {name!r}"
        return kind, f"activation {name!r}"
    if isinstance(layer, _PAD_TYPES):
        return _PAD, type(layer).__name__
    if isinstance(layer, (*_POOL_TYPES, *_CROP_TYPES)):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return None, f"{type(layer).__name__} with data_format={layer.data_format!r}"
        return _LINEAR, type(layer).__name__
    if isinstance(layer, _IDENTITY_TYPES):
        return _LINEAR, type(layer).__name__
    if isinstance(layer, _L.BatchNormalization) and _is_identity_batch_norm(layer):
        return _LINEAR, "BatchNormalization that is an identity (already folded)"
    return None, type(layer).__name__


def _is_identity_batch_norm(bn) -> bool:
    """Whether ``bn``'s inference transform is x -> x to float32 rounding (AIMET's Keras API folds
    a batch norm in place by making it one)."""
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    factor = 1.0 / np.sqrt(np.asarray(bn.moving_variance.numpy(), np.float64) + bn.epsilon)
    if bn.scale:
        factor = factor * np.asarray(bn.gamma.numpy(), np.float64)
    shift = -mean * factor + (np.asarray(bn.beta.numpy(), np.float64) if bn.center else 0.0)
    return bool(np.all(np.abs(factor - 1.0) <= 1e-6) and np.all(np.abs(shift) <= 1e-6))


def _pads_input(layer) -> bool:
    """Whether ``layer`` reads zero padding around its input (same/causal with kernel > 1)."""
    if isinstance(layer, _L.Dense):
        return False
    padding = getattr(layer, "padding", "valid")
    if padding == "valid":
        return False
    kernel = tuple(np.atleast_1d(layer.kernel_size))
    return any(int(k) > 1 for k in kernel)


class _Weights:
    """Float64 kernel/bias of one equalizable layer, with channel views."""

    def __init__(self, layer):
        self.depthwise = _is_depthwise(layer)
        self.kernel = np.asarray(layer.kernel.numpy(), np.float64)
        self.out_channels = channels = _channels(layer)
        self.has_bias = bool(getattr(layer, "use_bias", False))
        self.bias = (
            np.asarray(layer.bias.numpy(), np.float64) if self.has_bias else np.zeros(channels)
        )
        self.bias_added = False

    def out_ranges(self) -> np.ndarray:
        k = np.abs(self.kernel)
        if self.depthwise:
            return k.reshape(-1, k.shape[-2]).max(axis=0)
        return k.reshape(-1, k.shape[-1]).max(axis=0)

    def in_ranges(self) -> np.ndarray:
        k = np.abs(self.kernel)
        if self.depthwise:
            return k.reshape(-1, k.shape[-2]).max(axis=0)
        return np.moveaxis(k, -2, 0).reshape(k.shape[-2], -1).max(axis=1)

    def divide_out(self, s: np.ndarray) -> None:
        if self.depthwise:
            self.kernel = self.kernel / s[:, None]
        else:
            self.kernel = self.kernel / s
        self.bias = self.bias / s

    def multiply_in(self, s: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Multiplies input channels by ``s``; with ``rows`` ([len(s), k] input-channel indices),
        every input channel listed in rows[i] by s[i] and the others not at all."""
        if rows is not None:
            full = np.ones(self.kernel.shape[-2])
            full[rows] = s[:, None]
            s = full
        self.kernel = self.kernel * s[:, None]

    def input_sums(self) -> np.ndarray:
        """sum over spatial taps of W for each (input channel -> output channel): [C_in, C_out]."""
        if self.depthwise:
            return np.diag(self.kernel.reshape(-1, self.kernel.shape[-2]).sum(axis=0))
        k = np.moveaxis(self.kernel, -2, 0)
        return k.reshape(k.shape[0], -1, k.shape[-1]).sum(axis=1)


def _set_ranges(members: list[_Weights], rows: np.ndarray | None = None) -> list[np.ndarray]:
    """Per-channel ranges along the links of a set: out of the first, in of the last (through a
    concatenation or flatten, the largest over the input channels ``rows`` maps each to)."""
    ranges = [members[0].out_ranges()]
    ranges += [m.in_ranges() for m in members[1:-1]]  # a depthwise middle: in == out
    last = members[-1].in_ranges()
    ranges.append(last if rows is None else last[rows].max(axis=1))
    return ranges


# -- graph search --------------------------------------------------------------------------------


@dataclasses.dataclass
class _Link:
    producer: str
    consumer: str
    between: tuple[str, ...]
    kinds: tuple[str, ...]
    relu6: tuple[str, ...]  # between-layers (or the producer itself) whose ReLU6 is replaced
    # Through Concatenate / Flatten / a Reshape that grows the last axis: rows[i] = the consumer's
    # input channels fed by the producer's output channel i. None: channel i feeds input channel i.
    rows: np.ndarray | None = None


def _find_links(
    model: keras.Model, replace_relu6: bool
) -> tuple[list[_Link], list[SkippedCandidate], list[str]]:
    g = graph_lib.layer_graph(model, "cross-layer equalization")
    links: list[_Link] = []
    skipped: list[SkippedCandidate] = []
    nested: list[str] = []
    for name in g.order:
        op = g.operations[name]
        if isinstance(op, keras.Model):
            nested.append(name)
            continue
        if not _is_equalizable_type(op):
            continue
        result = _follow(g, name, replace_relu6)
        if isinstance(result, str):
            skipped.append(SkippedCandidate(name, result))
        else:
            links.append(result)
    return links, skipped, nested


def _follow(g, name: str, replace_relu6: bool) -> _Link | str:
    """The link from equalizable layer ``name`` to the next one, or the reason there is none."""
    layer = g.operations[name]
    problem = _layer_problem(layer)
    if problem:
        return problem
    if g.call_count[name] != 1:
        return f"called {g.call_count[name]} times (shared layer)"
    kinds: list[str] = []
    relu6: list[str] = []
    act = _activation_name(getattr(layer, "activation", None))
    kind = _activation_kind(act)
    if kind is None:
        return f"built-in activation {act!r} is not scale-equivariant"
    if kind == _RELU6:
        if not replace_relu6:
            return "built-in ReLU6 activation (replace_relu6=False)"
        relu6.append(name)
    kinds.append(kind)
    between: list[str] = []
    rows: np.ndarray | None = None
    current = name
    while True:
        if current in g.model_output_names:
            where = "it is" if current == name else f"{current!r} after it is"
            return f"{where} a model output: no following layer can absorb the scale"
        consumers = g.consumers[current]
        if len(consumers) != 1 or g.output_count[current] != 1:
            subject = "its output" if current == name else f"the output of {current!r}"
            return (
                f"{subject} feeds {len(consumers)} layers ({', '.join(consumers)}); scaling "
                "needs a single consumer"
            )
        nxt = consumers[0]
        op = g.operations[nxt]
        if g.call_count[nxt] != 1:
            return f"next layer {nxt!r} is called {g.call_count[nxt]} times (shared layer)"
        if _is_equalizable_type(op):
            problem = _layer_problem(op)
            if problem:
                return f"next layer {nxt!r}: {problem}"
            return _Link(name, nxt, tuple(between), tuple(kinds), tuple(relu6), rows)
        if isinstance(op, _L.BatchNormalization) and not _is_identity_batch_norm(op):
            return f"unfolded BatchNormalization {nxt!r} follows"
        if isinstance(op, keras.Model):
            return f"its output enters nested model {nxt!r} (not searched across)"
        if isinstance(op, _L.Concatenate) or graph_lib.onnx_op_type(op) in _RESHAPE_OPS:
            mapped = _map_channels(g, op, current, rows, _channels(layer))
            if isinstance(mapped, str):
                return mapped
            rows = mapped
            kinds.append(_LINEAR)
            between.append(nxt)
            current = nxt
            continue
        kind, description = _between_kind(op)
        if kind is None:
            return (
                f"its output reaches {nxt!r} ({description}), which does not commute with "
                "per-channel scaling (only ReLU/ReLU6/LeakyReLU/linear activations, padding, "
                "cropping, pooling, dropout, channel Concatenate and channel-preserving Flatten / "
                "Reshape may sit between two Conv/Depthwise/Dense layers)"
            )
        if kind == _RELU6:
            if not replace_relu6:
                return f"ReLU6 {nxt!r} between (replace_relu6=False)"
            relu6.append(nxt)
        kinds.append(kind)
        between.append(nxt)
        current = nxt


def _map_channels(g, op, source: str, rows: np.ndarray | None, channels: int) -> np.ndarray | None | str:
    """Where the producer's channels land in ``op``'s output, or the reason they cannot be followed.

    ``rows`` says where they are in ``source``'s output (rows[i]: the last-axis indices carrying
    channel i; None: index i, for ``channels`` channels); the answer says the same of ``op``'s
    output. ``op`` is a Concatenate on the channel axis, or a Flatten / Reshape (see
    ``_map_through_reshape``).
    """
    if g.call_count[op.name] != 1:
        return f"{op.name!r} is called {g.call_count[op.name]} times (shared layer)"
    shapes = g.input_shapes[op.name]
    if not isinstance(op, _L.Concatenate):
        return _map_through_reshape(op, shapes[0], rows, channels)
    rank = len(shapes[0])
    if op.axis % rank != rank - 1:
        return f"Concatenate {op.name!r} joins axis {op.axis}, not the channel axis"
    producers = g.producers[op.name]
    if producers.count(source) != 1:
        return f"{source!r} enters Concatenate {op.name!r} {producers.count(source)} times"
    if any(s[-1] is None for s in shapes):
        return f"Concatenate {op.name!r} has inputs with unknown channel counts"
    index = producers.index(source)
    rows = np.arange(channels)[:, None] if rows is None else rows
    return rows + int(sum(s[-1] for s in shapes[:index]))


def _map_through_reshape(op, shape: tuple, rows: np.ndarray | None, channels: int) -> np.ndarray | None | str:
    """The channel rows of a Flatten / Reshape output (see ``_map_channels``), or why there are none.

    ``graph.map_reshape_channels`` says where the last-axis labels of the input land. A Reshape
    that keeps the last axis moves nothing; a channels-last Flatten of P positions, or a Reshape
    merging positions into the last axis, sends channel c to c, c + C, c + 2C, ...; a Reshape back
    to C channels after it undoes that. Splitting the last axis puts different channels on one
    output index at different positions, which no per-channel scale can undo: refused, as is a
    reshape that moves the channels off the last axis (the consumer reads them there).
    """
    labels = np.full(shape[-1], -1)  # -1: another producer's index (known: sizes are checked up to here)
    rows = np.arange(channels)[:, None] if rows is None else rows
    labels[rows] = np.arange(rows.shape[0])[:, None]
    try:
        placement = graph_lib.map_reshape_channels(op, shape, labels)
    except graph_lib.ChannelMappingError as e:
        return str(e)
    if placement.axis != len(placement.shape) - 1:
        return (
            f"{type(op).__name__} {op.name!r} moves the channels to axis {placement.axis} of shape "
            f"{placement.shape}, not its last axis (where the consumer reads its channels)"
        )
    out = placement.labels
    if out.size == rows.shape[0] and np.array_equal(out, np.arange(out.size)):
        return None  # one index per channel, in order
    return np.stack([np.flatnonzero(out == i) for i in range(rows.shape[0])])


def _chains(links: list[_Link]) -> list[list[_Link]]:
    """Consecutive links as chains; links with channel rows (through Concatenate, Flatten or a
    Reshape that moves channels) are sets of their own."""
    mapped = [[link] for link in links if link.rows is not None]
    links = [link for link in links if link.rows is None]
    by_producer = {link.producer: link for link in links}
    consumers = {link.consumer for link in links}
    chains = mapped
    for link in links:
        if link.producer in consumers:
            continue
        chain = [link]
        while chain[-1].consumer in by_producer:
            chain.append(by_producer[chain[-1].consumer])
        chains.append(chain)
    return chains


def _split_sets(chain: list[_Link], layers: dict) -> list[list[_Link]]:
    """AIMET's grouping: (a, depthwise, b) triples where possible, otherwise pairs."""
    sets = []
    i = 0
    while i < len(chain):
        if i + 1 < len(chain) and chain[i].rows is None and _is_depthwise(layers[chain[i].consumer]):
            sets.append([chain[i], chain[i + 1]])
            i += 2
        else:
            sets.append([chain[i]])
            i += 1
    return sets


def _members(cls_set: list[_Link]) -> list[str]:
    return [cls_set[0].producer] + [link.consumer for link in cls_set]


def _scale_in_sweeps(
    sets: list[list[_Link]],
    weights: dict[str, _Weights],
    divided: dict[str, np.ndarray],
    max_sweeps: int,
    tolerance: float,
) -> tuple[int, bool]:
    """Scales every set in sweeps until the largest |log s| of a sweep is <= ``tolerance``.

    ``divided[name]`` accumulates the total scale each producer's output channels were divided by.
    Returns (sweeps run, converged).
    """
    largest = 0.0
    for sweep in range(1, max_sweeps + 1):
        largest = 0.0
        for cls_set in sets:
            members = _members(cls_set)
            w = [weights[n] for n in members]
            rows = cls_set[-1].rows
            scales = cross_layer_scales(_set_ranges(w, rows))
            for k, s in enumerate(scales):
                w[k].divide_out(s)
                w[k + 1].multiply_in(s, rows if k + 1 == len(w) - 1 else None)
                divided[members[k]] = divided[members[k]] * s
                largest = max(largest, float(np.max(np.abs(np.log(s)))) if s.size else 0.0)
        if largest <= tolerance:
            return sweep, True
    logging.warning(
        "equalize_model: scaling did not converge in %d sweeps (last max |log s| %.3g)", max_sweeps, largest
    )
    return max_sweeps, False


# -- the pass ------------------------------------------------------------------------------------


def _clone_layer(layer, config_overrides: dict, weights: _Weights | None):
    if isinstance(layer, keras.Model):
        new = keras.models.clone_model(layer)
        new.set_weights(layer.get_weights())
        return new
    new = graph_lib.clone_layer(layer, config_overrides, copy_weights=weights is None)
    if weights is not None:
        new.kernel.assign(weights.kernel.astype(np.float32))
        if new.use_bias:
            new.bias.assign(weights.bias.astype(np.float32))
    return new


def _is_relu6(layer) -> bool:
    """A ReLU6 layer, an Activation("relu6"), or a layer whose built-in activation is relu6."""
    if isinstance(layer, _L.ReLU):
        return _between_kind(layer)[0] == _RELU6
    activation = getattr(layer, "activation", None)
    return activation is not None and _activation_name(activation) == "relu6"


def replace_relu6_with_relu(model: keras.Model, remain_fusing: bool = False) -> tuple[keras.Model, dict[str, str]]:
    """Every ReLU6 of ``model``'s top level replaced by ReLU (AIMET's ``replace_relu6_with_relu``).

    ReLU(max_value=6) layers and Activation("relu6") layers become ReLU. A Conv/Dense layer with a
    built-in relu6 gets a built-in relu with ``remain_fusing=True``; with AIMET's default
    ``remain_fusing=False`` it becomes the layer with a linear activation followed by an
    ``Activation("relu")`` layer (named as ``aimet_tf.graph.split_activations`` names it,
    ``"<layer>_relu"``). Weights are copied; ``model`` is not
    modified. Layers of nested models are not changed (AIMET's works on the top level too).

    Returns:
        ``(new model, changes)``: AIMET's order; ``changes`` maps each changed layer's name to what
        was done to it (AIMET returns TFMOT's layer-metadata dict there, empty unless given one).

    Raises:
        TypeError: for a model that is not Functional or Sequential.
    """
    functional = graph_lib.as_functional(model, "replace_relu6_with_relu")
    changed = [l for l in functional.layers if not isinstance(l, keras.Model) and _is_relu6(l)]

    def clone(layer):
        if isinstance(layer, keras.Model):
            return _clone_layer(layer, {}, None)
        return graph_lib.clone_layer(layer, _relu6_override(layer) if _is_relu6(layer) else {}, copy_weights=True)

    replaced = keras.models.clone_model(functional, clone_function=clone)
    changes = {l.name: "ReLU6 -> ReLU" for l in changed}
    fused = [l.name for l in changed if not isinstance(l, (_L.ReLU, _L.Activation))]
    if fused and not remain_fusing:
        replaced, split = graph_lib.split_activations(replaced, only=fused)
        for name in fused:
            changes[name] = "ReLU6 -> ReLU; " + next(line for line in split if f"layer {name!r} into" in line)
    logging.info("replace_relu6_with_relu: %d layers changed", len(changes))
    return replaced, changes


def _relu6_override(layer) -> dict:
    if isinstance(layer, _L.ReLU):
        return {"max_value": None}
    # Activation("relu6") layers and Conv/Dense built-in activations.
    return {"activation": "relu"}


def equalize_model_with_report(
    model: keras.Model,
    *,
    fold_batch_norms: bool = True,
    replace_relu6: bool = True,
    high_bias_fold: bool = True,
    high_bias_fold_padded: bool = False,
    max_sweeps: int = 500,
    tolerance: float = 1e-4,
) -> tuple[keras.Model, EqualizationReport]:
    """Data-free equalization: BN fold, ReLU6 -> ReLU, cross-layer scaling, high-bias fold.

    Candidates are found on the Keras graph: a Conv1D/2D/3D, DepthwiseConv1D/2D (multiplier 1)
    or Dense layer whose output reaches the next such layer through a single-consumer path of
    ReLU / ReLU6 / LeakyReLU / linear activations, zero padding, cropping, pooling, dropout,
    channel-axis Concatenate and channel-preserving Flatten / Reshape only. Through a
    Concatenate each producer pairs with its own slice of the consumer's input channels. A
    channels-last Flatten, or a Reshape whose last axis is a multiple m of its input's, sends
    channel c to last-axis indices c, c + C, ..., c + (m-1) C (C channels), and each channel
    pairs with all the input rows it becomes (a channels_first Flatten moves its first axis
    last before flattening, and the rows follow); a Reshape keeping the last axis (merging or
    splitting positions only) moves no channel, and one back to C channels after a Flatten
    undoes the move. A Reshape that splits channels over positions mixes them and is refused
    (``report.skipped`` says why). Consecutive links form
    chains, split like AIMET into (W1, depthwise, W3) triples where the middle layer is
    depthwise and pairs otherwise; links whose channels move (Concatenate, Flatten, a Reshape
    growing the last axis) stay pairs. Nested models are flattened first. Scales (see
    ``cross_layer_scales``) are applied in sweeps over all sets until the largest |log s| of a
    sweep is below ``tolerance``, so sets sharing a layer end up balanced together.

    High-bias folding (see the module docstring) needs the producer's folded batch norm
    (gamma, beta). A consumer that zero-pads its input (``padding="same"`` with a kernel > 1,
    or a ZeroPadding layer between) would see the shifted values everywhere but at the padded
    border, so such links are skipped unless ``high_bias_fold_padded=True`` (the paper's
    formula b2 += W2 . c ignores padding).

    Args:
        model: a Functional or built Sequential model. It is not modified.
        fold_batch_norms: fold batch norms first (``aimet_tf.ptq.batch_norm_fold``). Without
            folding, a BN between two layers blocks their equalization.
        replace_relu6: replace a ReLU6 between two equalized layers by ReLU (as AIMET does);
            False skips those candidates instead.
        high_bias_fold: run high-bias folding after scaling.
        high_bias_fold_padded: also fold into consumers that zero-pad (inexact at borders).
        max_sweeps: upper bound on scaling sweeps (1 = AIMET's single pass; chains of shared
            layers such as MobileNet's conv -> dw -> pw -> dw -> pw need tens to hundreds of
            sweeps to settle).
        tolerance: convergence threshold on max |log s| within a sweep: at convergence every
            set's ranges agree to about this relative amount.

    Returns:
        (new model, report) (``equalize_model`` returns the model only, as AIMET's). The new model computes the same function as the BN-folded model
        with the listed ReLU6 activations replaced by ReLU (to float rounding), apart from
        high-bias folds, which are exact where the pre-activations stay >= c.

    Raises:
        TypeError: for a model that is not Functional or Sequential.
        ValueError: for a Sequential model without input, or max_sweeps < 1; for a model that needs
            ``aimet_tf.graph.prepare_model`` first (``keras.ops`` nodes such as ``x + y``, Lambda
            or custom composite layers, at any nesting level), naming each node.

    Example:
        >>> new_model, report = equalize_model_with_report(model)
        >>> [s.layers for s in report.equalized]
        [('conv1', 'dw1', 'pw1'), ...]
    """
    if max_sweeps < 1:
        raise ValueError(f"Expected max_sweeps >= 1. Received: max_sweeps={max_sweeps}")
    # Shared layers are kept (they are skipped as candidates); ops nodes and the like need prepare_model.
    original = graph_lib.check_prepared(model, "cross-layer equalization", allow_shared_layers=True).model
    report = EqualizationReport()
    if graph_lib.has_nested_models(original):
        # Pairs inside or across nested models only show on one graph level.
        report.flattened_models = [l.name for l in original.layers if isinstance(l, keras.Model)]
        original = graph_lib.inline_nested_models(original)
    bn_stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if fold_batch_norms:
        pairs, folded = batch_norm_fold.fold_all_batch_norms(original)
        report.folded_batch_norms = list(pairs)
        for layer_name, bn_name, position in pairs:
            if position != "after" or "/" in layer_name:
                continue  # only a top-level batch norm after a layer carries high-bias statistics
            bn = original.get_layer(bn_name)
            gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else None
            beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else None
            channels = int(bn.moving_mean.shape[0])
            bn_stats[layer_name] = (
                gamma if gamma is not None else np.ones(channels),
                beta if beta is not None else np.zeros(channels),
            )
    else:
        folded = original
    folded_names = {pair.batch_norm for pair in report.folded_batch_norms}
    report.unfolded_batch_norms = [
        l.name
        for l in original.layers
        if isinstance(l, _L.BatchNormalization) and l.name not in folded_names
    ]

    links, skipped, nested = _find_links(folded, replace_relu6)
    report.skipped = skipped
    for name in nested:
        logging.info("equalize_model: nested model %s is not searched inside", name)
    layers = {l.name: l for l in folded.layers}
    chains = _chains(links)
    sets = [s for chain in chains for s in _split_sets(chain, layers)]
    involved = {n for link in links for n in (link.producer, link.consumer)}
    weights = {n: _Weights(layers[n]) for n in involved}
    divided = {n: np.ones(weights[n].out_channels) for n in involved}

    # -- cross-layer scaling in sweeps.
    report.sweeps, report.converged = _scale_in_sweeps(sets, weights, divided, max_sweeps, tolerance)
    for cls_set in sets:
        members = [cls_set[0].producer] + [link.consumer for link in cls_set]
        ranges = _set_ranges([weights[n] for n in members], cls_set[-1].rows)
        dead = np.any([r <= _DEAD_CHANNEL * r.max() for r in ranges], axis=0)
        totals = np.concatenate([divided[m][~dead] for m in members[:-1]])
        report.equalized.append(
            EqualizedSet(
                layers=tuple(members),
                between=tuple(link.between for link in cls_set),
                scale_range=(float(totals.min()), float(totals.max())) if totals.size else (1.0, 1.0),
                dead_channels=int(np.count_nonzero(dead)),
            )
        )

    # -- high-bias fold, in data-flow order.
    if high_bias_fold:
        for cls_set in sets:
            for link in cls_set:
                report.high_bias_folds.append(
                    _high_bias_fold(link, layers, weights, divided, bn_stats, high_bias_fold_padded)
                )

    # -- rebuild with the new weights and activations.
    overrides: dict[str, dict] = {}
    for link in links:
        for name in link.relu6:
            if name not in overrides:
                overrides[name] = _relu6_override(layers[name])
                report.relu6_replaced.append(name)
    for name, w in weights.items():
        if w.bias_added:
            overrides.setdefault(name, {})["use_bias"] = True

    def clone(layer):
        return _clone_layer(layer, overrides.get(layer.name, {}), weights.get(layer.name))

    new_model = keras.models.clone_model(folded, clone_function=clone)
    logging.info(
        "equalize_model: %d pairs, %d triples, %d skipped, %d ReLU6 replaced, %d high-bias folds",
        report.num_pairs,
        report.num_triples,
        len(report.skipped),
        len(report.relu6_replaced),
        sum(r.folded for r in report.high_bias_folds),
    )
    return new_model, report


def equalize_model(
    model: keras.Model,
    *,
    fold_batch_norms: bool = True,
    replace_relu6: bool = True,
    high_bias_fold: bool = True,
    high_bias_fold_padded: bool = False,
    max_sweeps: int = 500,
    tolerance: float = 1e-4,
) -> keras.Model:
    """AIMET's ``equalize_model(model) -> model``: ``equalize_model_with_report`` without the report.

    Example:
        >>> cle_model = equalize_model(model)
    """
    return equalize_model_with_report(
        model,
        fold_batch_norms=fold_batch_norms,
        replace_relu6=replace_relu6,
        high_bias_fold=high_bias_fold,
        high_bias_fold_padded=high_bias_fold_padded,
        max_sweeps=max_sweeps,
        tolerance=tolerance,
    )[0]


def _high_bias_fold(
    link: _Link,
    layers: dict,
    weights: dict[str, _Weights],
    divided: dict[str, np.ndarray],
    bn_stats: dict[str, tuple[np.ndarray, np.ndarray]],
    fold_padded: bool,
) -> HighBiasFoldRecord:
    producer, consumer = link.producer, link.consumer
    if producer not in bn_stats:
        return HighBiasFoldRecord(
            producer, consumer, False,
            reason="no batch norm was folded into the producer (its output statistics are unknown)",
        )
    padded = _pads_input(layers[consumer]) or _PAD in link.kinds
    if padded and not fold_padded:
        return HighBiasFoldRecord(
            producer, consumer, False,
            reason="the consumer zero-pads its input, so the border would not see the shift "
            "(high_bias_fold_padded=True folds anyway)",
        )
    gamma, beta = bn_stats[producer]
    gamma = gamma / divided[producer]
    beta = beta / divided[producer]
    rectified = any(k in (_RELU, _RELU6) for k in link.kinds)
    c = np.maximum(0.0, beta - 3.0 * np.abs(gamma)) if rectified else beta
    if not np.any(c != 0):
        return HighBiasFoldRecord(
            producer, consumer, False, reason="beta - 3|gamma| <= 0 for every channel"
        )
    w1, w2 = weights[producer], weights[consumer]
    w1.bias = w1.bias - c
    if not w2.has_bias:
        w2.has_bias = True
        w2.bias_added = True
    sums = w2.input_sums()
    if link.rows is not None:
        sums = sums[link.rows].sum(axis=1)
    w2.bias = w2.bias + c @ sums
    return HighBiasFoldRecord(
        producer,
        consumer,
        True,
        channels=int(np.count_nonzero(c)),
        absorbed_max=float(np.max(np.abs(c))),
        exact=not rectified and not padded,
    )



# -- step by step, in place (AIMET's CrossLayerScaling / HighBiasFold) ---------------------------


@dataclasses.dataclass(frozen=True)
class ScaledSet:
    """One set scaled by :func:`scale_model_in_place`.

    Attributes:
        layers: the set's layer names (2, or 3 with a depthwise middle).
        scales: per link, the total scale the link's producer's output channels were divided by.
        relu: per link, whether a ReLU (or ReLU6, LeakyReLU) sits between its two layers.
    """

    layers: tuple[str, ...]
    scales: tuple[np.ndarray, ...]
    relu: tuple[bool, ...]


def _write_weights(layer, weights: _Weights) -> None:
    layer.kernel.assign(weights.kernel.astype(np.float32))
    if layer.use_bias:
        layer.bias.assign(weights.bias.astype(np.float32))


def _check_scalable(layers: Sequence) -> None:
    """Raises ValueError unless ``layers`` is a pair or a (layer, depthwise, layer) triple of
    equalizable layers whose channels line up."""
    if len(layers) not in (2, 3):
        raise ValueError(f"Expected a CLS set of 2 layers, or 3 with a depthwise middle. Received {len(layers)}: {layers!r}")
    for layer in layers:
        if not isinstance(layer, keras.layers.Layer) or not _is_equalizable_type(layer):
            raise ValueError(
                "Expected Conv1D/2D/3D, DepthwiseConv1D/2D or Dense layers in a CLS set. "
                f"Received: {type(layer).__name__} {getattr(layer, 'name', layer)!r}"
            )
        problem = _layer_problem(layer)
        if problem:
            raise ValueError(f"Layer {layer.name!r} cannot be scaled: {problem}.")
    if len(layers) == 3 and not _is_depthwise(layers[1]):
        raise ValueError(f"Expected the middle layer of a 3-layer CLS set to be depthwise. Received: {type(layers[1]).__name__} {layers[1].name!r}")
    for first, second in zip(layers, layers[1:]):
        produced, read = _channels(first), int(second.kernel.shape[-2])
        if produced != read:
            raise ValueError(
                f"CLS set {[l.name for l in layers]}: {first.name!r} has {produced} output channels but "
                f"{second.name!r} reads {read} input channels. Expected consecutive layers."
            )


def scale_cls_set_in_place(layers: Sequence[keras.layers.Layer]) -> list[np.ndarray]:
    """One cross-layer scaling of a pair or a depthwise triple, on the layers themselves.

    The layers' kernels (and the biases of all but the last) are overwritten, as AIMET's
    ``CrossLayerScaling.scale_cls_sets`` does; see :func:`cross_layer_scales` for the scales.

    Returns:
        The scales, one per link (layer k's output channels were divided by the k-th).

    Raises:
        ValueError: for a set that is not 2 layers, or 3 with a depthwise middle, of equalizable
            layers with matching channels (nothing is changed then).
    """
    _check_scalable(layers)
    weights = [_Weights(layer) for layer in layers]
    scales = cross_layer_scales(_set_ranges(weights))
    for k, s in enumerate(scales):
        weights[k].divide_out(s)
        weights[k + 1].multiply_in(s)
    for layer, w in zip(layers, weights):
        _write_weights(layer, w)
    return scales


def scale_model_in_place(model: keras.Model, *, max_sweeps: int = 500, tolerance: float = 1e-4) -> list[ScaledSet]:
    """Finds the CLS sets of a BN-folded model and scales them in place, in sweeps.

    The sets are those ``equalize_model`` finds on the top level (ReLU6 blocks a link: replace it
    first), except links through Concatenate, Flatten or a channel-moving Reshape, which a
    (layer, layer) pair cannot describe. Nothing is folded or replaced.

    Raises:
        ValueError: for max_sweeps < 1, or a model ``equalize_model`` refuses.
    """
    if max_sweeps < 1:
        raise ValueError(f"Expected max_sweeps >= 1. Received: max_sweeps={max_sweeps}")
    graph_lib.check_prepared(model, "cross-layer scaling", allow_shared_layers=True)
    functional = graph_lib.as_functional(model, "cross-layer scaling")
    links, _, _ = _find_links(functional, replace_relu6=False)
    links = [link for link in links if link.rows is None]
    layers = {l.name: l for l in functional.layers}
    sets = [s for chain in _chains(links) for s in _split_sets(chain, layers)]
    involved = {n for cls_set in sets for n in _members(cls_set)}
    weights = {n: _Weights(layers[n]) for n in involved}
    divided = {n: np.ones(weights[n].out_channels) for n in involved}
    _scale_in_sweeps(sets, weights, divided, max_sweeps, tolerance)
    for name in involved:
        _write_weights(layers[name], weights[name])
    return [
        ScaledSet(
            layers=tuple(_members(cls_set)),
            scales=tuple(divided[link.producer] for link in cls_set),
            relu=tuple(any(k in (_RELU, _RELU6) for k in link.kinds) for link in cls_set),
        )
        for cls_set in sets
    ]


def high_bias_fold_in_place(
    layer1: keras.layers.Layer,
    layer2: keras.layers.Layer,
    scale: np.ndarray,
    relu_between: bool,
    gamma: np.ndarray,
    beta: np.ndarray,
) -> HighBiasFoldRecord:
    """High-bias fold from ``layer1`` into ``layer2``, on the layers' biases (both must have one).

    ``gamma``/``beta`` are the batch norm folded into ``layer1`` before CLS, ``scale`` what CLS
    divided layer1's output channels by (the module docstring gives the formula). As AIMET,
    a consumer that zero-pads its input is folded into too (exact away from the border).

    Raises:
        ValueError: for a layer without bias, or gamma/beta/scale not of layer1's channel count.
    """
    for layer in (layer1, layer2):
        if not getattr(layer, "use_bias", False):
            raise ValueError(f"High-bias fold needs a bias on both layers. Layer {layer.name!r} has none.")
    channels = _channels(layer1)
    arrays = {"scale": scale, "gamma": gamma, "beta": beta}
    for what, value in arrays.items():
        if np.asarray(value).reshape(-1).shape != (channels,):
            raise ValueError(
                f"Expected {what} of {channels} values ({layer1.name!r}'s output channels). "
                f"Received shape {np.asarray(value).shape}."
            )
    link = _Link(layer1.name, layer2.name, (), (_RELU,) if relu_between else (_LINEAR,), ())
    weights = {layer1.name: _Weights(layer1), layer2.name: _Weights(layer2)}
    record = _high_bias_fold(
        link,
        {layer1.name: layer1, layer2.name: layer2},
        weights,
        {layer1.name: np.asarray(scale, np.float64).reshape(-1)},
        {layer1.name: (np.asarray(gamma, np.float64).reshape(-1), np.asarray(beta, np.float64).reshape(-1))},
        True,
    )
    _write_weights(layer1, weights[layer1.name])
    _write_weights(layer2, weights[layer2.name])
    return record
