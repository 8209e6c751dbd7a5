"""AIMET-compatible hardware (quantsim) configuration.

A hardware configuration says which tensors of a model a target quantizes and how: whether op
inputs / outputs carry a quantizer, whether activations and each parameter type are symmetric,
whether weights are per-channel, which op sequences run fused ("supergroups", only the last
member's output is quantized) and whether the model's own inputs and outputs are quantized.

The file format is AIMET's quantsim config JSON, so configs written for AIMET load unchanged::

    {
      "defaults": {"ops": {"is_output_quantized": "True"},
                   "params": {"is_quantized": "True", "is_symmetric": "True"},
                   "strict_symmetric": "False", "unsigned_symmetric": "True",
                   "per_channel_quantization": "False"},
      "params": {"bias": {"is_quantized": "False"}},
      "op_type": {"Pad": {"is_output_quantized": "False"}},
      "supergroups": [{"op_list": ["Conv", "Relu"]}],
      "model_input": {"is_input_quantized": "True"},
      "model_output": {}
    }

Later, more specific sections override earlier ones:
``defaults < params (per parameter type) < op_type (per ONNX op name)``; supergroups then switch
off the outputs inside a fused chain, and ``model_input`` / ``model_output`` override whatever the
rules say for the model's own input and output tensors. Op types are ONNX op names (``Conv``,
``Gemm``, ``Relu``, ...); :func:`onnx_op_type` maps a Keras layer to its name.

Booleans are the strings ``"True"`` / ``"False"`` as AIMET writes them; real JSON booleans are
accepted too. Keys AIMET accepts but aimet_tf does not act on are validated and then ignored:
``defaults.hw_version``, ``op_type.<op>.encoding_constraints`` and the top-level
``supergroup_pass_list``. Any other unknown key is an error, so a misspelt key never silently
changes nothing. The same holds for names: an op type (in ``op_type`` or a supergroup) must be
one of ``KNOWN_OP_TYPES`` (ONNX's operators plus the few AIMET configs add) and a parameter type
one of ``KNOWN_PARAM_TYPES``; a misspelling such as ``Cnov`` or ``wieght`` is an error that
suggests the nearest known name. ``supported_kernels`` (in ``defaults`` and per op type) are
checked against the simulation's bitwidths when a ``QuantizationSimModel`` is built
(:meth:`HardwareConfig.check_bitwidths`).

Example:
    >>> config = load_config("htp")
    >>> config.op_rule("Conv").params["weight"].per_channel
    True
    >>> config.op_rule("Gemm").params["weight"].per_channel
    False
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
from collections.abc import Mapping
from typing import Any, Iterable


from aimet_tf.graph.catalogue import onnx_op_type  # noqa: F401  (re-exported: configs name layers by it)

__all__ = [
    "PRESETS",
    "HardwareConfig",
    "HardwareConfigError",
    "KNOWN_OP_TYPES",
    "KNOWN_PARAM_TYPES",
    "OpRule",
    "ParamRule",
    "load_config",
    "onnx_op_type",
]

PRESETS: tuple[str, ...] = ("default", "default_fused", "default_per_channel", "htp", "tflite")
"""Names of the built-in configs shipped in ``aimet_tf/quantization/presets/``:

* ``"default"`` (also ``config_file=None``): AIMET's ``default_config.json``, the same content,
  so a sim on it places quantizers exactly as AIMET does: per-tensor symmetric weights,
  asymmetric activations, bias not quantized, outputs of Squeeze / Pad / Mean not quantized,
  supergroups Conv+Relu, Conv+Clip, Add+Relu, Gemm+Relu, model inputs quantized. A
  BatchNormalization that is not folded keeps its own output quantizer (and so does the Conv
  before it), as in AIMET.
* ``"default_fused"``: aimet_tf's richer default: ``"default"`` plus the supergroups
  Conv+BatchNormalization(+Relu / +Clip), Add+Clip and Gemm+Clip (one quantizer after an unfolded
  Conv+BN pair or a ReLU6, as TFLite and HTP run them).
* ``"default_per_channel"``: ``"default_fused"`` with per-channel weights for Conv,
  ConvTranspose, Gemm, MatMul and PRelu.
