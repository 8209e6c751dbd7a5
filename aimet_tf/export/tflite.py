"""Full-integer TFLite export of a calibrated quantization simulation.

The simulation's quantizers are TF fake-quant ops, which TF's own TFLite converter turns into
integer tensors: the exported model uses the simulation's encodings exactly as they are (no
representative data set, no re-calibration by the converter). What the converter sees is
``sim.model`` itself, with two export-only adjustments that leave every number unchanged:

* ``Requantizer`` layers (which model a kernel's fixed-point rounding in the simulation) are
  switched off: in the .tflite file the kernel does that rounding itself.
* Weights with fewer than 8 bits on ops whose TFLite kernels take no int4 filters here
  (DEPTHWISE_CONV_2D fails to load in LiteRT 2.3, TRANSPOSE_CONV fails to convert) are stored
  as int8 holding the same low-bit grid (the integers stay in [-2^(b-1), 2^(b-1) - 1]).
  4-bit Conv2D / Dense weights are packed as int4 (``converter._experimental_low_bit_qat``).

Example:
    >>> model = prepare_model_for_tflite(float_model)
    >>> sim = QuantizationSimModel(model, config_file=TFLITE_CONFIG, default_param_bw=4)
    >>> sim.compute_encodings(calibration_images)
    >>> export_tflite(sim, "model_w4a8.tflite", input_type="int8")
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import warnings
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.python.framework import convert_to_constants

from aimet_tf import files
from aimet_tf.layers import ClassToken
from aimet_tf.export.prepare import has_int8_constants as _has_int8_constants
from aimet_tf.export.prepare import kernel_target_of, prepare_sim_for_tflite, set_undelegated_layers
from aimet_tf.quantization import primitives
from aimet_tf.quantization.quantizers import BiasQuantizer, Quantizer
from aimet_tf.quantization.registry import get_layer_spec
from aimet_tf.quantization.wrapper import QuantizationWrapper, get_param_variable

__all__ = ["TfliteExportError", "export_tflite", "check_tflite_exportable", "IO_TYPES"]

IO_TYPES = ("float32", "int8")

_L = keras.layers
# Ops whose converted kernels accept int4-packed filters (measured: CONV_2D, FULLY_CONNECTED).
_INT4_PACKABLE = (_L.Conv2D, _L.Dense)
_NOT_INT4_PACKABLE = (_L.DepthwiseConv2D, _L.Conv2DTranspose)
# Per-channel weights do not convert for these: TFLite keeps their filters as [out, ..., in] and
# the converter's transpose of a per-channel tensor fails ("mismatched quantized axes").
_PER_TENSOR_ONLY = (
    _L.EinsumDense, _L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose,
)
# Dense hits the same converter error, but FULLY_CONNECTED takes per-channel filters (axis 0 of
# [out, in], what TFLite's own PTQ writes): a per-channel Dense is converted with a per-tensor
# stand-in quantizer and its filter and bias are rewritten per channel in the flatbuffer.
_PER_CHANNEL_REWRITTEN = (_L.Dense,)
_UNFOLDED = (_L.BatchNormalization,)
_UNSPLIT = (_L.SeparableConv1D, _L.SeparableConv2D)
# Layers whose internal quantizers sit in a loop over time steps (``quantization/recurrent.py``).
_RECURRENT = (_L.SimpleRNN, _L.LSTM, _L.GRU)
# Op names that may legitimately produce float tensors in a full-integer model.
_BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})


class TfliteExportError(ValueError):
    """The simulation cannot be exported as a full-integer TFLite model (the message says why)."""


def _weight_param(wrapper: QuantizationWrapper) -> list[tuple[str, Quantizer | None]]:
    try:
        spec = get_layer_spec(wrapper.layer)
    except NotImplementedError:
        return []
    out = []
    for path, pspec in spec.params.items():
        if pspec.role == "weight" and path in wrapper.param_names:
            out.append((path, wrapper.param_quantizers_by_path()[path]))
    return out


def check_tflite_exportable(sim) -> list[str]:
    """Lists why ``sim`` cannot be exported as an integer TFLite model (empty: it can).

    Checked: every enabled quantizer has an encoding; no BatchNormalization is left unfolded and
    no SeparableConv unsplit; no recurrent layer quantizes tensors inside its loop (``prepare_model_for_tflite`` before building the sim); every
    Conv/Dense-like layer has an enabled weight quantizer that is symmetric (TFLite weights have
    zero point 0), 2..8 bits, and per-tensor where TFLite needs it; activations are 8-bit.

    Args:
        sim: a ``QuantizationSimModel``.

    Returns:
        One message per problem, each naming the layer and the fix.
    """
    problems: list[str] = []
    missing = sim.uncalibrated_quantizers()
    if missing:
        problems.append(
            f"{len(missing)} enabled quantizers have no encoding (e.g. {', '.join(missing[:3])}): "
            "the simulation was never calibrated. Call sim.compute_encodings(calibration_data) "
            "(or sim.load_encodings_to_sim(path)) before exporting."
        )
    for wrapper in sim.wrappers():
        layer = wrapper.layer
        kind = type(layer).__name__
        if isinstance(layer, _UNFOLDED):
            problems.append(
                f"Layer {wrapper.name!r} ({kind}) is not folded: TFLite only runs the folded "
                "weight, so the simulation must quantize it. Build the sim on "
                "aimet_tf.export.prepare_model_for_tflite(model) (or aimet_tf.ptq."
                "fold_batch_norms(model)); a batch norm that cannot fold (no Conv/Dense before "
                "it) cannot be exported as integer."
            )
            continue
        if wrapper.internal_names and isinstance(layer, _RECURRENT):
            problems.append(
                f"Layer {wrapper.name!r} ({kind}) quantizes tensors inside its own computation "
                f"({', '.join(wrapper.internal_names[:4])}, ...): for a recurrent layer, in a loop over "
                "time steps. The TFLite converter of TF 2.21 fails on that loop (tf.TensorListReserve "
                "needs a static element shape), and its own integer LSTM kernel keeps 16-bit cell "
                "states on scales it derives itself, so no file could reproduce the simulation. Expected no such layer in an int8 TFLite "
                "export; sim.export() writes the AIMET encodings for other targets."
            )
            continue
        if isinstance(layer, _UNSPLIT):
            problems.append(
                f"Layer {wrapper.name!r} ({kind}) has an unquantized tensor between its depthwise "
                "and pointwise halves. Build the sim on aimet_tf.export.prepare_model_for_tflite"
                "(model), which splits it into DepthwiseConv + 1x1 Conv."
            )
            continue
        for path, q in _weight_param(wrapper):
            if get_param_variable(layer, path) is None or isinstance(layer, ClassToken):
                continue  # a class token is written on its concatenation's grid (prepare)
            where = f"Layer {wrapper.name!r} ({kind}) weight {path!r}"
            if not isinstance(q, Quantizer) or not q.enabled:
                problems.append(
                    f"{where} has no enabled quantizer, so the op would stay float. Expected a "
                    "weight quantizer: use a config that quantizes weights (e.g. TFLITE_CONFIG)."
                )
                continue
            if not q.symmetric:
                problems.append(
                    f"{where} is quantized asymmetrically; TFLite int8 weights have zero point "
                    "0. Expected is_symmetric True for params in the config."
                )
            if q.bitwidth > 8:
                problems.append(
                    f"{where} has {q.bitwidth}-bit weights; TFLite integer kernels take at "
                    "most 8. Expected default_param_bw <= 8."
                )
            if q.per_channel and isinstance(layer, _PER_CHANNEL_REWRITTEN) and q.num_channels not in (
                None, int(layer.kernel.shape[-1])
            ):
                problems.append(
                    f"{where} is per-channel along another axis than its output units; TFLite's "
                    "FULLY_CONNECTED takes one scale per output unit. Expected channel axis -1."
                )
            if q.per_channel and isinstance(layer, _PER_TENSOR_ONLY):
                problems.append(
                    f"{where} is per-channel; the TFLite converter rejects per-channel weights "
                    "for this op (its filter layout is transposed). Expected per-tensor: use "
                    "TFLITE_CONFIG, or set per_channel_quantization False for this op type."
                )
    for name, q in sim.activation_quantizers():
        if q.enabled and q.bitwidth != 8:
            problems.append(
                f"Activation quantizer {name!r} has {q.bitwidth} bits; the int8 TFLite export "
                "needs 8-bit activations. Expected default_output_bw=8."
            )
    return problems


def _low_bit_int8_storage(wrapper: QuantizationWrapper, q: Quantizer, no_packing: bool = False) -> bool:
    if q.bitwidth >= 8:
        return False
    if no_packing:
        return True
    packable = isinstance(wrapper.layer, _INT4_PACKABLE) and not isinstance(
        wrapper.layer, _NOT_INT4_PACKABLE
    )
    return not (packable and q.bitwidth == 4)


@dataclasses.dataclass
class _ChannelFilter:
    """What a per-channel Dense's FULLY_CONNECTED gets written after conversion.

    Attributes:
        levels: the filter's integers, [units, inputs] (FULLY_CONNECTED's layout).
        scales: one weight step per unit, float32.
        bias: the bias as the sim adds it (on its int32 grid when ``bias_scales`` is set), or None.
        bias_scales: the sim's bias steps s_in * s_w, float32; None: derived from the file's input
            scale.
    """

    levels: np.ndarray
    scales: np.ndarray
    bias: np.ndarray | None
    bias_scales: np.ndarray | None


def _channel_filter(wrapper: QuantizationWrapper, path: str, q: Quantizer, var) -> _ChannelFilter:
    """The integers and steps of a per-channel Dense weight (and its bias) as the sim uses them."""
    scales = np.asarray(q.scale_tensor().numpy(), np.float32)
    snapped = q(var.value).numpy()
    levels = np.round(snapped / scales).astype(np.int64)
    bias, bias_scales = None, None
    bias_var = get_param_variable(wrapper.layer, "bias") if "bias" in wrapper.param_names else None
    if bias_var is not None:
        bias = bias_var.numpy().astype(np.float32)
        bias_q = wrapper.param_quantizers_by_path().get("bias")
        if isinstance(bias_q, BiasQuantizer) and bias_q.enabled:
            scale = bias_q.current_scale()
            if scale is not None:
                bias = bias_q(bias_var.value).numpy()
                bias_scales = np.broadcast_to(np.asarray(scale.numpy(), np.float32), bias.shape).copy()
    return _ChannelFilter(levels.T.copy(), scales, bias, bias_scales)


def _per_tensor_stand_in(wrapper: QuantizationWrapper, q: Quantizer, var, int8_storage: bool) -> Quantizer:
    """A per-tensor quantizer for the converter's view of a per-channel Dense weight.

    Its grid (the largest channel step) only has to make the converter write a quantized
    FULLY_CONNECTED filter of the right type: the values are replaced afterwards.
    """
    bits = 8 if int8_storage else q.bitwidth
    largest = float(np.max(q.scale_tensor().numpy()))
    top = 2 ** (bits - 1) - 1
    stand_in = Quantizer(bitwidth=bits, symmetric=True, strict=True, name=f"{wrapper.name}_export_weight")
    stand_in.build(tuple(var.shape))
    stand_in.set_encoding(primitives.Encoding(-top * largest, top * largest, bits, True, True))
    return stand_in


@contextlib.contextmanager
def _export_view(sim) -> Iterator[tuple[bool, dict[str, _ChannelFilter]]]:
    """Temporarily puts the sim in its export form.

    Yields whether int4 packing is needed, and the per-channel Dense filters to write into the
    converted file (by layer name).
    """
    requantizers = [w.requantizer for w in sim.wrappers() if w.requantizer is not None]
    states = [r.enabled for r in requantizers]
    # Kernel-style input rounding is simulation only: the converter must see the plain fake-quant.
    rounded = [q for w in sim.wrappers() for q in w.input_quantizers
               if isinstance(q, Quantizer) and q.rounding != "fake_quant"]
    roundings = [q.rounding for q in rounded]
    swapped = []
    stand_ins = []
    channel_filters: dict[str, _ChannelFilter] = {}
    pack_int4 = False
    no_packing = _has_int8_constants(sim)
    if no_packing:
        logging.info("export_tflite: attention / decomposed norms: 4-bit weights stored as int8")
    # Decomposed layers' kernel arithmetic is simulation only too (the file's kernels do it).
    internal_kernels = [(w, w.internal_kernels) for w in sim.wrappers() if w.internal_kernels is not None]
    try:
        for w, _ in internal_kernels:
            w.internal_kernels = None
        for r in requantizers:
            r.enabled = False
        for q in rounded:
            q.rounding = "fake_quant"
        for wrapper in sim.wrappers():
            for path, q in _weight_param(wrapper):
                if not isinstance(q, Quantizer) or not q.enabled:
                    continue
                var = get_param_variable(wrapper.layer, path)
                if var is None:
                    continue
                if q.per_channel and isinstance(wrapper.layer, _PER_CHANNEL_REWRITTEN):
                    int8_storage = _low_bit_int8_storage(wrapper, q, no_packing)
                    pack_int4 = pack_int4 or (q.bitwidth == 4 and not int8_storage)
                    channel_filters[wrapper.name] = _channel_filter(wrapper, path, q, var)
                    wrapper.replace_quantizer("param", path, _per_tensor_stand_in(wrapper, q, var, int8_storage))
                    stand_ins.append((wrapper, path, q))
                    continue
                if not _low_bit_int8_storage(wrapper, q, no_packing):
                    pack_int4 = pack_int4 or q.bitwidth == 4
                    continue
                # Same integers, stored as int8: snap the weight onto its low-bit grid, then
                # describe it with an 8-bit narrow-range encoding of the same step.
                encoding = q.get_encoding()
                original = var.numpy()
                snapped = q(var.value).numpy()
                step = encoding.scale
                var.assign(snapped)
                q.set_encoding(primitives.Encoding(-127.0 * step, 127.0 * step, 8, True, True))
                swapped.append((var, original, q, encoding))
        yield pack_int4, channel_filters
    finally:
        for wrapper, path, q in reversed(stand_ins):
            wrapper.replace_quantizer("param", path, q)
        for var, original, q, encoding in reversed(swapped):
            var.assign(original)
            q.set_encoding(encoding)
        for r, state in zip(requantizers, states):
            r.enabled = state
        for w, kernels in internal_kernels:
            w.internal_kernels = kernels
        for q, rounding in zip(rounded, roundings):
            q.rounding = rounding


def _layer_names_in(text: str, names: list[str]) -> list[str]:
    """Layer names that appear as path components (``.../name/...`` or ``.../name_1/...``)."""
    found = []
    for name in sorted(names, key=len, reverse=True):
        if re.search(rf"(^|[/;]){re.escape(name)}(_\d+)?(/|;|$)", text):
            found.append(name)
    return found


def _first_layer(text: str, names: list[str]) -> str | None:
    best = None
    for name in names:
        match = re.search(rf"(^|[/;]){re.escape(name)}(_\d+)?(/|;|$)", text)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), name)
    return best[1] if best else None


# Filter / bias input positions of the ops that carry them.
_WEIGHT_INPUTS = {
    "CONV_2D": (1, 2),
    "DEPTHWISE_CONV_2D": (1, 2),
    "FULLY_CONNECTED": (1, 2),
    "CONV_3D": (1, 2),
    "TRANSPOSE_CONV": (1, 3),
}


def _short_tensor_names(content: bytes, layer_names: list[str]) -> bytes:
    """Renames the converter's tensor names (";"-joined TF op paths) to "layer/role".

    The converter names each tensor after every TF op fused into it, with the wrapper's doubled
    path, which costs ~1 KB on a small model; "block1_dw/weights", "block1_dw_relu/output" say
    the same. Model inputs and outputs keep their signature names.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    for subgraph in model.subgraphs:
        keep = set(subgraph.inputs) | set(subgraph.outputs)
        new: dict[int, str] = {}

        def layer_of(index: int) -> str | None:
            name = subgraph.tensors[index].name
            return _first_layer(name.decode() if isinstance(name, bytes) else str(name), layer_names)

        for op in subgraph.operators:
            op_name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
            weight, bias = _WEIGHT_INPUTS.get(op_name, (None, None))
            owner = None
            if weight is not None and weight < len(op.inputs) and op.inputs[weight] >= 0:
                owner = layer_of(op.inputs[weight])
                new.setdefault(op.inputs[weight], f"{owner or op_name.lower()}/weights")
                if bias is not None and bias < len(op.inputs) and op.inputs[bias] >= 0:
                    new.setdefault(op.inputs[bias], f"{owner or op_name.lower()}/bias")
            for k, index in enumerate(op.outputs):
                layer = layer_of(index) or owner
                suffix = "output" if len(op.outputs) == 1 else f"output_{k}"
                if op_name == "QUANTIZE":
                    suffix = "quantized_input"
                new.setdefault(index, f"{layer}/{suffix}" if layer else f"{op_name.lower()}/{suffix}")
            for index in op.inputs:
                if index >= 0 and index not in new:
                    layer = layer_of(index)
                    new[index] = f"{layer}/const" if layer else f"{op_name.lower()}/const"
        for index, name in new.items():
            if index not in keep:
                subgraph.tensors[index].name = name.encode()
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _pack_int4(levels: np.ndarray) -> np.ndarray:
    """Two 4-bit integers a byte, the first in the low nibble (TFLite's packed INT4 buffers)."""
    flat = levels.reshape(-1).astype(np.int64) & 0xF
    if flat.size % 2:
        flat = np.append(flat, 0)
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def _write_channel_filters(content: bytes, channel_filters: dict[str, _ChannelFilter]) -> bytes:
    """Writes per-channel filters and biases into the FULLY_CONNECTED ops of named Dense layers.

    The filter gets the sim's integers with one scale per unit (quantized dimension 0), the bias
    int32 levels on s_in * s_w[c], s_in being the op's input scale in the file. A buffer that
    another tensor shares is left to it (the rewritten tensor gets a new one).
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    written: set[str] = set()

    def quantization(scales: np.ndarray):
        params = schema.QuantizationParametersT()
        params.scale = [float(v) for v in scales]
        params.zeroPoint = [0] * len(scales)
        params.quantizedDimension = 0
        return params

    users: dict[int, int] = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            users[tensor.buffer] = users.get(tensor.buffer, 0) + 1

    def set_data(tensor, data: np.ndarray) -> None:
        raw = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        if tensor.buffer > 0 and users.get(tensor.buffer) == 1:
            model.buffers[tensor.buffer].data = raw
            return
        buffer = schema.BufferT()
        buffer.data = raw
        model.buffers.append(buffer)
        tensor.buffer = len(model.buffers) - 1

    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) != "FULLY_CONNECTED":
                continue
            weight = subgraph.tensors[op.inputs[1]]
            name = weight.name.decode() if isinstance(weight.name, bytes) else str(weight.name)
            layer = name[: -len("/weights")] if name.endswith("/weights") else None
            spec = channel_filters.get(layer)
            if spec is None:
                continue
            if list(weight.shape) != list(spec.levels.shape):
                raise TfliteExportError(
                    f"Layer {layer!r}: the converted FULLY_CONNECTED filter has shape "
                    f"{list(weight.shape)}, expected {list(spec.levels.shape)} ([units, inputs]); "
                    "cannot write its per-channel weights. Use per-tensor Dense weights "
                    "(per_channel_quantization False for Gemm in the config)."
                )
            if weight.type == schema.TensorType.INT4:
                set_data(weight, _pack_int4(spec.levels))
            else:
                set_data(weight, spec.levels.astype(np.int8))
            weight.quantization = quantization(spec.scales)
            has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
            if not has_bias and spec.bias is not None and np.any(spec.bias):
                raise TfliteExportError(
                    f"Layer {layer!r}: the converted FULLY_CONNECTED has no bias input for a "
                    "non-zero bias; cannot write its per-channel weights. Use per-tensor Dense "
                    "weights (per_channel_quantization False for Gemm in the config)."
                )
            if has_bias and spec.bias is not None:
                bias = subgraph.tensors[op.inputs[2]]
                scales = spec.bias_scales
                if scales is None:
                    s_in = np.float32(subgraph.tensors[op.inputs[0]].quantization.scale[0])
                    scales = (s_in * spec.scales).astype(np.float32)
                ratio = spec.bias.astype(np.float64) / scales.astype(np.float64)
                levels = np.sign(ratio) * np.floor(np.abs(ratio) + 0.5)  # as quantize_bias rounds
                levels = np.clip(levels, -(2**31 - 1), 2**31 - 1).astype(np.int32)
                bias.type = schema.TensorType.INT32
                set_data(bias, levels)
                bias.quantization = quantization(scales)
            written.add(layer)
    missing = sorted(set(channel_filters) - written)
    if missing:
        raise TfliteExportError(
            f"Per-channel Dense layer(s) {', '.join(repr(n) for n in missing)} have no "
            "FULLY_CONNECTED op with a bias-capable filter in the converted model; cannot write "
            "their per-channel weights. Use per-tensor Dense weights (per_channel_quantization "
            "False for Gemm in the config)."
        )
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _float_ops(model_content: bytes, layer_names: list[str]) -> list[str]:
    """Describes ops of a converted model that compute in float (should be none)."""
    from aimet_tf.kernels.litert import interpreter as litert_interpreter

    interpreter = litert_interpreter(model_content, "builtin")
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    out = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in _BOUNDARY_OPS:
            continue
        float_outputs = [
            tensors[i] for i in op["outputs"] if i >= 0 and tensors[i]["dtype"] == np.float32
        ]
        if not float_outputs:
            continue
        names = _layer_names_in(float_outputs[0]["name"], layer_names)
        where = f"layer {names[0]!r}" if names else f"tensor {float_outputs[0]['name']!r}"
        out.append(f"{op['op_name']} ({where})")
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences the SavedModel / converter chatter (stdout prints and absl INFO lines)."""
    verbosity = logging.get_verbosity()
    # absl verbosity grows with detail: WARNING (-1) is quieter than INFO (0).
    logging.set_verbosity(min(verbosity, logging.WARNING))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.set_verbosity(verbosity)


