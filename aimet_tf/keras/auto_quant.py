"""AIMET's older ``aimet_tensorflow.keras.auto_quant.AutoQuant`` (v1).

``AutoQuant(allowed_accuracy_drop, eval_callback, unlabeled_dataset, default_param_bw=8,
default_output_bw=8, default_quant_scheme=tf_enhanced, default_rounding_mode='nearest',
default_config_file=None)`` and ``.apply(fp32_model, results_dir='/tmp', cache_id=None) ->
(model, score, encoding_path)``. As in AIMET's v1, ``eval_callback(model, num_samples)`` is
called with ``num_samples=None`` (evaluate on the whole evaluation set). The flow is
``aimet_tf.ptq.auto_quant``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import keras

from aimet_tf.common.defs import QuantScheme
from aimet_tf.keras.auto_quant_v2 import _scheme_name
from aimet_tf.ptq.adaround import AdaroundParameters
from aimet_tf.ptq.auto_quant import auto_quantize

__all__ = ["AutoQuant"]


class AutoQuant:
    """AIMET's AutoQuant v1."""

    def __init__(
        self,
        allowed_accuracy_drop: float,
        eval_callback: Callable[[keras.Model, Optional[int]], float],
        unlabeled_dataset: Any,
        default_param_bw: int = 8,
        default_output_bw: int = 8,
        default_quant_scheme: QuantScheme = QuantScheme.post_training_tf_enhanced,
        default_rounding_mode: str = "nearest",
        default_config_file: str | None = None,
    ):
        if default_rounding_mode != "nearest":
            raise ValueError(f"Expected default_rounding_mode='nearest'. Received: {default_rounding_mode!r}")
        self.allowed_accuracy_drop = allowed_accuracy_drop
        self.eval_callback = eval_callback
        self.unlabeled_dataset = unlabeled_dataset
        self._settings = dict(param_bw=default_param_bw, output_bw=default_output_bw,
                              quant_scheme=_scheme_name(default_quant_scheme), config_file=default_config_file)
        self._adaround_params: AdaroundParameters | None = None

    def set_adaround_params(self, adaround_params: AdaroundParameters) -> None:
        self._adaround_params = adaround_params

    def apply(self, fp32_model: keras.Model, results_dir: str = "/tmp", cache_id: str | None = None):
        """Runs the flow on ``fp32_model``; returns ``(model, score, encoding_path)``."""
        result = auto_quantize(
            fp32_model, lambda model: self.eval_callback(model, None), self.unlabeled_dataset, self.allowed_accuracy_drop,
            results_dir=results_dir, cache_id=cache_id, adaround_params=self._adaround_params, **self._settings,
        )
        return result.sim.model, result.score, result.encoding_path
