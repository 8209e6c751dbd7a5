"""Issue 4 benchmark: exported int8 / int4 TFLite vs the simulation and vs TFLite's own PTQ.

For the bundled Fashion-MNIST model (10k test images) and the MLTK models (their real inputs, even
indices calibrate, odd indices score): top-1 agreement of the .tflite with the simulation, output
elements identical / within one step, file sizes beside TFLite's own int8 PTQ of the same model with
the same calibration images, accuracy, and LiteRT latency at batch 1 (int8 vs float).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from aimet_tf import datasets, metrics
from aimet_tf.export import export_tflite, measure_latency, prepare_model_for_tflite, run_tflite, verify_tflite
from aimet_tf.export.baselines import tflite_float, tflite_ptq_int8
from aimet_tf.quantization import QuantizationSimModel
from aimet_tf.testing.mltk_models import MLTK_MODEL_NAMES, load_mltk_model
from aimet_tf.testing.real_inputs import real_inputs
from benchmarks.bench_fidelity import load_photos, unseen_views


def _unseen(label: str, x_scored: np.ndarray, photos) -> np.ndarray:
    """Inputs from another distribution than calibration (see bench_fidelity): fresh photo views
    for the image models, rescaled and shifted features for the others, on half steps."""
    rng = np.random.default_rng(3)
    if label.startswith("resnet8"):
        return (unseen_views(photos, 32, per_photo=2) - 128.0) / 128.0
    if label.startswith("vww_mobilenetv1"):
        return unseen_views(photos, 96, per_photo=2)
    gain = rng.uniform(0.7, 1.3, (len(x_scored),) + (1,) * (x_scored.ndim - 1))
    lo, hi = float(x_scored.min()), float(x_scored.max())
    offset = rng.uniform(-0.1, 0.1, gain.shape) * (hi - lo)
    half_step = (hi - lo) / 510.0
    shifted = np.round((x_scored * gain + offset) / half_step) * half_step
    return np.clip(shifted, lo, hi).astype(np.float32)


def _cases():
    x_test, y_test = datasets.load_fashion_mnist("test")
    x_cal, _ = datasets.load_fashion_mnist("calibration")
    yield "fashion_mnist_cnn (bundled)", datasets.load_bundled_model(), x_cal[:1000], x_test, y_test
    for name in MLTK_MODEL_NAMES:
        x = real_inputs(name)
        yield f"{name} (MLTK)", load_mltk_model(name).keras_model, x[0::2], x[1::2], None


def _write(content: bytes, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(content)
    return path


def run() -> str:
    fidelity = [
        "| model | weights | scored inputs | top-1 agreement sim vs .tflite % | outputs identical % | within one step % | max steps apart | unseen inputs: outputs identical % (max steps) | .tflite KB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    peers = [
        "| model | ours int8 KB | TFLite PTQ int8 KB | ours int4 KB | int4 saving, bytes per 4-bit weight | ours int8 acc % | TFLite PTQ acc % | latency int8 / float ms (batch 1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    photos = load_photos()
    with tempfile.TemporaryDirectory() as folder:
        for label, model, x_cal, x_eval, labels in _cases():
            x_unseen = _unseen(label, x_eval, photos)
            prepared = prepare_model_for_tflite(model)
            sizes, accuracy, four_bit_weights = {}, {}, 0
            for bw in (8, 4):
                sim = QuantizationSimModel(prepared, quant_scheme="tf_enhanced", default_param_bw=bw,
                                           config_file="tflite")
                sim.compute_encodings(x_cal, batch_size=64)
                path = export_tflite(sim, os.path.join(folder, f"ours_w{bw}.tflite"))
                report = verify_tflite(sim, path, x_eval, labels=labels, batch_size=64)
                unseen = verify_tflite(sim, path, x_unseen, batch_size=64)
                sizes[bw] = report.file_size_bytes
                accuracy[bw] = report.accuracy_tflite
                if bw == 4:
                    four_bit_weights = sum(int(np.prod(v.shape)) for _, q, v in sim.param_quantizers()
                                           if q.enabled and q.bitwidth == 4)
                    latency_w8 = measure_latency(os.path.join(folder, "ours_w8.tflite"))
                fidelity.append(
                    f"| {label} | int{bw} | {report.num_samples} | {100 * report.top1_agreement:.2f} | "
                    f"{100 * report.exact_fraction:.3f} | {100 * report.within_one_step:.3f} | "
                    f"{report.max_step_difference:.0f} | {100 * unseen.exact_fraction:.3f} "
                    f"({unseen.max_step_difference:.0f}) of {unseen.num_samples} | {report.file_size_bytes / 1024:.1f} |"
                )
            ptq = tflite_ptq_int8(model, x_cal)
            float_path = _write(tflite_float(model), folder, "float.tflite")
            ptq_acc = ""
            if labels is not None:
                ptq_acc = f"{100 * metrics.top1_accuracy(run_tflite(ptq, x_eval)[0], labels):.2f}"
            ours_acc = "" if accuracy[8] is None else f"{100 * accuracy[8]:.2f}"
            saving = (sizes[8] - sizes[4]) / max(four_bit_weights, 1)
            peers.append(
                f"| {label} | {sizes[8] / 1024:.1f} | {len(ptq) / 1024:.1f} | {sizes[4] / 1024:.1f} | "
                f"{saving:.3f} | {ours_acc} | {ptq_acc} | {latency_w8:.3f} / {measure_latency(float_path):.3f} |"
            )
    return "\n".join([
        "## TFLite export: the .tflite reproduces the simulation (issue 4)",
        "",
        "Sim built on `prepare_model_for_tflite(model)` (BNs folded), `tf_enhanced`, `tflite` config "
        "(per-channel int8/int4 conv and Dense weights), exported with `export_tflite` and run "
        "in ai-edge-litert's default kernels. Fashion-MNIST: 1,000 calibration images, 10k test "
        "images. MLTK models: their real inputs, even indices calibrate, odd indices score. Unseen "
        "inputs come from another distribution than calibration: fresh random crops of the OpenCV "
        "photos (plain bilinear, gain/offset, half pixels; `bench_fidelity.unseen_views`) for the "
        "image models, the scored inputs rescaled (x0.7-1.3) and shifted on half steps for the others.",
        "",
        *fidelity,
        "",
        "Beside TFLite's own full-integer PTQ of the same float model with the same calibration "
        "inputs (`aimet_tf.export.baselines.tflite_ptq_int8`). Accuracy only where labels exist. "
        "int4 saving = (int8 file - int4 file) / number of 4-bit weights (goal >= 0.45).",
        "",
        *peers,
    ])
