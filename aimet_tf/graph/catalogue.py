"""The layer catalogue: what each Keras layer class is, for every pass, in one place.

* :func:`onnx_op_type`: the AIMET/ONNX op type a hardware config names a layer by;
* :data:`OUTPUT_CHANNEL_AXIS` / :func:`output_channel_axis`: the kernel axis of the layer's output
  channels (what a batch norm after the layer scales, what per-channel quantization splits);
* :data:`INPUT_CHANNEL_AXIS` / :func:`input_channel_axis`: the kernel axis of the layer's input
  channels (what a batch norm before the layer scales);
* :func:`bn_folds_forward` / :func:`bn_folds_backward`: whether a batch norm right after / right
  before the layer can be folded into its weights;
* :func:`activation_kind`: whether a layer is an activation, and whether it acts per channel
  (ReLU, sigmoid...) or across channels (softmax);
* :func:`commutes_with_channel_scaling`: activations ``f`` with ``f(s * x) = s * f(x)`` for every
  positive per-channel ``s`` (what cross-layer equalization may scale through).

Example:
    >>> onnx_op_type(keras.layers.ReLU(max_value=6.0)), output_channel_axis(keras.layers.Conv2DTranspose(4, 3))
    ('Clip', -2)
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import keras

from aimet_tf.graph.op_layer import OpLayer
from aimet_tf.layers import ClassToken, PositionEmbedding

__all__ = [
    "INPUT_CHANNEL_AXIS",
    "OUTPUT_CHANNEL_AXIS",
    "activation_kind",
    "bn_folds_backward",
    "bn_folds_forward",
    "commutes_with_channel_scaling",
    "input_channel_axis",
    "onnx_op_type",
    "output_channel_axis",
]

# --- Keras layer -> ONNX op type -----------------------------------------------------------------

_L = keras.layers

# Ordered (classes, ONNX op) table; Keras 3's layer classes here do not subclass one another,
# so the order only matters for user subclasses that inherit from several of them.
_LAYER_OP_TYPES: tuple[tuple[tuple[type, ...], str], ...] = (
    ((_L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose), "ConvTranspose"),
    (
        (
            _L.Conv1D, _L.Conv2D, _L.Conv3D,
            _L.DepthwiseConv1D, _L.DepthwiseConv2D,
            _L.SeparableConv1D, _L.SeparableConv2D,
        ),
        "Conv",
    ),
    ((_L.Dense,), "Gemm"),
    ((_L.BatchNormalization,), "BatchNormalization"),
    # ONNX before opset 23 has no RMSNormalization: a config addresses both norms by this name.
    ((_L.LayerNormalization, _L.RMSNormalization), "LayerNormalization"),
    ((_L.GroupNormalization,), "GroupNormalization"),
    ((_L.LeakyReLU,), "LeakyRelu"),
    ((_L.PReLU,), "PRelu"),
    ((_L.ELU,), "Elu"),
    ((_L.Softmax,), "Softmax"),
    ((_L.Add,), "Add"),
    ((_L.Subtract,), "Sub"),
    ((_L.Multiply,), "Mul"),
    ((_L.Concatenate,), "Concat"),
    ((_L.Average,), "Mean"),
    ((_L.Maximum,), "Max"),
    ((_L.Minimum,), "Min"),
    ((_L.MaxPooling1D, _L.MaxPooling2D, _L.MaxPooling3D), "MaxPool"),
    ((_L.AveragePooling1D, _L.AveragePooling2D, _L.AveragePooling3D), "AveragePool"),
    (
        (_L.GlobalAveragePooling1D, _L.GlobalAveragePooling2D, _L.GlobalAveragePooling3D),
        "GlobalAveragePool",
    ),
    ((_L.GlobalMaxPooling1D, _L.GlobalMaxPooling2D, _L.GlobalMaxPooling3D), "GlobalMaxPool"),
    ((_L.Flatten,), "Flatten"),
    ((_L.Reshape,), "Reshape"),
    ((_L.Permute,), "Transpose"),
    ((_L.ZeroPadding1D, _L.ZeroPadding2D, _L.ZeroPadding3D), "Pad"),
    ((_L.UpSampling1D, _L.UpSampling2D, _L.UpSampling3D), "Resize"),
    ((_L.Dropout,), "Dropout"),
    ((_L.Embedding,), "Gather"),
    ((_L.MultiHeadAttention,), "MultiHeadAttention"),
    ((_L.Identity,), "Identity"),
    ((ClassToken,), "Concat"),
    ((PositionEmbedding,), "Add"),
)

# Activation function __name__ -> ONNX op. Keras resolves aliases to one function, so "swish"
# arrives as "silu" and "hard_swish" as "hard_silu".
_ACTIVATION_OP_TYPES: Mapping[str, str] = types.MappingProxyType(
    {
        "relu": "Relu",
        # ONNX has no Relu6: exporters write it as Clip(0, 6).
        "relu6": "Clip",
        "sigmoid": "Sigmoid",
        "tanh": "Tanh",
        "softmax": "Softmax",
        "log_softmax": "LogSoftmax",
        "leaky_relu": "LeakyRelu",
        "elu": "Elu",
        "selu": "Selu",
        "gelu": "Gelu",
        "softplus": "Softplus",
        "softsign": "Softsign",
        "hard_sigmoid": "HardSigmoid",
        "hard_silu": "HardSwish",
        "exponential": "Exp",
        "linear": "Identity",
    }
)

# keras.ops called on symbolic tensors (``x + y``, ``keras.ops.relu(x)``) become graph nodes that
# are Operations, not Layers; these are matched by module and class name.
_KERAS_OP_TYPES: Mapping[tuple[str, str], str] = types.MappingProxyType(
    {
        ("keras.src.ops.numpy", "Add"): "Add",
        ("keras.src.ops.numpy", "Subtract"): "Sub",
        ("keras.src.ops.numpy", "Multiply"): "Mul",
        ("keras.src.ops.numpy", "Divide"): "Div",
        ("keras.src.ops.numpy", "TrueDivide"): "Div",
        ("keras.src.ops.numpy", "Matmul"): "MatMul",
        ("keras.src.ops.numpy", "Concatenate"): "Concat",
        ("keras.src.ops.numpy", "Reshape"): "Reshape",
        ("keras.src.ops.numpy", "Transpose"): "Transpose",
        ("keras.src.ops.numpy", "Tanh"): "Tanh",
        ("keras.src.ops.nn", "Relu"): "Relu",
        ("keras.src.ops.nn", "Relu6"): "Clip",
        ("keras.src.ops.nn", "Sigmoid"): "Sigmoid",
        ("keras.src.ops.nn", "Softmax"): "Softmax",
        ("keras.src.ops.nn", "LeakyRelu"): "LeakyRelu",
        ("keras.src.ops.nn", "HardSigmoid"): "HardSigmoid",
        ("keras.src.ops.nn", "HardSilu"): "HardSwish",
    }
)


def onnx_op_type(layer: keras.layers.Layer | keras.Operation) -> str | None:
    """Returns the ONNX op name that AIMET configs use for a Keras layer.

    The mapping is by class (``isinstance``, so subclasses map like their base):

    * ``Conv1D/2D/3D``, ``DepthwiseConv1D/2D``, ``SeparableConv1D/2D`` -> ``"Conv"``;
      ``Conv*Transpose`` -> ``"ConvTranspose"``; ``Dense`` -> ``"Gemm"``. A built-in
      ``activation=`` does not change the type: it runs inside the layer.
    * ``ReLU()`` -> ``"Relu"``; ``ReLU(max_value=m)`` -> ``"Clip"`` (ONNX exports ReLU6 as Clip);
      ``ReLU(negative_slope=a)`` and ``LeakyReLU`` -> ``"LeakyRelu"``; a ReLU with a threshold,
      or with both a slope and a maximum, has no single ONNX op -> ``None``. ``PReLU`` ->
      ``"PRelu"``, ``ELU`` -> ``"Elu"``, ``Softmax`` -> ``"Softmax"``.
    * ``Activation`` layers map by their function: relu -> ``"Relu"``, relu6 -> ``"Clip"``,
      sigmoid / tanh / softmax -> ``"Sigmoid"`` / ``"Tanh"`` / ``"Softmax"``, hard_silu (alias
      hard_swish) -> ``"HardSwish"``, and leaky_relu, elu, selu, gelu, softplus, softsign,
      hard_sigmoid, exponential, log_softmax, linear (``"Identity"``) likewise; custom callables
      -> ``None``.
    * ``Add`` / ``Subtract`` / ``Multiply`` / ``Concatenate`` / ``Average`` / ``Maximum`` /
      ``Minimum`` -> ``"Add"`` / ``"Sub"`` / ``"Mul"`` / ``"Concat"`` / ``"Mean"`` / ``"Max"`` /
      ``"Min"``.
    * ``MaxPooling*D`` -> ``"MaxPool"``, ``AveragePooling*D`` -> ``"AveragePool"``,
      ``GlobalAveragePooling*D`` -> ``"GlobalAveragePool"``, ``GlobalMaxPooling*D`` ->
      ``"GlobalMaxPool"``.
    * ``RMSNormalization`` -> ``"LayerNormalization"`` (one config entry decomposes both norms).
    * ``BatchNormalization``, ``LayerNormalization``, ``GroupNormalization``, ``Flatten``,
      ``Reshape``, ``Dropout`` (and ``SpatialDropout*``) map to the same name; ``Permute`` ->
      ``"Transpose"``, ``ZeroPadding*D`` -> ``"Pad"``, ``UpSampling*D`` -> ``"Resize"``,
      ``Embedding`` -> ``"Gather"``, ``Identity`` -> ``"Identity"``; aimet_tf's ``ClassToken`` ->
      ``"Concat"`` and ``PositionEmbedding`` -> ``"Add"`` (what they compute).
    * ``MultiHeadAttention`` -> ``"MultiHeadAttention"``. ONNX has no such single op (exporters
      write MatMul / Softmax / Reshape subgraphs); the name lets a config address the layer as a
      whole in ``op_type``.
    * ``keras.ops`` calls recorded in a functional graph (``x + y``, ``keras.ops.relu(x)``) map
      to their ONNX op (``"Add"``, ``"Relu"``, ...).
    * Anything else, including nested models and ``InputLayer`` -> ``None``.

    Args:
        layer: A Keras layer, or a ``keras.Operation`` node of a functional graph.

    Returns:
        The ONNX op name, or ``None`` when the layer has no single ONNX equivalent.

    Example:
        >>> onnx_op_type(keras.layers.ReLU(max_value=6.0))
        'Clip'
    """
    if isinstance(layer, OpLayer):
        return _KERAS_OP_TYPES.get((layer.op_module, layer.op_class))
    if isinstance(layer, _L.Activation):
        return _activation_op_type(layer.activation)
    if isinstance(layer, _L.ReLU):
        return _relu_op_type(layer)
    for classes, op_type in _LAYER_OP_TYPES:
        if isinstance(layer, classes):
            return op_type
    if isinstance(layer, _L.Layer):
        return None
    cls = type(layer)
    return _KERAS_OP_TYPES.get((cls.__module__, cls.__name__))


def _activation_op_type(activation: Any) -> str | None:
    if isinstance(activation, (_L.Layer, keras.Operation)):
        return onnx_op_type(activation)
    return _ACTIVATION_OP_TYPES.get(getattr(activation, "__name__", None))


def _relu_op_type(layer: keras.layers.ReLU) -> str | None:
    if float(layer.threshold) != 0.0:
        return None
    has_slope = float(layer.negative_slope) != 0.0
    has_max = layer.max_value is not None
    if has_slope and has_max:
        return None
    if has_slope:
        return "LeakyRelu"
    if has_max:
        return "Clip"
    return "Relu"


# --- output channels and batch-norm folding ----------------------------------------------------

# Layer class -> axis of its (last) kernel that holds the output channels. Depthwise kernels
# [k.., in, mult] carry one output channel per (in, mult) pair: None marks that layout.
OUTPUT_CHANNEL_AXIS: Mapping[type, int | None] = types.MappingProxyType({
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
})

# Layer class -> axis of its (first) kernel that holds the input channels: what a batch norm
# *before* the layer scales when it folds into it. A separable conv's first kernel is its
# depthwise kernel [k.., in, mult]; transposed conv kernels are [k.., out, in].
INPUT_CHANNEL_AXIS: Mapping[type, int] = types.MappingProxyType({
    _L.Conv1D: -2,
    _L.Conv2D: -2,
    _L.Conv3D: -2,
    _L.Dense: -2,
    _L.DepthwiseConv1D: -2,
    _L.DepthwiseConv2D: -2,
    _L.SeparableConv1D: -2,
    _L.SeparableConv2D: -2,
    _L.Conv1DTranspose: -1,
    _L.Conv2DTranspose: -1,
    _L.Conv3DTranspose: -1,
})


def output_channel_axis(layer: Any) -> int | None:
    """The kernel axis of ``layer``'s output channels (None: depthwise [k.., in, mult] layout).

    Raises:
        KeyError: for a layer class without a kernel in the catalogue.
    """
    return _kernel_axis(OUTPUT_CHANNEL_AXIS, layer, "output")


def bn_folds_forward(layer: Any) -> bool:
    """Whether a batch norm reading only ``layer``'s output can be folded into ``layer``."""
    return isinstance(layer, tuple(OUTPUT_CHANNEL_AXIS))


