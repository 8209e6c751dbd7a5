"""Reads an int8 / int4 TFLite flatbuffer into plain Python objects for the integer executor.

The file is parsed with the flatbuffer schema that ai-edge-litert ships
(`ai_edge_litert.schema_py_generated`, the object API), then checked: the file identifier,
one subgraph, tensor / buffer indices in range, buffer sizes that match the tensor shapes
(packed int4: ceil(n / 2) bytes). Anything wrong raises `TFLiteFormatError` (a `ValueError`)
that says what was expected; nothing is passed on to C++ unchecked.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

__all__ = ["TFLiteFormatError", "TensorInfo", "OperatorInfo", "TFLiteGraph", "read_tflite", "widen_int4_weights", "OP_NAMES",
           "op_model"]


class TFLiteFormatError(ValueError):
    """The bytes are not a well-formed TFLite model this reader can use."""


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as exc:  # pragma: no cover - ai-edge-litert is a dependency
        raise ImportError(
            "Reading .tflite files needs the flatbuffer schema of ai-edge-litert. Install it with "
            "`pip install ai-edge-litert`."
        ) from exc
    return schema


def _enum_names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


OP_NAMES: dict[int, str] = _enum_names(_schema().BuiltinOperator)
_TYPE_NAMES: dict[int, str] = _enum_names(_schema().TensorType)
_NUMPY_TYPES = {"FLOAT32": np.float32, "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16,
                "INT64": np.int64, "BOOL": np.bool_, "INT4": np.int8}


@dataclasses.dataclass
class TensorInfo:
    """One tensor of the graph.

    Attributes:
        index: position in the subgraph's tensor list.
        name: the tensor's name.
        type_name: TFLite type ("INT8", "INT4", "FLOAT32", "INT32", ...).
        shape: dimensions.
        scale: float32 [k] quantization scales (empty when not quantized).
        zero_point: int64 [k] zero points.
        quantized_dimension: the channel axis of per-channel parameters.
        data: the constant value (int4: the packed bytes as int8), or None for activations.
    """

    index: int
    name: str
    type_name: str
    shape: tuple[int, ...]
    scale: np.ndarray
    zero_point: np.ndarray
    quantized_dimension: int
    data: np.ndarray | None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_NUMPY_TYPES.get(self.type_name, np.uint8))

    @property
    def is_quantized(self) -> bool:
        return self.scale.size > 0

    def per_tensor(self) -> tuple[float, int]:
        """(scale, zero_point) of a per-tensor quantized tensor.

        Raises:
            TFLiteFormatError: if the tensor is not quantized per tensor.
        """
        if self.scale.size != 1 or self.zero_point.size != 1:
            raise TFLiteFormatError(
                f"Expected per-tensor quantization on tensor {self.name!r} (index {self.index}). "
                f"Received {self.scale.size} scales and {self.zero_point.size} zero points."
            )
        return float(self.scale[0]), int(self.zero_point[0])


@dataclasses.dataclass
class OperatorInfo:
    """One operator: its builtin name, tensor indices (-1 = absent) and options object."""

    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Any


@dataclasses.dataclass
class TFLiteGraph:
    """The single subgraph of a TFLite model."""

    tensors: list[TensorInfo]
    operators: list[OperatorInfo]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    model_bytes: bytes

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.operators:
            counts[op.name] = counts.get(op.name, 0) + 1
        return counts


def _as_bytes(model: bytes | bytearray | str | os.PathLike) -> bytes:
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    path = pathlib.Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"TFLite model not found: {path}")
    return path.read_bytes()


def _buffer_bytes(raw: bytes, buffer, index: int) -> bytes | None:
    if buffer is None:
        return None
    if buffer.offset and buffer.offset > 1:  # data stored after the flatbuffer (models > 2 GB)
        end = buffer.offset + buffer.size
        if end > len(raw):
            raise TFLiteFormatError(f"Buffer {index} points past the end of the file ({end} > {len(raw)} bytes).")
        return raw[buffer.offset : end]
    if buffer.data is None:
        return None
    return np.asarray(buffer.data, dtype=np.uint8).tobytes()


def read_tflite(model: bytes | bytearray | str | os.PathLike) -> TFLiteGraph:
    """Parses and validates a TFLite flatbuffer.

    Args:
        model: the flatbuffer bytes or a path to a .tflite file.

    Returns:
        The graph.

    Raises:
        TFLiteFormatError: for bytes that are not a valid single-subgraph TFLite model.
        FileNotFoundError: for a missing path.
    """
    raw = _as_bytes(model)
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise TFLiteFormatError(
            f"Not a TFLite flatbuffer: expected the file identifier 'TFL3' at bytes 4..8. "
            f"Received {raw[4:8]!r} in a {len(raw)}-byte input."
        )
    schema = _schema()
    try:
        parsed = schema.ModelT.InitFromPackedBuf(raw, 0)
    except Exception as exc:  # the generated reader raises struct.error, IndexError, ... on garbage
        raise TFLiteFormatError(f"Malformed TFLite flatbuffer ({type(exc).__name__}: {exc}).") from exc
    subgraphs = parsed.subgraphs or []
    if len(subgraphs) != 1:
        raise TFLiteFormatError(f"Expected exactly one subgraph. Received {len(subgraphs)}.")
    graph = subgraphs[0]
    buffers = parsed.buffers or []
    codes = parsed.operatorCodes or []
    tensors = []
    for i, t in enumerate(graph.tensors or []):
        type_name = _TYPE_NAMES.get(t.type, f"UNKNOWN({t.type})")
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        if any(d < 0 for d in shape):
            raise TFLiteFormatError(f"Tensor {i} has a negative dimension: {shape}.")
        q = t.quantization
        scale = np.asarray(q.scale if q is not None and q.scale is not None else [], dtype=np.float32)
        zero_point = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [], dtype=np.int64)
        if scale.size and (not np.all(np.isfinite(scale)) or np.any(scale <= 0)):
            raise TFLiteFormatError(f"Tensor {i} ({t.name!r}) has non-positive or non-finite scales.")
        limits = {"INT8": (-128, 127), "INT4": (-8, 7), "UINT8": (0, 255), "INT16": (-32768, 32767)}.get(type_name)
        if limits and zero_point.size and (zero_point.min() < limits[0] or zero_point.max() > limits[1]):
            raise TFLiteFormatError(
                f"Tensor {i} ({t.name!r}, {type_name}) has zero points outside [{limits[0]}, {limits[1]}]: "
                f"{zero_point.min()}..{zero_point.max()}."
            )
        if not 0 <= t.buffer < max(len(buffers), 1):
            raise TFLiteFormatError(f"Tensor {i} refers to buffer {t.buffer}, but the model has {len(buffers)}.")
        data_bytes = _buffer_bytes(raw, buffers[t.buffer] if buffers else None, t.buffer)
        data = None
        if data_bytes:
            count = int(np.prod(shape, dtype=np.int64))
            if type_name == "INT4":
                expected = (count + 1) // 2
                np_type = np.int8
            elif type_name in _NUMPY_TYPES:
                np_type = _NUMPY_TYPES[type_name]
                expected = count * np.dtype(np_type).itemsize
            else:
                raise TFLiteFormatError(f"Constant tensor {i} ({t.name!r}) has unsupported type {type_name}.")
            if len(data_bytes) != expected:
                raise TFLiteFormatError(
                    f"Constant tensor {i} ({t.name!r}, {type_name}, shape {shape}) expects {expected} bytes. "
                    f"Received {len(data_bytes)}."
                )
            data = np.frombuffer(data_bytes, dtype=np_type).copy()
            if type_name != "INT4":
                data = data.reshape(shape)
        name = t.name.decode(errors="replace") if isinstance(t.name, bytes) else (t.name or f"tensor_{i}")
        tensors.append(TensorInfo(i, name, type_name, shape, scale, zero_point,
                                  int(q.quantizedDimension) if q is not None else 0, data))
    n = len(tensors)

    def _indices(values, what: str, allow_absent: bool) -> tuple[int, ...]:
        out = tuple(int(v) for v in (values if values is not None else ()))
        for v in out:
            if not (0 <= v < n or (allow_absent and v == -1)):
                raise TFLiteFormatError(f"{what} refers to tensor {v}, but the subgraph has {n} tensors.")
        return out

    operators = []
    for k, op in enumerate(graph.operators or []):
        if not 0 <= op.opcodeIndex < len(codes):
            raise TFLiteFormatError(f"Operator {k} uses opcode {op.opcodeIndex}, but the model has {len(codes)}.")
        code = codes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        name = OP_NAMES.get(builtin, f"UNKNOWN({builtin})")
        if name == "CUSTOM":
            custom = code.customCode.decode(errors="replace") if isinstance(code.customCode, bytes) else code.customCode
            name = f"CUSTOM({custom})"
        operators.append(OperatorInfo(k, name, _indices(op.inputs, f"Operator {k} ({name}) input", True),
                                      _indices(op.outputs, f"Operator {k} ({name}) output", False), op.builtinOptions))
    return TFLiteGraph(tensors, operators, _indices(graph.inputs, "Subgraph input", False),
                       _indices(graph.outputs, "Subgraph output", False), raw)


# The highest DEPTHWISE_CONV_2D version that LiteRT's reference resolver registers (ai-edge-litert 2.3):
# version 7 (int4 filters) is missing there.
_INT8_DEPTHWISE_VERSION = 6


def widen_int4_weights(model: bytes | bytearray | str | os.PathLike) -> bytes:
    """Rewrites a model's packed int4 constant tensors as int8 tensors holding the same values.

    The arithmetic is unchanged (the kernels unpack int4 to int8 before computing), so LiteRT's
    reference kernels can run int4 models whose int4 operators they lack, e.g. DEPTHWISE_CONV_2D
    version 7. Scales and zero points are kept; the rewritten model is re-serialized with the
    flatbuffer object API.

    Args:
        model: the flatbuffer bytes or a path.

    Returns:
        The rewritten flatbuffer.

    Raises:
        TFLiteFormatError: for a malformed model.
    """
    import flatbuffers

    from aimet_tf.kernels.reference import unpack_int4

    graph = read_tflite(model)  # validates the file first
    schema = _schema()
    parsed = schema.ModelT.InitFromPackedBuf(graph.model_bytes, 0)
    for tensor in parsed.subgraphs[0].tensors:
        if tensor.type != schema.TensorType.INT4:
            continue
        buffer = parsed.buffers[tensor.buffer]
        packed = np.asarray(buffer.data, dtype=np.uint8).view(np.int8)
        buffer.data = unpack_int4(packed, tuple(int(d) for d in tensor.shape)).view(np.uint8).ravel()
        buffer.offset = buffer.size = 0
        tensor.type = schema.TensorType.INT8
    for code in parsed.operatorCodes or []:
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DEPTHWISE_CONV_2D:
            code.version = min(code.version, _INT8_DEPTHWISE_VERSION)
    builder = flatbuffers.Builder(len(graph.model_bytes) * 2)
    builder.Finish(parsed.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


_TENSOR_TYPES = {np.dtype(np.int8): "INT8", np.dtype(np.int32): "INT32", np.dtype(np.float32): "FLOAT32"}


def op_model(op: str, inputs: list[dict], outputs: list[dict], options=None, options_type: str | None = None,
             version: int = 1) -> bytes:
    """Writes a one-operator model whose inputs may be constants (unlike `single_op_model`).

    Args:
        op: builtin operator name, e.g. "BATCH_MATMUL".
        inputs: one dict per operator input: "shape", "dtype" (numpy int8 / int32 / float32),
            optionally "scale" and "zero_point" (quantized tensors) and "data" (a constant).
            Inputs without "data" become graph inputs, in order.
        outputs: dicts like the inputs, without "data".
        options, options_type: the operator's builtin options object and its `BuiltinOptions` name.
        version: the operator code's version.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT()
    model.version = 3
    code = schema.OperatorCodeT()
    code.builtinCode = getattr(schema.BuiltinOperator, op)
    code.deprecatedBuiltinCode = min(code.builtinCode, 127)
    code.version = version
    model.operatorCodes = [code]
    model.buffers = [schema.BufferT()]
    tensors = []
    for i, spec in enumerate([*inputs, *outputs]):
        t = schema.TensorT()
        dtype = np.dtype(spec["dtype"])
        t.shape, t.type, t.name = list(spec["shape"]), getattr(schema.TensorType, _TENSOR_TYPES[dtype]), f"t{i}"
        t.buffer = 0
        if "scale" in spec:
            q = schema.QuantizationParametersT()
            q.scale, q.zeroPoint = [float(spec["scale"])], [int(spec["zero_point"])]
            t.quantization = q
        if "data" in spec:
            buffer = schema.BufferT()
            buffer.data = np.ascontiguousarray(np.asarray(spec["data"], dtype=dtype)).view(np.uint8).ravel()
            model.buffers.append(buffer)
            t.buffer = len(model.buffers) - 1
        tensors.append(t)
    graph = schema.SubGraphT()
    graph.tensors = tensors
    graph.inputs = [i for i, spec in enumerate(inputs) if "data" not in spec]
    graph.outputs = list(range(len(inputs), len(inputs) + len(outputs)))
    operator = schema.OperatorT()
    operator.opcodeIndex, operator.inputs, operator.outputs = 0, list(range(len(inputs))), graph.outputs
    if options is not None:
        operator.builtinOptionsType = getattr(schema.BuiltinOptions, options_type)
        operator.builtinOptions = options
    graph.operators = [operator]
    model.subgraphs = [graph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
