"""Issue 16 benchmark: automatic mixed precision (AMP) on the bundled model and an MLTK model.

Bundled Fashion-MNIST CNN: every image but the test split's was seen in training, so the 10k test
split is halved: AMP selects on the even-indexed half (phase 1 on its first 2,000 images, phase 2
on all 5,000) and every accuracy below is on the odd-indexed half (5,000 images AMP never saw).
The sim is calibrated on 1,000 bundled calibration images. The target is FP32 - 0.3 points on
the phase-2 set. Uniform candidates are separate sims calibrated on the same images. Under the
``tflite`` config the mixed result is exported to one int4/int8 .tflite and checked against the
sim on the held-out half.

The peer is aimet-onnx's own AMP (``choose_mixed_precision``, its own venv,
``benchmarks/peers/aimet_amp_peer.py``) on the same BN-folded model, candidates, calibration and
eval data (the 2,000-image phase-1 set for both phases on both sides; min/max ranges, per-channel
weights), run back to back with ours on the same settings.

MLTK ds_cnn (keyword spotting) on its real inputs: even indices calibrate and score phase 1, odd
indices score phase 2, both by top-1 agreement with FP32; target 94% agreement (W8A8 alone
reaches about 95% there).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from aimet_tf import datasets, files, metrics
from aimet_tf.export import export_tflite, prepare_model_for_tflite, verify_tflite
from aimet_tf.ptq import mixed_precision as amp
from aimet_tf.ptq.batch_norm_fold import fold_batch_norms
from aimet_tf.quantization import QuantizationSimModel

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CANDIDATES = [(8, 8), (8, 4)]
DROP = 0.003
MLTK_DROP = 0.06  # agreement points: W8A8 alone agrees with FP32 on about 95% of ds_cnn's real inputs


def _accuracy(model, x, y) -> float:
    return metrics.top1_accuracy(model.predict(x, batch_size=500, verbose=0), y)


def _run_ours(prepared, config, scheme, candidates, calibration, phase1, phase2, drop, folder, cost_metric="bops"):
    top = max(candidates, key=lambda c: c[0] * c[1])
    sim = QuantizationSimModel(prepared, quant_scheme=scheme, config_file=config, default_output_bw=top[0], default_param_bw=top[1])
    start = time.perf_counter()
    result = amp.choose_mixed_precision(sim, candidates, phase1, phase2, drop, folder, forward_pass=calibration,
                                        cost_metric=cost_metric, verbose=False)
    return sim, result, time.perf_counter() - start


def _uniform(prepared, config, scheme, a, p, calibration):
    sim = QuantizationSimModel(prepared, quant_scheme=scheme, config_file=config, default_output_bw=a, default_param_bw=p)
    sim.compute_encodings(calibration)
    return sim


def _memory(sim, result) -> float:
    return amp.relative_cost(sim, result.groups, result.chosen.choice, result.baseline, "memory")


def _bops(sim, result) -> float:
    return amp.relative_cost(sim, result.groups, result.chosen.choice, result.baseline, "bops")


def run() -> str:
    x_cal, _ = datasets.load_fashion_mnist("calibration")
    x_all, y_all = datasets.load_fashion_mnist("test")
    calibration = x_cal[:1000]
    x2, y2 = x_all[0::2], y_all[0::2]  # AMP's selection half
    x1, y1 = x2[:2000], y2[:2000]
    x_test, y_test = x_all[1::2], y_all[1::2]  # held out: every accuracy reported
    model = datasets.load_bundled_model()
    fp32_test = _accuracy(model, x_test, y_test)
    lines = ["## Automatic mixed precision (issue 16)", "", __doc__.split("\n\n", 1)[1].strip().replace("\n", " "), ""]
    lines += [
        "### Bundled model: W8A8 + W4A8 candidates",
        "",
        f"FP32: {100 * fp32_test:.2f}% on the held-out half of the test split.",
        "",
        "| config, cost metric | uniform W8A8 % | uniform W4A8 % | AMP % (vs FP32) | relative BOPs | relative weight bytes | evaluations (phase 1 + 2) | encoding passes | AMP s | int4/int8 TFLite % | sim == TFLite outputs % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    tflite_ready = prepare_model_for_tflite(model)
    folded = fold_batch_norms(model)
    with tempfile.TemporaryDirectory() as folder:
        u8 = _accuracy(_uniform(tflite_ready, "tflite", "tf_enhanced", 8, 8, calibration).model, x_test, y_test)
        u4 = _accuracy(_uniform(tflite_ready, "tflite", "tf_enhanced", 8, 4, calibration).model, x_test, y_test)
        figure = None
        for metric_name in ("bops", "memory"):
            out = os.path.join(folder, f"bundled_{metric_name}")
            sim, result, seconds = _run_ours(
                tflite_ready, "tflite", "tf_enhanced", CANDIDATES, calibration,
                lambda m: _accuracy(m, x1, y1), lambda m: _accuracy(m, x2, y2), DROP, out, metric_name)
            test = _accuracy(sim.model, x_test, y_test)
            path = export_tflite(sim, os.path.join(folder, f"amp_{metric_name}.tflite"))
            report = verify_tflite(sim, path, x_test, labels=y_test, batch_size=500)
            lines.append(
                f"| tflite, {metric_name} | {100 * u8:.2f} | {100 * u4:.2f} | {100 * test:.2f} ({100 * (test - fp32_test):+.2f}) | "
                f"{_bops(sim, result):.3f} | {_memory(sim, result):.3f} | {result.evaluations['phase1']} + {result.evaluations['phase2']} | "
                f"{result.encoding_passes} | {seconds:.0f} | {100 * report.accuracy_tflite:.2f} | {100 * report.exact_fraction:.2f} |"
            )
            if figure is None:
                figure = os.path.join(RESULTS_DIR, "amp_pareto_bundled.png")
                with open(os.path.join(out, "pareto_front.png"), "rb") as src:
                    files.atomic_write(figure, src.read())
        # W16A16 where the config allows it (htp): sim only, encodings exportable.
        cands16 = [(16, 16), (8, 8), (8, 4)]
        sim, result, seconds = _run_ours(folded, "htp", "tf_enhanced", cands16, calibration,
                                         lambda m: _accuracy(m, x1, y1), lambda m: _accuracy(m, x2, y2), DROP,
                                         os.path.join(folder, "htp16"))
        test = _accuracy(sim.model, x_test, y_test)
        counts = {}
        for c in result.chosen.choice:
            counts[str(c)] = counts.get(str(c), 0) + 1
        lines += [
            "",
            f"With the `htp` config and W16A16 + W8A8 + W4A8 candidates (sim only): AMP {100 * test:.2f}% "
            f"({100 * (test - fp32_test):+.2f} vs FP32), relative BOPs {_bops(sim, result):.3f} (of W16A16), weight bytes "
            f"{_memory(sim, result):.3f} of W16; groups per candidate {counts}; {result.evaluations['phase1']} + "
            f"{result.evaluations['phase2']} evaluations, {seconds:.0f} s.",
            "",
            "Pareto front of the first row (`benchmarks/results/amp_pareto_bundled.png`):",
            "",
            "![AMP Pareto front, bundled model](benchmarks/results/amp_pareto_bundled.png)",
            "",
        ]
        lines += _sensitivity_figure(folded, calibration, x1, y1, folder)
        lines += _peer_section(folded, calibration, x1, y1, x_test, y_test, folder)
        lines += _mltk_section(folder)
    return "\n".join(lines)


def _sensitivity_figure(folded, calibration, x_eval, y_eval, folder) -> list[str]:
    """QuantAnalyzer's per-layer W4A8 sensitivity of the bundled model, kept as a PNG for the README."""
    from aimet_tf.analysis.quant_analyzer import QuantAnalyzer
    from aimet_tf.common.defs import CallbackFunc

    analyzer = QuantAnalyzer(folded, CallbackFunc(lambda m, x: m.predict(x, batch_size=500, verbose=0), calibration),
                             CallbackFunc(lambda m, d: _accuracy(m, *d), (x_eval, y_eval)))
    out = os.path.join(folder, "quant_analyzer")
    results = analyzer.analyze(quant_scheme="tf_enhanced", default_param_bw=4, default_output_bw=8,
                               config_file="default_per_channel", results_dir=out)
    figure = os.path.join(RESULTS_DIR, "quant_analyzer_bundled_w4a8_per_layer.png")
    with open(os.path.join(out, "per_layer_quant_enabled.png"), "rb") as src:
        files.atomic_write(figure, src.read())
    enabled = results["per_layer"]["quant_enabled"]
    worst = sorted(enabled, key=enabled.get)[:3]
    return [
        "QuantAnalyzer on the same model (W4A8, per-channel, phase-1 images): score with only one layer "
        f"quantized; the most sensitive are {', '.join(f'{n} ({100 * enabled[n]:.2f}%)' for n in worst)} "
        "(`benchmarks/results/quant_analyzer_bundled_w4a8_per_layer.png`):",
        "",
        "![QuantAnalyzer per-layer sensitivity, bundled model](benchmarks/results/quant_analyzer_bundled_w4a8_per_layer.png)",
        "",
    ]