def input_channel_axis(layer: Any) -> int:
    """The axis of ``layer``'s (first) kernel that holds its input channels: -2, or -1 for
    transposed convs (kernels [k.., out, in]); a separable conv's first kernel is the depthwise one.

    Raises:
        KeyError: for a layer class without a kernel in the catalogue.
    """
    return _kernel_axis(INPUT_CHANNEL_AXIS, layer, "input")


def _kernel_axis(table: Mapping[type, int | None], layer: Any, channels: str) -> int | None:
    for cls in type(layer).__mro__:
        if cls in table:
            return table[cls]
    raise KeyError(
        f"Layer {getattr(layer, 'name', layer)!r} ({type(layer).__name__}) has no kernel with {channels} channels. "
        f"Expected one of {sorted(c.__name__ for c in table)}."
    )


def bn_folds_backward(layer: Any) -> bool:
    """Whether ``layer``'s class can take a batch norm that feeds only it into its kernel and bias.

    The class is necessary, not sufficient: the fold is exact only where a constant input adds the
    same amount to every output pixel, which the caller checks on the layer's padding, kernel and
    strides (``aimet_tf.ptq.find_backward_foldable_pairs``).
    """
    return isinstance(layer, tuple(INPUT_CHANNEL_AXIS))


# --- activations --------------------------------------------------------------------------------