* ``"htp"``: the Hexagon HTP (v73) flavour; ``"tflite"``: what a TFLite int8 file computes.
"""

_PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")

# Section schemas: keys acted on, and keys AIMET defines that are validated and then ignored.
_TOP_KEYS = frozenset(
    {"defaults", "params", "op_type", "supergroups", "model_input", "model_output"}
)
_TOP_IGNORED = frozenset({"supergroup_pass_list"})
_DEFAULTS_KEYS = frozenset(
    {
        "ops",
        "params",
        "strict_symmetric",
        "unsigned_symmetric",
        "per_channel_quantization",
        "supported_kernels",
    }
)
_DEFAULTS_IGNORED = frozenset({"hw_version"})
_OPS_KEYS = frozenset({"is_input_quantized", "is_output_quantized", "is_symmetric"})
_PARAM_KEYS = frozenset({"is_quantized", "is_symmetric"})
_OP_TYPE_KEYS = frozenset(
    {
        "is_input_quantized",
        "is_output_quantized",
        "is_symmetric",
        "per_channel_quantization",
        "params",
        "supported_kernels",
        "is_decomposed",
    }
)
_OP_TYPE_IGNORED = frozenset({"encoding_constraints"})
_SUPERGROUP_KEYS = frozenset({"op_list"})
_MODEL_INPUT_KEYS = frozenset({"is_input_quantized"})
_MODEL_OUTPUT_KEYS = frozenset({"is_output_quantized"})
_KERNEL_KEYS = frozenset({"activation", "param"})
_KERNEL_SIDE_KEYS = frozenset({"bitwidth", "dtype"})
_KERNEL_BITWIDTHS = (4, 8, 16, 32)
_KERNEL_DTYPES = ("int", "float")

# Values used when no section of the config sets a key. They follow AIMET: a quantizer that no
# rule enables stays off, encodings are asymmetric unless asked, and unsigned symmetric is on.
_FALLBACK_INPUT_QUANTIZED = False
_FALLBACK_OUTPUT_QUANTIZED = False
_FALLBACK_ACT_SYMMETRIC = False
_FALLBACK_PARAM_QUANTIZED = False
_FALLBACK_PARAM_SYMMETRIC = False
_FALLBACK_PER_CHANNEL = False
_FALLBACK_STRICT_SYMMETRIC = False
_FALLBACK_UNSIGNED_SYMMETRIC = True

# Parameter types every OpRule describes, whether or not the config names them.
_BASE_PARAM_TYPES = ("weight", "bias")

KNOWN_PARAM_TYPES: frozenset[str] = frozenset(
    {
        *_BASE_PARAM_TYPES,
        # Keras' names of normalization / PReLU variables, and PyTorch's names that AIMET
        # configs written for aimet_torch use for the same tensors.
        "gamma", "beta", "moving_mean", "moving_variance", "alpha",
        "running_mean", "running_var",
    }
)
"""Parameter type names a config may use in ``params`` and ``op_type.<op>.params``."""

KNOWN_OP_TYPES: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
    BatchNormalization Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor
    BlackmanWindow Cast CastLike Ceil Celu CenterCropPad Clip Col2Im Compress Concat
    ConcatFromSequence Constant ConstantOfShape Conv ConvInteger ConvTranspose Cos Cosh CumSum
    DFT DeformConv DepthToSpace DequantizeLinear Det Div Dropout DynamicQuantizeLinear Einsum Elu
    Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm
    GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
    GroupNormalization HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
    InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less LessOrEqual Log
    LogSoftmax Loop LpNormalization LpPool MatMul MatMulInteger Max MaxPool MaxRoiPool MaxUnpool
    Mean MeanVarianceNormalization MelWeightMatrix Min Mish Mod Mul Multinomial Neg
    NonMaxSuppression NonZero Not OneHot Or PRelu Pad Pow QLinearConv QLinearMatMul
    QuantizeLinear RMSNormalization RNN RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
    ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    ReverseSequence RoiAlign RotaryEmbedding Round STFT Scan Scatter ScatterElements ScatterND
    Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth
    Split Sqrt Squeeze Sub Sum Swish Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unique
    Unsqueeze Upsample Where Xor
    BatchPermutation BatchToSpace ChannelShuffle CropAndResize SpaceToBatch MultiHeadAttention
    """.split()
)
"""Op type names a config may use: ONNX's operators, the non-ONNX names AIMET's own configs use
(``BatchPermutation``, ``ChannelShuffle``, ``CropAndResize``, ``BatchToSpace``,
``SpaceToBatch``) and ``MultiHeadAttention`` (see :func:`onnx_op_type`)."""


