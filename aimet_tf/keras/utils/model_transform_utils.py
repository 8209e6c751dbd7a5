"""AIMET's ``aimet_tensorflow.keras.utils.model_transform_utils``: ``replace_relu6_with_relu(model) -> model``.

AIMET edits the model in place; aimet_tf returns the new model (use the return value). The
implementation is ``aimet_tf.ptq.cle.replace_relu6_with_relu``.
"""

from aimet_tf.ptq.cle import replace_relu6_with_relu

__all__ = ["replace_relu6_with_relu"]
