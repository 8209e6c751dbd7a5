"""Post-training quantization techniques."""

from aimet_tf.ptq.adaround import AdaroundParameters, apply_adaround
from aimet_tf.ptq.batch_norm_fold import (
    FoldedPair,
    find_backward_foldable_pairs,
    find_foldable_pairs,
    fold_all_batch_norms,
    fold_all_batch_norms_to_scale,
    fold_batch_norms,
    fold_given_batch_norms,
)
from aimet_tf.ptq.bias_correction import BiasCorrectionReport, correct_bias
from aimet_tf.ptq.cle import EqualizationReport, equalize_model, equalize_model_with_report

__all__ = [
    "AdaroundParameters",
    "BiasCorrectionReport",
    "EqualizationReport",
    "FoldedPair",
    "apply_adaround",
    "correct_bias",
    "equalize_model",
    "equalize_model_with_report",
    "find_backward_foldable_pairs",
    "find_foldable_pairs",
    "fold_all_batch_norms",
    "fold_all_batch_norms_to_scale",
    "fold_batch_norms",
    "fold_given_batch_norms",
]
