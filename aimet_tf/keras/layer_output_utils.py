"""AIMET's ``aimet_tensorflow.keras.layer_output_utils``: ``LayerOutputUtil(model, save_dir)``.

The implementation is ``aimet_tf.analysis.layer_outputs`` (AIMET's file layout; tensor names are
aimet_tf's encodings names, ``<layer>/output:0``, since Keras 3 has no TF op names).
"""

from aimet_tf.analysis.layer_outputs import LayerOutputUtil

__all__ = ["LayerOutputUtil"]
