"""Export of calibrated simulations: full-integer TFLite (int8 / int4) and its fidelity check.

Typical flow::

    from aimet_tf import QuantizationSimModel
    from aimet_tf.export import (TFLITE_CONFIG, export_tflite, prepare_model_for_tflite,
                                 verify_tflite)

    model = prepare_model_for_tflite(float_model)        # fold BNs, split separable convs
    sim = QuantizationSimModel(model, config_file=TFLITE_CONFIG, default_param_bw=8)
    sim.compute_encodings(calibration_images)
    export_tflite(sim, "model.tflite")                   # also makes sim model TFLite's kernels
    print(verify_tflite(sim, "model.tflite", test_images).summary())
"""

from aimet_tf.export.prepare import (
    KERNEL_TARGETS,
    TFLITE_CONFIG,
    TflitePreparation,
    binary_merges,
    kernel_target_of,
    model_input_quantizers,
    prepare_model_for_tflite,
    prepare_sim_for_tflite,
    split_separable_convs,
)
from aimet_tf.export.tflite import IO_TYPES, TfliteExportError, check_tflite_exportable, export_tflite
from aimet_tf.export.verify import KERNELS, FidelityReport, measure_latency, run_tflite, verify_tflite

__all__ = [
    "KERNEL_TARGETS",
    "kernel_target_of",
    "model_input_quantizers",
    "IO_TYPES",
    "KERNELS",
    "TFLITE_CONFIG",
    "FidelityReport",
    "TfliteExportError",
    "TflitePreparation",
    "binary_merges",
    "check_tflite_exportable",
    "export_tflite",
    "measure_latency",
    "prepare_model_for_tflite",
    "prepare_sim_for_tflite",
    "run_tflite",
    "split_separable_convs",
    "verify_tflite",
]