class HardwareConfigError(ValueError):
    """A hardware config is malformed: wrong type, unknown key or invalid supergroup."""


@dataclasses.dataclass(frozen=True)
class ParamRule:
    """How one parameter type (``"weight"``, ``"bias"``, ...) of an op is quantized.

    Attributes:
        quantized: Whether the parameter gets a quantizer at all.
        symmetric: Whether its encoding is symmetric (offset fixed at ``-2^(b-1)``).
        per_channel: Whether it gets one encoding per output channel instead of one per tensor.
    """

    quantized: bool
    symmetric: bool
    per_channel: bool


@dataclasses.dataclass(frozen=True)
class OpRule:
    """The resolved quantization rule for one op type.

    Attributes:
        input_quantized: Whether the op's inputs get quantizers.
        output_quantized: Whether the op's outputs get quantizers (before supergroups and
            ``model_output`` are applied).
        symmetric: Whether the op's activation encodings are symmetric.
        params: Rule per parameter type. Always holds ``"weight"`` and ``"bias"``, plus every
            parameter type the config names in ``params`` or in this op's ``op_type`` entry.
        default_param: The rule for a parameter type the config never names (``defaults.params``
            with this op's per-channel setting); ``None`` only for hand-built rules.
        decomposed: aimet_tf's ``is_decomposed`` key (not AIMET's): True to simulate a layer of
            this op type as the ops a target without a kernel for it runs, each intermediate
            tensor with its own quantizer (a LayerNormalization as MEAN, SUB, MUL, RSQRT...: the
            tensors are listed in the layer's registry entry, ``LayerSpec.internal``), False to
            quantize it as one op, None (key absent) for the layer's registered default.
    """

    input_quantized: bool
    output_quantized: bool
    symmetric: bool
    params: Mapping[str, ParamRule]
    default_param: ParamRule | None = None
    decomposed: bool | None = None

    def __post_init__(self) -> None:
        # A read-only view keeps the frozen rule from being changed through its mapping.
        object.__setattr__(self, "params", types.MappingProxyType(dict(self.params)))

    def __hash__(self) -> int:
        return hash(
            (
                self.input_quantized,
                self.output_quantized,
                self.symmetric,
                tuple(sorted(self.params.items())),
                self.default_param,
                self.decomposed,
            )
        )

    def param_rule(self, param_type: str) -> ParamRule:
        """Returns the rule for ``param_type``, falling back to the op's default param rule.

        Args:
            param_type: A parameter type name such as ``"weight"``, ``"bias"`` or ``"gamma"``.

        Returns:
            ``params[param_type]`` when the config names it, else ``default_param``.

        Raises:
            KeyError: If the type is not named and the rule has no ``default_param``.
        """
        if param_type in self.params:
            return self.params[param_type]
        if self.default_param is None:
            raise KeyError(
                f"No rule for parameter type {param_type!r}. Expected one of "
                f"{sorted(self.params)} or an OpRule built with default_param. "
                f"Received: param_type={param_type!r}"
            )
        return self.default_param


_FALLBACK_PARAM_RULE = ParamRule(
    quantized=_FALLBACK_PARAM_QUANTIZED,
    symmetric=_FALLBACK_PARAM_SYMMETRIC,
    per_channel=_FALLBACK_PER_CHANNEL,
)
_FALLBACK_OP_RULE = OpRule(
    input_quantized=_FALLBACK_INPUT_QUANTIZED,
    output_quantized=_FALLBACK_OUTPUT_QUANTIZED,
    symmetric=_FALLBACK_ACT_SYMMETRIC,
    params={name: _FALLBACK_PARAM_RULE for name in _BASE_PARAM_TYPES},
    default_param=_FALLBACK_PARAM_RULE,
)


