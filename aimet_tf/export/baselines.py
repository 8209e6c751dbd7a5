"""Reference conversions to compare an export with: TFLite's own PTQ int8 and the float model."""

from __future__ import annotations

import contextlib
import io

import keras
import numpy as np

__all__ = ["tflite_ptq_int8", "tflite_ptq_16x8", "tflite_float"]


def tflite_ptq_int8(model: keras.Model, calibration: np.ndarray, int8_io: bool = False) -> bytes:
    """TFLite's own full-integer post-training quantization (int8; float model I/O unless
    ``int8_io``).

    The representative dataset yields the calibration images one at a time, as TFLite's guide
    does; the converter picks every range itself.

    Args:
        model: float Keras model.
        calibration: float32 [N, ...] calibration inputs.
        int8_io: make the model's input and output int8 tensors too.

    Returns:
        The .tflite flatbuffer.
    """
    import tensorflow as tf

    return _ptq(model, calibration, tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.int8 if int8_io else None)


def tflite_ptq_16x8(model: keras.Model, calibration: np.ndarray, int16_io: bool = False) -> bytes:
    """TFLite's own 16x8 post-training quantization: int16 activations, int8 weights
    (``EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8``; float I/O unless
    ``int16_io``).

    The representative dataset yields the calibration images one at a time, as in
    ``tflite_ptq_int8``. The converter raises when an op has no 16x8 kernel (measured on the
    bundled ViT: ``RuntimeError: Quantization to 16x8-bit not yet supported for op: 'NEG'``).

    Args:
        model: float Keras model.
        calibration: float32 [N, ...] calibration inputs.
        int16_io: make the model's input and output int16 tensors too.

    Returns:
        The .tflite flatbuffer.
    """
    import tensorflow as tf

    return _ptq(model, calibration, tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                tf.int16 if int16_io else None)


def _ptq(model: keras.Model, calibration: np.ndarray, ops_set, io_dtype) -> bytes:
    """TFLite's post-training quantization with one op set; the model's I/O in ``io_dtype``
    (None: float). The representative dataset yields the calibration inputs one at a time."""
    import tensorflow as tf

    calibration = np.asarray(calibration, np.float32)
    if len(calibration) == 0:
        raise ValueError("Expected at least one calibration input. Received: an empty array.")

    def representative():
        for i in range(len(calibration)):
            yield [calibration[i : i + 1]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [ops_set]
    if io_dtype is not None:
        converter.inference_input_type = io_dtype
        converter.inference_output_type = io_dtype
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def tflite_float(model: keras.Model) -> bytes:
    """The float32 .tflite conversion of ``model``."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()
