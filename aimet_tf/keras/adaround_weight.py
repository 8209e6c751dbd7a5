"""AIMET's ``aimet_tensorflow.keras.adaround_weight``: ``Adaround.apply_adaround`` and ``AdaroundParameters``.

``Adaround.apply_adaround(model, params, path, filename_prefix, default_param_bw=4,
default_quant_scheme=QuantScheme.post_training_tf_enhanced, config_file=None)`` returns the
AdaRounded model and writes ``<path>/<filename_prefix>.encodings`` for
``sim.set_and_freeze_param_encodings(encoding_path=...)``. As in AIMET, activation quantizers are
disabled while the rounding is learned. Differences: batch norms are folded first and the
returned model is the folded one (AIMET expects a folded model); the file is a full AIMET 0.6.1
encodings file (AIMET's holds only the ``param_encodings`` mapping; ``set_and_freeze_param_encodings``
reads both). The native ``aimet_tf.ptq.apply_adaround`` has the same positional arguments, the
measured-better defaults (scheme ``"auto"``, activations quantized) and more options.
"""

from __future__ import annotations

import os
from typing import Any

import keras

from aimet_tf.common.defs import QuantScheme
from aimet_tf.ptq.adaround import AdaroundParameters, apply_adaround

__all__ = ["Adaround", "AdaroundParameters"]


class Adaround:
    """AIMET's AdaRound entry point (a class holding one classmethod)."""

    @classmethod
    def apply_adaround(
        cls,
        model: keras.Model,
        params: AdaroundParameters,
        path: str | os.PathLike,
        filename_prefix: str,
        default_param_bw: int = 4,
        default_quant_scheme: QuantScheme | str = QuantScheme.post_training_tf_enhanced,
        config_file: Any = None,
    ) -> keras.Model:
        """Learns each Conv/Depthwise/Dense kernel's rounding; returns the AdaRounded model.

        Raises:
            as ``aimet_tf.ptq.apply_adaround``.
        """
        return apply_adaround(
            model,
            params,
            path,
            filename_prefix,
            default_param_bw,
            default_quant_scheme,
            config_file,
            quantize_activations=False,
        )
