"""AIMET's ``aimet_tensorflow.keras.quant_sim.qc_quantize_wrapper``.

``QcQuantizeWrapper`` is aimet_tf's ``QuantizationWrapper`` (the class of every wrapper in
``sim.quant_wrappers()``), so ``isinstance(layer, QcQuantizeWrapper)`` finds the wrappers of a
sim's model. Its quantizer lists and ``_layer_to_wrap`` are AIMET's (README, AIMET Keras API).
"""

from aimet_tf.quantization.wrapper import QuantizationWrapper as QcQuantizeWrapper

__all__ = ["QcQuantizeWrapper"]