_CROSS_CHANNEL = frozenset({"softmax", "log_softmax"})
_ACTIVATION_CLASSES = (_L.ReLU, _L.LeakyReLU, _L.ELU, _L.PReLU, _L.Softmax, _L.Activation)


def _activation_name(activation: Any) -> str:
    return getattr(activation, "__name__", type(activation).__name__)


def activation_kind(layer: Any) -> str | None:
    """``"channelwise"``, ``"cross_channel"`` (softmax) or None (not an activation layer).

    ``Activation("linear")`` is not an activation (it computes nothing).
    """
    if not isinstance(layer, _ACTIVATION_CLASSES):
        return None
    if isinstance(layer, _L.Softmax):
        return "cross_channel"
    if isinstance(layer, _L.Activation):
        name = _activation_name(layer.activation)
        if name == "linear":
            return None
        return "cross_channel" if name in _CROSS_CHANNEL else "channelwise"
    return "channelwise"


def commutes_with_channel_scaling(layer: Any) -> bool:
    """Whether ``f(s * x) == s * f(x)`` for every positive per-channel scale ``s``.

    True for a plain ReLU (no maximum, no threshold), LeakyReLU, PReLU, and ``Activation`` of
    relu / leaky_relu / linear. ReLU6 is not (its clip point does not scale); cross-layer
    equalization replaces it by ReLU first, as AIMET does.
    """
    if isinstance(layer, _L.ReLU):
        return float(layer.threshold) == 0.0 and layer.max_value is None
    if isinstance(layer, (_L.LeakyReLU, _L.PReLU)):
        return True
    if isinstance(layer, _L.Activation):
        return _activation_name(layer.activation) in ("relu", "leaky_relu", "linear")
    return False
