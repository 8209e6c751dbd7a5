"""aimet_tf: model-efficiency toolkit for Keras 3 on TensorFlow."""

from aimet_tf.quantization import (
    Encoding,
    LayerSpec,
    ParamSpec,
    QuantizationSimModel,
    QuantizationWrapper,
    Quantizer,
    QuantScheme,
    compute_encoding,
    parse_quant_scheme,
    register_layer,
)

__version__ = "0.1.0"

__all__ = [
    "Encoding",
    "LayerSpec",
    "ParamSpec",
    "QuantScheme",
    "QuantizationSimModel",
    "QuantizationWrapper",
    "Quantizer",
    "compute_encoding",
    "parse_quant_scheme",
    "register_layer",
]
