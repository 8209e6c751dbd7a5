"""AIMET's ``aimet_tensorflow.keras.quantsim`` module: the native ``QuantizationSimModel``."""

from aimet_tf.quantization.sim import QuantizationSimModel

__all__ = ["QuantizationSimModel"]
