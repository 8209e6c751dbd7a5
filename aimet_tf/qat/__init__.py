"""Quantization-aware training: fine-tune a ``QuantizationSimModel`` with ``sim.model.fit``.

The simulated model trains like any Keras model: static grids pass gradients to the float weights
with the straight-through estimator, range-learning schemes ("tf_range_learning",
"tf_enhanced_range_learning") also train every encoding min/max. This package adds the pieces
around the training loop:

* callbacks: ``FreezeBatchNormStats``, ``FreezeQuantizerRanges``, ``QuantizerRangeLogger``
  (TensorBoard), and their plain-function forms ``freeze_batch_norm_stats`` /
  ``freeze_quantizer_ranges``;
* ``reestimate_bn_stats``: BN statistics re-estimated in the quantized model, with a handle that
  restores the old ones;
* ``find_batch_norms`` / ``find_quantizers``: what those act on.

Example:
    >>> sim = QuantizationSimModel(model, "tf_enhanced_range_learning", default_param_bw=4,
    ...                            default_output_bw=8, config_file="htp")
    >>> sim.compute_encodings(calibration_images)
    >>> sim.model.compile(keras.optimizers.Adam(1e-4), loss, metrics=["accuracy"])
    >>> sim.model.fit(x, y, epochs=3, callbacks=[FreezeBatchNormStats(2), QuantizerRangeLogger("logs")])
    >>> reestimate_bn_stats(sim, x, bn_num_batches=100)
    >>> sim.export("out", "qat_model")
"""

from aimet_tf.qat.bn_reestimation import BNReestimationHandle, BNStats, reestimate_bn_stats
from aimet_tf.qat.callbacks import (
    BN_FREEZE_MODES,
    FreezeBatchNormStats,
    FreezeQuantizerRanges,
    QuantizerRangeLogger,
    freeze_batch_norm_stats,
    freeze_quantizer_ranges,
    histogram_buckets,
    range_tag,
)
from aimet_tf.qat.targets import find_batch_norms, find_quantizers, resolve_model

__all__ = [
    "BN_FREEZE_MODES",
    "BNReestimationHandle",
    "BNStats",
    "FreezeBatchNormStats",
    "FreezeQuantizerRanges",
    "QuantizerRangeLogger",
    "find_batch_norms",
    "find_quantizers",
    "freeze_batch_norm_stats",
    "freeze_quantizer_ranges",
    "histogram_buckets",
    "range_tag",
    "reestimate_bn_stats",
    "resolve_model",
]
