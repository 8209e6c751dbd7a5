"""AIMET encodings files: names, the 0.6.1 and 1.0.0 JSON layouts, atomic writes.

0.6.1: {"version", "activation_encodings": {name: [ENC, ...]}, "param_encodings": {name: [ENC...]},
"quantizer_args"}, ENC = {"bitwidth", "dtype": "int", "is_symmetric": "True"/"False", "max", "min",
"offset", "scale"}; one ENC per channel for per-channel parameters.
1.0.0: {"version", "activation_encodings": [ENC1], "param_encodings": [ENC1], "quantizer_args"},
ENC1 = {"name", "dtype": "INT", "enc_type": "PER_TENSOR"|"PER_CHANNEL", "bw", "is_sym",
"scale": [...], "offset": [...]}.
Float entries (a tensor the target keeps in float) are ``[{"bitwidth": 16, "dtype": "float"}]`` in
0.6.1 and ``{"name", "dtype": "FLOAT", "bw": 16}`` in 1.0.0; ``from_dict(..., allow_float=True)``
returns them as :class:`FloatEncoding`.

Tensor names. Inside the sim, activations are named ``"<layer>/input:<i>"`` /
``"<layer>/output:<i>"`` (:func:`activation_name`) and parameters ``"<layer>/<variable>:0"``
(:func:`param_name`, the names AIMET Keras uses). AIMET Keras keys an activation by the tf.keras 2
tensor it is on: a layer's output ``"<layer>/<TF op>:0"`` (``conv2d_1/Tanh:0``,
``conv2d/BiasAdd:0``, ``add/add:0``), an input quantizer by the tensor it reads, a model input
``"<input layer>:0"``. The TF op that ends a Keras layer depends on its class and arguments, so
it is measured, not derived: :mod:`aimet_tf.quantization.aimet_names` looks layers up in a table
recorded in tf.keras 2.21 (``benchmarks/peers/keras2_tensor_names.py``).
``QuantizationSimModel.get_encodings_dict`` / ``export`` write those names by default (one
entry per tensor) and keep the sim's names, with a warning, for tensors the table does not cover
or whose quantizers disagree; ``activation_names="aimet_tf"`` keeps the sim's names throughout.
:func:`layer_of_activation` reads the layer out of either kind of name;
``QuantizationSimModel.load_encodings_to_sim`` maps an AIMET name to every quantizer on that
tensor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from aimet_tf import files
from aimet_tf.quantization.primitives import Encoding, num_steps, validate_bitwidth

__all__ = [
    "SUPPORTED_VERSIONS",
    "SCALE_RTOL",
    "EncodingsFormatError",
    "TfEncoding",
    "to_tf_encodings",
    "from_tf_encodings",
    "FloatEncoding",
    "activation_name",
    "layer_of_activation",
    "param_name",
    "same_encoding",
    "to_dict",
    "from_dict",
    "read_json",
    "write_json",
    "write_json_atomic",
]

SUPPORTED_VERSIONS = ("0.6.1", "1.0.0")


def activation_name(layer_name: str, kind: str, index: int) -> str:
    """Tensor name of a layer's ``kind`` ("input"/"output") number ``index``: "conv1/output:0"."""
    return f"{layer_name}/{kind}:{index}"


def layer_of_activation(name: str) -> str:
    """The layer an activation name names: the part before the first '/', else before ':'.

    Args:
        name: an aimet_tf name (``"conv1/output:0"``) or an AIMET Keras TF tensor name
            (``"conv2d_1/Tanh:0"``, a model input ``"input_1:0"``).

    Returns:
        The layer name (``"conv1"``, ``"conv2d_1"``, ``"input_1"``).

    Raises:
        ValueError: for a name with no layer part (empty, or starting with '/' or ':').
    """
    layer = name.split("/", 1)[0] if "/" in name else name.split(":", 1)[0]
    if not layer:
        raise ValueError(
            "Expected an activation name '<layer>/<tensor>:<index>' or '<input layer>:<index>'. "
            f"Received: {name!r}"
        )
    return layer


