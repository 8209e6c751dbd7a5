"""AIMET's ``aimet_tensorflow.keras.quant_analyzer.QuantAnalyzer``.

``QuantAnalyzer(model, forward_pass_callback: CallbackFunc, eval_callback: CallbackFunc)``,
``.analyze(quant_scheme=QuantScheme.post_training_tf_enhanced, rounding_mode='nearest',
default_param_bw=8, default_output_bw=8, config_file=None, results_dir='./tmp/')`` and
``.enable_per_layer_mse_loss(unlabeled_dataset, num_batches)``, as in AIMET. The implementation
is ``aimet_tf.analysis.quant_analyzer`` (its module docstring lists the files written); its
``analyze`` also returns the numbers it wrote (AIMET's returns None).
"""

from aimet_tf.analysis.quant_analyzer import QuantAnalyzer

__all__ = ["QuantAnalyzer"]