_REQUANTIZING_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "ADD", "MEAN"})


def undelegated_layers(content: bytes) -> set[str]:
    """Layers whose requantizing op LiteRT's default resolver leaves to its builtin kernels.

    XNNPACK declines some ops (measured: a FULLY_CONNECTED after a batch-dynamic Flatten with int4
    weights stored as int8); those run with TFLite's fixed-point arithmetic instead. With every
    tensor preserved, the delegate takes each op it accepts as its own partition, so an op is
    delegated exactly when a DELEGATE node produces its output.
    """
    from aimet_tf.kernels.litert import interpreter as litert_interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging"
        interpreter = litert_interpreter(content, "default", preserve=True)
    interpreter.allocate_tensors()
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    delegated = {i for op in ops if op["op_name"] == "DELEGATE" for i in op["outputs"]}
    layers = set()
    for op in ops:
        if op["op_name"] not in _REQUANTIZING_OPS or not op["outputs"] or op["outputs"][0] in delegated:
            continue
        # A model output keeps its signature name: name the layer by its weights where it has some.
        tensor = op["inputs"][1] if op["op_name"] not in ("ADD", "MEAN") and len(op["inputs"]) > 1 else op["outputs"][0]
        layers.add(names[tensor].split("/")[0])
    return layers


