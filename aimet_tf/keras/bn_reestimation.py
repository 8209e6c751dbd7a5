"""AIMET's ``aimet_tensorflow.keras.bn_reestimation``: ``reestimate_bn_stats(model, bn_re_estimation_dataset, bn_num_batches=100)``.

Returns a handle whose ``remove()`` restores the previous statistics. ``model`` may be
``sim.model`` (as AIMET's scripts pass), the sim itself, or a float model. The implementation is
``aimet_tf.qat.reestimate_bn_stats``.
"""

from aimet_tf.qat.bn_reestimation import reestimate_bn_stats

__all__ = ["reestimate_bn_stats"]
