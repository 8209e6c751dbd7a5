r"""The main job: quantize the bundled Fashion-MNIST model on bundled real data and report.

Loads the bundled FP32 CNN and the bundled Fashion-MNIST data, calibrates on the calibration split
(2,000 train images, never scored), simulates W8A8 and W4A8 for a TFLite int8 target (BNs folded,
per-channel int8/int4 weights) and W4A8 with AdaRound, exports each to a full-integer .tflite, runs
it in LiteRT and prints
accuracy on the full 10k test split, sizes, and how exactly the .tflite reproduces the simulation;
the AIMET encodings and .tflite files are written to --output_dir.

Usage:
    python examples/quickstart.py [--output_dir=quickstart_out] [--config=htp]
    aimet-tf-quickstart            # the same, installed as a console command
"""

from __future__ import annotations

import dataclasses
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from aimet_tf import datasets, metrics  # noqa: E402
from aimet_tf.export import export_tflite, prepare_model_for_tflite, verify_tflite  # noqa: E402
from aimet_tf.ptq import AdaroundParameters, apply_adaround, equalize_model_with_report, fold_batch_norms  # noqa: E402
from aimet_tf.quantization import QuantizationSimModel  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "quickstart_out", "Where encodings are written.")
flags.DEFINE_string("config", "tflite", "Hardware config: 'tflite', 'htp', 'default' or a JSON path.")
flags.DEFINE_string("quant_scheme", "auto", "Range scheme: auto (the default: output_mse weights, tf_enhanced activations), tf, tf_enhanced, mse, output_mse or percentile.")
flags.DEFINE_integer("calibration_images", 2000, "How many calibration images to use (<= 2000).")
flags.DEFINE_integer("batch_size", 256, "Batch size for evaluation and calibration.")
flags.DEFINE_integer("adaround_iterations", 1000, "AdaRound iterations per layer for the W4A8 AdaRound row (0: skip it).")
flags.DEFINE_bool("cle_rows", True, "Add W4A8 per-tensor rows without and with cross-layer equalization.")


@dataclasses.dataclass
class Row:
    """One line of the result table."""

    name: str
    accuracy: float
    weight_bytes: int
    seconds: float
    note: str = ""


def sim_weight_bytes(sim: QuantizationSimModel) -> int:
    """Bytes of the weights as the target would store them: quantized params at their bitwidth,
    every other trainable weight as float32 (BN statistics excluded: they fold away)."""
    by_bits: dict[int, int] = {}
    quantized = set()
    for _, q, var in sim.param_quantizers():
        if q.enabled:
            by_bits[q.bitwidth] = by_bits.get(q.bitwidth, 0) + int(np.prod(var.shape))
            quantized.add(id(var))
    floats = sum(
        int(np.prod(v.shape))
        for w in sim.wrappers()
        for v in w.layer.trainable_weights
        if id(v) not in quantized
    )
    return metrics.model_weight_bytes(by_bits, floats)