def _frozen_function(model: keras.Model):
    """The model's inference function with its variables folded in, traced once at batch None.

    Converting this directly is about 3-4x faster than a SavedModel round trip (measured on the
    fuzz models: 1.8 s against 6.8 s), and tracing errors surface as they are.
    """
    specs = [tf.TensorSpec([None, *t.shape[1:]], t.dtype, name=t.name.split(":")[0]) for t in model.inputs]

    def serve(*inputs):
        return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

    concrete = tf.function(serve, input_signature=specs, autograph=False).get_concrete_function()
    return convert_to_constants.convert_variables_to_constants_v2(concrete)


def _convert(sim, input_type: str, output_type: str, pack_int4: bool) -> bytes:
    with _quiet():
        # A bare module as the trackable object: the function is frozen, and saving the whole Keras
        # model (which the converter does with what it is given) costs most of the conversion time.
        converter = tf.lite.TFLiteConverter.from_concrete_functions([_frozen_function(sim.model)], tf.Module())
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if input_type == "int8":
            converter.inference_input_type = tf.int8
        if output_type == "int8":
            converter.inference_output_type = tf.int8
        if pack_int4:
            converter._experimental_low_bit_qat = True
        return converter.convert()


def export_tflite(
    sim,
    path: str | os.PathLike,
    *,
    input_type: str = "float32",
    output_type: str = "float32",
    prepare: bool = True,
    kernels=None,
) -> str:
    """Writes a full-integer .tflite model that computes what ``sim`` simulates.

    Activations are int8 with the simulation's scale and zero point (zero point = -offset - 128
    for an 8-bit grid), weights int8 (per-channel where the sim is per-channel) or int4 where the
    sim uses 4 bits, biases int32 with scale s_in * s_w. Fused ReLU/ReLU6 follow the sim's
    supergroups (no quantizer inside a fused chain).

    Args:
        sim: a calibrated ``QuantizationSimModel``, built on a model prepared with
            ``prepare_model_for_tflite`` (batch norms folded, separable convolutions split).
        path: output file; written atomically (temporary file + rename) with the mode a plain
            open() gives (umask honoured). Its file name must be a plain, non-hidden name.
        input_type: "float32" (the model quantizes its input) or "int8" (the caller feeds
            q = round(x / scale) + zero_point, read from the interpreter's input details).
        output_type: "float32" (dequantized) or "int8".
        prepare: run ``prepare_sim_for_tflite(sim, kernels)`` first (in place, idempotent), so
            that the sim afterwards predicts the file. Pass False only for a sim prepared already.
        kernels: the kernel path the sim should reproduce (``KERNEL_TARGETS`` or a `DspTarget`);
            None keeps the one it was prepared for ("default" the first time). The file is the
            same whichever is chosen: only the simulation's rounding follows it.

    Returns:
        The path written, as a string.

    Raises:
        TfliteExportError: naming the layers, if the sim is uncalibrated, has unfolded batch
            norms / unsplit separable convolutions / weights TFLite cannot take, if the
            converter fails, or if any op of the converted model would compute in float.
        ValueError: for an unknown ``input_type`` / ``output_type``, or a path whose file name
            is empty, hidden or a folder (``aimet_tf.files.check_file_name``).

    Example:
        >>> export_tflite(sim, "model.tflite")
        'model.tflite'
    """
    for name, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in IO_TYPES:
            raise ValueError(f"Expected {name} in {IO_TYPES}. Received: {name}={value!r}")
    path = os.fspath(path)
    # Checked before the (slow) conversion: a bad name fails at once.
    files.check_file_name(os.path.basename(path), "the file name of path")
    if prepare:
        prepare_sim_for_tflite(sim, kernels)
    problems = check_tflite_exportable(sim)
    if problems:
        raise TfliteExportError(
            "Cannot export this simulation as a full-integer TFLite model:\n  - "
            + "\n  - ".join(problems)
        )
    layer_names = [w.name for w in sim.wrappers()]
    with _export_view(sim) as (pack_int4, channel_filters):
        try:
            content = _convert(sim, input_type, output_type, pack_int4)
        except Exception as error:  # the converter raises several unrelated types
            message = str(error)
            named = _layer_names_in(message, layer_names)
            raise TfliteExportError(
                "The TFLite converter failed on this simulation"
                + (f" at layer(s) {', '.join(repr(n) for n in named[:5])}" if named else "")
                + f": {message.strip().splitlines()[0][:500]}. Expected only layers with TFLite "
                "int8 builtins, each tensor quantized by the sim; check the layer, or exclude it "
                "from the model."
            ) from error
    content = _short_tensor_names(content, layer_names)
    if channel_filters:
        content = _write_channel_filters(content, channel_filters)
    float_ops = _float_ops(content, layer_names)
    if float_ops:
        raise TfliteExportError(
            "The converted model is not full-integer; these ops would compute in float: "
            + "; ".join(float_ops[:10])
            + ". Expected every tensor on the path quantized: give these layers' inputs and "
            "outputs quantizers (check the config's op_type / supergroups) or remove them."
        )
    files.atomic_write(path, content)
    if kernel_target_of(sim) == "default":
        # The sim follows the file: ops XNNPACK declines get the builtin kernels' arithmetic.
        set_undelegated_layers(sim, undelegated_layers(content))
        prepare_sim_for_tflite(sim, "default")
    logging.info(
        "export_tflite: wrote %s (%d bytes, input %s, output %s%s)",
        path, len(content), input_type, output_type, ", int4 weights" if pack_int4 else "",
    )
    return path
