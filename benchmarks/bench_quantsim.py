"""Issue 2/3 benchmark: the bundled Fashion-MNIST model, FP32 vs simulated W8A8/W4A8, beside
TFLite's own int8 post-training quantization, plus simulation and calibration time ratios."""

from __future__ import annotations

import time


from aimet_tf import datasets, metrics
from aimet_tf.quantization import QuantizationSimModel
from benchmarks import common
from aimet_tf.export import TFLITE_CONFIG, prepare_model_for_tflite, prepare_sim_for_tflite, run_tflite
from aimet_tf.export.baselines import tflite_float, tflite_ptq_int8

BATCH = 256


def run() -> str:
    model = datasets.load_bundled_model()
    x_test, y_test = datasets.load_fashion_mnist("test")
    x_cal, _ = datasets.load_fashion_mnist("calibration")
    x_cal_1000 = x_cal[:1000]

    def predict(m, x):
        return m.predict(x, batch_size=BATCH, verbose=0)

    fp32_logits = predict(model, x_test)
    fp32_acc = metrics.top1_accuracy(fp32_logits, y_test)
    rows = [("FP32 Keras", fp32_acc, "", "")]

    sims = {}
    prepared = prepare_model_for_tflite(model)
    for name, base, scheme, pbw, config in (
        ("W8A8 sim (tf_enhanced, htp)", model, "tf_enhanced", 8, "htp"),
        ("W8A8 sim (tf, htp)", model, "tf", 8, "htp"),
        ("W4A8 sim (tf_enhanced, htp)", model, "tf_enhanced", 4, "htp"),
        ("W8A8 sim (tf_enhanced, tflite config: TFLite's int8 scheme, BNs folded)", prepared, "tf_enhanced", 8,
         TFLITE_CONFIG),
    ):
        t = time.perf_counter()
        sim = QuantizationSimModel(base, quant_scheme=scheme, default_param_bw=pbw, config_file=config)
        if config == TFLITE_CONFIG:
            prepare_sim_for_tflite(sim)
        sim.compute_encodings(x_cal, batch_size=BATCH)
        seconds = time.perf_counter() - t
        logits = predict(sim.model, x_test)
        sims[name] = sim
        rows.append(
            (name, metrics.top1_accuracy(logits, y_test),
             f"{metrics.top1_agreement(logits, fp32_logits) * 100:.2f}",
             f"calibration {seconds:.1f} s on {len(x_cal)} images")
        )

    ptq = tflite_ptq_int8(model, x_cal)
    ptq_logits = run_tflite(ptq, x_test, batch_size=BATCH)[0]
    float_tfl = tflite_float(model)
    rows.append(
        ("TFLite PTQ int8 (peer, same calibration images)", metrics.top1_accuracy(ptq_logits, y_test),
         f"{metrics.top1_agreement(ptq_logits, fp32_logits) * 100:.2f}",
         f"file {len(ptq) / 1024:.1f} KB (float .tflite {len(float_tfl) / 1024:.1f} KB)")
    )

    # Time ratios, measured back to back in this run.
    w8 = sims["W8A8 sim (tf_enhanced, htp)"]
    # Interleaved rounds, best of each: a background burst then hits both sides alike.
    t_fp32, t_sim = float("inf"), float("inf")
    for _ in range(3):
        t_fp32 = min(t_fp32, common.best_seconds(lambda: predict(model, x_test), repeats=2))
        t_sim = min(t_sim, common.best_seconds(lambda: predict(w8.model, x_test), repeats=2))
    t_fp32_1000 = common.best_seconds(lambda: predict(model, x_cal_1000))
    # First call (includes tracing) on both sides: a freshly loaded model's first predict vs a
    # fresh sim's first compute_encodings; then repeated calls, best of several.
    fresh = datasets.load_bundled_model()
    t = time.perf_counter()
    predict(fresh, x_cal_1000)
    t_fp32_first = time.perf_counter() - t
    timings = []
    for scheme in ("tf", "tf_enhanced"):
        s = QuantizationSimModel(model, quant_scheme=scheme, config_file="htp")
        t = time.perf_counter()
        s.compute_encodings(x_cal_1000, batch_size=BATCH)
        t_first = time.perf_counter() - t
        t_cal = common.best_seconds(lambda: s.compute_encodings(x_cal_1000, batch_size=BATCH), repeats=3)
        timings.append((scheme, t_first, t_cal))

    lines = [
        "## Quantization simulation on the bundled Fashion-MNIST CNN (issues 2, 3)",
        "",
        f"Model: `aimet_tf/assets/fashion_mnist_cnn.keras` ({model.count_params():,} parameters). "
        f"Scored on the full {len(x_test):,}-image test split; calibrated on the {len(x_cal):,} bundled "
        "train-split calibration images (never scored).",
        "",
        "| variant | top-1 % | vs FP32 (points) | top-1 agreement with FP32 % | notes |",
        "|---|---|---|---|---|",
    ]
    for name, acc, agree, note in rows:
        delta = "" if name == "FP32 Keras" else f"{100 * (acc - fp32_acc):+.2f}"
        lines.append(f"| {name} | {100 * acc:.2f} | {delta} | {agree} | {note} |")
    lines += [
        "",
        "| time ratio (same run, best of several) | ours | ratio | goal |",
        "|---|---|---|---|",
        f"| W8A8 sim predict / FP32 predict, 10k images, batch {BATCH} | {t_sim:.2f} s / {t_fp32:.2f} s "
        f"| {t_sim / t_fp32:.2f}x | <= 1.5x |",
    ]
    for scheme, t_first, t_cal in timings:
        lines.append(
            f"| compute_encodings ({scheme}) on 1,000 images / one FP32 pass over them (repeated calls) | "
            f"{t_cal:.2f} s / {t_fp32_1000:.2f} s | {t_cal / t_fp32_1000:.2f}x | <= 3x |"
        )
        lines.append(
            f"| same, first call on both sides (tracing included) | "
            f"{t_first:.2f} s / {t_fp32_first:.2f} s | {t_first / t_fp32_first:.2f}x | |"
        )
    return "\n".join(lines)