def param_name(layer_name: str, path: str) -> str:
    """AIMET-Keras style parameter name: "conv1/kernel:0" (sublayer paths use '/')."""
    return f"{layer_name}/{path.replace('.', '/').lstrip('_')}:0"


def _enc_061(enc: Encoding) -> list[dict]:
    mins, maxs = np.atleast_1d(enc.min), np.atleast_1d(enc.max)
    scales, offsets = np.atleast_1d(enc.scale), np.atleast_1d(enc.offset)
    return [
        {
            "bitwidth": enc.bitwidth,
            "dtype": "int",
            "is_symmetric": str(enc.symmetric),
            "max": float(mx),
            "min": float(mn),
            "offset": int(off),
            "scale": float(sc),
        }
        for mn, mx, sc, off in zip(mins, maxs, scales, offsets)
    ]


def same_encoding(a: Encoding, b: Encoding) -> bool:
    """True when ``a`` and ``b`` write the same file entry (bitwidth, symmetry, min/max/scale/offset)."""
    return _enc_061(a) == _enc_061(b)


def _enc_100(name: str, enc: Encoding) -> dict:
    return {
        "name": name,
        "dtype": "INT",
        "enc_type": "PER_CHANNEL" if enc.per_channel else "PER_TENSOR",
        "bw": enc.bitwidth,
        "is_sym": bool(enc.symmetric),
        "scale": [float(s) for s in np.atleast_1d(enc.scale)],
        "offset": [int(o) for o in np.atleast_1d(enc.offset)],
    }


def to_dict(
    activations: Mapping[str, Encoding],
    params: Mapping[str, Encoding],
    version: str = "0.6.1",
    quantizer_args: Mapping[str, Any] | None = None,
) -> dict:
    """Builds the AIMET JSON document for the given encodings.

    Raises:
        ValueError: for a version other than "0.6.1" / "1.0.0".
    """
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"Expected encoding version in {SUPPORTED_VERSIONS}. Received: version={version!r}")
    if version == "0.6.1":
        return {
            "version": version,
            "activation_encodings": {n: _enc_061(e) for n, e in activations.items()},
            "param_encodings": {n: _enc_061(e) for n, e in params.items()},
            "quantizer_args": dict(quantizer_args or {}),
        }
    return {
        "version": version,
        "activation_encodings": [_enc_100(n, e) for n, e in activations.items()],
        "param_encodings": [_enc_100(n, e) for n, e in params.items()],
        "quantizer_args": dict(quantizer_args or {}),
    }


class EncodingsFormatError(ValueError):
    """An encodings document is malformed or self-contradictory (the message names the tensor)."""


FLOAT_BITWIDTHS = (16, 32)


@dataclasses.dataclass(frozen=True)
class FloatEncoding:
    """A file entry that keeps its tensor in floating point (``dtype`` float) instead of a grid.

    Attributes:
        bitwidth: 16 (float16) or 32.
    """

    bitwidth: int


# Relative tolerance between a file's "scale" and the scale its min/max imply. Writers that
# compute in float64 and float32 differ by ~1e-7; a real contradiction is far larger.
SCALE_RTOL = 1e-3


def _fail(where: str, expected: str, received: Any) -> None:
    raise EncodingsFormatError(f"{where}: expected {expected}. Received: {received!r}")


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("True", "False"):
        return value == "True"
    _fail(where, "a boolean or 'True'/'False'", value)


