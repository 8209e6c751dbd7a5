"""Analysis of quantized models: per-layer outputs of the FP32 model and its sim, compared."""

from aimet_tf.analysis.layer_outputs import (
    LayerOutputDifference,
    LayerOutputUtil,
    collect_layer_outputs,
    compare_layer_outputs,
    layer_output_names,
    read_raw_outputs,
)

__all__ = [
    "LayerOutputDifference",
    "LayerOutputUtil",
    "collect_layer_outputs",
    "compare_layer_outputs",
    "layer_output_names",
    "read_raw_outputs",
]
