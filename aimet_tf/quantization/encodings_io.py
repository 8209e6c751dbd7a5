"""AIMET encodings files: names, the 0.6.1 and 1.0.0 JSON layouts, atomic writes.

0.6.1: {"version", "activation_encodings": {name: [ENC, ...]}, "param_encodings": {name: [ENC...]},
"quantizer_args"}, ENC = {"bitwidth", "dtype": "int", "is_symmetric": "True"/"False", "max", "min",
"offset", "scale"}; one ENC per channel for per-channel parameters.
1.0.0: {"version", "activation_encodings": [ENC1], "param_encodings": [ENC1], "quantizer_args"},
ENC1 = {"name", "dtype": "INT", "enc_type": "PER_TENSOR"|"PER_CHANNEL", "bw", "is_sym",
"scale": [...], "offset": [...]}.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping

import numpy as np

from aimet_tf.quantization.primitives import Encoding, num_steps

__all__ = [
    "SUPPORTED_VERSIONS",
    "activation_name",
    "param_name",
    "to_dict",
    "from_dict",
    "read_json",
    "write_json_atomic",
]

SUPPORTED_VERSIONS = ("0.6.1", "1.0.0")


def activation_name(layer_name: str, kind: str, index: int) -> str:
    """Tensor name of a layer's ``kind`` ("input"/"output") number ``index``: "conv1/output:0"."""
    return f"{layer_name}/{kind}:{index}"


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


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("True", "False"):
        return value == "True"
    raise ValueError(f"{where}: expected a boolean or 'True'/'False'. Received: {value!r}")


def _field(entry: Mapping, key: str, where: str):
    if key not in entry:
        raise ValueError(f"{where}: missing key {key!r}. Received keys: {sorted(entry)}")
    return entry[key]


def _from_scale_offset(scale, offset, bitwidth: int, symmetric: bool, where: str) -> Encoding:
    scale = np.asarray(scale, dtype=np.float32)
    offset = np.asarray(offset, dtype=np.float32)
    if scale.shape != offset.shape or np.any(scale <= 0) or not np.all(np.isfinite(scale)):
        raise ValueError(
            f"{where}: expected positive finite scales matching offsets. Received: scale={scale}, "
            f"offset={offset}"
        )
    # A symmetric grid with offset -(2^(b-1) - 1) is the strict (narrow) one.
    strict = bool(symmetric and np.all(offset == -(2 ** (bitwidth - 1) - 1)))
    steps = num_steps(bitwidth, strict)
    return Encoding(scale * offset, scale * (offset + np.float32(steps)), bitwidth, symmetric, strict)


def _parse_061_entry(name: str, entries: Any, kind: str) -> Encoding:
    where = f"{kind} {name!r}"
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: expected a non-empty list of encodings. Received: {entries!r}")
    bitwidth = int(_field(entries[0], "bitwidth", where))
    symmetric = _bool(entries[0].get("is_symmetric", "False"), where)
    if all("min" in e and "max" in e for e in entries):
        # min/max are the exact nudged range the quantizer holds: prefer them over scale/offset,
        # whose product can differ from it in the last float bit.
        mins = np.asarray([float(e["min"]) for e in entries], dtype=np.float32)
        maxs = np.asarray([float(e["max"]) for e in entries], dtype=np.float32)
        strict = bool(symmetric and all(int(e.get("offset", 0)) == -(2 ** (bitwidth - 1) - 1) for e in entries))
        if len(entries) == 1:
            mins, maxs = mins[0], maxs[0]
        try:
            return Encoding(mins, maxs, bitwidth, symmetric, strict)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    scale = [float(_field(e, "scale", where)) for e in entries]
    offset = [float(_field(e, "offset", where)) for e in entries]
    if len(entries) == 1:
        return _from_scale_offset(scale[0], offset[0], bitwidth, symmetric, where)
    return _from_scale_offset(scale, offset, bitwidth, symmetric, where)


def _parse_100_entry(entry: Mapping, kind: str) -> tuple[str, Encoding]:
    name = _field(entry, "name", kind)
    where = f"{kind} {name!r}"
    dtype = entry.get("dtype", "INT")
    if dtype != "INT":
        raise ValueError(f"{where}: only integer encodings are supported. Received: dtype={dtype!r}")
    enc_type = _field(entry, "enc_type", where)
    if enc_type not in ("PER_TENSOR", "PER_CHANNEL"):
        raise ValueError(
            f"{where}: expected enc_type PER_TENSOR or PER_CHANNEL. Received: enc_type={enc_type!r}"
        )
    scale = _field(entry, "scale", where)
    offset = _field(entry, "offset", where)
    bitwidth = int(_field(entry, "bw", where))
    symmetric = _bool(_field(entry, "is_sym", where), where)
    if enc_type == "PER_TENSOR":
        if len(scale) != 1 or len(offset) != 1:
            raise ValueError(f"{where}: PER_TENSOR expects one scale and offset. Received: {len(scale)}")
        scale, offset = scale[0], offset[0]
    return name, _from_scale_offset(scale, offset, bitwidth, symmetric, where)


def from_dict(data: Mapping) -> tuple[dict[str, Encoding], dict[str, Encoding]]:
    """Parses an AIMET encodings document into (activation encodings, param encodings).

    Raises:
        ValueError: unknown version or malformed entries, naming the tensor.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"Expected an encodings JSON object. Received: {type(data).__name__}")
    version = str(data.get("version", "0.6.1"))
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"Expected encoding version in {SUPPORTED_VERSIONS}. Received: version={version!r}")
    acts_raw = data.get("activation_encodings", {} if version == "0.6.1" else [])
    params_raw = data.get("param_encodings", {} if version == "0.6.1" else [])
    if version == "0.6.1":
        if not isinstance(acts_raw, Mapping) or not isinstance(params_raw, Mapping):
            raise ValueError("Version 0.6.1 expects activation_encodings/param_encodings objects.")
        acts = {n: _parse_061_entry(n, e, "activation") for n, e in acts_raw.items()}
        params = {n: _parse_061_entry(n, e, "param") for n, e in params_raw.items()}
    else:
        if not isinstance(acts_raw, list) or not isinstance(params_raw, list):
            raise ValueError("Version 1.0.0 expects activation_encodings/param_encodings lists.")
        acts = dict(_parse_100_entry(e, "activation") for e in acts_raw)
        params = dict(_parse_100_entry(e, "param") for e in params_raw)
    return acts, params


def read_json(source: str | os.PathLike | Mapping) -> dict:
    """Reads an encodings JSON file (or passes a dict through), with clear errors."""
    if isinstance(source, Mapping):
        return dict(source)
    try:
        with open(source, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"Encodings file not found: {os.fspath(source)!r}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"Encodings file {os.fspath(source)!r} is not valid JSON (line {exc.lineno}, column "
            f"{exc.colno}): {exc.msg}"
        ) from exc


def write_json_atomic(data: Any, path: str | os.PathLike) -> None:
    """Writes JSON to a temporary file in the same folder, then renames it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False, allow_nan=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

