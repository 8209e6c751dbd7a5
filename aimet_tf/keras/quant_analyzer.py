"""AIMET's ``aimet_tensorflow.keras.quant_analyzer.QuantAnalyzer``.

``QuantAnalyzer(model, forward_pass_callback: CallbackFunc, eval_callback: CallbackFunc)``,
``.analyze(quant_scheme=QuantScheme.post_training_tf_enhanced, rounding_mode='nearest',
default_param_bw=8, default_output_bw=8, config_file=None, results_dir='./tmp/')`` and
``.enable_per_layer_mse_loss(unlabeled_dataset, num_batches)``, as in AIMET; ``analyze`` returns
None, as AIMET's (the results are the files in ``results_dir``; the native
``aimet_tf.analysis.quant_analyzer.QuantAnalyzer.analyze`` also returns the numbers).
"""

from __future__ import annotations

import os
from typing import Any

from aimet_tf.analysis import quant_analyzer as _native
from aimet_tf.common.defs import QuantScheme

__all__ = ["QuantAnalyzer"]


class QuantAnalyzer(_native.QuantAnalyzer):
    """AIMET's QuantAnalyzer (see the native class for what it writes)."""

    def analyze(
        self,
        quant_scheme: Any = QuantScheme.post_training_tf_enhanced,
        rounding_mode: str = "nearest",
        default_param_bw: int = 8,
        default_output_bw: int = 8,
        config_file: Any = None,
        results_dir: str | os.PathLike = "./tmp/",
    ) -> None:
        """Writes every analysis into ``results_dir``; returns None (AIMET's contract)."""
        super().analyze(quant_scheme, rounding_mode, default_param_bw, default_output_bw, config_file, results_dir)
