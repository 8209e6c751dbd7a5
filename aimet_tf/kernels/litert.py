"""LiteRT, as aimet_tf runs it: the interpreter for each op resolver, and tables read off its kernels.

``interpreter`` opens a .tflite file (or its bytes) under one of the op resolvers in ``KERNELS``;
everything in aimet_tf that runs LiteRT goes through it.

An int8 elementwise op (RSQRT, ...) maps each of the 256 input codes to one output code, given the
input and output grids. Where the arithmetic of a kernel is not known exactly (XNNPACK's RSQRT,
which the default op resolver runs, differs from 1 / sqrt in float on ~0.2% of codes), the
simulation uses the table that LiteRT itself computes (``litert_table``): a one-operator model with
the same grids is run on every valid input code under the requested op resolver. Tables are cached
per (op, grids, resolver) in the process.

Example:
    >>> table = litert_table("RSQRT", 0.0166, -128, 0.00607, -128, "default")
    >>> table.shape, table.dtype
    ((256,), dtype('int8'))
"""

from __future__ import annotations

import functools
import os

import numpy as np

__all__ = ["KERNELS", "RESOLVERS", "interpreter", "litert_table", "TABLE_OPS"]

KERNELS = ("default", "builtin", "reference")
"""Op resolvers: "default" (builtin kernels + the XNNPACK delegate, what an app gets),
"builtin" (optimized builtin kernels, no delegate), "reference" (BUILTIN_REF: the plain
reference kernels)."""

RESOLVERS = {"default": "AUTO", "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "reference": "BUILTIN_REF"}
"""The ``ai_edge_litert.interpreter.OpResolverType`` each of ``KERNELS`` opens LiteRT with."""

TABLE_OPS = ("RSQRT",)
"""Ops whose tables can be read (int8 in, int8 out, one input)."""


def interpreter(tflite_path: str | os.PathLike | bytes, kernels: str, preserve: bool = False):
    """A LiteRT interpreter (not yet allocated) for a .tflite path or its bytes, on ``kernels``.

    ``preserve`` keeps every intermediate tensor readable after ``invoke`` (for per-tensor compares).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if kernels not in RESOLVERS:
        raise ValueError(f"Expected kernels in {KERNELS}. Received: kernels={kernels!r}")
    source = (
        {"model_content": bytes(tflite_path)}
        if isinstance(tflite_path, (bytes, bytearray))
        else {"model_path": os.fspath(tflite_path)}
    )
    return Interpreter(
        **source,
        experimental_op_resolver_type=getattr(OpResolverType, RESOLVERS[kernels]),
        experimental_preserve_all_tensors=preserve,
    )


def litert_table(op: str, s_in: float, z_in: int, s_out: float, z_out: int, kernels: str = "default") -> np.ndarray:
    """The output code of ``op`` for every int8 input code, as LiteRT computes it.

    Args:
        op: one of ``TABLE_OPS``.
        s_in, z_in: the input grid (float32 scale, int8 zero point).
        s_out, z_out: the output grid.
        kernels: LiteRT op resolver, as ``verify_tflite`` names them ("default", "builtin",
            "reference").

    Returns:
        int8 [256]: entry i is the output for input code i - 128. Codes where the op is not
        defined (RSQRT below the zero point: a negative value) hold the output code of the zero
        point.

    Raises:
        ValueError: for an op outside ``TABLE_OPS`` or a zero point outside int8.
    """
    if op not in TABLE_OPS:
        raise ValueError(f"Expected op in {TABLE_OPS}. Received: op={op!r}")
    for name, z in (("z_in", z_in), ("z_out", z_out)):
        if not -128 <= int(z) <= 127:
            raise ValueError(f"Expected {name} in [-128, 127]. Received: {name}={z}")
    key = (op, float(np.float32(s_in)), int(z_in), float(np.float32(s_out)), int(z_out), kernels)
    return _table(*key).copy()


@functools.lru_cache(maxsize=4096)
def _table(op: str, s_in: float, z_in: int, s_out: float, z_out: int, kernels: str) -> np.ndarray:
    from aimet_tf.kernels.tflite_model import op_model

    first = z_in if op == "RSQRT" else -128  # RSQRT is defined from the zero point up
    codes = np.arange(first, 128, dtype=np.int64).astype(np.int8)
    spec_in = {"shape": [codes.size], "dtype": np.int8, "scale": s_in, "zero_point": z_in}
    spec_out = {"shape": [codes.size], "dtype": np.int8, "scale": s_out, "zero_point": z_out}
    runner = interpreter(op_model(op, [spec_in], [spec_out]), kernels)
    runner.allocate_tensors()
    runner.set_tensor(runner.get_input_details()[0]["index"], codes)
    runner.invoke()
    out = runner.get_tensor(runner.get_output_details()[0]["index"]).astype(np.int8)
    table = np.full(256, out[0], np.int8)
    table[codes.astype(np.int64) + 128] = out
    return table