def float_weight_bytes(model: keras.Model) -> int:
    return 4 * sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def evaluate(model: keras.Model, images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    return metrics.top1_accuracy(model.predict(images, batch_size=batch_size, verbose=0), labels)


def run_quickstart(
    output_dir: str,
    config: str = "tflite",
    quant_scheme: str = "auto",
    calibration_images: int = 2000,
    batch_size: int = 256,
    adaround_iterations: int = 1000,
    cle_rows: bool = True,
) -> list[Row]:
    """Runs the quickstart and returns the table rows (also printed)."""
    t0 = time.perf_counter()
    model = datasets.load_bundled_model()
    x_test, y_test = datasets.load_fashion_mnist("test")
    x_cal, _ = datasets.load_fashion_mnist("calibration")
    if not 0 < calibration_images <= len(x_cal):
        raise ValueError(
            f"Expected calibration_images in [1, {len(x_cal)}]. Received: {calibration_images}"
        )
    x_cal = x_cal[:calibration_images]
    logging.info("Loaded the bundled model and data in %.1f s", time.perf_counter() - t0)
    export = config == "tflite"
    # Integer targets fold BNs into the convolutions; the simulation must quantize what they run.
    target_model = prepare_model_for_tflite(model) if export else model

    variants = [("W8A8", 8, False), ("W4A8", 4, False)]
    if adaround_iterations > 0:
        variants.append(("W4A8 AdaRound", 4, True))
    rows: list[Row] = []
    progress = keras.utils.Progbar(1 + len(variants), unit_name="variant")
    t = time.perf_counter()
    rows.append(
        Row("FP32", evaluate(model, x_test, y_test, batch_size), float_weight_bytes(model),
            time.perf_counter() - t, "bundled Keras model")
    )
    progress.update(1)
    os.makedirs(output_dir, exist_ok=True)
    for step, (name, param_bw, adaround) in enumerate(variants, start=2):
        t = time.perf_counter()
        prefix = f"fashion_mnist_{name.lower().replace(' ', '_')}"
        variant_model = target_model
        if adaround:
            # AdaRound learns the weights' rounding on the calibration images; the sim then
            # loads and freezes those parameter encodings.
            params = AdaroundParameters(
                data_set=x_cal, num_batches=max(1, len(x_cal) // 32),
                default_num_iterations=adaround_iterations,
            )
            variant_model = apply_adaround(
                target_model, params, path=output_dir, filename_prefix=f"{prefix}_params",
                default_param_bw=param_bw, default_quant_scheme=quant_scheme,
                config_file=config, verbose=0,
            )
        sim = QuantizationSimModel(
            variant_model,
            quant_scheme=quant_scheme,
            default_param_bw=param_bw,
            default_output_bw=8,
            config_file=config,
        )
        if adaround:
            sim.set_and_freeze_param_encodings(os.path.join(output_dir, f"{prefix}_params.encodings"))
        sim.compute_encodings(x_cal, batch_size=batch_size)
        paths = sim.export(output_dir, prefix, convert_to_pb=False)
        technique = f"AdaRound {adaround_iterations} it/layer, " if adaround else ""
        if export:
            tflite_path = export_tflite(sim, os.path.join(output_dir, f"{prefix}.tflite"))
            report = verify_tflite(sim, tflite_path, x_test, labels=y_test, batch_size=batch_size)
            rows.append(
                Row(f"{name} sim", report.accuracy_sim, sim_weight_bytes(sim), time.perf_counter() - t,
                    f"simulation, {technique}{quant_scheme}; encodings {os.path.relpath(paths['encodings'])}")
            )
            rows.append(
                Row(f"{name} tflite", report.accuracy_tflite, report.file_size_bytes, 0.0,
                    f"LiteRT int8{' + int4 weights' if param_bw == 4 else ''}; sim agreement "
                    f"{100 * report.top1_agreement:.2f}%, {100 * report.exact_fraction:.2f}% outputs "
                    f"identical; {tflite_path}")
            )
        else:
            accuracy = evaluate(sim.model, x_test, y_test, batch_size)
            rows.append(
                Row(f"{name} sim", accuracy, sim_weight_bytes(sim), time.perf_counter() - t,
                    f"simulation, {technique}{quant_scheme}, config {config}; encodings {os.path.relpath(paths['encodings'])}")
            )
        progress.update(step)
    if cle_rows:
        rows.extend(_cle_rows(model, x_cal, x_test, y_test, quant_scheme, batch_size))
    return rows


def _cle_rows(model, x_cal, x_test, y_test, quant_scheme: str, batch_size: int) -> list[Row]:
    """W4A8 with one weight range per tensor (config "default_fused"), without and with CLE.

    "default_fused" is AIMET's default config plus the Add+Clip / Conv+BN supergroups: the
    bundled model's residual Add feeds a ReLU6, which AIMET's own default would quantize apart.

    Cross-layer equalization evens out per-channel weight ranges, which is what per-tensor
    quantization needs; on per-channel targets it changes little. Simulation only.
    """
    rows = []
    for name, use_cle in (("W4A8 per-tensor", False), ("W4A8 pt + CLE", True)):
        t = time.perf_counter()
        note = "simulation, per-tensor weights (config default_fused), BNs folded"
        if use_cle:
            base, report = equalize_model_with_report(model)
            note += f", CLE: {report.num_pairs} pairs + {report.num_triples} triples equalized"
        else:
            base = fold_batch_norms(model)
        sim = QuantizationSimModel(base, quant_scheme=quant_scheme, default_param_bw=4, config_file="default_fused")
        sim.compute_encodings(x_cal, batch_size=batch_size)
        rows.append(
            Row(f"{name} sim", evaluate(sim.model, x_test, y_test, batch_size), sim_weight_bytes(sim),
                time.perf_counter() - t, note)
        )
    return rows


def format_table(rows: list[Row], test_count: int, calibration_count: int) -> str:
    """The result table; sizes are weight bytes for Keras/sim rows and file bytes for .tflite rows."""
    fp32 = rows[0].accuracy
    lines = [
        f"Fashion-MNIST test accuracy ({test_count} images; calibrated on {calibration_count} "
        "train images)",
        f"{'variant':20s} {'top-1 %':>8s} {'vs FP32':>8s} {'size':>9s} {'seconds':>8s}  note",
    ]
    for r in rows:
        delta = "" if r is rows[0] else f"{100 * (r.accuracy - fp32):+.2f}"
        seconds = f"{r.seconds:8.1f}" if r.seconds else " " * 8
        lines.append(
            f"{r.name:20s} {100 * r.accuracy:8.2f} {delta:>8s} {r.weight_bytes / 1024:7.1f}KB "
            f"{seconds}  {r.note}"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    rows = run_quickstart(
        FLAGS.output_dir, FLAGS.config, FLAGS.quant_scheme, FLAGS.calibration_images, FLAGS.batch_size,
        FLAGS.adaround_iterations, FLAGS.cle_rows,
    )
    print()
    print(format_table(rows, 10000, FLAGS.calibration_images))


def run() -> None:
    """Console-script entry point (aimet-tf-quickstart)."""
    app.run(main)


if __name__ == "__main__":
    run()
