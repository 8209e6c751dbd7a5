"""Small, exact metrics shared by the scripts, benchmarks and fidelity checks."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = ["checked_score", "top1_accuracy", "top1_agreement", "sqnr_db", "model_weight_bytes"]


def checked_score(value: Any, where: str) -> float:
    """An evaluation callback's return value as a float, or TypeError/ValueError naming ``where``.

    Raises:
        TypeError: for anything but a real number (bool included).
        ValueError: for NaN or an infinity.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected eval_callback to return a number ({where}). Received: {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Expected eval_callback to return a finite number ({where}). Received: {value}")
    return value


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax equals the label.

    Raises:
        ValueError: if the row counts differ.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Expected one label per row. Received: logits.shape={logits.shape}, labels.shape={labels.shape}"
        )
    return float(np.mean(np.argmax(logits.reshape(len(labels), -1), axis=-1) == labels))


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows where two models pick the same class."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"Expected outputs of the same shape. Received: {a.shape} and {b.shape}")
    n = a.shape[0]
    return float(np.mean(np.argmax(a.reshape(n, -1), -1) == np.argmax(b.reshape(n, -1), -1)))


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio: 10 log10(sum(ref^2) / sum((ref - test)^2)), in dB.

    Returns inf when the two are identical.
    """
    ref = np.asarray(reference, np.float64)
    err = ref - np.asarray(test, np.float64)
    noise = float(np.sum(err * err))
    if noise == 0.0:
        return float("inf")
    return float(10.0 * np.log10(float(np.sum(ref * ref)) / noise))


def model_weight_bytes(num_params_by_bitwidth: dict[int, int], float_params: int = 0) -> int:
    """Bytes to store weights: sum(count * bitwidth / 8), rounded up, plus 4 bytes per float param."""
    bits = sum(int(b) * int(n) for b, n in num_params_by_bitwidth.items())
    return int(-(-bits // 8)) + 4 * int(float_params)
