"""`DspTarget`: the integer arithmetic choices of a fixed-point target, in one place.

Every kernel in `aimet_tf.kernels` (the numpy golden model and the C++ TF ops) takes a
`DspTarget` and nothing else decides how it rounds or accumulates. The default,
`TFLITE_REFERENCE`, is the arithmetic of LiteRT's reference kernels
(`OpResolverType.BUILTIN_REF`) as shipped in ai-edge-litert, which the tests check bit for bit.

The requantize multiply. A real factor `M > 0` (e.g. `M = s_in * s_w / s_out`) is stored as an
int32 mantissa `m` in [2^30, 2^31) and a power-of-two exponent `e` with `M ~= m * 2^(e - 31)`.
Applying it to an int32 `x` can round once or twice:

* ``rounding="double"`` (TFLite's default build, gemmlowp's arithmetic)::

      l = max(e, 0), r = max(-e, 0)
      h = SRDHM(x * 2^l, m) = trunc((x * 2^l * m + nudge) / 2^31),  nudge = 2^30 if the product >= 0 else 1 - 2^30
      y = RDPOT(h, r) = floor(h / 2^r) + [h mod 2^r > (2^r - 1) / 2 rounded down + (h < 0)]

  i.e. a rounding high multiply (SRDHM = floor(x * 2^l * m / 2^31 + 1/2), saturating the single
  overflow case x * 2^l = m = -2^31), then a rounding right shift (RDPOT, ties away from zero).
* ``rounding="single"`` (TFLite built with ``TFLITE_SINGLE_ROUNDING``)::

      y = floor((x * m + 2^(30 - e)) / 2^(31 - e)),   -31 <= e <= 30

  one rounding, ties towards +infinity; `quantize_multiplier` then caps e at 30.

The accumulator. Convolutions and fully connected layers sum int8 x int8 products:
``accumulator_bits=32`` keeps TFLite's int32 accumulator, which wraps modulo 2^32 on
overflow; ``accumulator_bits=64`` sums exactly and saturates to int32 before the requantize
multiply (what a DSP with wide accumulators and a saturating narrow would do).

Fully connected layers. LiteRT's reference FULLY_CONNECTED kernel (ai-edge-litert 2.x) does not
use the fixed-point multiply: it requantizes in double precision,
``y = round(double(acc) * (double(s_x) * double(s_w) / double(s_y)))`` (ties away from zero),
which ``fully_connected_requantize="float64"`` reproduces. ``"fixed_point"`` applies the same
`rounding` multiply as the convolutions (what TFLite's optimized kernels and an integer-only DSP do).

Add. Both int8 inputs are shifted left by ``add_left_shift`` bits (20 in TFLite for int8) before
each is rescaled to the common scale 2 * max(s_1, s_2), so that the rescaling loses
at most 2^-20 relative precision.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = ["DspTarget", "TFLITE_REFERENCE", "TFLITE_SINGLE_ROUNDING", "FIXED_POINT_DSP", "resolve_target"]

Rounding = Literal["double", "single"]


@dataclasses.dataclass(frozen=True)
class DspTarget:
    """The arithmetic choices of an integer target.

    Attributes:
        name: a label for reports.
        rounding: "double" (rounding high multiply, then rounding shift: TFLite's default) or
            "single" (one 64-bit multiply and one rounding shift: TFLite's
            ``TFLITE_SINGLE_ROUNDING`` build).
        accumulator_bits: 32 (int32 accumulator, wraps modulo 2^32 like TFLite) or 64 (exact sum,
            saturated to int32 before requantization).
        add_left_shift: bits by which Add shifts its zero-point-corrected inputs before rescaling
            (TFLite: 20 for int8).
        fully_connected_requantize: "float64" (LiteRT's reference FULLY_CONNECTED: double-precision
            rescaling, rounded half away from zero) or "fixed_point" (the `rounding` multiply).

    Example:
        >>> DspTarget(rounding="single").rounding
        'single'
    """

    name: str = "tflite_reference"
    rounding: Rounding = "double"
    accumulator_bits: int = 32
    add_left_shift: int = 20
    fully_connected_requantize: Literal["float64", "fixed_point"] = "float64"

    def __post_init__(self):
        if self.rounding not in ("double", "single"):
            raise ValueError(f"Expected rounding 'double' or 'single'. Received: rounding={self.rounding!r}")
        if self.accumulator_bits not in (32, 64):
            raise ValueError(f"Expected accumulator_bits 32 or 64. Received: accumulator_bits={self.accumulator_bits!r}")
        if not isinstance(self.add_left_shift, int) or not 0 <= self.add_left_shift <= 22:
            # 22 keeps (255 << shift) inside int32 for the zero-point-corrected int8 inputs.
            raise ValueError(f"Expected add_left_shift an int in [0, 22]. Received: add_left_shift={self.add_left_shift!r}")
        if self.fully_connected_requantize not in ("float64", "fixed_point"):
            raise ValueError(
                "Expected fully_connected_requantize 'float64' or 'fixed_point'. "
                f"Received: fully_connected_requantize={self.fully_connected_requantize!r}"
            )


TFLITE_REFERENCE = DspTarget()
"""LiteRT's reference kernels (BUILTIN_REF) as shipped in ai-edge-litert: double rounding, int32
wrap, float64 rescaling in FULLY_CONNECTED."""

TFLITE_SINGLE_ROUNDING = DspTarget(name="tflite_single_rounding", rounding="single")
"""TFLite built with TFLITE_SINGLE_ROUNDING=1 (single rounding, int32 accumulator)."""

FIXED_POINT_DSP = DspTarget(name="fixed_point_dsp", fully_connected_requantize="fixed_point")
"""An integer-only target: every requantization is the double-rounding fixed-point multiply
(TFLite's optimized kernels' arithmetic), int32 accumulator."""


def resolve_target(target: DspTarget | str | None) -> DspTarget:
    """Turns None / a preset name / a `DspTarget` into a `DspTarget`.

    Args:
        target: None (TFLITE_REFERENCE), "tflite_reference", "tflite_single_rounding",
            "fixed_point_dsp", or a `DspTarget`.

    Returns:
        The target.

    Raises:
        ValueError: for an unknown preset name or a wrong type.
    """
    if target is None:
        return TFLITE_REFERENCE
    if isinstance(target, DspTarget):
        return target
    presets = {t.name: t for t in (TFLITE_REFERENCE, TFLITE_SINGLE_ROUNDING, FIXED_POINT_DSP)}
    if isinstance(target, str) and target in presets:
        return presets[target]
    raise ValueError(f"Expected a DspTarget or one of {sorted(presets)}. Received: target={target!r}")
