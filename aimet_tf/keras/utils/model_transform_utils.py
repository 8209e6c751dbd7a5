"""AIMET's ``aimet_tensorflow.keras.utils.model_transform_utils``.

``replace_relu6_with_relu(model, remain_fusing=False) -> (new_model, changes)``: AIMET's
signature and return order; ``model`` is not modified. The implementation is
``aimet_tf.ptq.cle.replace_relu6_with_relu``.
"""

from aimet_tf.ptq.cle import replace_relu6_with_relu

__all__ = ["replace_relu6_with_relu"]