@dataclasses.dataclass(frozen=True)
class HardwareConfig:
    """A validated hardware config; build it with :func:`load_config`.

    Attributes:
        strict_symmetric: Symmetric encodings use ``2^b - 2`` steps (grid ``[-127, 127]`` at
            8 bits) instead of ``2^b - 1``.
        unsigned_symmetric: A symmetric encoding of all-non-negative data may use the unsigned
            grid (offset 0).
        supergroups: ONNX op-type sequences that run fused; only the last member's output is
            quantized. Each has at least two entries.
        model_input_quantized: ``model_input.is_input_quantized``: ``True`` / ``False`` force the
            model's input tensors quantized / float; ``None`` (key absent) leaves them to the
            ``is_input_quantized`` rule of the layers that consume them. ``None`` is falsy, so
            ``if config.model_input_quantized:`` reads "forced on".
        model_output_quantized: ``model_output.is_output_quantized`` with the same three states,
            for the model's output tensors.
        supported_kernels: ``(activation_bitwidth, param_bitwidth)`` pairs of the integer
            kernels listed in ``defaults.supported_kernels``, in file order; empty when the
            config lists none. Kernels with a ``float`` dtype are validated and left out.
        default_rule: The rule for an op type with no ``op_type`` entry.
        op_rules: The resolved rule of every op type named in ``op_type``.
        op_supported_kernels: ``op_type.<op>.supported_kernels`` per op type that lists integer
            kernels: ``(activation_bitwidth, param_bitwidth or None)`` pairs, in file order.
    """

    strict_symmetric: bool
    unsigned_symmetric: bool
    supergroups: tuple[tuple[str, ...], ...]
    model_input_quantized: bool | None
    model_output_quantized: bool | None
    supported_kernels: tuple[tuple[int, int], ...]
    default_rule: OpRule = _FALLBACK_OP_RULE
    op_rules: Mapping[str, OpRule] = dataclasses.field(default_factory=dict)
    op_supported_kernels: Mapping[str, tuple[tuple[int, int | None], ...]] = dataclasses.field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        for index, group in enumerate(self.supergroups):
            # A bare string would otherwise split into its characters.
            _check_op_list(group if isinstance(group, str) else list(group),
                           f"supergroups[{index}].op_list")
        supergroups = tuple(tuple(group) for group in self.supergroups)
        kernels = tuple((int(a), int(p)) for a, p in self.supported_kernels)
        object.__setattr__(self, "supergroups", supergroups)
        object.__setattr__(self, "supported_kernels", kernels)
        object.__setattr__(self, "op_rules", types.MappingProxyType(dict(self.op_rules)))
        object.__setattr__(
            self,
            "op_supported_kernels",
            types.MappingProxyType({op: tuple(k) for op, k in self.op_supported_kernels.items()}),
        )

    def __hash__(self) -> int:
        return hash(
            (
                self.strict_symmetric,
                self.unsigned_symmetric,
                self.supergroups,
                self.model_input_quantized,
                self.model_output_quantized,
                self.supported_kernels,
                self.default_rule,
                tuple(sorted(self.op_rules.items())),
                tuple(sorted(self.op_supported_kernels.items())),
            )
        )

    def check_bitwidths(
        self, activation_bitwidth: int, param_bitwidth: int, op_types: Iterable[str | None] = ()
    ) -> None:
        """Checks that the config's ``supported_kernels`` allow a simulation's bitwidths.

        ``defaults.supported_kernels`` must hold ``(activation_bitwidth, param_bitwidth)``, and
        ``op_type.<op>.supported_kernels`` of every op type in ``op_types`` a kernel with that
        activation bitwidth (and that param bitwidth, where the kernel names one). A config that
        lists no integer kernels allows every bitwidth.

        Args:
            activation_bitwidth: the simulation's ``default_output_bw``.
            param_bitwidth: the simulation's ``default_param_bw``.
            op_types: the op types of the model's layers (``None`` entries are skipped).

        Raises:
            HardwareConfigError: naming the kernels listed and the bitwidths received.
        """
        pair = (int(activation_bitwidth), int(param_bitwidth))
        if self.supported_kernels and pair not in self.supported_kernels:
            raise HardwareConfigError(
                "The simulation's bitwidths are not among the config's supported kernels. "
                f"Expected (default_output_bw, default_param_bw) in defaults.supported_kernels "
                f"{list(self.supported_kernels)}. Received: default_output_bw={pair[0]}, "
                f"default_param_bw={pair[1]}. Pass bitwidths the target supports, or fix "
                "supported_kernels in the config."
            )
        for op_type in sorted({op for op in op_types if op in self.op_supported_kernels}):
            kernels = self.op_supported_kernels[op_type]
            if not any(a == pair[0] and p in (None, pair[1]) for a, p in kernels):
                raise HardwareConfigError(
                    f"The model has {op_type!r} layers, whose supported kernels in the config "
                    f"do not include the simulation's bitwidths. Expected a kernel among "
                    f"op_type.{op_type}.supported_kernels {[list(k) for k in kernels]} "
                    f"(activation, param). Received: default_output_bw={pair[0]}, "
                    f"default_param_bw={pair[1]}. Pass bitwidths the target supports, or fix "
                    "the config."
                )

    def op_rule(self, op_type: str | None) -> OpRule:
        """Returns the resolved rule for an ONNX op type.

        Args:
            op_type: An ONNX op name such as ``"Conv"`` (see :func:`onnx_op_type`), or ``None``
                for a layer with no ONNX equivalent.

        Returns:
            The ``op_type`` entry layered over ``defaults`` and ``params``; for ``None`` or an op
            type the config does not name, ``defaults`` and ``params`` alone.
        """
        if op_type is None:
            return self.default_rule
        return self.op_rules.get(op_type, self.default_rule)


