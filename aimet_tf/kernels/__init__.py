"""Reference integer kernels of a fixed-point DSP target: numpy golden model, C++ TF ops, executor.

* `DspTarget` (`target.py`): the target's arithmetic choices (rounding of the requantize
  multiply, accumulator width, Add's left shift); `TFLITE_REFERENCE` is LiteRT's reference
  kernels.
* `fixed_point` / `reference`: the integer pipeline in numpy, the golden model.
* `ops`: the same ops as C++ TF custom ops, compiled on first use (`build.load_ops`).
* `IntegerExecutor`: runs an int8 / int4 TFLite model op by op through either, compares every
  layer with LiteRT (`compare_with_litert`) and wraps as a Keras layer (`as_keras_layer`).
"""

from aimet_tf.kernels import fixed_point, ops, reference
from aimet_tf.kernels.build import KernelBuildError, load_ops
from aimet_tf.kernels.executor import (
    SUPPORTED_OPERATORS,
    ComparisonReport,
    IntegerExecutor,
    LayerDifference,
    UnsupportedOperatorError,
    run_litert,
)
from aimet_tf.kernels.keras_layer import IntegerModelLayer
from aimet_tf.kernels.target import (
    FIXED_POINT_DSP,
    TFLITE_REFERENCE,
    TFLITE_SINGLE_ROUNDING,
    DspTarget,
    resolve_target,
)
from aimet_tf.kernels.tflite_model import TFLiteFormatError, TFLiteGraph, read_tflite, widen_int4_weights

__all__ = [
    "ComparisonReport",
    "DspTarget",
    "FIXED_POINT_DSP",
    "IntegerExecutor",
    "IntegerModelLayer",
    "KernelBuildError",
    "LayerDifference",
    "SUPPORTED_OPERATORS",
    "TFLITE_REFERENCE",
    "TFLITE_SINGLE_ROUNDING",
    "TFLiteFormatError",
    "TFLiteGraph",
    "UnsupportedOperatorError",
    "fixed_point",
    "load_ops",
    "ops",
    "read_tflite",
    "reference",
    "resolve_target",
    "run_litert",
    "widen_int4_weights",
]
