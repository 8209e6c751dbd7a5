"""aimet_tf.kernels.litert: the one LiteRT interpreter factory, and tables read off LiteRT's kernels."""

import numpy as np
import pytest

from aimet_tf.kernels.litert import KERNELS, interpreter, litert_table


def _rsqrt_float(s_in: float, z_in: int, s_out: float, z_out: int) -> np.ndarray:
    """Output codes of round(1 / sqrt(x) / s_out) + z_out for every int8 code from z_in up."""
    codes = np.arange(z_in, 128)
    x = (codes - z_in) * np.float64(s_in)
    with np.errstate(divide="ignore"):
        y = np.where(x > 0, 1.0 / np.sqrt(np.where(x > 0, x, 1.0)), np.inf)
    return np.clip(np.round(y / s_out) + z_out, -128, 127).astype(np.int64)


@pytest.mark.parametrize("kernels", KERNELS)
def test_rsqrt_table_is_one_over_sqrt_within_one_code(kernels):
    s_in, z_in, s_out, z_out = 0.0166, -128, 0.0607, -128
    table = litert_table("RSQRT", s_in, z_in, s_out, z_out, kernels)
    assert table.shape == (256,) and table.dtype == np.int8
    got = table[np.arange(z_in, 128) + 128].astype(np.int64)
    want = _rsqrt_float(s_in, z_in, s_out, z_out)
    # Code z_in is x = 0: 1/sqrt saturates at the top of the grid.
    assert got[0] == 127
    assert np.abs(got[1:] - want[1:]).max() <= 1
    # Monotone non-increasing: a larger input never gives a larger 1/sqrt.
    assert np.all(np.diff(got[1:]) <= 0)


def test_table_is_cached_but_returned_as_a_copy():
    first = litert_table("RSQRT", 0.02, -100, 0.05, -128, "reference")
    first[:] = 0
    again = litert_table("RSQRT", 0.02, -100, 0.05, -128, "reference")
    assert again.any()
    # Codes below the zero point (negative inputs) hold the zero point's output.
    assert np.all(again[: -100 + 128] == again[-100 + 128])


def test_bad_arguments_are_refused_with_what_was_received():
    with pytest.raises(ValueError, match=r"Expected op in .*Received: op='EXP'"):
        litert_table("EXP", 0.1, 0, 0.1, 0)
    with pytest.raises(ValueError, match=r"Expected z_out in \[-128, 127\]. Received: z_out=200"):
        litert_table("RSQRT", 0.1, 0, 0.1, 200)
    with pytest.raises(ValueError, match=r"Expected kernels in .*Received: kernels='xnnpack'"):
        interpreter(b"", "xnnpack")