def load_config(
    config: str | os.PathLike | Mapping[str, Any] | HardwareConfig | None = None,
    *,
    extra_op_types: Iterable[str] = (),
) -> HardwareConfig:
    """Loads, validates and resolves an AIMET quantsim config.

    Args:
        config: ``None`` or ``"default"`` for AIMET's ``default_config.json`` (per-tensor
            symmetric weights, asymmetric activations, bias not quantized; see ``PRESETS``);
            ``"default_fused"`` for it plus the Conv+BN and Clip supergroups; ``"htp"`` for the Hexagon HTP
            (v73) flavour with per-channel weights; any other string or path-like for a JSON file;
            a mapping for an already parsed config; a ``HardwareConfig`` is returned unchanged.
        extra_op_types: op type names to accept besides ``KNOWN_OP_TYPES`` (custom ops of a
            target); pass the result to ``QuantizationSimModel(..., config_file=...)``.

    Returns:
        The validated, fully resolved config. The input mapping is not modified.

    Raises:
        FileNotFoundError: If ``config`` names neither a preset nor an existing file.
        HardwareConfigError: If the file is not valid JSON, a value has the wrong type, a key, op
            type or parameter type is unknown, or a supergroup's ``op_list`` is not a list of at
            least two strings.
        TypeError: If ``config`` is of none of the accepted types.

    Example:
        >>> rule = load_config().op_rule("Conv")
        >>> rule.params["weight"].symmetric, rule.params["bias"].quantized
        (True, False)
    """
    if isinstance(config, HardwareConfig):
        return config
    if config is None:
        config = "default"
    op_types = KNOWN_OP_TYPES | frozenset(extra_op_types)
    if isinstance(config, (str, os.PathLike)):
        return _resolve(_read_json(config), os.fspath(config), op_types)
    if isinstance(config, Mapping):
        return _resolve(config, "<mapping>", op_types)
    raise TypeError(
        "Expected a preset name "
        f"({', '.join(repr(name) for name in PRESETS)}), a JSON file path, a mapping or a "
        f"HardwareConfig. Received: config={config!r} (type {type(config).__name__})"
    )


def _read_json(config: str | os.PathLike) -> Any:
    path = os.fspath(config)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(config, str) and config in PRESETS:
        path = os.path.join(_PRESET_DIR, f"{config}.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            "Expected a preset name "
            f"({', '.join(repr(name) for name in PRESETS)}) or the path of an existing JSON "
            f"file. Received: config={os.fspath(config)!r}. Check the path, or pass a preset name."
        )
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise HardwareConfigError(
            f"Invalid JSON in hardware config {path!r} at line {error.lineno}, column "
            f"{error.colno}: {error.msg}. Expected a JSON object in AIMET's quantsim config "
            "format. Fix the file at that position."
        ) from error


