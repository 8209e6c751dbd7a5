"""AIMET's ``aimet_common.defs``: the enums and small records AIMET's Keras API takes.

``QuantScheme`` is aimet_tf's own enum, which holds AIMET's members with AIMET's meaning (and adds
aimet_tf's schemes); ``QuantizationDataType`` and ``CallbackFunc`` have AIMET's shapes.
"""

from __future__ import annotations

import enum
from typing import Any, Callable

from aimet_tf.quantization.analyzers import QuantScheme

__all__ = ["CallbackFunc", "QuantScheme", "QuantizationDataType"]


class QuantizationDataType(enum.Enum):
    """AIMET's data types of a quantizer: ``int`` (fixed point) or ``float`` (float16 passthrough)."""

    undefined = 0
    int = 1
    float = 2


class CallbackFunc:
    """A function and the argument it is called with: ``func(model, func_callback_args)``.

    AIMET's ``CallbackFunc``: AIMET's APIs that take a forward-pass or evaluation callback accept one.

    Args:
        func: called as ``func(model, func_callback_args)``.
        func_callback_args: the second argument (any object; None if the function needs none).

    Raises:
        TypeError: if ``func`` is not callable.
    """

    def __init__(self, func: Callable[[Any, Any], Any], func_callback_args: Any = None):
        if not callable(func):
            raise TypeError(
                f"Expected a callable func(model, func_callback_args). Received: {func!r} "
                f"(type {type(func).__name__})"
            )
        self.func = func
        self.func_callback_args = func_callback_args

    def __repr__(self) -> str:
        return f"CallbackFunc({getattr(self.func, '__name__', self.func)!r}, {self.func_callback_args!r})"
