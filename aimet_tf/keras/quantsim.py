"""AIMET's ``aimet_tensorflow.keras.quantsim``: ``QuantizationSimModel`` with AIMET's signature.

The class is the native ``aimet_tf.QuantizationSimModel`` (one implementation) with AIMET's
constructor defaults (``quant_scheme='tf_enhanced'``, ``default_data_type=QuantizationDataType.int``)
and AIMET's non-strict ``load_encodings_to_sim``. Every other method is the native one, which
already has AIMET's names and argument order: ``compute_encodings(forward_pass_callback,
forward_pass_callback_args)``, ``export(path, filename_prefix, custom_objects=None,
convert_to_pb=True)``, ``set_and_freeze_param_encodings(encoding_path)``, ``quant_wrappers()``,
``get_quant_wrapper_for_layer_name(layer_name)``, ``set_percentile_value(percentile_value)``, and
``sim.model``.

Example (AIMET's code, with ``aimet_tensorflow.keras`` spelled ``aimet_tf.keras``):
    >>> from aimet_tf.keras.quantsim import QuantizationSimModel
    >>> from aimet_tf.common.defs import QuantScheme
    >>> sim = QuantizationSimModel(model, quant_scheme=QuantScheme.post_training_tf_enhanced)
    >>> sim.compute_encodings(forward_pass_callback=pass_calibration_data, forward_pass_callback_args=None)
    >>> sim.export(path="./", filename_prefix="model")
"""

from __future__ import annotations

import os
from typing import Any

import keras

from aimet_tf.common.defs import QuantizationDataType, QuantScheme
from aimet_tf.quantization import sim as native

__all__ = ["QuantizationSimModel"]


def _data_type_name(default_data_type: Any) -> str:
    """The native sim's data type name for AIMET's ``default_data_type``.

    Args:
        default_data_type: ``QuantizationDataType.int`` (also accepted: "int").

    Returns:
        "int".

    Raises:
        ValueError: for ``QuantizationDataType.float`` (float16 simulation is not supported) or
            any other value.
    """
    if default_data_type in (QuantizationDataType.int, "int"):
        return "int"
    if default_data_type in (QuantizationDataType.float, "float"):
        raise ValueError(
            "Expected default_data_type=QuantizationDataType.int: aimet_tf simulates integer "
            "quantization only, float (float16) simulation is not supported. Received: "
            f"default_data_type={default_data_type!r}"
        )
    raise ValueError(
        "Expected default_data_type=QuantizationDataType.int. Received: "
        f"default_data_type={default_data_type!r}"
    )


class QuantizationSimModel(native.QuantizationSimModel):
    """AIMET's ``QuantizationSimModel``: the native sim with AIMET's defaults.

    Args:
        model: the Keras model to simulate (not modified).
        quant_scheme: AIMET's default "tf_enhanced"; any ``QuantScheme`` or its name.
        rounding_mode: "nearest".
        default_output_bw: activation bitwidth.
        default_param_bw: parameter bitwidth.
        in_place: only False (the original model is never modified).
        config_file: hardware config (None: AIMET's default config).
        default_data_type: ``QuantizationDataType.int``.

    Raises:
        ValueError: as the native sim, and for ``QuantizationDataType.float``.
    """

    def __init__(
        self,
        model: keras.Model,
        quant_scheme: str | QuantScheme = "tf_enhanced",
        rounding_mode: str = "nearest",
        default_output_bw: int = 8,
        default_param_bw: int = 8,
        in_place: bool = False,
        config_file: Any = None,
        default_data_type: QuantizationDataType = QuantizationDataType.int,
    ):
        super().__init__(
            model,
            quant_scheme=quant_scheme,
            rounding_mode=rounding_mode,
            default_output_bw=default_output_bw,
            default_param_bw=default_param_bw,
            in_place=in_place,
            config_file=config_file,
            default_data_type=_data_type_name(default_data_type),
        )

    def load_encodings_to_sim(self, encoding_file_path: str | os.PathLike | dict, *, strict: bool = False) -> None:
        """Loads AIMET encodings into the sim, AIMET's way by default: quantizers without an
        encoding in the file are disabled.

        Args:
            encoding_file_path: a JSON file path or the parsed dict.
            strict: aimet_tf's option (not AIMET's): True requires an encoding for every enabled
                quantizer, as the native method's default.

        Raises:
            ValueError: as the native ``load_encodings_to_sim``.
        """
        super().load_encodings_to_sim(encoding_file_path, strict=strict)