def _peer_section(folded, calibration, x_eval, y_eval, x_test, y_test, folder) -> list[str]:
    lines = [
        "### Against aimet-onnx's AMP (same model, candidates W8A8 + W4A8, calibration and eval data; min/max, per-channel)",
        "",
        "| tool | AMP s | evaluations (phase 1 + 2) | chosen relative BOPs | relative weight bytes | eval-set accuracy at the chosen point % | test accuracy % |",
        "|---|---|---|---|---|---|---|",
    ]
    score = lambda m: _accuracy(m, x_eval, y_eval)  # noqa: E731
    sim, result, seconds = _run_ours(folded, "default_per_channel", "tf", CANDIDATES, calibration, score, score, DROP,
                                     os.path.join(folder, "peer_ours"))
    lines.append(
        f"| aimet_tf | {seconds:.0f} | {result.evaluations['phase1']} + {result.evaluations['phase2']} | {_bops(sim, result):.3f} | "
        f"{_memory(sim, result):.3f} | {100 * result.final_score:.2f} | {100 * _accuracy(sim.model, x_test, y_test):.2f} |"
    )
    try:
        from benchmarks.peers.aimet_runner import run_aimet_amp

        peer = run_aimet_amp(folded, calibration, x_eval, y_eval, x_test, y_test, [list(c) for c in CANDIDATES], DROP,
                             quant_scheme="min_max", workdir=os.path.join(folder, "peer_aimet"))
    except Exception as error:  # the peer needs its own venv; report why it did not run
        lines.append(f"| aimet-onnx | not run: {type(error).__name__}: {str(error).splitlines()[0][:300]} | | | | | |")
        return lines + [""]
    evals = peer["eval_calls"]
    lines.append(
        f"| aimet-onnx {peer['versions']['aimet_onnx']} | {peer['amp_seconds']:.0f} | {evals['phase1']} + {evals['phase2']} | "
        f"{peer['chosen']['relative_bops']:.3f} | {peer['weights']['relative_to_w8']:.3f} | "
        f"{100 * peer['chosen']['eval_accuracy']:.2f} | {100 * peer['test']['accuracy']:.2f} |"
    )
    lines.append("")
    lines.append(f"Time ratio aimet-onnx / aimet_tf: {peer['amp_seconds'] / seconds:.2f}x (each side's AMP call only).")
    return lines + [""]


