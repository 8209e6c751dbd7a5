"""Issue 18 benchmark: one AutoQuant call against plain W4A8 and AdaRound alone, and against AIMET's.

Bundled Fashion-MNIST CNN, ``tflite`` config: AutoQuant with W4A8 and allowed_accuracy_drop 0.005,
and W8A8 with 0.001. AutoQuant scores on the even-indexed 5,000 test images' first 2,000 (the
selection set) and every accuracy below is on the odd-indexed 5,000 it never saw; calibration is
1,000 bundled calibration images. The best result is exported to .tflite and checked against the
sim. The peer is AIMET's own AutoQuant, in the same run: aimet-torch 2.28.0 (no aimet-onnx release
ships AutoQuant), on the same BN-folded model rebuilt in PyTorch, with the same calibration images,
the selection set as its eval data, the same bitwidths and allowed drop, scored on the same held-out
half; it runs with aimet-torch's default per-channel config (aimet-torch refuses the "tflite"
preset: "Strict symmetric is not supported in quantsim v2") and has no .tflite export.

MLTK models on their real inputs, ``tflite`` config, W4A8: even indices calibrate and select
(score = top-1 agreement with FP32), odd indices score. AutoQuant (target 1 point of agreement
below FP32, so that every step runs) beside plain W4A8 nearest and AdaRound alone (2,000
iterations per layer, the default), on the same calibration data.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from aimet_tf import datasets, metrics
from aimet_tf.export import export_tflite, prepare_model_for_tflite, verify_tflite
from aimet_tf.ptq.adaround import AdaroundParameters, apply_adaround
from aimet_tf.ptq.auto_quant import auto_quantize
from aimet_tf.ptq.batch_norm_fold import fold_all_batch_norms
from aimet_tf.quantization import QuantizationSimModel
from benchmarks.peers.aimet_runner import run_aimet_autoquant

MLTK = ("resnet8", "ds_cnn", "vww_mobilenetv1", "mobilenetv2_kws")


def _accuracy(model, x, y) -> float:
    return metrics.top1_accuracy(model.predict(x, batch_size=250, verbose=0), y)


def _status(step) -> str:
    return "skipped" if step.score is None else ("kept" if step.kept else "not kept")


def run() -> str:
    x_cal = datasets.load_fashion_mnist("calibration")[0][:1000]
    x_all, y_all = datasets.load_fashion_mnist("test")
    x_sel, y_sel = x_all[0::2][:2000], y_all[0::2][:2000]
    x_test, y_test = x_all[1::2], y_all[1::2]
    model = datasets.load_bundled_model()
    prepared = prepare_model_for_tflite(model)
    fp32 = _accuracy(model, x_test, y_test)
    _, folded = fold_all_batch_norms(prepared)  # graph.json carries no BatchNormalization
    lines = ["## AutoQuant (issue 18)", "", __doc__.split("\n\n", 1)[1].strip().replace("\n", " "), "",
             f"### Bundled model (FP32 {100 * fp32:.2f}% on the held-out half)", "",
             "| tool | bitwidths, allowed drop | held-out test % (vs FP32) | selection-set score % | steps kept | s | sim == TFLite outputs % |",
             "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        for param_bw, drop in ((4, 0.005), (8, 0.001)):
            start = time.perf_counter()
            result = auto_quantize(prepared, lambda m: _accuracy(m, x_sel, y_sel), x_cal, drop, param_bw=param_bw,
                                   config_file="tflite", results_dir=os.path.join(folder, f"w{param_bw}"), verbose=False)
            seconds = time.perf_counter() - start
            test = _accuracy(result.sim.model, x_test, y_test)
            path = export_tflite(result.sim, os.path.join(folder, f"aq_w{param_bw}.tflite"))
            report = verify_tflite(result.sim, path, x_test, batch_size=500)
            kept = ", ".join(s.name for s in result.steps[3:] if s.kept) or "none"
            lines.append(f"| aimet_tf | W{param_bw}A8, {drop} | {100 * test:.2f} ({100 * (test - fp32):+.2f}) | {100 * result.score:.2f} | "
                         f"{kept} | {seconds:.0f} | {100 * report.exact_fraction:.2f} |")
            peer = run_aimet_autoquant(folded, x_cal, x_sel, y_sel, x_test, y_test, param_bw, 8, drop,
                                       workdir=os.path.join(folder, f"aimet_w{param_bw}"))
            lines.append(_peer_row(peer, fp32))
        lines += ["", *_mltk_section(folder)]
    return "\n".join(lines)


def _peer_row(peer: dict, fp32: float) -> str:
    """The table row of AIMET's AutoQuant from ``run_aimet_autoquant``'s result; ``fp32``: our FP32 held-out accuracy."""
    label = f"AIMET AutoQuant (aimet-torch {peer['versions']['aimet_torch']}, default per-channel config)"
    bits = f"W{peer['param_bw']}A{peer['output_bw']}, {peer['allowed_accuracy_drop']}"
    if peer["early_exit"]:
        return f"| {label} | {bits} | early exit: W32 eval below target, no model returned | | | {peer['optimize_seconds']:.0f} | n/a |"
    test = peer["test"]["accuracy"]
    steps = ", ".join(peer["applied"]["steps"]) or "none"
    return (f"| {label} | {bits} | {100 * test:.2f} ({100 * (test - fp32):+.2f}) | {100 * peer['autoquant_accuracy']:.2f} | "
            f"{steps} | {peer['optimize_seconds']:.0f} | n/a |")


def _mltk_section(folder) -> list[str]:
    from aimet_tf.testing.mltk_models import load_mltk_model
    from aimet_tf.testing.real_inputs import real_inputs

    lines = ["### MLTK models, W4A8, real inputs (top-1 agreement with FP32 %)", "",
             "| model | W4A8 nearest | AdaRound alone | AutoQuant | AutoQuant steps kept | AutoQuant s | AdaRound s |",
             "|---|---|---|---|---|---|---|"]
    for name in MLTK:
        model = prepare_model_for_tflite(load_mltk_model(name).keras_model)
        x = real_inputs(name)
        x_cal, x_score = x[0::2], x[1::2]
        ref_cal = np.argmax(model.predict(x_cal, verbose=0), -1)
        ref = np.argmax(model.predict(x_score, verbose=0), -1)

        def agreement(m, data=x_score, want=ref):
            return float(np.mean(np.argmax(m.predict(data, batch_size=64, verbose=0), -1) == want))

        nearest = QuantizationSimModel(model, default_param_bw=4, config_file="tflite")
        nearest.compute_encodings(x_cal, batch_size=32)
        params = AdaroundParameters(x_cal, num_batches=-(-len(x_cal) // 32), default_num_iterations=2000)
        start = time.perf_counter()
        ada = apply_adaround(model, params, path=folder, filename_prefix=f"{name}_ada", default_param_bw=4,
                             config_file="tflite", verbose=0)
        ada_s = time.perf_counter() - start
        ada_sim = QuantizationSimModel(ada, default_param_bw=4, config_file="tflite")
        ada_sim.set_and_freeze_param_encodings(os.path.join(folder, f"{name}_ada.encodings"))
        ada_sim.compute_encodings(x_cal, batch_size=32)
        start = time.perf_counter()
        result = auto_quantize(model, lambda m: agreement(m, x_cal, ref_cal), x_cal, 0.01, param_bw=4, config_file="tflite",
                               results_dir=os.path.join(folder, f"aq_{name}"), verbose=False)
        aq_s = time.perf_counter() - start
        kept = ", ".join(s.name for s in result.steps[3:] if s.kept) or "none"
        lines.append(f"| {name} | {100 * agreement(nearest.model):.2f} | {100 * agreement(ada_sim.model):.2f} | "
                     f"{100 * agreement(result.sim.model):.2f} | {kept} | {aq_s:.0f} | {ada_s:.0f} |")
    return lines + [""]
