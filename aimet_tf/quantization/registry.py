"""Registry: which tensors of each Keras layer class get quantized.

Every layer the simulation wraps needs a ``LayerSpec``: its parameters (by attribute path on the
layer, with the role "weight" or "bias" that the hardware config speaks of, and the channel axes for
per-channel quantization) and whether its output passes values through unchanged (pooling-free data
movement such as Reshape, whose output reuses its input's grid).

Register a custom layer with::

    @aimet_tf.register_layer(params={"kernel": ParamSpec("weight", channel_axes=(-1,))})
    class MyLayer(keras.layers.Layer): ...
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import keras

from aimet_tf.graph.op_layer import DataMovementOpLayer, OpLayer
from aimet_tf.graph.prepare import mark_atomic
from aimet_tf.layers import ClassToken, PaddingAttentionMask, PositionEmbedding
from aimet_tf.quantization.fused_batch_norm import fused_batch_norm_training
from aimet_tf.quantization.recurrent import INTERNAL_TENSORS, recurrent_forward
from aimet_tf.quantization.transformer import (
    ATTENTION_OP_TYPES,
    LAYER_NORM_OP_TYPES,
    RMS_NORM_OP_TYPES,
    attention_forward,
    dense_forward,
    layer_norm_forward,
    rms_norm_forward,
)

__all__ = ["ParamSpec", "LayerSpec", "register_layer", "get_layer_spec", "registered_classes"]


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """How one parameter of a layer is quantized.

    Attributes:
        role: "weight" or "bias" (the hardware config's ``params`` keys).
        channel_axes: axes that carry one encoding each in per-channel mode (flattened together when
            more than one, e.g. a depthwise kernel [kh, kw, in, mult] uses (2, 3)); None for a
            parameter that is always quantized per tensor, because the op that reads it takes
            a per-tensor operand (a class token that is concatenated, a position table that is
            added).
    """

    role: str
    channel_axes: tuple[int, ...] | None = (-1,)

    def __post_init__(self):
        if self.role not in ("weight", "bias"):
            raise ValueError(f"Expected role 'weight' or 'bias'. Received: role={self.role!r}")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What the simulation quantizes for one layer class.

    Attributes:
        params: attribute path on the layer (e.g. "kernel", "_query_dense.kernel") -> ParamSpec.
        passthrough: the output only moves/selects input values (Reshape, MaxPool, Dropout...), so
            it keeps its input's grid and gets no output quantizer by default.
        quantize_output: False for layers whose output is never quantized by default.
        forward: optional replacement of the layer's own call inside its ``QuantizationWrapper``:
            ``forward(layer, args, kwargs, training)`` returns the outputs, or None to let the
            wrapper call the layer (e.g. BatchNormalization's training pass through TF's fused
            kernel, ``aimet_tf.quantization.fused_batch_norm``).
        internal: names of tensors computed inside the layer that get activation quantizers of
            their own (e.g. an LSTM's gates). A layer with internal tensors needs a ``forward``,
            which is then called with ``quantize=fn`` as well: ``fn(name, tensor)`` applies the
            wrapper's quantizer of that name (identity for an empty slot), or ``quantize=None``
            when the sim does not decompose the layer (the forward then returns None and the
            layer's own call runs).
        internal_op_types: internal tensor name -> the ONNX op type that produces it (a
            MultiHeadAttention's scores: "MatMul", its probabilities: "Softmax"); the config's
            rule for that op type decides whether the tensor is quantized. A name without an
            entry follows the layer's own op type.
        decomposed: whether the layer is simulated op by op (its internal tensors quantized)
            when the config's op type entry has no ``is_decomposed`` key.
        operand_params: parameters that are the second operand of the layer's one elementwise op
            (``PositionEmbedding``: input + table is one ADD): a requantizer modelling that op's
            integer kernel receives their quantized values after the layer's input.
    """

    params: Mapping[str, ParamSpec] = dataclasses.field(default_factory=dict)
    passthrough: bool = False
    quantize_output: bool = True
    forward: Callable[..., object] | None = None
    internal: tuple[str, ...] = ()
    internal_op_types: Mapping[str, str] = dataclasses.field(default_factory=dict)
    decomposed: bool = True
    operand_params: tuple[str, ...] = ()

    def __post_init__(self):
        if self.internal and self.forward is None:
            raise ValueError(
                "Expected a forward for a layer with internal tensors to quantize. Received: "
                f"internal={self.internal!r}, forward=None"
            )
        unknown = sorted(set(self.internal_op_types) - set(self.internal))
        if unknown:
            raise ValueError(
                "Expected internal_op_types keys among the internal tensor names "
                f"{self.internal!r}. Received: {unknown!r}"
            )


_REGISTRY: dict[type, LayerSpec] = {}


def register_layer(
    layer_cls: type | None = None,
    *,
    params: Mapping[str, ParamSpec] | None = None,
    passthrough: bool = False,
    quantize_output: bool = True,
    forward: Callable[..., object] | None = None,
    internal: tuple[str, ...] = (),
    internal_op_types: Mapping[str, str] | None = None,
    decomposed: bool = True,
    operand_params: tuple[str, ...] = (),
) -> Callable[[type], type] | type:
    """Registers how a Keras layer class is quantized. Usable as a decorator or a call.

    Args:
        layer_cls: the class (omit when used as ``@register_layer(...)``).
        params: attribute path -> ParamSpec for the parameters to quantize.
        passthrough: output reuses the input grid (no output quantizer by default).
        quantize_output: whether the output is quantized by default.
        forward: optional ``forward(layer, args, kwargs, training) -> outputs or None`` that the
            wrapper runs instead of the layer's call (None result: the layer's call runs).
        internal: names of intermediate tensors with activation quantizers of their own, which
            ``forward(..., quantize=fn)`` passes through ``fn(name, tensor)``.
        internal_op_types: internal tensor name -> ONNX op type whose config rule governs it.
        decomposed: whether the internal tensors are quantized when the config does not say
            (its op type's ``is_decomposed`` key).
        operand_params: parameters that are the second operand of the layer's elementwise op.

    Returns:
        The class (decorator form) unchanged.
    """
    spec = LayerSpec(dict(params or {}), passthrough, quantize_output, forward, tuple(internal),
                     dict(internal_op_types or {}), decomposed, tuple(operand_params))

    def _register(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
            raise TypeError(f"Expected a keras.layers.Layer subclass. Received: {cls!r}")
        _REGISTRY[cls] = spec
        mark_atomic(cls)  # prepare_model keeps a registered layer whole, even if it holds layers
        return cls

    if layer_cls is None:
        return _register
    return _register(layer_cls)


def get_layer_spec(layer: keras.layers.Layer) -> LayerSpec:
    """The spec for ``layer`` (exact class first, then the nearest registered base class).

    Raises:
        NotImplementedError: naming the registration call, for a class nobody registered.
    """
    for cls in type(layer).__mro__:
        if cls in _REGISTRY:
            if cls.__module__.startswith("keras.") and type(layer).__module__.startswith("keras_hub.") and (
                _load_keras_hub_specs()
            ):
                return get_layer_spec(layer)  # a keras_hub subclass may have a spec of its own
            return _REGISTRY[cls]
        if cls is keras.layers.Layer:
            break
    if type(layer).__module__.startswith("keras_hub.") and _load_keras_hub_specs():
        return get_layer_spec(layer)
    name = type(layer).__name__
    raise NotImplementedError(
        f"Layer {layer.name!r} of class {type(layer).__module__}.{name} is not known to the "
        "quantization simulation. Register it before building the sim, e.g.\n"
        f"    aimet_tf.register_layer({name}, params={{'kernel': aimet_tf.ParamSpec('weight')}})\n"
        "(params lists the attributes holding variables to quantize; use params={} for a "
        "parameter-free layer, passthrough=True if it only moves values)."
    )


_KERAS_HUB_LOADED = False


def _load_keras_hub_specs() -> bool:
    """Registers keras_hub's layers (``keras_hub_layers``) once; True if that happened just now."""
    global _KERAS_HUB_LOADED
    if _KERAS_HUB_LOADED:
        return False
    _KERAS_HUB_LOADED = True
    from aimet_tf.quantization import keras_hub_layers  # noqa: F401 (registers on import)

    return True


def registered_classes() -> tuple[type, ...]:
    return tuple(_REGISTRY)


def _kernel_bias(kernel_axes: tuple[int, ...] = (-1,)) -> dict[str, ParamSpec]:
    return {"kernel": ParamSpec("weight", kernel_axes), "bias": ParamSpec("bias", (-1,))}


L = keras.layers
for _cls in (L.Conv1D, L.Conv2D, L.Conv3D):
    register_layer(_cls, params=_kernel_bias((-1,)))
# A Dense on a sequence runs as one matrix product on [rows, features] (the same numbers), so the
# converter fuses its bias into FULLY_CONNECTED (``transformer.dense_forward``).
register_layer(L.Dense, params=_kernel_bias((-1,)), forward=dense_forward)
# Transposed conv kernels are [kh, kw, out, in].
for _cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
    register_layer(_cls, params=_kernel_bias((-2,)))
# Depthwise kernels are [kh, kw, in, multiplier]: one channel per (in, multiplier) pair.
register_layer(L.DepthwiseConv1D, params=_kernel_bias((-2, -1)))
register_layer(L.DepthwiseConv2D, params=_kernel_bias((-2, -1)))
for _cls in (L.SeparableConv1D, L.SeparableConv2D):
    register_layer(
        _cls,
        params={
            "depthwise_kernel": ParamSpec("weight", (-2, -1)),
            "pointwise_kernel": ParamSpec("weight", (-1,)),
            "bias": ParamSpec("bias", (-1,)),
        },
    )
register_layer(L.EinsumDense, params=_kernel_bias((-1,)))
register_layer(L.BatchNormalization, params={}, forward=fused_batch_norm_training)
# Layer normalization: one op for targets with a norm kernel (AIMET's model); decomposed into
# its statistics' ops where the config says so (``transformer.py``; the tflite preset). Its
# gamma and beta enter MUL and ADD ops there, which take per-tensor operands.
register_layer(
    L.LayerNormalization,
    params={"gamma": ParamSpec("weight", None), "beta": ParamSpec("bias", None)},
    forward=layer_norm_forward,
    internal=tuple(LAYER_NORM_OP_TYPES),
    internal_op_types=LAYER_NORM_OP_TYPES,
    decomposed=False,
)
register_layer(L.Embedding, params={"embeddings": ParamSpec("weight", (0,))})
register_layer(L.PReLU, params={"alpha": ParamSpec("weight", (-1,))})
# Recurrent layers: input and recurrent kernels per output unit (4 gates x units for an LSTM), and
# every gate tensor of the step quantized inside the recurrence (``recurrent.py``). The hidden state
# is quantized in the loop, so the outputs are already on its grid.
for _cls, _names in INTERNAL_TENSORS.items():
    register_layer(
        _cls,
        params={
            "cell.kernel": ParamSpec("weight", (-1,)),
            "cell.recurrent_kernel": ParamSpec("weight", (-1,)),
            "cell.bias": ParamSpec("bias", (-1,)),
        },
        quantize_output=False,
        forward=recurrent_forward,
        internal=_names,
    )
# RMSNormalization likewise (its scale enters the final MUL: per tensor).
register_layer(
    L.RMSNormalization,
    params={"scale": ParamSpec("weight", None)},
    forward=rms_norm_forward,
    internal=tuple(RMS_NORM_OP_TYPES),
    internal_op_types=RMS_NORM_OP_TYPES,
    decomposed=False,
)
# Attention runs op by op (``transformer.py``): Q/K/V projections, scores, scaled scores,
# softmax probabilities and context each get a quantizer of their op type's rule. The Q/K/V
# kernels are [D, heads, head_dim] (one output channel per (head, head_dim) pair), the output
# kernel [heads, head_dim, D].
register_layer(
    L.MultiHeadAttention,
    params={
        **{
            f"{sub}.{var}": ParamSpec("weight" if var == "kernel" else "bias", (-2, -1))
            for sub in ("_query_dense", "_key_dense", "_value_dense")
            for var in ("kernel", "bias")
        },
        "_output_dense.kernel": ParamSpec("weight", (-1,)),
        "_output_dense.bias": ParamSpec("bias", (-1,)),
    },
    forward=attention_forward,
    internal=tuple(ATTENTION_OP_TYPES),
    internal_op_types=ATTENTION_OP_TYPES,
)
# A class token is concatenated and a position table added to activations: TFLite's CONCATENATION
# and ADD take per-tensor operands, so these tables are per-tensor in every config.
register_layer(ClassToken, params={"token": ParamSpec("weight", None)})
register_layer(PositionEmbedding, params={"embeddings": ParamSpec("weight", None)}, operand_params=("embeddings",))
# A boolean attention mask built from a padding mask: no float tensor, nothing to quantize.
register_layer(PaddingAttentionMask, params={})
for _cls in (
    L.ReLU, L.Activation, L.LeakyReLU, L.ELU, L.Softmax,
    L.Add, L.Subtract, L.Multiply, L.Concatenate, L.Average, L.Maximum, L.Minimum,
    L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
    L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, OpLayer, L.Rescaling, L.Normalization, L.Resizing,
):
    register_layer(_cls, params={})
for _cls in (
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.Flatten, L.Reshape, L.Permute, L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
    L.Cropping1D, L.Cropping2D, L.Cropping3D, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D,
    L.GaussianNoise, L.GaussianDropout, L.Identity, L.RepeatVector, DataMovementOpLayer, L.CenterCrop,
):
    register_layer(_cls, params={}, passthrough=True)
del L, _cls, _names