def _mltk_section(folder) -> list[str]:
    from aimet_tf.testing.mltk_models import load_mltk_model
    from aimet_tf.testing.real_inputs import describe_inputs, real_inputs

    name = "ds_cnn"
    model = load_mltk_model(name).keras_model
    x = real_inputs(name)
    xe, xo = x[0::2], x[1::2]
    ref_e = np.argmax(model.predict(xe, verbose=0), -1)
    ref_o = np.argmax(model.predict(xo, verbose=0), -1)
    prepared = prepare_model_for_tflite(model)
    sim, result, seconds = _run_ours(
        prepared, "tflite", "tf_enhanced", CANDIDATES, xe,
        lambda m: float(np.mean(np.argmax(m.predict(xe, batch_size=64, verbose=0), -1) == ref_e)),
        lambda m: float(np.mean(np.argmax(m.predict(xo, batch_size=64, verbose=0), -1) == ref_o)),
        MLTK_DROP, os.path.join(folder, name))
    uniform = {}
    for a, p in CANDIDATES:
        u = _uniform(prepared, "tflite", "tf_enhanced", a, p, xe)
        uniform[f"W{p}A{a}"] = float(np.mean(np.argmax(u.model.predict(xo, batch_size=64, verbose=0), -1) == ref_o))
    path = export_tflite(sim, os.path.join(folder, f"{name}_amp.tflite"))
    report = verify_tflite(sim, path, xo, batch_size=64)
    chosen = float(np.mean(np.argmax(sim.model.predict(xo, batch_size=64, verbose=0), -1) == ref_o))
    return [
        f"### MLTK {name}, real inputs, tflite config, W8A8 + W4A8, target {100 * (1 - MLTK_DROP):.0f}% agreement with FP32",
        "",
        f"Inputs: {describe_inputs(name)}.",
        "",
        "| uniform W8A8 agreement % | uniform W4A8 agreement % | AMP agreement % | relative BOPs | relative weight bytes | evaluations | AMP s | sim == TFLite outputs % |",
        "|---|---|---|---|---|---|---|---|",
        f"| {100 * uniform['W8A8']:.2f} | {100 * uniform['W4A8']:.2f} | {100 * chosen:.2f} | {_bops(sim, result):.3f} | "
        f"{_memory(sim, result):.3f} | {result.evaluations['phase1']} + {result.evaluations['phase2']} | {seconds:.0f} | "
        f"{100 * report.exact_fraction:.2f} |",
        "",
    ]
