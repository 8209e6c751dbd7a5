"""AIMET's ``aimet_tensorflow.keras.model_preparer``: ``prepare_model(original_model, input_layer=None)``.

Returns a functional model in which every ``keras.ops`` call, Lambda and composite layer is a
layer of its own (``aimet_tf.graph.prepare_model``).
"""

from aimet_tf.graph import prepare_model

__all__ = ["prepare_model"]
