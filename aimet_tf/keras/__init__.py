"""AIMET's Keras API (``aimet_tensorflow.keras``), laid out module for module.

A script written for AIMET runs here with its import lines changed from
``aimet_tensorflow.keras.<module>`` to ``aimet_tf.keras.<module>`` and from ``aimet_common`` to
``aimet_tf.common``. Every name these modules share with AIMET keeps AIMET's arguments, defaults,
return types and return order; where a call cannot mean here what it means in AIMET, it says so
(a warning or an error naming what happens instead). README's "AIMET Keras API" table lists every
module, call and difference.

The native modules (``aimet_tf.quantization``, ``aimet_tf.ptq``, ``aimet_tf.qat``...) hold the
implementations; these modules only adapt AIMET's call shapes to them.
"""
