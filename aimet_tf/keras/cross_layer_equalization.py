"""AIMET's ``aimet_tensorflow.keras.cross_layer_equalization``: ``equalize_model(model) -> model``.

BN fold, ReLU6 -> ReLU, cross-layer scaling and high-bias fold, as AIMET's; the report of every
pair equalized or skipped is available from ``aimet_tf.ptq.equalize_model_with_report``.
AIMET's step-by-step building blocks (``CrossLayerScaling``, ``HighBiasFold``, ``ClsSetInfo``) are
not offered yet (README, AIMET Keras API table).
"""

from aimet_tf.ptq.cle import equalize_model

__all__ = ["equalize_model"]