def _resolve(raw: Any, source: str, op_types: frozenset[str] = KNOWN_OP_TYPES) -> HardwareConfig:
    """Validates every section of ``raw`` and folds the precedence levels into rules."""
    top = _expect_mapping(raw, "<config>", source)
    _check_keys(top, "<config>", _TOP_KEYS, _TOP_IGNORED)

    defaults = _expect_mapping(top.get("defaults", {}), "defaults", source)
    _check_keys(defaults, "defaults", _DEFAULTS_KEYS, _DEFAULTS_IGNORED)
    if "hw_version" in defaults and not isinstance(defaults["hw_version"], str):
        _type_error("defaults.hw_version", "a string such as 'V73'", defaults["hw_version"])

    default_ops = _expect_mapping(defaults.get("ops", {}), "defaults.ops", source)
    _check_keys(default_ops, "defaults.ops", _OPS_KEYS)
    default_params = _expect_mapping(defaults.get("params", {}), "defaults.params", source)
    _check_keys(default_params, "defaults.params", _PARAM_KEYS)

    input_quantized = _bool(default_ops, "is_input_quantized", "defaults.ops",
                            _FALLBACK_INPUT_QUANTIZED)
    output_quantized = _bool(default_ops, "is_output_quantized", "defaults.ops",
                             _FALLBACK_OUTPUT_QUANTIZED)
    act_symmetric = _bool(default_ops, "is_symmetric", "defaults.ops", _FALLBACK_ACT_SYMMETRIC)
    param_quantized = _bool(default_params, "is_quantized", "defaults.params",
                            _FALLBACK_PARAM_QUANTIZED)
    param_symmetric = _bool(default_params, "is_symmetric", "defaults.params",
                            _FALLBACK_PARAM_SYMMETRIC)
    per_channel = _bool(defaults, "per_channel_quantization", "defaults", _FALLBACK_PER_CHANNEL)
    strict_symmetric = _bool(defaults, "strict_symmetric", "defaults",
                             _FALLBACK_STRICT_SYMMETRIC)
    unsigned_symmetric = _bool(defaults, "unsigned_symmetric", "defaults",
                               _FALLBACK_UNSIGNED_SYMMETRIC)
    supported_kernels = _kernels(defaults.get("supported_kernels"), "defaults.supported_kernels",
                                 param_required=True)

    # Level 2: per parameter type, over defaults.params.
    param_sections = _expect_mapping(top.get("params", {}), "params", source)
    typed_params: dict[str, tuple[bool, bool]] = {}
    for param_type, section in param_sections.items():
        where = f"params.{param_type}"
        _check_name(param_type, KNOWN_PARAM_TYPES, "params", "parameter type")
        section = _expect_mapping(section, where, source)
        _check_keys(section, where, _PARAM_KEYS)
        typed_params[param_type] = (
            _bool(section, "is_quantized", where, param_quantized),
            _bool(section, "is_symmetric", where, param_symmetric),
        )

    def param_rules(
        overrides: Mapping[str, Any], where: str, op_per_channel: bool
    ) -> tuple[dict[str, ParamRule], ParamRule]:
        fallback = ParamRule(param_quantized, param_symmetric, op_per_channel)
        names = list(_BASE_PARAM_TYPES)
        names += [name for name in typed_params if name not in names]
        for name in overrides:
            _check_name(name, KNOWN_PARAM_TYPES, where, "parameter type")
        names += [name for name in overrides if name not in names]
        rules = {}
        for name in names:
            quantized, symmetric = typed_params.get(name, (param_quantized, param_symmetric))
            if name in overrides:
                # Level 3: op_type.<op>.params.<name>, over the per-type rule.
                section_where = f"{where}.{name}"
                section = _expect_mapping(overrides[name], section_where, source)
                _check_keys(section, section_where, _PARAM_KEYS)
                quantized = _bool(section, "is_quantized", section_where, quantized)
                symmetric = _bool(section, "is_symmetric", section_where, symmetric)
            rules[name] = ParamRule(quantized, symmetric, op_per_channel)
        return rules, fallback

    base_params, base_fallback = param_rules({}, "params", per_channel)
    default_rule = OpRule(input_quantized, output_quantized, act_symmetric, base_params,
                          base_fallback)

    # Level 3: per ONNX op type.
    op_sections = _expect_mapping(top.get("op_type", {}), "op_type", source)
    op_rules: dict[str, OpRule] = {}
    op_kernels: dict[str, tuple[tuple[int, int | None], ...]] = {}
    for op_type, section in op_sections.items():
        where = f"op_type.{op_type}"
        _check_name(op_type, op_types, "op_type", "op type")
        section = _expect_mapping(section, where, source)
        _check_keys(section, where, _OP_TYPE_KEYS, _OP_TYPE_IGNORED)
        if "encoding_constraints" in section:
            _check_encoding_constraints(section["encoding_constraints"],
                                        f"{where}.encoding_constraints", source)
        kernels = _kernels(section.get("supported_kernels"), f"{where}.supported_kernels",
                           param_required=False)
        if kernels:
            op_kernels[op_type] = kernels
        op_per_channel = _bool(section, "per_channel_quantization", where, per_channel)
        overrides = _expect_mapping(section.get("params", {}), f"{where}.params", source)
        rules, fallback = param_rules(overrides, f"{where}.params", op_per_channel)
        op_rules[op_type] = OpRule(
            input_quantized=_bool(section, "is_input_quantized", where, input_quantized),
            output_quantized=_bool(section, "is_output_quantized", where, output_quantized),
            symmetric=_bool(section, "is_symmetric", where, act_symmetric),
            params=rules,
            default_param=fallback,
            decomposed=_bool(section, "is_decomposed", where, None),
        )

    supergroups = _supergroups(top.get("supergroups", []), source, op_types)
    if "supergroup_pass_list" in top:
        _check_string_list(top["supergroup_pass_list"], "supergroup_pass_list")

    model_input = _expect_mapping(top.get("model_input", {}), "model_input", source)
    _check_keys(model_input, "model_input", _MODEL_INPUT_KEYS)
    model_output = _expect_mapping(top.get("model_output", {}), "model_output", source)
    _check_keys(model_output, "model_output", _MODEL_OUTPUT_KEYS)

    return HardwareConfig(
        strict_symmetric=strict_symmetric,
        unsigned_symmetric=unsigned_symmetric,
        supergroups=supergroups,
        model_input_quantized=_bool(model_input, "is_input_quantized", "model_input", None),
        model_output_quantized=_bool(model_output, "is_output_quantized", "model_output", None),
        supported_kernels=supported_kernels,
        default_rule=default_rule,
        op_rules=op_rules,
        op_supported_kernels=op_kernels,
    )