def _mapping(value: Any, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        _fail(where, "a JSON object", value)
    return value


def _field(entry: Any, key: str, where: str) -> Any:
    entry = _mapping(entry, where)
    if key not in entry:
        raise EncodingsFormatError(f"{where}: missing key {key!r}. Received keys: {sorted(map(str, entry))}")
    return entry[key]


def _number(value: Any, where: str) -> float:
    """A finite JSON number (not a boolean)."""
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    except OverflowError:  # an integer beyond float range
        number = None
    if number is None or not math.isfinite(number):
        _fail(where, "a finite number", value)
    return number


def _integer(value: Any, where: str) -> int:
    """A JSON integer (an integral float such as 8.0 is accepted)."""
    number = _number(value, where)
    if not number.is_integer():
        _fail(where, "an integer", value)
    return int(number)


def _bitwidth(value: Any, where: str) -> int:
    try:
        return validate_bitwidth(_integer(value, f"{where} bitwidth"))
    except EncodingsFormatError:
        raise
    except ValueError as exc:
        raise EncodingsFormatError(f"{where}: {exc}") from exc


def _encoding(mins, maxs, bitwidth: int, symmetric: bool, strict: bool, where: str) -> Encoding:
    try:
        return Encoding(mins, maxs, bitwidth, symmetric, strict)
    except ValueError as exc:
        raise EncodingsFormatError(f"{where}: {exc}") from exc


def _from_scale_offset(scale, offset, bitwidth: int, symmetric: bool, where: str) -> Encoding:
    with np.errstate(over="ignore"):  # beyond float32: inf, rejected below
        scale = np.asarray(scale, dtype=np.float32)
        offset = np.asarray(offset, dtype=np.float32)
    if not np.all(np.isfinite(offset)):
        _fail(where, "offsets within float32 range", offset.tolist())
    if scale.shape != offset.shape or np.any(scale <= 0) or not np.all(np.isfinite(scale)):
        raise EncodingsFormatError(
            f"{where}: expected positive finite scales matching offsets. Received: scale={scale}, "
            f"offset={offset}"
        )
    # A symmetric grid with offset -(2^(b-1) - 1) is the strict (narrow) one.
    strict = bool(symmetric and np.all(offset == -(2 ** (bitwidth - 1) - 1)))
    steps = num_steps(bitwidth, strict)
    with np.errstate(over="ignore", invalid="ignore"):
        mins, maxs = scale * offset, scale * (offset + np.float32(steps))
    return _encoding(mins, maxs, bitwidth, symmetric, strict, where)


def _check_scale_offset(enc: Encoding, scales: list, offsets: list, where: str) -> None:
    """Raises if a file's scale/offset contradict the grid its min/max describe."""
    implied_scale = np.atleast_1d(enc.scale).astype(np.float64)
    implied_offset = np.atleast_1d(enc.offset).astype(np.float64)
    for channel, (scale, offset) in enumerate(zip(scales, offsets)):
        label = where if len(scales) == 1 else f"{where} channel {channel}"
        if scale is not None and not np.isclose(scale, implied_scale[channel], rtol=SCALE_RTOL, atol=0.0):
            raise EncodingsFormatError(
                f"{label}: scale contradicts min/max. Expected scale = (max - min) / steps = "
                f"{implied_scale[channel]:.9g} within a relative tolerance of {SCALE_RTOL:g}. "
                f"Received: scale={scale!r}. Fix the file (or drop its scale/offset: min/max "
                "alone define the encoding)."
            )
        if offset is not None and abs(offset - implied_offset[channel]) >= 0.5:
            raise EncodingsFormatError(
                f"{label}: offset contradicts min/max. Expected offset = round(min / scale) = "
                f"{int(implied_offset[channel])}. Received: offset={offset!r}."
            )


@dataclasses.dataclass
class TfEncoding:
    """AIMET's ``TfEncoding``: one grid as AIMET's quantizers report it (``quantizer.encoding``).

    Attributes:
        min: the grid's lowest value (``delta * offset``).
        max: the grid's highest value.
        delta: the step (AIMET's name for the scale).
        offset: AIMET's integer offset, ``round(min / delta)`` (<= 0).
        bw: bitwidth.
    """

    min: float
    max: float
    delta: float
    offset: float
    bw: int


def to_tf_encodings(encoding: Encoding) -> list[TfEncoding]:
    """``encoding`` as AIMET's ``TfEncoding`` records: one for a per-tensor encoding, one per
    channel for a per-channel one.

    Args:
        encoding: the quantizer's encoding.

    Returns:
        A list of ``TfEncoding`` (length 1 for per-tensor).
    """
    mins, maxs = np.atleast_1d(encoding.min), np.atleast_1d(encoding.max)
    scales, offsets = np.atleast_1d(encoding.scale), np.atleast_1d(encoding.offset)
    return [
        TfEncoding(float(mn), float(mx), float(sc), float(off), encoding.bitwidth)
        for mn, mx, sc, off in zip(mins, maxs, scales, offsets)
    ]


def from_tf_encodings(
    encodings: Sequence[TfEncoding], per_channel: bool, symmetric: bool, strict: bool, where: str
) -> Encoding:
    """The ``Encoding`` that AIMET ``TfEncoding`` records describe, on a quantizer's grid kind.

    min/max define the grid; ``delta`` and ``offset`` must agree with them (as for a file's
    scale/offset, ``SCALE_RTOL``), so a record edited in one field only is refused, not half-used.

    Args:
        encodings: one record per channel (``per_channel``), else exactly one.
        per_channel: whether the target quantizer is per-channel.
        symmetric: the target quantizer's symmetry.
        strict: the target quantizer's strict (narrow-range) setting.
        where: the target's name, for error messages.

    Returns:
        The encoding (scalar min/max unless ``per_channel``).

    Raises:
        TypeError: for an element that is not a ``TfEncoding``.
        EncodingsFormatError: for records that disagree on the bitwidth, several records for a
            per-tensor target, or a delta/offset/range that contradicts min/max.
    """
    records = list(encodings)
    for record in records:
        if not isinstance(record, TfEncoding):
            raise TypeError(
                f"{where}: expected TfEncoding records (min, max, delta, offset, bw). Received: "
                f"{type(record).__name__}"
            )
    if not records or (not per_channel and len(records) != 1):
        _fail(where, "one TfEncoding" if not per_channel else "one TfEncoding per channel",
              f"{len(records)} records")
    bitwidths = {record.bw for record in records}
    if len(bitwidths) != 1:
        _fail(where, "one bitwidth for all channels", sorted(bitwidths))
    bitwidth = _bitwidth(bitwidths.pop(), where)
    mins = np.asarray([_number(r.min, f"{where} min") for r in records], dtype=np.float32)
    maxs = np.asarray([_number(r.max, f"{where} max") for r in records], dtype=np.float32)
    if not per_channel:
        mins, maxs = mins[0], maxs[0]
    enc = _encoding(mins, maxs, bitwidth, symmetric, strict, where)
    _check_scale_offset(
        enc,
        [_number(r.delta, f"{where} delta") for r in records],
        [_number(r.offset, f"{where} offset") for r in records],
        where,
    )
    return enc


def _float_bitwidth(value: Any, where: str) -> int:
    bitwidth = _integer(value, f"{where} bitwidth")
    if bitwidth not in FLOAT_BITWIDTHS:
        _fail(f"{where} bitwidth", f"a float bitwidth in {FLOAT_BITWIDTHS}", value)
    return bitwidth


def _parse_061_float(entries: list[Mapping], where: str, allow_float: bool) -> FloatEncoding:
    if not allow_float:
        raise EncodingsFormatError(
            f"{where}: expected an integer encoding here. Received: dtype 'float' (load it with "
            "QuantizationSimModel.load_encodings_to_sim, which keeps such tensors in float)"
        )
    dtypes = sorted({str(e.get("dtype", "int")) for e in entries})
    if dtypes != ["float"]:
        _fail(where, "every entry of a float tensor with dtype 'float'", dtypes)
    return FloatEncoding(_float_bitwidth(_field(entries[0], "bitwidth", where), where))


def _parse_061_entry(name: str, entries: Any, kind: str, allow_float: bool = False) -> Encoding | FloatEncoding:
    where = f"{kind} {name!r}"
    if not isinstance(entries, list) or not entries:
        _fail(where, "a non-empty list of encodings", entries)
    entries = [_mapping(e, f"{where} entry {i}") for i, e in enumerate(entries)]
    dtype = entries[0].get("dtype", "int")
    if dtype == "float":
        return _parse_061_float(entries, where, allow_float)
    if dtype != "int":
        _fail(f"{where} dtype", "'int' or 'float'", dtype)
    bitwidth = _bitwidth(_field(entries[0], "bitwidth", where), where)
    symmetric = _bool(entries[0].get("is_symmetric", "False"), f"{where} is_symmetric")
    for i, e in enumerate(entries[1:], start=1):
        if "bitwidth" in e and _bitwidth(e["bitwidth"], where) != bitwidth:
            _fail(f"{where} entry {i} bitwidth", f"the same bitwidth as entry 0 ({bitwidth})", e["bitwidth"])

    def optional(e: Mapping, key: str, read) -> Any:
        return read(e[key], f"{where} {key}") if key in e else None

    offsets = [optional(e, "offset", _number) for e in entries]
    if all("min" in e and "max" in e for e in entries):
        # min/max are the exact nudged range the quantizer holds: prefer them over scale/offset,
        # whose product can differ from it in the last float bit; the two must agree though.
        mins = [_number(e["min"], f"{where} min") for e in entries]
        maxs = [_number(e["max"], f"{where} max") for e in entries]
        with np.errstate(over="ignore"):  # beyond float32: inf, which Encoding rejects
            mins, maxs = np.asarray(mins, dtype=np.float32), np.asarray(maxs, dtype=np.float32)
        strict = bool(symmetric and all(o == -(2 ** (bitwidth - 1) - 1) for o in offsets))
        if len(entries) == 1:
            mins, maxs = mins[0], maxs[0]
        enc = _encoding(mins, maxs, bitwidth, symmetric, strict, where)
        _check_scale_offset(enc, [optional(e, "scale", _number) for e in entries], offsets, where)
        return enc
    scale = [_number(_field(e, "scale", where), f"{where} scale") for e in entries]
    offset = [_number(_field(e, "offset", where), f"{where} offset") for e in entries]
    if len(entries) == 1:
        return _from_scale_offset(scale[0], offset[0], bitwidth, symmetric, where)
    return _from_scale_offset(scale, offset, bitwidth, symmetric, where)


def _parse_100_entry(entry: Any, kind: str, allow_float: bool = False) -> tuple[str, Encoding | FloatEncoding]:
    name = _field(entry, "name", kind)
    if not isinstance(name, str):
        _fail(f"{kind} name", "a string", name)
    where = f"{kind} {name!r}"
    dtype = entry.get("dtype", "INT")
    if dtype == "FLOAT" and allow_float:
        return name, FloatEncoding(_float_bitwidth(_field(entry, "bw", where), where))
    if dtype != "INT":
        raise EncodingsFormatError(
            f"{where}: expected dtype 'INT'{' or FLOAT' if allow_float else ''}. Received: dtype={dtype!r}"
            + ("" if allow_float else " (float entries load with QuantizationSimModel.load_encodings_to_sim)")
        )
    enc_type = _field(entry, "enc_type", where)
    if enc_type not in ("PER_TENSOR", "PER_CHANNEL"):
        _fail(f"{where} enc_type", "PER_TENSOR or PER_CHANNEL", enc_type)
    bitwidth = _bitwidth(_field(entry, "bw", where), where)
    symmetric = _bool(_field(entry, "is_sym", where), f"{where} is_sym")
    values = {}
    for key in ("scale", "offset"):
        raw = _field(entry, key, where)
        if not isinstance(raw, list) or not raw:
            _fail(f"{where} {key}", "a non-empty list of numbers", raw)
        values[key] = [_number(v, f"{where} {key}") for v in raw]
    scale, offset = values["scale"], values["offset"]
    if enc_type == "PER_TENSOR":
        if len(scale) != 1 or len(offset) != 1:
            _fail(where, "one scale and one offset for PER_TENSOR", f"{len(scale)} scales, {len(offset)} offsets")
        scale, offset = scale[0], offset[0]
    return name, _from_scale_offset(scale, offset, bitwidth, symmetric, where)


def from_dict(
    data: Mapping, *, allow_float: bool = False
) -> tuple[dict[str, Encoding | FloatEncoding], dict[str, Encoding | FloatEncoding]]:
    """Parses an AIMET encodings document into (activation encodings, param encodings).

    When an 0.6.1 entry carries min/max and scale/offset, they must describe the same grid:
    scale within a relative ``SCALE_RTOL`` of (max - min) / steps, offset = round(min / scale).

    Args:
        data: the parsed JSON document.
        allow_float: return float entries (``dtype`` float / FLOAT, bitwidth 16 or 32) as
            :class:`FloatEncoding`; when False (the default) they are an error, so every value
            returned is an :class:`Encoding`.

    Returns:
        ``(activations, params)``, each keyed by the file's tensor names.

    Raises:
        EncodingsFormatError: unknown version, malformed or self-contradictory entries, naming
            the tensor (a ``ValueError``).
    """
    if not isinstance(data, Mapping):
        raise EncodingsFormatError(f"Expected an encodings JSON object. Received: {type(data).__name__}")
    version = str(data.get("version", "0.6.1"))
    if version not in SUPPORTED_VERSIONS:
        raise EncodingsFormatError(
            f"Expected encoding version in {SUPPORTED_VERSIONS}. Received: version={version!r}"
        )
    acts_raw = data.get("activation_encodings", {} if version == "0.6.1" else [])
    params_raw = data.get("param_encodings", {} if version == "0.6.1" else [])
    if version == "0.6.1":
        if not isinstance(acts_raw, Mapping) or not isinstance(params_raw, Mapping):
            raise EncodingsFormatError(
                "Version 0.6.1 expects activation_encodings/param_encodings objects. Received: "
                f"{type(acts_raw).__name__}, {type(params_raw).__name__}"
            )
        acts = {n: _parse_061_entry(n, e, "activation", allow_float) for n, e in acts_raw.items()}
        params = {n: _parse_061_entry(n, e, "param", allow_float) for n, e in params_raw.items()}
    else:
        if not isinstance(acts_raw, list) or not isinstance(params_raw, list):
            raise EncodingsFormatError(
                "Version 1.0.0 expects activation_encodings/param_encodings lists. Received: "
                f"{type(acts_raw).__name__}, {type(params_raw).__name__}"
            )
        acts = dict(_parse_100_entry(e, "activation", allow_float) for e in acts_raw)
        params = dict(_parse_100_entry(e, "param", allow_float) for e in params_raw)
    return acts, params


def read_json(source: str | os.PathLike | Mapping) -> dict:
    """Reads an encodings JSON file (or passes a dict through), with clear errors.

    A file written by ``QuantizationSimModel.export`` is checked first, with the model file
    beside it, against the export's manifest (``aimet_tf.files.verify_bundle``): an interrupted
    export is finished, and files changed or mixed with another export's are refused.

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid JSON, or (``aimet_tf.files.BundleError``) files that do not match
            their export manifest.
    """
    if isinstance(source, Mapping):
        return dict(source)
    bundle = files.bundle_of(source, ".encodings")
    if bundle is not None:
        files.verify_bundle(*bundle)
    try:
        with open(source, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"Encodings file not found: {os.fspath(source)!r}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EncodingsFormatError(
            f"Encodings file {os.fspath(source)!r} is not valid JSON: {exc}. Expected an AIMET "
            "encodings JSON file."
        ) from exc


def _json_text(data: Any, where: str) -> str:
    try:
        return json.dumps(data, indent=2, sort_keys=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Expected JSON-serializable data without NaN/Inf for {where!r}: {exc}") from exc


def write_json(data: Any, path: str | os.PathLike) -> None:
    """Writes ``data`` as JSON to ``path`` (not atomic: for files inside a staging folder).

    Raises:
        ValueError: if ``data`` holds NaN/Inf or is not JSON-serializable.
    """
    text = _json_text(data, os.fspath(path))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json_atomic(data: Any, path: str | os.PathLike) -> None:
    """Writes ``data`` as JSON to ``path`` atomically (``aimet_tf.files.atomic_write``).

    Raises:
        ValueError: if ``data`` holds NaN/Inf or is not JSON-serializable, or the file name is not
            a plain name; ``path`` is then unchanged.
    """
    files.atomic_write(path, _json_text(data, os.fspath(path)))
