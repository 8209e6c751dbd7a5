"""Quantization simulation: primitives, analyzers, quantizers, wrappers, config, the sim."""

from aimet_tf.quantization.analyzers import QuantScheme, parse_quant_scheme
from aimet_tf.quantization.primitives import Encoding, compute_encoding
from aimet_tf.quantization.quantizers import Quantizer
from aimet_tf.quantization.registry import LayerSpec, ParamSpec, register_layer
from aimet_tf.quantization.sim import QuantizationSimModel
from aimet_tf.quantization.wrapper import QuantizationWrapper

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