def _type_error(where: str, expected: str, value: Any) -> None:
    raise HardwareConfigError(
        f"Wrong type at {where}. Expected {expected}. Received: {where}={value!r} "
        f"(type {type(value).__name__}). Fix this value in the config."
    )


def _expect_mapping(value: Any, where: str, source: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _type_error(where, f"a JSON object (in {source})", value)
    for key in value:
        if not isinstance(key, str):
            _type_error(f"{where} key", "string keys", key)
    return value


def _check_keys(
    section: Mapping[str, Any],
    where: str,
    allowed: frozenset[str],
    ignored: frozenset[str] = frozenset(),
) -> None:
    unknown = [key for key in section if key not in allowed and key not in ignored]
    if unknown:
        raise HardwareConfigError(
            f"Unknown key {unknown[0]!r} in {where}. Expected keys among "
            f"{sorted(allowed | ignored)}. Received: keys={sorted(section)}. Check the spelling "
            "against AIMET's quantsim config format."
        )


_NAME_HELP = {
    "op type": (
        "an ONNX op name as AIMET configs use them, such as 'Conv', 'Gemm', 'Add', 'Relu' "
        "(the list: aimet_tf.quantization.config.KNOWN_OP_TYPES)",
        "If the name is right (a custom op of your target), load the config with "
        "load_config(config, extra_op_types=[name]) and pass the result as config_file.",
    ),
    "parameter type": (
        f"one of {sorted(KNOWN_PARAM_TYPES)}",
        "",
    ),
}


def _check_name(name: str, known: frozenset[str], where: str, kind: str) -> None:
    """Raises for an op / parameter type name that is not in ``known``, suggesting the nearest."""
    if name in known:
        return
    by_lower = {k.lower(): k for k in known}
    close = [by_lower[name.lower()]] if name.lower() in by_lower else []
    close += [by_lower[m] for m in difflib.get_close_matches(name.lower(), by_lower, n=3, cutoff=0.6)]
    close = list(dict.fromkeys(close))
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    expected, escape = _NAME_HELP[kind]
    raise HardwareConfigError(
        f"Unknown {kind} {name!r} in {where}. Expected {expected}. Received: {name!r}.{hint} "
        f"Check the spelling. {escape}".rstrip()
    )


def _bool(section: Mapping[str, Any], key: str, where: str, fallback: Any) -> Any:
    if key not in section:
        return fallback
    value = section[key]
    # bool is checked by identity of type so that 0 / 1 are not taken for False / True.
    if type(value) is bool:
        return value
    if value == "True":
        return True
    if value == "False":
        return False
    raise HardwareConfigError(
        f'Wrong value at {where}.{key}. Expected "True" or "False" (a JSON boolean also works). '
        f"Received: {where}.{key}={value!r}. Write the value as \"True\" or \"False\"."
    )


def _check_string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        _type_error(where, "a JSON list of op type strings", value)
    for index, entry in enumerate(value):
        if not isinstance(entry, str) or not entry:
            _type_error(f"{where}[{index}]", "a non-empty op type string such as 'Conv'", entry)
    return value


def _check_op_list(value: Any, where: str) -> tuple[str, ...]:
    ops = _check_string_list(value, where)
    if len(ops) < 2:
        raise HardwareConfigError(
            f"Supergroup at {where} is too short. Expected at least 2 op types (a supergroup "
            f"fuses a sequence). Received: {where}={ops!r}. Add the following op type or "
            "remove the supergroup."
        )
    return tuple(ops)


def _supergroups(value: Any, source: str, op_types: frozenset[str]) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list):
        _type_error("supergroups", 'a JSON list of {"op_list": [...]} objects', value)
    groups = []
    for index, entry in enumerate(value):
        where = f"supergroups[{index}]"
        entry = _expect_mapping(entry, where, source)
        _check_keys(entry, where, _SUPERGROUP_KEYS)
        if "op_list" not in entry:
            raise HardwareConfigError(
                f"Missing key 'op_list' in {where}. Expected an object like "
                f'{{"op_list": ["Conv", "Relu"]}}. Received: {where}={dict(entry)!r}'
            )
        ops = _check_op_list(entry["op_list"], f"{where}.op_list")
        for index_in_group, op_type in enumerate(ops):
            _check_name(op_type, op_types, f"{where}.op_list[{index_in_group}]", "op type")
        groups.append(ops)
    return tuple(groups)


