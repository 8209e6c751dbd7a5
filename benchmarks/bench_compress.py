"""Issue 17 benchmark: every compression scheme at 50% of the MACs, before and after fine-tuning.

For the bundled model and ``plain_cnn`` (Fashion-MNIST), each scheme runs AIMET's greedy auto mode
to a target of 0.5 of the model's MACs. Selection is scored on 1,000 bundled calibration images
(train split); channel pruning re-fits on the other 1,000. Accuracy is on the 10k test split,
before and after one epoch of fine-tuning on the 60k train split (Debian's dataset-fashion-mnist;
Adam, learning rate 1e-4, batch 128), plain and with layer-wise distillation from the uncompressed
model (``aimet_tf.compression.distillation.DistillationModel``, same epoch and optimiser). The compressed, fine-tuned model is then quantized W8A8
(`tflite` config, `tf_enhanced`, BN folded by `prepare_model_for_tflite`), exported to int8 TFLite and
checked against the sim; float and int8 file sizes and LiteRT latency (batch 1) sit beside the
uncompressed model's, measured in the same run. A scheme that cannot reach 50% on a model (it has
too few layers it can compress) is reported with the smallest ratio it can reach. The peer is
TFMOT's magnitude pruning (its own venv, ``benchmarks/peers/tfmot_prune.py``) at the sparsity that
leaves the weight count of our most compressed scheme, with the same one-epoch fine-tune; its
.tflite files are scored and timed here with the same LiteRT. gzip sizes show what sparsity
saves once compressed; dense kernels with zeros run no faster.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import tempfile
import time

import keras
import numpy as np

from aimet_tf import datasets, files, metrics
from aimet_tf.compression import compressor, schemes
from aimet_tf.compression.distillation import DistillationModel
from aimet_tf.compression.report import sensitivity_chart
from aimet_tf.analysis.report import write_png
from aimet_tf.graph.rewrite import clone_model_graph
from aimet_tf.export import export_tflite, measure_latency, prepare_model_for_tflite, run_tflite, verify_tflite
from aimet_tf.export.baselines import tflite_float
from aimet_tf.graph.cost import total_cost
from aimet_tf.quantization import QuantizationSimModel
from benchmarks import zoo
from benchmarks.bench_qat import _PEER_SETUP, _to_uint8, _venv, export_architecture

_PRUNE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers", "tfmot_prune.py")

MODELS = ("bundled_cnn", "plain_cnn")
# MLTK models, greedy at 0.6 of the MACs, scored by top-1 agreement with FP32 on their real inputs.
MLTK = (("resnet8", ("spatial_svd", "tucker", "channel_pruning")), ("vww_mobilenetv1", ("weight_svd", "channel_pruning")))
MLTK_TARGET = 0.6
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SCHEMES = ("spatial_svd", "weight_svd", "tucker", "channel_pruning")
TARGET = 0.5


def _accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return metrics.top1_accuracy(model.predict(x, batch_size=500, verbose=0), y)


def _fine_tune(model: keras.Model, x: np.ndarray, y: np.ndarray, teacher: keras.Model | None = None) -> float:
    """One epoch, with layer-wise distillation from ``teacher`` when given; returns seconds."""
    trainer = model if teacher is None else DistillationModel(model, teacher)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-4), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    trainer.fit(x, y, batch_size=128, epochs=1, verbose=0, shuffle=True)
    return time.perf_counter() - start


def _export(model: keras.Model, x_cal: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, folder: str, name: str) -> dict:
    sim = QuantizationSimModel(prepare_model_for_tflite(model), quant_scheme="tf_enhanced", config_file="tflite")
    sim.compute_encodings(x_cal, batch_size=64)
    int8 = export_tflite(sim, os.path.join(folder, f"{name}_int8.tflite"))
    report = verify_tflite(sim, int8, x_test, labels=y_test, batch_size=250)
    float_path = os.path.join(folder, f"{name}_float.tflite")
    with open(float_path, "wb") as f:
        f.write(tflite_float(model))
    return {
        "int8_gz_kb": _gzip_kb(int8),
        "float_gz_kb": _gzip_kb(float_path),
        "int8_acc": report.accuracy_tflite,
        "identical": report.exact_fraction,
        "int8_kb": report.file_size_bytes / 1024,
        "float_kb": os.path.getsize(float_path) / 1024,
        "int8_ms": measure_latency(int8),
        "float_ms": measure_latency(float_path),
    }


def _gzip_kb(path: str) -> float:
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), 9)) / 1024


def tfmot_pruning(model: keras.Model, sparsity: float, x_train, y_train, x_cal, x_test, y_test, folder: str) -> dict:
    """TFMOT magnitude pruning to ``sparsity`` with the same fine-tune, scored here (same LiteRT)."""
    python = os.path.join(_venv(), "bin", "python")
    if not os.path.exists(python):
        setup = subprocess.run(["bash", _PEER_SETUP, _venv()], capture_output=True, text=True)
        if setup.returncode != 0:
            return {"error": f"setup_tfmot.sh failed: {setup.stderr.strip()[-300:]}"}
    work = tempfile.mkdtemp(dir=folder)
    arch, weights = export_architecture(model, work)
    data = os.path.join(work, "data.npz")
    np.savez(data, x_train=_to_uint8(x_train), y_train=y_train, x_test=_to_uint8(x_test), y_test=y_test, x_cal=_to_uint8(x_cal))
    out = os.path.join(work, "out")
    command = [python, _PRUNE_SCRIPT, f"--arch={arch}", f"--weights={weights}", f"--data={data}",
               f"--output_dir={out}", f"--sparsity={sparsity:.4f}"]
    proc = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, TF_USE_LEGACY_KERAS="1"), timeout=1800)
    if proc.returncode != 0:
        return {"error": f"tfmot_prune.py failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}"}
    with open(os.path.join(out, "result.json"), encoding="utf-8") as f:
        result = json.load(f)
    int8, flt = os.path.join(out, "int8.tflite"), os.path.join(out, "float.tflite")
    result.update(
        int8_acc=metrics.top1_accuracy(run_tflite(int8, x_test)[0], y_test),
        int8_kb=os.path.getsize(int8) / 1024, float_kb=os.path.getsize(flt) / 1024,
        int8_gz_kb=_gzip_kb(int8), float_gz_kb=_gzip_kb(flt),
        int8_ms=measure_latency(int8), float_ms=measure_latency(flt),
    )
    return result


def _row(label: str, macs: float, params: float, before: float, after: float | None, tune_s: float | None, exp: dict, extra: str) -> str:
    after_text = "" if after is None else f"{100 * after:.2f}"
    tune_text = "" if tune_s is None else f"{tune_s:.0f}"
    return (
        f"| {label} | {macs:.3f} | {params:.3f} | {100 * before:.2f} | {after_text} | {tune_text} | "
        f"{100 * exp['int8_acc']:.2f} | {100 * exp['identical']:.2f} | {exp['float_kb']:.1f} / {exp['int8_kb']:.1f} "
        f"({exp['float_gz_kb']:.1f} / {exp['int8_gz_kb']:.1f}) | "
        f"{exp['float_ms']:.3f} / {exp['int8_ms']:.3f} | {extra} |"
    )


def run() -> str:
    x_cal, y_cal = datasets.load_fashion_mnist("calibration")
    x_test, y_test = datasets.load_fashion_mnist("test")
    x_train, y_train = datasets.load_fashion_mnist("train")
    lines = [
        "## Compression: each scheme at 50% of the MACs (issue 17)",
        "",
        __doc__.split("\n\n", 1)[1].strip().replace("\n", " "),
        "",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for model_name in MODELS:
            model, prepare = zoo.load(model_name)
            xv, yv = prepare(x_cal[:1000]), y_cal[:1000]
            x_refit, xt, xtr = prepare(x_cal[1000:]), prepare(x_test), prepare(x_train)
            base = total_cost(model)
            lines += [
                f"### {model_name} ({model.count_params():,} parameters, {base.macs:,} MACs)",
                "",
                "| model | MACs kept | weights kept | test acc % | after 1 epoch % | fine-tune s | int8 TFLite acc % | sim == TFLite outputs % | float / int8 KB (gzip -9) | float / int8 ms | per-layer ratios, greedy time |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            exp = _export(model, xv, xt, y_test, folder, f"{model_name}_base")
            lines.append(_row("uncompressed", 1.0, 1.0, _accuracy(model, xt, y_test), None, None, exp, ""))

            def evaluate(candidate, xv=xv, yv=yv):
                return _accuracy(candidate, xv, yv)

            kept_weights = []
            for scheme in SCHEMES:
                layers = schemes.compressible_layers(model, scheme)
                start = time.perf_counter()
                try:
                    compressed, stats = compressor.compress_model(
                        model, scheme, evaluate, target_ratio=TARGET, samples=x_refit,
                        cache_path=os.path.join(folder, f"{model_name}_{scheme}.json"),
                    )
                except ValueError as error:
                    lines.append(f"| {scheme} | not reachable | | | | | | | | | {len(layers)} layers it can compress ({', '.join(layers) or 'none'}); {error} |")
                    continue
                greedy_s = time.perf_counter() - start
                before = _accuracy(compressed, xt, y_test)
                distilled = clone_model_graph(compressed)
                tune_s = _fine_tune(compressed, xtr, y_train)
                after = _accuracy(compressed, xt, y_test)
                exp = _export(compressed, xv, xt, y_test, folder, f"{model_name}_{scheme}")
                cost = total_cost(compressed)
                kept_weights.append(cost.params / base.params)
                ratios = ", ".join(f"{c.layer} {c.ratio:.1f}" for c in stats.per_layer if c.ratio < 1.0)
                lines.append(_row(scheme, cost.macs / base.macs, cost.params / base.params, before, after, tune_s, exp,
                                  f"{ratios}; {greedy_s:.0f} s"))
                tune_s = _fine_tune(distilled, xtr, y_train, teacher=model)
                exp = _export(distilled, xv, xt, y_test, folder, f"{model_name}_{scheme}_distilled")
                lines.append(_row(f"{scheme}, distillation fine-tune", cost.macs / base.macs, cost.params / base.params, before,
                                  _accuracy(distilled, xt, y_test), tune_s, exp, "same compressed model; layer-wise + output distillation from the uncompressed model"))
            if kept_weights:
                sparsity = 1.0 - min(kept_weights)
                peer = tfmot_pruning(model, sparsity, xtr, y_train, xv, xt, y_test, folder)
                if "error" in peer:
                    lines.append(f"| TFMOT magnitude pruning | failed | | | | | | | | | {peer['error']} |")
                else:
                    lines.append(
                        f"| TFMOT magnitude pruning, sparsity {sparsity:.3f} (tfmot {peer['versions']['tensorflow_model_optimization']}) | 1.000 | "
                        f"{1 - peer['kernel_sparsity']:.3f} nonzero | | {100 * peer['keras_accuracy']:.2f} | | {100 * peer['int8_acc']:.2f} | "
                        f"(TFLite PTQ) | {peer['float_kb']:.1f} / {peer['int8_kb']:.1f} ({peer['float_gz_kb']:.1f} / {peer['int8_gz_kb']:.1f}) | "
                        f"{peer['float_ms']:.3f} / {peer['int8_ms']:.3f} | dense kernels with zeros; same 1-epoch fine-tune |"
                    )
            lines.append("")
        lines += _mltk_section(folder)
    return "\n".join(lines)


def _mltk_section(folder: str) -> list[str]:
    from aimet_tf.testing.mltk_models import load_mltk_model
    from aimet_tf.testing.real_inputs import describe_inputs, real_inputs

    lines = [
        f"### MLTK models: greedy auto mode at {MLTK_TARGET} of the MACs, no fine-tuning",
        "",
        "Real inputs: even indices select (scores = top-1 agreement with FP32) and calibrate, odd "
        "indices score. The per-layer sensitivity tables and plots are kept in "
        "`benchmarks/results/compress_sensitivity_<model>_<scheme>.json` / `.png`.",
        "",
        "| model | scheme | MACs kept | weights kept | agreement with FP32 % | W8A8 int8 TFLite agreement % | sim == TFLite outputs % | per-layer ratios | greedy s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, model_schemes in MLTK:
        model = load_mltk_model(name).keras_model
        x = real_inputs(name)
        x_sel, x_score = x[0::2], x[1::2]
        sel_ref = np.argmax(model.predict(x_sel, verbose=0), -1)
        score_ref = np.argmax(model.predict(x_score, verbose=0), -1)

        def evaluate(candidate, x_sel=x_sel, sel_ref=sel_ref):
            return float(np.mean(np.argmax(candidate.predict(x_sel, verbose=0), -1) == sel_ref))

        base = total_cost(model)
        for scheme in model_schemes:
            start = time.perf_counter()
            try:
                compressed, stats = compressor.compress_model(
                    model, scheme, evaluate, target_ratio=MLTK_TARGET, samples=x_sel,
                    cache_path=os.path.join(folder, f"{name}_{scheme}.json"),
                )
            except ValueError as error:
                lines.append(f"| {name} | {scheme} | not reachable | | | | | {error} | |")
                continue
            seconds = time.perf_counter() - start
            files_path = os.path.join(RESULTS_DIR, f"compress_sensitivity_{name}_{scheme}.json")
            write_png(sensitivity_chart(stats.eval_scores, f"{name}: per-layer {scheme} sensitivity (agreement with FP32)",
                                        stats.baseline_model_accuracy, "top-1 agreement with FP32", {c.layer: c.ratio for c in stats.per_layer}),
                      files_path[: -len(".json")] + ".png", size=(8.0, 5.0))
            files.atomic_write(files_path, json.dumps({
                "model": name, "scheme": scheme, "target": MLTK_TARGET, "inputs": describe_inputs(name),
                "scores": {layer: {repr(r): v for r, v in by.items()} for layer, by in stats.eval_scores.items()},
                "chosen": {c.layer: c.ratio for c in stats.per_layer},
            }, indent=1))
            agreement = float(np.mean(np.argmax(compressed.predict(x_score, verbose=0), -1) == score_ref))
            sim = QuantizationSimModel(prepare_model_for_tflite(compressed), quant_scheme="tf_enhanced", config_file="tflite")
            sim.compute_encodings(x_sel, batch_size=32)
            path = export_tflite(sim, os.path.join(folder, f"{name}_{scheme}.tflite"))
            report = verify_tflite(sim, path, x_score, batch_size=32)
            tflite_agreement = float(np.mean(np.argmax(run_tflite(path, x_score)[0], -1) == score_ref))
            cost = total_cost(compressed)
            ratios = ", ".join(f"{c.layer} {c.ratio:.1f}" for c in stats.per_layer if c.ratio < 1.0)
            lines.append(
                f"| {name} | {scheme} | {cost.macs / base.macs:.3f} | {cost.params / base.params:.3f} | {100 * agreement:.2f} | "
                f"{100 * tflite_agreement:.2f} | {100 * report.exact_fraction:.2f} | {ratios} | {seconds:.0f} |"
            )
    lines.append("")
    return lines