def _kernels(value: Any, where: str, param_required: bool) -> tuple[tuple[int, int | None], ...]:
    """The integer kernels listed at ``where`` as (activation, param or None) bitwidth pairs."""
    if value is None:
        return ()
    if not isinstance(value, list):
        _type_error(where, 'a JSON list of {"activation": ..., "param": ...} objects', value)
    pairs = []
    for index, kernel in enumerate(value):
        kernel_where = f"{where}[{index}]"
        if not isinstance(kernel, Mapping):
            _type_error(kernel_where, "a JSON object", kernel)
        _check_keys(kernel, kernel_where, _KERNEL_KEYS)
        required = ("activation", "param") if param_required else ("activation",)
        for side in required:
            if side not in kernel:
                raise HardwareConfigError(
                    f"Missing key {side!r} in {kernel_where}. Expected an object like "
                    '{"activation": {"bitwidth": 8, "dtype": "int"}, '
                    '"param": {"bitwidth": 8, "dtype": "int"}}. '
                    f"Received: {kernel_where}={dict(kernel)!r}"
                )
        sides = {}
        for side in ("activation", "param"):
            if side not in kernel:
                continue
            side_where = f"{kernel_where}.{side}"
            spec = kernel[side]
            if not isinstance(spec, Mapping):
                _type_error(side_where, "a JSON object", spec)
            _check_keys(spec, side_where, _KERNEL_SIDE_KEYS)
            bitwidth, dtype = spec.get("bitwidth"), spec.get("dtype")
            if type(bitwidth) is not int or bitwidth not in _KERNEL_BITWIDTHS:
                _type_error(f"{side_where}.bitwidth", f"one of {list(_KERNEL_BITWIDTHS)}",
                            bitwidth)
            if dtype not in _KERNEL_DTYPES:
                _type_error(f"{side_where}.dtype", f"one of {list(_KERNEL_DTYPES)}", dtype)
            sides[side] = (bitwidth, dtype)
        # Only integer kernels describe a grid aimet_tf simulates.
        if all(dtype == "int" for _, dtype in sides.values()):
            pairs.append((sides["activation"][0], sides["param"][0] if "param" in sides else None))
    return tuple(pairs)


def _check_encoding_constraints(value: Any, where: str, source: str) -> None:
    section = _expect_mapping(value, where, source)
    _check_keys(section, where, frozenset({"min", "max"}))
    for key, number in section.items():
        if type(number) not in (int, float):
            _type_error(f"{where}.{key}", "a number", number)
